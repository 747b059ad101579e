// A mamori child process for the pgbench-driven benchmarks (bench:policy, bench:origin), started as an operator
// starts it (`bin/mamori.js start --config …`), TLS off on both legs, one deterministic My Number column on
// public.enc (and on the tables `tables` names). BENCH_MAMORI_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof"
// profiles it (written on exit).
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, type Cluster } from '../../test/harness/cluster.js';
import { run } from './pgbench.js';

export interface BenchKeyring { keyFile: string; store: { type: 'file'; path: string } }

export interface ChildProxy {
  port: number;
  child: ChildProcess;
  /** libpq environment for the bench user through this proxy. */
  env: NodeJS.ProcessEnv;
}

export interface ChildProxyOptions {
  root: string; // the tree whose bin/mamori.js runs
  cwd: string;
  configPath: string;
  cluster: Cluster;
  keyring: BenchKeyring;
  controlPassword: string;
  user: string;
  password: string;
  /** Lines of the public.enc.my_number column policy after its type and mode (read, search, write, others). */
  column: string[];
  /** Tables whose my_number column gets that policy (default: public.enc). */
  tables?: string[];
  /** More top-level config lines. */
  extra?: string[];
  nodeArgs?: string[];
}

/** The node arguments BENCH_MAMORI_NODE_ARGS asks for. */
export function profilingArgs(): string[] {
  return (process.env.BENCH_MAMORI_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

/** Picks a port and writes the config file (setup-db reads it before the child starts). Returns the port. */
export async function writeChildConfig(o: ChildProxyOptions): Promise<number> {
  const port = await freePort();
  writeFileSync(o.configPath, [
    `listen: { host: 127.0.0.1, port: ${port} }`,
    `upstream: { host: ${o.cluster.host}, port: ${o.cluster.port}, tls: { mode: disable } }`,
    'control: { user: mamori, passwordEnv: MAMORI_BENCH_CONTROL_PASSWORD }',
    'limits: { maxConnections: 500 }',
    'log: { level: warn }',
    `keyring: { keyFile: ${o.keyring.keyFile}, store: { type: file, path: ${o.keyring.store.path} } }`,
    'approval: { members: none }',
    'audit: { statements: none }',
    'metrics: { enabled: false }',
    ...(o.extra ?? []),
    'columns:',
    ...(o.tables ?? ['public.enc']).flatMap((t) => [
      `  ${t}.my_number:`,
      '    type: mynumber',
      '    mode: deterministic',
      ...o.column.map((l) => `    ${l}`),
    ]),
    '',
  ].join('\n'));
  return port;
}

/**
 * Starts the child on the config written for `port` (written now when not given) and waits until it answers
 * `select 1` (30 s; stopped and thrown otherwise).
 */
export async function startChildProxy(o: ChildProxyOptions, written?: number): Promise<ChildProxy> {
  const port = written ?? (await writeChildConfig(o));
  const child = spawn(process.execPath, [...(o.nodeArgs ?? []), join(o.root, 'bin/mamori.js'), 'start', '--config', o.configPath],
    { cwd: o.cwd, env: { ...process.env, MAMORI_BENCH_CONTROL_PASSWORD: o.controlPassword }, stdio: ['ignore', 'pipe', 'pipe'] });
  let tail = '';
  child.stdout!.on('data', (d: Buffer) => (tail = (tail + d.toString()).slice(-3000)));
  child.stderr!.on('data', (d: Buffer) => (tail = (tail + d.toString()).slice(-3000)));
  const env = { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: o.user, PGPASSWORD: o.password, PGDATABASE: 'postgres', PGSSLMODE: 'disable' };
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await run(join(o.cluster.bindir, 'psql'), ['-Atc', 'select 1'], env, 10_000);
    if (r.code === 0 && r.stdout.trim() === '1') break;
    if (child.exitCode !== null || Date.now() > deadline) {
      await stopChildProxy({ port, child, env });
      throw new Error(`mamori (${o.root}) did not come up: ${r.stderr.trim()} ${tail}`);
    }
    await new Promise((res) => setTimeout(res, 250));
  }
  return { port, child, env };
}

/** SIGTERM, then SIGKILL after 15 s. */
export async function stopChildProxy(p: ChildProxy): Promise<void> {
  if (p.child.exitCode !== null) return;
  const done = new Promise((r) => p.child.once('exit', r));
  p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), 15_000);
  await done;
  clearTimeout(t);
}
