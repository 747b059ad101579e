// Starts mamori in-process in front of a throwaway cluster, set up as `mamori setup-db` would:
// the control role and the SCRAM verifier lookup function.
import pg from 'pg';
import pino from 'pino';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultConfig } from '../../config/load.js';
import type { MamoriConfigInput, MamoriConfig } from '../../config/schema.js';
import { installLookupFunction } from '../../proxy/session/auth-lookup.js';
import { startMamori, type MamoriServer } from '../../proxy/server.js';
import type { SessionHooks } from '../../proxy/session/session.js';
import { startCluster, type Cluster, type ClusterOptions } from './cluster.js';

export const CONTROL_USER = 'mamori';
export const CONTROL_PASSWORD = 'control-pw-for-tests';

export interface Stack {
  cluster: Cluster;
  mamori: MamoriServer;
  config: MamoriConfig;
  /** Connection settings for a client through mamori. */
  client(user: string, password: string, extra?: Partial<pg.ClientConfig>): pg.ClientConfig;
  stop(): Promise<void>;
}

export async function setupDatabase(cluster: Cluster): Promise<void> {
  await cluster.createRole(CONTROL_USER, CONTROL_PASSWORD);
  const c = new pg.Client({ host: cluster.host, port: cluster.port, user: cluster.superuser, password: cluster.superPassword, database: 'postgres' });
  await c.connect();
  try {
    await installLookupFunction(c, 'mamori.get_auth', CONTROL_USER);
  } finally {
    await c.end();
  }
}

export interface StackOptions {
  cluster?: ClusterOptions;
  config?: MamoriConfigInput;
  hooks?: SessionHooks;
  /** Serve TLS on the client leg with a certificate from the cluster's CA (default true). */
  clientTls?: boolean;
  logLines?: string[];
  /** Use this cluster instead of starting one. */
  reuseCluster?: Cluster;
  /** Runs after the database setup, before mamori starts (schema, roles). */
  beforeStart?: (cluster: Cluster) => Promise<void>;
}

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const cluster = opts.reuseCluster ?? (await startCluster(opts.cluster));
  await setupDatabase(cluster);
  await opts.beforeStart?.(cluster);
  const clientTls = opts.clientTls ?? true;
  let tlsCfg: MamoriConfigInput['tls'];
  if (clientTls) {
    const cert = cluster.ca.issueServer(`mamori-${Math.random().toString(36).slice(2, 8)}`);
    tlsCfg = { cert: cert.certPath, key: cert.keyPath };
  }
  const { upstream: upstreamOverride, ...rest } = opts.config ?? {};
  const config = defaultConfig({
    listen: { host: '127.0.0.1', port: 0 },
    ...(tlsCfg ? { tls: tlsCfg } : {}),
    // tests opt in to the audit trail and the metrics listener (defaults: ./audit in the cwd, port 9930)
    audit: { statements: 'none' },
    metrics: { enabled: false },
    ...rest,
    upstream: {
      host: cluster.host, port: cluster.port,
      tls: { mode: 'verify-full', ca: cluster.caCertPath, servername: 'localhost' },
      ...upstreamOverride,
    },
  } as MamoriConfigInput);
  const lines = opts.logLines ?? [];
  const log = pino({ level: 'debug' }, { write: (s: string) => { lines.push(s); } });
  const mamori = await startMamori({ config, secrets: { controlPassword: CONTROL_PASSWORD, auditSinkPasswords: [] }, log, ...(opts.hooks ? { hooks: opts.hooks } : {}) });
  return {
    cluster, mamori, config,
    client(user, password, extra = {}) {
      return { host: '127.0.0.1', port: mamori.port, user, password, database: 'postgres', ...extra };
    },
    async stop() {
      await mamori.shutdown(0);
      await cluster.stop();
    },
  };
}

export function writeFileIn(dir: string, name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}
