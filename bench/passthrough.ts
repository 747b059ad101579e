// Passthrough benchmark (npm run bench:passthrough): pgbench select-only and TPC-B-like at several client
// counts against PostgreSQL directly, the framing-only relay (the Node floor), PgBouncer (session mode) and
// mamori, in one run, with TLS off and on, alternating targets over several rounds. Prints medians and ratios
// and writes every run to bench/results/passthrough-<timestamp>.json. Not a test: it asserts nothing.
// See bench/README.md for the flags and how to read the output.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { startCluster, type Cluster } from '../test/harness/cluster.js';
import { run, runPgbench, type Script } from './lib/pgbench.js';
import { cpuSeconds } from './lib/procstat.js';
import { fmt, median, ratio } from './lib/stats.js';
import type { ReportRow } from './lib/report.js';
import {
  DEFAULT_TARGETS, REPO_ROOT, STARTERS, TARGET_NAMES, clientEnv, type BenchContext, type Target, type TargetName,
} from './lib/targets.js';

interface Options {
  rounds: number;
  seconds: number;
  clients: number[];
  scripts: Script[];
  tls: boolean[];
  targets: TargetName[];
  scale: number;
  jobs: number;
  samplingRate: number;
  out: string | null;
}

const USAGE = `usage: npm run bench:passthrough -- [--quick] [--rounds N] [--seconds N] [--clients 1,8,32]
  [--scripts select-only,tpcb] [--tls off,on] [--targets direct,relay,pgbouncer,mamori[,pipe]] [--scale N] [--jobs N]
  [--sampling-rate F] [--out FILE]
Each flag also reads BENCH_<NAME> from the environment (BENCH_ROUNDS=5, BENCH_SECONDS=10, ...).`;

function list<T extends string>(v: string, allowed: readonly T[], what: string): T[] {
  const items = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const i of items) if (!(allowed as readonly string[]).includes(i)) throw new Error(`unknown ${what} "${i}"`);
  return items as T[];
}

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv): Options {
  const raw = new Map<string, string>();
  for (const [k, v] of Object.entries(env)) {
    if (k.startsWith('BENCH_') && v !== undefined) raw.set(k.slice(6).toLowerCase().replace(/_/g, '-'), v);
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') raw.set('quick', '1');
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) raw.set(a.slice(2, eq), a.slice(eq + 1));
      else if (i + 1 < argv.length) raw.set(a.slice(2), argv[++i]!);
      else throw new Error(`${a} needs a value\n${USAGE}`);
    } else throw new Error(`unexpected argument ${a}\n${USAGE}`);
  }
  const quick = raw.get('quick') === '1' || raw.get('quick') === 'true';
  const int = (name: string, def: number): number => {
    const v = raw.get(name);
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got "${v}"`);
    return n;
  };
  const samplingRate = Number(raw.get('sampling-rate') ?? '1');
  if (!(samplingRate > 0 && samplingRate <= 1)) throw new Error('--sampling-rate must be in (0, 1]');
  return {
    rounds: int('rounds', quick ? 1 : 5),
    seconds: int('seconds', quick ? 3 : 10),
    clients: (raw.get('clients') ?? '1,8,32').split(',').map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 1) throw new Error(`bad client count "${s}"`);
      return n;
    }),
    scripts: list(raw.get('scripts') ?? 'select-only,tpcb', ['select-only', 'tpcb'] as const, 'script'),
    tls: list(raw.get('tls') ?? 'off,on', ['off', 'on'] as const, 'tls setting').map((t) => t === 'on'),
    targets: list(raw.get('targets') ?? DEFAULT_TARGETS.join(','), TARGET_NAMES, 'target'),
    scale: int('scale', 10),
    jobs: int('jobs', 2),
    samplingRate,
    out: raw.get('out') ?? null,
  };
}

interface RunRecord {
  round: number;
  tls: boolean;
  script: Script;
  clients: number;
  target: TargetName;
  tps: number | null;
  avgLatencyMs: number | null;
  p99LatencyMs: number | null;
  transactions: number;
  failed: number;
  /** The proxy process's CPU time (user + system) per transaction, in µs; null for direct. */
  proxyCpuUsPerTx: number | null;
  /** 1-minute load average when the run ended: other work on the machine shows up here. */
  load1: number;
  error?: string;
}

/** A results row as bench/lib/report.ts renders it, with this bench's script and target names. */
type SummaryRow = ReportRow & { script: Script; target: TargetName };

function summarize(records: RunRecord[], o: Options, targets: TargetName[]): SummaryRow[] {
  const rows: SummaryRow[] = [];
  for (const tls of o.tls) {
    for (const script of o.scripts) {
      for (const clients of o.clients) {
        const of = (t: TargetName): RunRecord[] =>
          records.filter((r) => r.tls === tls && r.script === script && r.clients === clients && r.target === t && r.tps !== null);
        const med = (t: TargetName, k: 'tps' | 'avgLatencyMs' | 'p99LatencyMs' | 'proxyCpuUsPerTx'): number | null =>
          median(of(t).map((r) => r[k] ?? NaN));
        // Added latency pairs each run with direct's run of the same round (adjacent in time), then takes the
        // median: drift in the machine's load cancels better than in a difference of medians.
        const paired = (t: TargetName): number | null =>
          median(of(t).map((r) => {
            const d = of('direct').find((x) => x.round === r.round);
            return d && r.avgLatencyMs !== null && d.avgLatencyMs !== null ? (r.avgLatencyMs - d.avgLatencyMs) * 1000 : NaN;
          }));
        for (const target of targets) {
          const tps = med(target, 'tps');
          const avg = med(target, 'avgLatencyMs');
          rows.push({
            tls, script, clients, target,
            rounds: of(target).length,
            tps, avgLatencyMs: avg, p99LatencyMs: med(target, 'p99LatencyMs'),
            tpsVsDirect: ratio(tps, med('direct', 'tps')),
            tpsVsPgbouncer: ratio(tps, med('pgbouncer', 'tps')),
            tpsVsRelay: ratio(tps, med('relay', 'tps')),
            addedLatencyUs: target === 'direct' ? 0 : paired(target),
            proxyCpuUsPerTx: med(target, 'proxyCpuUsPerTx'),
          });
        }
      }
    }
  }
  return rows;
}

function printTables(rows: SummaryRow[], o: Options): void {
  const pad = (s: string, n: number): string => s.padStart(n);
  for (const tls of o.tls) {
    for (const script of o.scripts) {
      console.log(`\n## ${script}, TLS ${tls ? 'on' : 'off'} (medians; ratios are TPS ratios)`);
      console.log(`${pad('clients', 7)} ${'target'.padEnd(9)} ${pad('TPS', 9)} ${pad('avg ms', 8)} ${pad('p99 ms', 8)} ` +
        `${pad('+µs avg', 8)} ${pad('/direct', 8)} ${pad('/pgbounc', 8)} ${pad('/relay', 7)} ${pad('cpu µs/tx', 9)}`);
      for (const r of rows.filter((x) => x.tls === tls && x.script === script)) {
        console.log(`${pad(String(r.clients), 7)} ${r.target.padEnd(9)} ${pad(fmt(r.tps), 9)} ${pad(fmt(r.avgLatencyMs, 3), 8)} ` +
          `${pad(fmt(r.p99LatencyMs, 3), 8)} ${pad(r.target === 'direct' ? '' : fmt(r.addedLatencyUs, 1), 8)} ` +
          `${pad(fmt(r.tpsVsDirect, 2), 8)} ${pad(fmt(r.tpsVsPgbouncer, 2), 8)} ${pad(fmt(r.tpsVsRelay, 2), 7)} ` +
          `${pad(r.target === 'direct' ? '' : fmt(r.proxyCpuUsPerTx, 1), 9)}`);
      }
    }
  }
}

/** The issue's two targets, stated against this run's numbers. */
function printHeadline(rows: SummaryRow[]): string[] {
  const find = (t: TargetName, c: number): SummaryRow | undefined =>
    rows.find((r) => !r.tls && r.script === 'select-only' && r.clients === c && r.target === t);
  const lines: string[] = [];
  const m8 = find('mamori', 8);
  if (m8?.tpsVsPgbouncer != null) {
    lines.push(`select-only -c 8, no TLS: mamori/PgBouncer = ${m8.tpsVsPgbouncer.toFixed(3)} (target ≥ 0.90, stretch 0.95)`);
  }
  for (const t of ['pipe', 'relay', 'pgbouncer', 'mamori'] as const) {
    const r = find(t, 1);
    if (r?.addedLatencyUs != null) {
      lines.push(`select-only -c 1, no TLS: ${t} adds ${r.addedLatencyUs.toFixed(1)} µs over direct` +
        (t === 'mamori' ? ' (target ≤ 25 µs)' : ''));
    }
  }
  const cpu = (['pipe', 'relay', 'pgbouncer', 'mamori'] as const)
    .map((t) => [t, find(t, 8)?.proxyCpuUsPerTx ?? null] as const)
    .filter(([, v]) => v !== null)
    .map(([t, v]) => `${t} ${v!.toFixed(1)}`);
  if (cpu.length) lines.push(`select-only -c 8, no TLS: proxy CPU per transaction (µs): ${cpu.join(', ')}`);
  if (lines.length) console.log('\n' + lines.join('\n'));
  return lines;
}

async function prepare(pg: Cluster, scale: number): Promise<{ user: string; password: string; database: string }> {
  const user = 'bench';
  const password = `bench-${Math.random().toString(36).slice(2)}`;
  const database = 'bench';
  await pg.createRole(user, password);
  await pg.query(`create database ${database} owner ${user}`);
  const t0 = Date.now();
  const init = await run(join(pg.bindir, 'pgbench'), ['-i', '-q', '-s', String(scale)],
    { ...pg.env({ user, password, database }), PGSSLMODE: 'disable' }, 600_000);
  if (init.code !== 0) throw new Error(`pgbench -i failed: ${init.stderr.trim()}`);
  console.log(`pgbench -i -s ${scale}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return { user, password, database };
}

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseOptions(process.argv.slice(2), process.env);
  } catch (err) {
    console.error((err as Error).message);
    process.exitCode = 2;
    return;
  }
  const started = new Date();
  const load0 = loadavg();
  console.log(`passthrough bench: ${o.rounds} round(s) × ${o.seconds} s, clients ${o.clients.join('/')}, ` +
    `${o.scripts.join('+')}, TLS ${o.tls.map((t) => (t ? 'on' : 'off')).join('+')}, targets ${o.targets.join(', ')}; ` +
    `${cpus().length} CPUs, load ${load0.map((l) => l.toFixed(2)).join(' ')}`);

  const pg = await startCluster({ tls: true, settings: { max_connections: 300, shared_buffers: "'256MB'" } });
  const live: Target[] = [];
  const unavailable: Record<string, string> = {};
  let stopping = false;
  const shutdown = async (): Promise<void> => {
    for (const t of live.splice(0)) await t.stop().catch(() => undefined);
    await pg.stop();
  };
  const onSignal = (): void => {
    if (stopping) return;
    stopping = true;
    console.error('\ninterrupted: stopping targets and PostgreSQL');
    void shutdown().then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const creds = await prepare(pg, o.scale);
    const ctx: BenchContext = { pg, ...creds, cert: pg.ca.issueServer('bench-proxy'), repoRoot: REPO_ROOT };
    for (const name of o.targets) {
      try {
        const t = await STARTERS[name](ctx);
        live.push(t);
        console.log(`${name}: port ${t.port} (${t.info})`);
      } catch (err) {
        unavailable[name] = (err as Error).message;
        console.log(`${name}: not available (${(err as Error).message})`);
      }
    }
    const records: RunRecord[] = [];
    const perRun = o.seconds + 2;
    const total = o.rounds * o.tls.length * o.scripts.length * o.clients.length * live.length;
    console.log(`${total} pgbench runs, about ${Math.ceil((total * perRun) / 60)} min`);
    let done = 0;
    for (let round = 1; round <= o.rounds && !stopping; round++) {
      // Rotate the target order every round so no target always runs first (or right after a TPC-B run).
      const order = live.map((_, i) => live[(i + round - 1) % live.length]!);
      for (const tls of o.tls) {
        for (const script of o.scripts) {
          for (const clients of o.clients) {
            for (const t of order) {
              if (stopping) break;
              const rec: RunRecord = { round, tls, script, clients, target: t.name, tps: null, avgLatencyMs: null,
                p99LatencyMs: null, transactions: 0, failed: 0, proxyCpuUsPerTx: null, load1: 0 };
              const cpu0 = t.pid === null ? null : cpuSeconds(t.pid);
              try {
                const r = await runPgbench({ bindir: pg.bindir, env: clientEnv(ctx, t.port, tls), script, clients,
                  jobs: o.jobs, seconds: o.seconds, samplingRate: o.samplingRate });
                Object.assign(rec, { tps: r.tps, avgLatencyMs: r.avgLatencyMs, p99LatencyMs: r.p99LatencyMs,
                  transactions: r.transactions, failed: r.failed });
                const cpu1 = t.pid === null ? null : cpuSeconds(t.pid);
                // pgbench's setup (connections, vacuum) is in this too: a little over the steady-state cost.
                if (cpu0 !== null && cpu1 !== null && r.transactions > 0) {
                  rec.proxyCpuUsPerTx = ((cpu1 - cpu0) * 1e6) / r.transactions;
                }
              } catch (err) {
                rec.error = (err as Error).message;
              }
              rec.load1 = loadavg()[0]!;
              records.push(rec);
              done++;
              console.log(`[${done}/${total}] r${round} tls=${tls ? 'on ' : 'off'} ${script.padEnd(11)} -c ${String(clients).padStart(2)} ` +
                `${t.name.padEnd(9)} ` + (rec.error ? `ERROR ${rec.error}` :
                  `${fmt(rec.tps).padStart(7)} tps  avg ${fmt(rec.avgLatencyMs, 3)} ms  p99 ${fmt(rec.p99LatencyMs, 3)} ms` +
                  (rec.proxyCpuUsPerTx === null ? '' : `  cpu ${fmt(rec.proxyCpuUsPerTx, 1)} µs/tx`)) +
                `  load ${rec.load1.toFixed(1)}`);
            }
          }
        }
      }
    }
    const rows = summarize(records, o, live.map((t) => t.name));
    printTables(rows, o);
    const headline = printHeadline(rows);
    for (const [name, why] of Object.entries(unavailable)) console.log(`${name}: not available (${why})`);

    const out = o.out ?? join(REPO_ROOT, 'bench/results', `passthrough-${started.toISOString().replace(/[:.]/g, '-')}.json`);
    mkdirSync(join(out, '..'), { recursive: true });
    writeFileSync(out, JSON.stringify({
      bench: 'passthrough',
      started: started.toISOString(),
      finished: new Date().toISOString(),
      options: o,
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memBytes: totalmem(), loadavgStart: load0, loadavgEnd: loadavg() },
      node: process.version,
      targets: Object.fromEntries(live.map((t) => [t.name, t.info])),
      unavailable,
      headline,
      summary: rows,
      runs: records,
    }, null, 2) + '\n');
    console.log(`\nresults: ${out}`);
  } finally {
    if (!stopping) {
      stopping = true;
      await shutdown();
    }
  }
}

await main();
