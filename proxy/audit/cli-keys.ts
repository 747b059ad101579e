// `mamori audit search --subject V --config FILE`: the subject keys come from the keyring named by the
// configuration (opening it needs the root key: a local key file or KMS decrypt permission), so only someone
// who can open the keyring can search by value. The search itself is recorded by the audit CLI.
import { parseArgs } from 'node:util';
import pg from 'pg';
import { loadConfig } from '../../config/load.js';
import { Keyring, keyringConfigFrom } from '../../keyring/index.js';
import { upstreamTarget, controlClientConfig } from '../server.js';
import { keyringSubjectHasher } from './subject-keys.js';

/** A hasher over every readable subject key, or null when the arguments do not ask for a subject search. */
export async function subjectHasherFor(args: readonly string[]): Promise<{ hashSubject: (v: string) => string[]; close(): Promise<void> } | null> {
  if (args[0] !== 'search') return null;
  let values: { config?: string; subject?: string };
  try {
    ({ values } = parseArgs({ args: args.slice(1), allowPositionals: true, strict: false, options: { config: { type: 'string' }, subject: { type: 'string' } } }) as { values: { config?: string; subject?: string } });
  } catch {
    return null;
  }
  if (typeof values.config !== 'string' || values.subject === undefined) return null;
  const loaded = await loadConfig(values.config, process.env, { requireSecrets: false });
  if (!loaded.ok) return null; // the audit CLI reports the configuration problem itself
  const config = loaded.config;
  const pool = config.keyring.store.type === 'postgres'
    ? new pg.Pool(controlClientConfig(config, loaded.secrets, upstreamTarget(config)))
    : null;
  const keyring = await Keyring.open(keyringConfigFrom(config.keyring), pool ? { pg: pool } : {});
  try {
    const hashSubject = await keyringSubjectHasher(keyring);
    return {
      hashSubject,
      async close() {
        await keyring.close();
        await pool?.end();
      },
    };
  } catch (err) {
    await keyring.close();
    await pool?.end();
    throw err;
  }
}
