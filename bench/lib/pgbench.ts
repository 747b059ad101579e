// Runs pgbench and reads its results: TPS and average latency from its summary, p99 from the per-transaction
// log (--log writes one line per transaction with its latency in µs, so the percentile is exact).
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { percentileSorted } from './stats.js';

export type Script = 'select-only' | 'tpcb';

export interface PgbenchRun {
  bindir: string;
  env: NodeJS.ProcessEnv;
  script: Script;
  clients: number;
  jobs: number;
  seconds: number;
  /** Fraction of transactions logged for the percentile (1 = all, exact). */
  samplingRate?: number;
}

export interface PgbenchResult {
  tps: number;
  avgLatencyMs: number;
  p99LatencyMs: number | null;
  transactions: number;
  failed: number;
  logged: number;
}

interface Output {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command asynchronously (the bench process may host nothing else, but never blocks its loop). */
export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Output> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Parses pgbench's summary (PostgreSQL 15+ wording). */
export function parseSummary(text: string): { tps: number; avgLatencyMs: number; transactions: number; failed: number } {
  const num = (re: RegExp): number => {
    const m = re.exec(text);
    if (!m) throw new Error(`pgbench output lacks ${re.source}`);
    return Number(m[1]);
  };
  return {
    tps: num(/^tps = ([\d.]+)/m),
    avgLatencyMs: num(/^latency average = ([\d.]+) ms/m),
    transactions: num(/^number of transactions actually processed: (\d+)/m),
    failed: /^number of failed transactions: (\d+)/m.test(text) ? num(/^number of failed transactions: (\d+)/m) : 0,
  };
}

/** Reads every per-transaction log file in dir; returns the latencies in µs, sorted. */
export function readLatencies(dir: string): Float64Array {
  const chunks: Float64Array[] = [];
  let total = 0;
  for (const name of readdirSync(dir)) {
    const text = readFileSync(join(dir, name), 'latin1');
    const lines = text.split('\n');
    const vals = new Float64Array(lines.length);
    let n = 0;
    for (const line of lines) {
      // client_id transaction_no time script_no time_epoch time_us
      const a = line.indexOf(' ');
      const b = line.indexOf(' ', a + 1);
      const c = line.indexOf(' ', b + 1);
      if (a < 0 || b < 0 || c < 0) continue;
      const field = line.slice(b + 1, c);
      if (field === 'failed' || field === 'skipped') continue;
      vals[n++] = Number(field);
    }
    chunks.push(vals.subarray(0, n));
    total += n;
  }
  const all = new Float64Array(total);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return all.sort();
}

export async function runPgbench(r: PgbenchRun): Promise<PgbenchResult> {
  const logDir = mkdtempSync(join(tmpdir(), 'mamori-pgbench-log-'));
  try {
    const args = [
      ...(r.script === 'select-only' ? ['-S'] : []),
      '-c', String(r.clients), '-j', String(Math.min(r.jobs, r.clients)), '-T', String(r.seconds),
      '--log', `--log-prefix=${join(logDir, 'tx')}`,
      ...(r.samplingRate !== undefined && r.samplingRate < 1 ? [`--sampling-rate=${r.samplingRate}`] : []),
    ];
    const out = await run(join(r.bindir, 'pgbench'), args, r.env, (r.seconds + 120) * 1000);
    if (out.code !== 0) {
      throw new Error(`pgbench exited ${out.code}: ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    }
    const summary = parseSummary(out.stdout);
    const lat = readLatencies(logDir);
    const p99 = percentileSorted(lat, 99);
    return { ...summary, p99LatencyMs: p99 === null ? null : p99 / 1000, logged: lat.length };
  } finally {
    rmSync(logDir, { recursive: true, force: true });
  }
}
