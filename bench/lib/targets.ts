// The things pgbench is pointed at: PostgreSQL directly, the framing-only relay, PgBouncer (session mode) and
// mamori. Each starts once per bench run, serves both TLS off and on (the client's PGSSLMODE chooses), and
// talks plaintext to PostgreSQL, so every proxy does the same job: terminate the client's TLS, relay upstream.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, serverRunAs, type Cluster } from '../../test/harness/cluster.js';
import type { CertPair } from '../../test/harness/certs.js';
import { run } from './pgbench.js';

export const TARGET_NAMES = ['direct', 'relay', 'pgbouncer', 'mamori', 'pipe'] as const;
/** What runs without --targets; 'pipe' (the relay without framing) is opt-in. */
export const DEFAULT_TARGETS: readonly TargetName[] = ['direct', 'relay', 'pgbouncer', 'mamori'];
export type TargetName = (typeof TARGET_NAMES)[number];

export interface Target {
  name: TargetName;
  port: number;
  /** Version or build notes for the results file. */
  info: string;
  /** The proxy's process, for its CPU time per transaction; null for PostgreSQL itself. */
  pid: number | null;
  stop(): Promise<void>;
}

export interface BenchContext {
  pg: Cluster;
  database: string;
  user: string;
  password: string;
  /** Server certificate the proxies present on their TLS client leg. */
  cert: CertPair;
  repoRoot: string;
}

/** libpq environment for pgbench/psql against a port. */
export function clientEnv(ctx: BenchContext, port: number, tls: boolean): NodeJS.ProcessEnv {
  return {
    ...process.env,
    PGHOST: ctx.pg.host,
    PGPORT: String(port),
    PGUSER: ctx.user,
    PGPASSWORD: ctx.password,
    PGDATABASE: ctx.database,
    PGSSLMODE: tls ? 'require' : 'disable',
    PGCONNECT_TIMEOUT: '10',
  };
}

/** A long-running child with the tail of its output kept for error messages. */
class Daemon {
  private tail = '';
  exited: number | null | undefined = undefined;

  constructor(readonly child: ChildProcess) {
    const keep = (d: Buffer): void => {
      this.tail = (this.tail + d.toString()).slice(-2000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.once('exit', (code, signal) => {
      this.exited = code ?? (signal ? -1 : null);
    });
  }

  output(): string {
    return this.tail.trim().split('\n').slice(-5).join(' | ');
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.exited !== undefined) return;
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await done;
    clearTimeout(t);
  }
}

/** Waits until `select 1` works through the port as the bench user (proves the whole login path). */
async function waitReady(ctx: BenchContext, port: number, daemon: Daemon, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (daemon.exited !== undefined) throw new Error(`${what} exited (${daemon.exited}): ${daemon.output()}`);
    for (const tls of [false, true]) {
      const r = await run(join(ctx.pg.bindir, 'psql'), ['-Atc', 'select 1'], clientEnv(ctx, port, tls), 15_000);
      last = r.stderr.trim();
      if (r.code !== 0 || r.stdout.trim() !== '1') break;
      if (tls) return;
    }
    if (Date.now() > deadline) throw new Error(`${what} not answering: ${last || daemon.output()}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function startDirect(ctx: BenchContext): Promise<Target> {
  const v = await ctx.pg.query<{ v: string }>('select version() as v');
  return { name: 'direct', port: ctx.pg.port, info: v.rows[0]!.v.split(' on ')[0]!, pid: null,
    stop: async () => undefined };
}

async function startRelayProcess(ctx: BenchContext, name: 'relay' | 'pipe'): Promise<Target> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(ctx.repoRoot, 'bench/relay.ts'), ...(name === 'pipe' ? ['--pipe'] : []),
      String(port), ctx.pg.host, String(ctx.pg.port), ctx.cert.certPath, ctx.cert.keyPath],
    { cwd: ctx.repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const d = new Daemon(child);
  try {
    await waitReady(ctx, port, d, name);
  } catch (err) {
    await d.stop();
    throw err;
  }
  const what = name === 'pipe' ? 'bench/relay.ts --pipe (no framing)' : 'bench/relay.ts';
  return { name, port, info: `${what} on node ${process.version}`, pid: child.pid ?? null, stop: () => d.stop() };
}

export const startRelayTarget = (ctx: BenchContext): Promise<Target> => startRelayProcess(ctx, 'relay');
export const startPipeTarget = (ctx: BenchContext): Promise<Target> => startRelayProcess(ctx, 'pipe');

/** Installs Debian's pgbouncer when missing (bench only; CI does not need it). */
function ensurePgbouncer(): string {
  const found = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((p) => existsSync(p));
  if (found) return found;
  if (process.getuid?.() !== 0) throw new Error('pgbouncer is not installed (apt-get install pgbouncer)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = (): void => {
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'pgbouncer'], { env, stdio: 'ignore' });
  };
  try {
    install();
  } catch {
    execFileSync('apt-get', ['update', '-qq'], { env, stdio: 'ignore' });
    install();
  }
  return ensurePgbouncer();
}

export async function startPgbouncer(ctx: BenchContext): Promise<Target> {
  const bin = ensurePgbouncer();
  const version = execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
  const who = serverRunAs(); // root: run it as the same unprivileged user as the server
  const dir = mkdtempSync(join(tmpdir(), 'mamori-bench-pgbouncer-'));
  chmodSync(dir, 0o755);
  // Session mode with its own userlist: the user's SCRAM verifier copied from pg_authid, so PgBouncer
  // authenticates the client itself and logs in upstream with the recovered ClientKey, like mamori does.
  const secret = await ctx.pg.query<{ p: string }>('select rolpassword as p from pg_authid where rolname = $1', [ctx.user]);
  writeFileSync(join(dir, 'userlist.txt'), `"${ctx.user}" "${secret.rows[0]!.p}"\n`, { mode: 0o600 });
  copyFileSync(ctx.cert.certPath, join(dir, 'server.crt'));
  copyFileSync(ctx.cert.keyPath, join(dir, 'server.key'));
  chmodSync(join(dir, 'server.key'), 0o600);
  const port = await freePort();
  writeFileSync(join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `${ctx.database} = host=${ctx.pg.host} port=${ctx.pg.port} dbname=${ctx.database}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = scram-sha-256',
    `auth_file = ${join(dir, 'userlist.txt')}`,
    'pool_mode = session',
    'max_client_conn = 500',
    'default_pool_size = 200',
    'client_tls_sslmode = allow',
    `client_tls_cert_file = ${join(dir, 'server.crt')}`,
    `client_tls_key_file = ${join(dir, 'server.key')}`,
    'server_tls_sslmode = disable',
    'log_connections = 0',
    'log_disconnections = 0',
    'log_pooler_errors = 1',
    '',
  ].join('\n'));
  if (who) {
    for (const f of ['', 'userlist.txt', 'server.crt', 'server.key', 'pgbouncer.ini']) chownSync(join(dir, f), who.uid, who.gid);
  }
  const child = spawn(bin, [join(dir, 'pgbouncer.ini')], {
    ...(who ? { uid: who.uid, gid: who.gid } : {}),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const d = new Daemon(child);
  const stop = async (): Promise<void> => {
    await d.stop('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitReady(ctx, port, d, 'pgbouncer');
  } catch (err) {
    await stop();
    throw err;
  }
  return { name: 'pgbouncer', port, info: `${version}, session mode`, pid: child.pid ?? null, stop };
}

export async function startMamoriTarget(ctx: BenchContext): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-bench-mamori-'));
  const controlPassword = `ctl-${Math.random().toString(36).slice(2)}`;
  const exists = await ctx.pg.query("select 1 from pg_roles where rolname = 'mamori'");
  if (!exists.rowCount) await ctx.pg.createRole('mamori', controlPassword);
  else await ctx.pg.query(`alter role mamori password '${controlPassword}'`);
  const port = await freePort();
  const configPath = join(dir, 'mamori.yaml');
  writeFileSync(configPath, [
    `listen: { host: 127.0.0.1, port: ${port} }`,
    `tls: { cert: ${ctx.cert.certPath}, key: ${ctx.cert.keyPath}, require: false }`,
    `upstream: { host: ${ctx.pg.host}, port: ${ctx.pg.port}, tls: { mode: disable } }`,
    'control: { user: mamori, passwordEnv: MAMORI_BENCH_CONTROL_PASSWORD }',
    'limits: { maxConnections: 500 }',
    'log: { level: warn }',
    '',
  ].join('\n'));
  const cli = join(ctx.repoRoot, 'bin/mamori.js');
  const env = { ...process.env, MAMORI_BENCH_CONTROL_PASSWORD: controlPassword };
  const cleanup = (): void => rmSync(dir, { recursive: true, force: true });
  const setup = await run(process.execPath, [cli, 'setup-db', '--config', configPath, '-d', 'postgres'],
    { ...ctx.pg.env(), MAMORI_BENCH_CONTROL_PASSWORD: controlPassword }, 60_000);
  if (setup.code !== 0) {
    cleanup();
    throw new Error(`setup-db failed: ${(setup.stderr || setup.stdout).trim().split('\n').slice(-3).join(' | ')}`);
  }
  const child = spawn(process.execPath, [cli, 'start', '--config', configPath], {
    cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const d = new Daemon(child);
  const stop = async (): Promise<void> => {
    await d.stop('SIGTERM');
    cleanup();
  };
  try {
    await waitReady(ctx, port, d, 'mamori');
  } catch (err) {
    await stop();
    throw err;
  }
  const rev = (() => {
    try {
      return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ctx.repoRoot, encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  })();
  return { name: 'mamori', port, info: `bin/mamori.js at ${rev} on node ${process.version}`, pid: child.pid ?? null, stop };
}

export const STARTERS: Record<TargetName, (ctx: BenchContext) => Promise<Target>> = {
  direct: startDirect,
  relay: startRelayTarget,
  pgbouncer: startPgbouncer,
  mamori: startMamoriTarget,
  pipe: startPipeTarget,
};

export const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
