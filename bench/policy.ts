// Column-policy benchmark (npm run bench:policy): pgbench -c 8 through one mamori (a child process, as an
// operator runs it) against two tables of the same shape, one whose my_number is protected (deterministic,
// mamori.mynumber cells) and one with a plain text my_number:
//   pk      point lookup by primary key returning the (decrypted) My Number
//   number  point lookup BY My Number (equality search on the deterministic column) returning it
//   insert  single-row INSERT (id, name, my_number) … ON CONFLICT (id) DO NOTHING
// each with -M prepared (extended protocol, named statements) and -M simple, alternating encrypted/plain
// runs over several rounds. Reports medians, encrypted/plain TPS ratios against the issue's targets, and
// mamori's CPU µs per statement (/proc/<pid>/stat utime+stime before/after ÷ statements).
// The bulk workloads (issue 6; bench/lib/bulk.ts), on tables bulk_enc / bulk_plain of the same shape:
//   copy      COPY (id, name, my_number) FROM STDIN, text format, --copy-rows rows (default 1 M) per run
//   bulkread  SELECT id, my_number of --read-rows rows (default 100 k), three times per run
// client in this process (the COPY input built before the timed section), mamori in its own. Reported: cells
// (protected values) per wall-clock second, that over the cell cipher's single-core rate measured in this run
// (encryptCell / decryptCell loops; target ≥ 0.5), protected/plain, and mamori's CPU µs per row (with the
// cipher rate it implies: a load-independent figure), and the CPU µs per row of the server backend and of the
// client beside it (where the wall time goes). `npm run bench:copy` runs only these two.
// BENCH_MAMORI_ROOT=<tree> runs that tree's bin/mamori.js as the child (before/after comparisons).
// Writes bench/results/policy-<timestamp>.json. Not a test: it asserts nothing.
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
import { cipherRate, copyInput, timedCopy, timedSelect, type CipherRate } from './lib/bulk.js';

type PgbenchWorkload = 'pk' | 'number' | 'insert';
type BulkWorkload = 'copy' | 'bulkread';
type Workload = PgbenchWorkload | BulkWorkload;
type Mode = 'prepared' | 'simple';
type Table = 'enc' | 'plain';

const PGBENCH_WORKLOADS: PgbenchWorkload[] = ['pk', 'number', 'insert'];
const BULK_WORKLOADS: BulkWorkload[] = ['copy', 'bulkread'];
const WORKLOADS: Workload[] = [...PGBENCH_WORKLOADS, ...BULK_WORKLOADS];
const isBulk = (w: Workload): w is BulkWorkload => (BULK_WORKLOADS as string[]).includes(w);
/** The issue's bulk target: protected cells per wall-clock second ≥ this × the cipher's single-core rate. */
const BULK_TARGET = 0.5;
const READ_REPEAT = 3;
const MODES: Mode[] = ['prepared', 'simple'];
/** The issue's targets: encrypted TPS / plaintext TPS. */
const TARGETS: Record<PgbenchWorkload, Record<Mode, number | null>> = {
  pk: { prepared: 0.75, simple: 0.5 },
  number: { prepared: 0.7, simple: null },
  insert: { prepared: 0.7, simple: 0.7 },
};

interface Options extends RunOptions {
  rows: number; copyRows: number; readRows: number; workloads: Workload[]; modes: Mode[]; tables: Table[];
}

function options(argv: string[]): Options {
  const defaults = {
    rounds: 3, seconds: 6, clients: 8, jobs: 2, rows: 10_000, out: null, workloads: WORKLOADS, modes: MODES, tables: ['enc', 'plain'] as Table[],
    copyRows: Number(process.env.BENCH_COPY_ROWS ?? 1_000_000), readRows: Number(process.env.BENCH_SELECT_ROWS ?? 100_000),
  };
  const o = parseRunOptions(argv, defaults,
    'usage: npm run bench:policy -- [--quick] [--rounds N] [--seconds N] [--clients N] [--jobs N] [--rows N] [--copy-rows N] [--read-rows N] [--workloads pk,number,insert,copy,bulkread] [--modes prepared,simple] [--tables enc,plain] [--out FILE]',
    (flag, value, o) => {
      const positive = (): number => {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer`);
        return n;
      };
      if (flag === '--rows') o.rows = positive();
      else if (flag === '--copy-rows') o.copyRows = positive();
      else if (flag === '--read-rows') o.readRows = positive();
      else if (flag === '--modes') o.modes = nameList(value(), MODES);
      else if (flag === '--tables') o.tables = nameList<Table>(value(), ['enc', 'plain']);
      else if (flag === '--workloads') o.workloads = nameList(value(), WORKLOADS);
      else return false;
      return true;
    });
  // The SELECT reads rows the COPY (or the fill before it) stored.
  return { ...o, readRows: Math.min(o.readRows, o.copyRows) };
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

function script(w: PgbenchWorkload, mode: Mode, table: Table, rows: number): string {
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
    root: process.env.BENCH_MAMORI_ROOT ?? REPO_ROOT, cwd: dir, configPath: join(dir, 'mamori.yaml'), cluster, keyring, controlPassword, user: BENCH_USER, password: BENCH_PASSWORD,
    column: [`read: { plaintext: [${BENCH_USER}] }`, `search: [${BENCH_USER}]`, `write: [${BENCH_USER}]`, 'others: deny'],
    tables: ['public.enc', 'public.bulk_enc'],
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
  await cluster.query('CREATE TABLE public.bulk_enc (id int PRIMARY KEY, name text NOT NULL, my_number mamori.mynumber UNIQUE)');
  await cluster.query('CREATE TABLE public.bulk_plain (id int PRIMARY KEY, name text NOT NULL, my_number text UNIQUE)');
  await cluster.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.enc, public.plain, public.bulk_enc, public.bulk_plain TO ${BENCH_USER}`);
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
    for (let start = 1; start <= (o.workloads.some((w) => !isBulk(w)) ? o.rows : 0); start += 500) {
      const values: string[] = [];
      for (let id = start; id < Math.min(start + 500, o.rows + 1); id++) values.push(`(${id}, 'name ${id}', '${numberOf(id)}')`);
      for (const t of ['enc', 'plain']) await c.query(`INSERT INTO ${t} (id, name, my_number) VALUES ${values.join(', ')}`);
    }
    if (o.workloads.some((w) => !isBulk(w))) {
      const check = await c.query('SELECT id, my_number FROM enc WHERE my_number = $1', [numberOf(o.rows)]);
      if (check.rows[0]?.id !== o.rows) throw new Error('lookup by My Number through mamori did not find its row');
    }
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

async function runOnce(s: Stack, o: Options, round: number, w: PgbenchWorkload, mode: Mode, table: Table): Promise<RunRecord> {
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

// ---- bulk runs ---------------------------------------------------------------------------------------------

interface BulkRecord {
  round: number; workload: BulkWorkload; table: Table; rows: number; seconds: number;
  /** Protected values (or, on the plain table, rows) per wall-clock second. */
  cellsPerSecond: number; mamoriCpuUsPerRow: number | null;
  /** The same CPU figure for the server backend of the bench connection and for the client (this process). */
  serverCpuUsPerRow: number | null; clientCpuUsPerRow: number;
  /** The cipher's single-core rate (encrypt for copy, decrypt for bulkread) measured at the start of the round. */
  cipherRate: number; load1: number;
}

/** The bulk tables: empty, holding the COPY's rows, or holding them vacuumed and read once. */
interface Bulk { client: pg.Client; backendPid: number; chunks: Buffer[]; state: 'empty' | 'copied' | 'ready' }

async function bulkClient(s: Stack): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: s.port, user: BENCH_USER, password: BENCH_PASSWORD, database: 'postgres' });
  await c.connect();
  return c;
}

/** One workload on one table: the statement timed, mamori's CPU read from /proc around it. */
async function bulkOnce(s: Stack, o: Options, b: Bulk, round: number, w: BulkWorkload, table: Table, cipher: CipherRate): Promise<BulkRecord> {
  const name = `bulk_${table}`;
  if (w === 'copy') await s.pg.query(`TRUNCATE public.${name}`);
  const rows = w === 'copy' ? o.copyRows : o.readRows * READ_REPEAT;
  const perRow = (a: number | null, z: number | null): number | null => (a !== null && z !== null ? ((z - a) * 1e6) / rows : null);
  const before = cpuSeconds(s.pid);
  const server0 = cpuSeconds(b.backendPid);
  const client0 = process.cpuUsage();
  const seconds = w === 'copy' ? await timedCopy(b.client, name, b.chunks, o.copyRows) : await timedSelect(b.client, name, o.readRows, READ_REPEAT);
  const client = process.cpuUsage(client0);
  const server1 = cpuSeconds(b.backendPid);
  const after = cpuSeconds(s.pid);
  return {
    round, workload: w, table, rows, seconds, cellsPerSecond: rows / seconds,
    mamoriCpuUsPerRow: perRow(before, after), serverCpuUsPerRow: perRow(server0, server1), clientCpuUsPerRow: (client.user + client.system) / rows,
    cipherRate: w === 'copy' ? cipher.encrypt : cipher.decrypt, load1: loadavg()[0]!,
  };
}

/** Both tables hold the COPY's rows (after a copy run, or filled now), vacuumed and analyzed. */
async function ensureFilled(s: Stack, o: Options, b: Bulk): Promise<void> {
  if (b.state === 'ready') return;
  for (const t of o.tables) {
    if (b.state === 'empty') await timedCopy(b.client, `bulk_${t}`, b.chunks, o.copyRows);
    await s.pg.query(`VACUUM ANALYZE public.bulk_${t}`);
    await timedSelect(b.client, `bulk_${t}`, o.readRows, 1); // warm: the first read of fresh pages sets hint bits
  }
  b.state = 'ready';
}

async function bulkRound(s: Stack, o: Options, b: Bulk, round: number, w: BulkWorkload, out: BulkRecord[]): Promise<void> {
  const cipher = cipherRate();
  const order: Table[] = round % 2 === 1 ? ['enc', 'plain'] : ['plain', 'enc'];
  if (w === 'bulkread') await ensureFilled(s, o, b);
  for (const table of order.filter((x) => o.tables.includes(x))) {
    const r = await bulkOnce(s, o, b, round, w, table, cipher);
    out.push(r);
    console.log(`  round ${round} ${w.padEnd(8)} ${table.padEnd(5)} ${fmt(r.cellsPerSecond).padStart(7)} ${table === 'enc' ? 'cells' : 'rows'}/s  ${r.seconds.toFixed(2)} s` +
      `  CPU µs/row mamori ${fmt(r.mamoriCpuUsPerRow, 2)} server ${fmt(r.serverCpuUsPerRow, 2)} client ${fmt(r.clientCpuUsPerRow, 2)}  cipher ${fmt(r.cipherRate)}/s  load ${r.load1.toFixed(1)}`);
  }
  if (w === 'copy') b.state = 'copied'; // truncated and refilled: vacuumed before the next read
}

interface BulkSummary {
  workload: BulkWorkload; rows: number; encCellsPerSecond: number | null; plainRowsPerSecond: number | null; cipherRate: number | null;
  xCipher: number | null; target: number; protectedOverPlain: number | null;
  encCpuUsPerRow: number | null; plainCpuUsPerRow: number | null; xCipherByCpu: number | null;
  encServerCpuUsPerRow: number | null; plainServerCpuUsPerRow: number | null; encClientCpuUsPerRow: number | null;
}

function bulkSummary(records: readonly BulkRecord[], w: BulkWorkload): BulkSummary {
  const of = (t: Table): BulkRecord[] => records.filter((r) => r.workload === w && r.table === t);
  const med = (t: Table, f: (r: BulkRecord) => number | null): number | null => median(of(t).map((r) => f(r) ?? NaN));
  // Per round (adjacent runs): × cipher against that round's cipher rate, protected over plain.
  const xCipher = med('enc', (r) => r.cellsPerSecond / r.cipherRate);
  const protectedOverPlain = median(of('enc').map((e) => {
    const p = of('plain').find((x) => x.round === e.round);
    return p ? e.cellsPerSecond / p.cellsPerSecond : NaN;
  }));
  const encCpu = med('enc', (r) => r.mamoriCpuUsPerRow);
  const cipher = med('enc', (r) => r.cipherRate);
  return {
    workload: w, rows: of('enc')[0]?.rows ?? of('plain')[0]?.rows ?? 0,
    encCellsPerSecond: med('enc', (r) => r.cellsPerSecond), plainRowsPerSecond: med('plain', (r) => r.cellsPerSecond), cipherRate: cipher,
    xCipher, target: BULK_TARGET, protectedOverPlain, encCpuUsPerRow: encCpu, plainCpuUsPerRow: med('plain', (r) => r.mamoriCpuUsPerRow),
    // The rate mamori's CPU per row would give on a core of its own, over the cipher's.
    xCipherByCpu: encCpu && cipher ? 1e6 / encCpu / cipher : null,
    encServerCpuUsPerRow: med('enc', (r) => r.serverCpuUsPerRow), plainServerCpuUsPerRow: med('plain', (r) => r.serverCpuUsPerRow),
    encClientCpuUsPerRow: med('enc', (r) => r.clientCpuUsPerRow),
  };
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
  const bulkWanted = o.workloads.some(isBulk);
  if (bulkWanted) console.log(`bulk: COPY of ${o.copyRows} rows, SELECT of ${o.readRows} rows × ${READ_REPEAT}; COPY input built before the runs`);
  const chunks = bulkWanted ? copyInput(o.copyRows) : [];
  const s = await startStack(o);
  const records: RunRecord[] = [];
  const bulkRecords: BulkRecord[] = [];
  let bulk: Bulk | null = null;
  try {
    if (bulkWanted) {
      const client = await bulkClient(s);
      const pid = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      bulk = { client, backendPid: pid.rows[0]!.pid, chunks, state: 'empty' };
    }
    for (let round = 1; round <= o.rounds; round++) {
      for (const w of o.workloads) {
        if (isBulk(w)) {
          await bulkRound(s, o, bulk!, round, w, bulkRecords);
          continue;
        }
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
    await bulk?.client.end().catch(() => undefined);
    await s.stop();
  }
  const summary = [];
  const pgbenchRun = PGBENCH_WORKLOADS.filter((w) => o.workloads.includes(w));
  if (pgbenchRun.length) console.log('\nworkload mode       enc tps  plain tps  ratio  target  enc µs/stmt  plain µs/stmt');
  for (const w of pgbenchRun) {
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
  const bulkSummaries = BULK_WORKLOADS.filter((w) => o.workloads.includes(w)).map((w) => bulkSummary(bulkRecords, w));
  if (bulkSummaries.length) {
    console.log('\nbulk      rows/run  enc cells/s  plain rows/s  × cipher  target     prot/plain  enc µs/row  plain µs/row  cipher/s  × cipher by CPU  server µs/row enc/plain  client µs/row');
    for (const b of bulkSummaries) {
      const met = b.xCipher === null ? '' : b.xCipher >= b.target ? ' met' : ' MISSED';
      console.log(`${b.workload.padEnd(9)} ${String(b.rows).padStart(8)} ${fmt(b.encCellsPerSecond).padStart(12)} ${fmt(b.plainRowsPerSecond).padStart(13)}  ${fmt(b.xCipher, 2).padStart(8)}  ≥${b.target.toFixed(2)}${met.padEnd(7)} ${fmt(b.protectedOverPlain, 2).padStart(10)} ` +
        `${fmt(b.encCpuUsPerRow, 2).padStart(11)} ${fmt(b.plainCpuUsPerRow, 2).padStart(13)} ${fmt(b.cipherRate).padStart(9)} ${fmt(b.xCipherByCpu, 2).padStart(16)}` +
        `  ${`${fmt(b.encServerCpuUsPerRow, 2)} / ${fmt(b.plainServerCpuUsPerRow, 2)}`.padStart(22)} ${fmt(b.encClientCpuUsPerRow, 2).padStart(14)}`);
    }
  }
  const outFile = o.out ?? join(REPO_ROOT, 'bench/results', `policy-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(join(outFile, '..'), { recursive: true });
  writeFileSync(outFile, JSON.stringify({
    when: new Date().toISOString(), node: process.version, cores: cpus().length, options: o,
    notes: 'one mamori child process (audit statements: none, metrics off, TLS off on both legs); pgbench custom scripts; ratio = median of per-round encrypted/plain TPS; ' +
      'bulk: client in the bench process, COPY input pre-built, cells/s per wall-clock second, xCipher = median per-round cells/s over the cipher single-core rate, xCipherByCpu = (1e6 / mamori CPU µs per row) over it',
    summary, records, bulkSummary: bulkSummaries, bulkRecords,
  }, null, 2) + '\n');
  console.log(`\nwrote ${outFile}`);
}

await main();
