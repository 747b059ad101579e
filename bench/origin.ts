// Cost of watching result fields of unknown origin for cell headers (npm run bench:origin). Two mamori child
// processes share one cluster and one config with a protected column: "before" runs the code of a baseline
// tree (BENCH_BASELINE_ROOT, e.g. a `git archive` of the commit before the change, with node_modules
// linked), "after" this tree. pgbench -c 8 runs queries that never name a protected object, alternating
// before/after each round:
//   bytea1    one row, one 32-byte bytea (no cell): a cell-capable field, so every value is looked at
//   bytea100  100 rows of that bytea per statement (the per-row cost)
//   int1      one row, one int (no cell-capable field: rows are not looked at)
// in -M prepared and -M simple. Reports median TPS after/before and mamori's CPU µs per statement.
// Writes bench/results/origin-<timestamp>.json. Not a test: it asserts nothing.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, type Cluster } from '../test/harness/cluster.js';
import { Keyring, keyringConfigFrom } from '../keyring/index.js';
import { defaultConfig } from '../config/load.js';
import { run, parseSummary } from './lib/pgbench.js';
import { nameList, parseRunOptions, type RunOptions } from './lib/options.js';
import { profilingArgs, startChildProxy, stopChildProxy, type BenchKeyring, type ChildProxy } from './lib/child-proxy.js';
import { cpuSeconds } from './lib/procstat.js';
import { fmt, median, ratio } from './lib/stats.js';
import { REPO_ROOT } from './lib/targets.js';

type Workload = 'bytea1' | 'bytea100' | 'int1';
type Mode = 'prepared' | 'simple';
type Side = 'before' | 'after';
const WORKLOADS: Workload[] = ['bytea1', 'bytea100', 'int1'];
const MODES: Mode[] = ['prepared', 'simple'];
const ROWS = 10_000;

interface Options extends RunOptions { workloads: Workload[] }

function options(argv: string[]): Options {
  return parseRunOptions(argv, { rounds: 3, seconds: 5, clients: 8, jobs: 2, out: null, workloads: WORKLOADS },
    'usage: BENCH_BASELINE_ROOT=DIR npm run bench:origin -- [--quick] [--rounds N] [--seconds N] [--clients N] [--jobs N] [--workloads bytea1,bytea100,int1] [--out FILE]',
    (flag, value, o) => {
      if (flag !== '--workloads') return false;
      o.workloads = nameList(value(), WORKLOADS);
      return true;
    });
}

function script(w: Workload): string {
  switch (w) {
    case 'bytea1':
      return `\\set id random(1, ${ROWS})\nSELECT data FROM blobs WHERE id = :id;\n`;
    case 'bytea100':
      return `\\set id random(1, ${ROWS - 100})\nSELECT data FROM blobs WHERE id BETWEEN :id AND :id + 99;\n`;
    case 'int1':
      return `\\set id random(1, ${ROWS})\nSELECT id FROM blobs WHERE id = :id;\n`;
  }
}

const BENCH_USER = 'bench';
const BENCH_PASSWORD = 'bench-pw';

interface Proxy extends ChildProxy { side: Side }

async function startProxy(side: Side, root: string, cluster: Cluster, dir: string, controlPassword: string, keyring: BenchKeyring): Promise<Proxy> {
  const p = await startChildProxy({
    root, cwd: root, configPath: join(dir, `mamori-${side}.yaml`), cluster, keyring, controlPassword, user: BENCH_USER, password: BENCH_PASSWORD,
    column: [`read: { plaintext: [${BENCH_USER}] }`, 'others: deny'],
    // the "after" child is the one profiled
    nodeArgs: side === 'after' ? profilingArgs() : [],
  });
  return { ...p, side };
}

interface RunRecord { round: number; workload: Workload; mode: Mode; side: Side; tps: number | null; cpuUsPerStatement: number | null; load1: number; error?: string }

async function main(): Promise<void> {
  const o = options(process.argv.slice(2));
  const baseline = process.env.BENCH_BASELINE_ROOT;
  if (!baseline || !existsSync(join(baseline, 'bin/mamori.js'))) throw new Error('set BENCH_BASELINE_ROOT to a tree of the code before the change (with node_modules)');
  console.log(`bench:origin — ${o.rounds} round(s) × ${o.seconds} s, -c ${o.clients} -j ${o.jobs}; before = ${baseline}; ${cpus().length} cores, load ${loadavg()[0]!.toFixed(1)}`);
  const cluster = await startCluster({ tls: false, settings: { max_connections: 100, shared_buffers: '128MB', fsync: 'off', synchronous_commit: 'off' } });
  const dir = mkdtempSync(join(tmpdir(), 'mamori-bench-origin-'));
  const proxies: Proxy[] = [];
  const records: RunRecord[] = [];
  try {
    const controlPassword = `ctl-${Math.random().toString(36).slice(2)}`;
    await cluster.createRole('mamori', controlPassword);
    await cluster.createRole(BENCH_USER, BENCH_PASSWORD);
    const keyring = { keyFile: join(dir, 'root.key'), store: { type: 'file' as const, path: join(dir, 'keystore.json') } };
    await (await Keyring.init(keyringConfigFrom(defaultConfig({ keyring }).keyring), { databaseIdentity: 'bench-db' })).close();
    writeFileSync(join(dir, 'setup.yaml'), [
      'control: { user: mamori, passwordEnv: MAMORI_BENCH_CONTROL_PASSWORD }',
      `upstream: { host: ${cluster.host}, port: ${cluster.port}, tls: { mode: disable } }`,
      `keyring: { keyFile: ${keyring.keyFile}, store: { type: file, path: ${keyring.store.path} } }`,
      'columns: {}',
      '',
    ].join('\n'));
    const setup = await run(process.execPath, [join(REPO_ROOT, 'bin/mamori.js'), 'setup-db', '--config', join(dir, 'setup.yaml'), '-d', 'postgres'],
      { ...cluster.env(), ...process.env, MAMORI_BENCH_CONTROL_PASSWORD: controlPassword }, 60_000);
    if (setup.code !== 0) throw new Error(`setup-db failed: ${(setup.stderr || setup.stdout).trim().split('\n').slice(-3).join(' | ')}`);
    await cluster.query('CREATE TABLE public.enc (id int PRIMARY KEY, my_number mamori.mynumber)');
    await cluster.query(`CREATE TABLE public.blobs (id int PRIMARY KEY, data bytea NOT NULL)`);
    await cluster.query(`INSERT INTO public.blobs SELECT i, sha256(i::text::bytea) FROM generate_series(1, ${ROWS}) i`);
    await cluster.query(`GRANT SELECT ON public.enc, public.blobs TO ${BENCH_USER}`);
    await cluster.query('VACUUM ANALYZE public.blobs');
    proxies.push(await startProxy('before', baseline, cluster, dir, controlPassword, keyring));
    proxies.push(await startProxy('after', REPO_ROOT, cluster, dir, controlPassword, keyring));
    for (let round = 1; round <= o.rounds; round++) {
      for (const w of o.workloads) {
        for (const mode of MODES) {
          const order = round % 2 === 1 ? proxies : [...proxies].reverse();
          for (const p of order) {
            const file = join(dir, `${w}.sql`);
            writeFileSync(file, script(w));
            const before = cpuSeconds(p.child.pid!);
            const out = await run(join(cluster.bindir, 'pgbench'),
              ['-n', '-f', file, '-M', mode, '-c', String(o.clients), '-j', String(Math.min(o.jobs, o.clients)), '-T', String(o.seconds)],
              p.env, (o.seconds + 120) * 1000);
            const after = cpuSeconds(p.child.pid!);
            const base = { round, workload: w, mode, side: p.side, load1: loadavg()[0]! };
            let r: RunRecord;
            if (out.code !== 0) r = { ...base, tps: null, cpuUsPerStatement: null, error: (out.stderr + out.stdout).trim().split('\n').slice(-3).join(' | ') };
            else {
              const sum = parseSummary(out.stdout);
              r = { ...base, tps: sum.tps, cpuUsPerStatement: before !== null && after !== null && sum.transactions > 0 ? ((after - before) * 1e6) / sum.transactions : null };
            }
            records.push(r);
            console.log(`  round ${round} ${w.padEnd(8)} ${mode.padEnd(8)} ${p.side.padEnd(6)} tps ${fmt(r.tps).padStart(6)}  mamori CPU µs/stmt ${fmt(r.cpuUsPerStatement).padStart(5)}${r.error ? `  ERROR ${r.error}` : ''}`);
          }
        }
      }
    }
  } finally {
    for (const p of proxies) await stopChildProxy(p);
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const summary = [];
  console.log('\nworkload mode      before tps  after tps  after/before  before µs/stmt  after µs/stmt');
  for (const w of WORKLOADS) {
    for (const mode of MODES) {
      const of = (side: Side): RunRecord[] => records.filter((r) => r.workload === w && r.mode === mode && r.side === side && r.tps !== null);
      const med = (side: Side, k: 'tps' | 'cpuUsPerStatement'): number | null => median(of(side).map((r) => r[k] ?? NaN));
      const perRound = median(of('after').map((a) => {
        const b = of('before').find((x) => x.round === a.round);
        return b && a.tps !== null && b.tps ? a.tps / b.tps : NaN;
      }));
      const row = { workload: w, mode, beforeTps: med('before', 'tps'), afterTps: med('after', 'tps'), ratio: ratio(med('after', 'tps'), med('before', 'tps')), ratioPerRound: perRound,
        beforeCpuUs: med('before', 'cpuUsPerStatement'), afterCpuUs: med('after', 'cpuUsPerStatement') };
      summary.push(row);
      console.log(`${w.padEnd(8)} ${mode.padEnd(8)} ${fmt(row.beforeTps).padStart(11)} ${fmt(row.afterTps).padStart(10)}  ${fmt(row.ratioPerRound, 2).padStart(12)}  ${fmt(row.beforeCpuUs).padStart(14)} ${fmt(row.afterCpuUs).padStart(14)}`);
    }
  }
  const outFile = o.out ?? join(REPO_ROOT, 'bench/results', `origin-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(join(outFile, '..'), { recursive: true });
  writeFileSync(outFile, JSON.stringify({ when: new Date().toISOString(), node: process.version, cores: cpus().length, options: o, baseline,
    notes: 'two mamori child processes (before: baseline tree, after: this tree) on one cluster, one config with a protected column; queries never name it; ratio = median of per-round after/before TPS',
    summary, records }, null, 2) + '\n');
  console.log(`\nwrote ${outFile}`);
}

await main();
