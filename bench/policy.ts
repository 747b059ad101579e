// Column-policy benchmark (npm run bench:policy): pgbench -c 8 through one mamori (a child process, as an
// operator runs it) against two tables of the same shape, one whose my_number is protected (deterministic,
// mamori.mynumber cells) and one with a plain text my_number:
//   pk      point lookup by primary key returning the (decrypted) My Number
//   number  point lookup BY My Number (equality search on the deterministic column) returning it
//   insert  single-row INSERT (id, name, my_number) … ON CONFLICT (id) DO NOTHING
// each with -M prepared (extended protocol, named statements) and -M simple, alternating encrypted/plain
// runs over several rounds. Reports medians, encrypted/plain TPS ratios against the issue's targets, and
// mamori's CPU µs per statement (/proc/<pid>/stat utime+stime before/after ÷ statements). Writes
// bench/results/policy-<timestamp>.json. Not a test: it asserts nothing.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startCluster, type Cluster } from '../test/harness/cluster.js';
import { Keyring, keyringConfigFrom } from '../keyring/index.js';
import { defaultConfig } from '../config/load.js';
import { myNumberCheckDigit } from '../keyring/mynumber.js';
import { run, parseSummary } from './lib/pgbench.js';
import { nameList, parseRunOptions, type RunOptions } from './lib/options.js';
import { profilingArgs, startChildProxy, stopChildProxy, writeChildConfig, type ChildProxy } from './lib/child-proxy.js';
import { cpuSeconds } from './lib/procstat.js';
import { fmt, median, ratio } from './lib/stats.js';
import { REPO_ROOT } from './lib/targets.js';

type Workload = 'pk' | 'number' | 'insert';
type Mode = 'prepared' | 'simple';
type Table = 'enc' | 'plain';

const WORKLOADS: Workload[] = ['pk', 'number', 'insert'];
const MODES: Mode[] = ['prepared', 'simple'];
/** The issue's targets: encrypted TPS / plaintext TPS. */
const TARGETS: Record<Workload, Record<Mode, number | null>> = {
  pk: { prepared: 0.75, simple: 0.5 },
  number: { prepared: 0.7, simple: null },
  insert: { prepared: 0.7, simple: 0.7 },
};

interface Options extends RunOptions { rows: number; workloads: Workload[]; modes: Mode[]; tables: Table[] }

function options(argv: string[]): Options {
  return parseRunOptions(argv, { rounds: 3, seconds: 6, clients: 8, jobs: 2, rows: 10_000, out: null, workloads: WORKLOADS, modes: MODES, tables: ['enc', 'plain'] },
    'usage: npm run bench:policy -- [--quick] [--rounds N] [--seconds N] [--clients N] [--jobs N] [--rows N] [--workloads pk,number,insert] [--modes prepared,simple] [--tables enc,plain] [--out FILE]',
    (flag, value, o) => {
      if (flag === '--rows') {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) throw new Error('--rows needs a positive integer');
        o.rows = n;
      } else if (flag === '--modes') o.modes = nameList(value(), MODES);
      else if (flag === '--tables') o.tables = nameList<Table>(value(), ['enc', 'plain']);
      else if (flag === '--workloads') o.workloads = nameList(value(), WORKLOADS);
      else return false;
      return true;
    });
}

// ---- My Numbers computable inside pgbench -------------------------------------------------------------
// The 11-digit base of row `id` is OFFSET + id × STEP; its check digit is computed by pgbench expressions
// (weights 2..7, 2..6 from the right; MYNUMBER.md), checked here against keyring/mynumber.ts.
const LOOKUP = { offset: 10_000_000_000, step: 7919 };
const INSERT = { offset: 20_000_000_000, step: 37, min: 1_000_000, max: 2_000_000_000 };

function pgbenchCheckDigitLines(base: string): string[] {
  const weights = [2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6];
  const terms = weights.map((w, i) => `${w} * ((:${base} / ${10 ** i}) % 10)`);
  return [
    `\\set s ${terms.join(' + ')}`,
    '\\set r :s % 11',
    '\\set cd case when :r <= 1 then 0 else 11 - :r end',
    `\\set num :${base} * 10 + :cd`,
  ];
}

function checkDigitLikePgbench(base: number): number {
  const weights = [2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6];
  let s = 0;
  weights.forEach((w, i) => (s += w * (Math.floor(base / 10 ** i) % 10)));
  const r = s % 11;
  return r <= 1 ? 0 : 11 - r;
}

const numberOf = (id: number): string => {
  const base = String(LOOKUP.offset + id * LOOKUP.step);
  return base + String(myNumberCheckDigit(base));
};

function script(w: Workload, mode: Mode, table: Table, rows: number): string {
  const val = mode === 'simple' ? "':num'" : ':num'; // simple: pgbench substitutes inside the quotes
  switch (w) {
    case 'pk':
      return [`\\set id random(1, ${rows})`, `SELECT my_number FROM ${table} WHERE id = :id;`].join('\n') + '\n';
    case 'number':
      return [`\\set id random(1, ${rows})`, `\\set b ${LOOKUP.offset} + :id * ${LOOKUP.step}`, ...pgbenchCheckDigitLines('b'),
        `SELECT id, my_number FROM ${table} WHERE my_number = ${val};`].join('\n') + '\n';
    case 'insert':
      return [`\\set id random(${INSERT.min}, ${INSERT.max})`, `\\set b ${INSERT.offset} + :id * ${INSERT.step}`, ...pgbenchCheckDigitLines('b'),
        `INSERT INTO ${table} (id, name, my_number) VALUES (:id, 'bench', ${val}) ON CONFLICT (id) DO NOTHING;`].join('\n') + '\n';
  }
}

// ---- the stack ---------------------------------------------------------------------------------------------

interface Stack { pg: Cluster; port: number; pid: number; dir: string; env: NodeJS.ProcessEnv; stop(): Promise<void> }

const BENCH_USER = 'bench';
const BENCH_PASSWORD = 'bench-pw';

async function startStack(o: Options): Promise<Stack> {
  const cluster = await startCluster({ tls: false, settings: { max_connections: 100, shared_buffers: '128MB', fsync: 'off', synchronous_commit: 'off' } });
  const dir = mkdtempSync(join(tmpdir(), 'mamori-bench-policy-'));
  const controlPassword = `ctl-${Math.random().toString(36).slice(2)}`;
  await cluster.createRole('mamori', controlPassword);
  await cluster.createRole(BENCH_USER, BENCH_PASSWORD);
  const keyring = { keyFile: join(dir, 'root.key'), store: { type: 'file' as const, path: join(dir, 'keystore.json') } };
  await (await Keyring.init(keyringConfigFrom(defaultConfig({ keyring }).keyring), { databaseIdentity: 'bench-db' })).close();
  const proxyOptions = {
    root: REPO_ROOT, cwd: dir, configPath: join(dir, 'mamori.yaml'), cluster, keyring, controlPassword, user: BENCH_USER, password: BENCH_PASSWORD,
    column: [`read: { plaintext: [${BENCH_USER}] }`, `search: [${BENCH_USER}]`, `write: [${BENCH_USER}]`, 'others: deny'],
    // The bench searches far faster than the default per-session rate allows (that is the point of it).
    extra: ['search: { ratePerSecond: 10000000, burst: 10000000 }'],
    nodeArgs: profilingArgs(),
  };
  const port = await writeChildConfig(proxyOptions);
  const setupEnv = { ...cluster.env(), MAMORI_BENCH_CONTROL_PASSWORD: controlPassword };
  const setup = await run(process.execPath, [join(REPO_ROOT, 'bin/mamori.js'), 'setup-db', '--config', proxyOptions.configPath, '-d', 'postgres'], setupEnv, 60_000);
  if (setup.code !== 0) throw new Error(`setup-db failed: ${(setup.stderr || setup.stdout).trim().split('\n').slice(-3).join(' | ')}`);
  await cluster.query('CREATE TABLE public.enc (id int PRIMARY KEY, name text NOT NULL, my_number mamori.mynumber UNIQUE)');
  await cluster.query('CREATE TABLE public.plain (id int PRIMARY KEY, name text NOT NULL, my_number text UNIQUE)');
  await cluster.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.enc, public.plain TO ${BENCH_USER}`);
  const cleanup = async (): Promise<void> => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  let proxy: ChildProxy;
  try {
    proxy = await startChildProxy(proxyOptions, port);
  } catch (err) {
    await cleanup();
    throw err;
  }
  const stop = async (): Promise<void> => {
    await stopChildProxy(proxy);
    await cleanup();
  };
  const { child, env: clientEnv } = proxy;
  // Rows: the encrypted table through mamori (multi-row literal INSERTs, encrypted on the way), the plain one too.
  const c = new pg.Client({ host: '127.0.0.1', port, user: BENCH_USER, password: BENCH_PASSWORD, database: 'postgres' });
  await c.connect();
  try {
    for (let start = 1; start <= o.rows; start += 500) {
      const values: string[] = [];
      for (let id = start; id < Math.min(start + 500, o.rows + 1); id++) values.push(`(${id}, 'name ${id}', '${numberOf(id)}')`);
      for (const t of ['enc', 'plain']) await c.query(`INSERT INTO ${t} (id, name, my_number) VALUES ${values.join(', ')}`);
    }
    const check = await c.query('SELECT id, my_number FROM enc WHERE my_number = $1', [numberOf(o.rows)]);
    if (check.rows[0]?.id !== o.rows) throw new Error('lookup by My Number through mamori did not find its row');
  } finally {
    await c.end();
  }
  await cluster.query('VACUUM ANALYZE public.enc');
  await cluster.query('VACUUM ANALYZE public.plain');
  return { pg: cluster, port, pid: child.pid!, dir, env: clientEnv, stop };
}

// ---- runs --------------------------------------------------------------------------------------------------

interface RunRecord {
  round: number; workload: Workload; mode: Mode; table: Table;
  tps: number | null; avgLatencyMs: number | null; statements: number; failed: number;
  mamoriCpuUsPerStatement: number | null; load1: number; error?: string;
}

async function runOnce(s: Stack, o: Options, round: number, w: Workload, mode: Mode, table: Table): Promise<RunRecord> {
  const file = join(s.dir, `${w}-${mode}-${table}.sql`);
  writeFileSync(file, script(w, mode, table, o.rows));
  const before = cpuSeconds(s.pid);
  const out = await run(join(s.pg.bindir, 'pgbench'),
    ['-n', '-f', file, '-M', mode, '-c', String(o.clients), '-j', String(Math.min(o.jobs, o.clients)), '-T', String(o.seconds)],
    s.env, (o.seconds + 120) * 1000);
  const after = cpuSeconds(s.pid);
  const base = { round, workload: w, mode, table, load1: loadavg()[0]! };
  if (out.code !== 0) {
    return { ...base, tps: null, avgLatencyMs: null, statements: 0, failed: 0, mamoriCpuUsPerStatement: null,
      error: `exit ${out.code}: ${(out.stderr + out.stdout).trim().split('\n').slice(-4).join(' | ')}` };
  }
  const sum = parseSummary(out.stdout);
  const cpu = before !== null && after !== null && sum.transactions > 0 ? ((after - before) * 1e6) / sum.transactions : null;
  return { ...base, tps: sum.tps, avgLatencyMs: sum.avgLatencyMs, statements: sum.transactions, failed: sum.failed, mamoriCpuUsPerStatement: cpu };
}

async function main(): Promise<void> {
  const o = options(process.argv.slice(2));
  for (let id = 1; id <= 20_000; id++) {
    for (const [off, step] of [[LOOKUP.offset, LOOKUP.step], [INSERT.offset, INSERT.step]] as const) {
      const b = off + id * step;
      if (checkDigitLikePgbench(b) !== myNumberCheckDigit(String(b))) throw new Error(`pgbench check digit formula disagrees for ${b}`);
    }
  }
  console.log(`bench:policy — ${o.rounds} round(s) × ${o.seconds} s, -c ${o.clients} -j ${o.jobs}, ${o.rows} rows; ${cpus().length} cores, load ${loadavg()[0]!.toFixed(1)}`);
  const s = await startStack(o);
  const records: RunRecord[] = [];
  try {
    for (let round = 1; round <= o.rounds; round++) {
      for (const w of o.workloads) {
        for (const mode of o.modes) {
          const order: Table[] = round % 2 === 1 ? ['enc', 'plain'] : ['plain', 'enc'];
          for (const table of order.filter((x) => o.tables.includes(x))) {
            const r = await runOnce(s, o, round, w, mode, table);
            records.push(r);
            console.log(`  round ${round} ${w.padEnd(6)} ${mode.padEnd(8)} ${table.padEnd(5)} tps ${fmt(r.tps).padStart(6)}  mamori CPU µs/stmt ${fmt(r.mamoriCpuUsPerStatement).padStart(4)}  load ${r.load1.toFixed(1)}${r.error ? `  ERROR ${r.error}` : ''}`);
          }
        }
      }
    }
  } finally {
    await s.stop();
  }
  const summary = [];
  console.log('\nworkload mode       enc tps  plain tps  ratio  target  enc µs/stmt  plain µs/stmt');
  for (const w of WORKLOADS) {
    for (const mode of MODES) {
      const of = (t: Table): RunRecord[] => records.filter((r) => r.workload === w && r.mode === mode && r.table === t && r.tps !== null);
      const med = (t: Table, k: 'tps' | 'mamoriCpuUsPerStatement'): number | null => median(of(t).map((r) => r[k] ?? NaN));
      // Ratio of medians, and the median of per-round ratios (adjacent runs: load drift cancels better).
      const perRound = median(of('enc').map((e) => {
        const p = of('plain').find((x) => x.round === e.round);
        return p && e.tps !== null && p.tps ? e.tps / p.tps : NaN;
      }));
      const row = {
        workload: w, mode, encTps: med('enc', 'tps'), plainTps: med('plain', 'tps'),
        ratio: ratio(med('enc', 'tps'), med('plain', 'tps')), ratioPerRound: perRound, target: TARGETS[w][mode],
        encCpuUsPerStatement: med('enc', 'mamoriCpuUsPerStatement'), plainCpuUsPerStatement: med('plain', 'mamoriCpuUsPerStatement'),
      };
      summary.push(row);
      const met = row.target === null || row.ratioPerRound === null ? '' : row.ratioPerRound >= row.target ? ' met' : ' MISSED';
      console.log(`${w.padEnd(8)} ${mode.padEnd(8)} ${fmt(row.encTps).padStart(9)} ${fmt(row.plainTps).padStart(10)}  ${fmt(row.ratioPerRound, 2).padStart(5)}  ${row.target === null ? '   —  ' : `≥${row.target.toFixed(2)}`}${met.padEnd(7)} ${fmt(row.encCpuUsPerStatement).padStart(11)} ${fmt(row.plainCpuUsPerStatement).padStart(14)}`);
    }
  }
  const outFile = o.out ?? join(REPO_ROOT, 'bench/results', `policy-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(join(outFile, '..'), { recursive: true });
  writeFileSync(outFile, JSON.stringify({
    when: new Date().toISOString(), node: process.version, cores: cpus().length, options: o,
    notes: 'one mamori child process (audit statements: none, metrics off, TLS off on both legs); pgbench custom scripts; ratio = median of per-round encrypted/plain TPS',
    summary, records,
  }, null, 2) + '\n');
  console.log(`\nwrote ${outFile}`);
}

await main();
