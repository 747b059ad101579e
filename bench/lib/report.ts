// Renders a passthrough results file as Markdown tables (for docs/benchmarks.md and issue notes).
// Usage: node --import tsx bench/lib/report.ts bench/results/passthrough-<time>.json
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { fmt } from './stats.js';

export interface ReportRow {
  tls: boolean;
  script: string;
  clients: number;
  target: string;
  rounds: number;
  tps: number | null;
  avgLatencyMs: number | null;
  p99LatencyMs: number | null;
  /** Median TPS of this target over the median TPS of the other target. */
  tpsVsDirect: number | null;
  tpsVsPgbouncer: number | null;
  tpsVsRelay: number | null;
  /** Median over rounds of (this target's average latency − direct's in the same round), in µs. */
  addedLatencyUs: number | null;
  /** Median CPU µs the proxy process spent per transaction. */
  proxyCpuUsPerTx: number | null;
}

export interface ReportFile {
  started: string;
  options: { rounds: number; seconds: number; scale: number; jobs: number };
  machine: { cpus: number; cpuModel?: string; loadavgStart: number[]; loadavgEnd: number[] };
  node: string;
  targets: Record<string, string>;
  unavailable: Record<string, string>;
  headline: string[];
  summary: ReportRow[];
  runs: { load1: number; error?: string }[];
}

export function markdown(r: ReportFile): string {
  const out: string[] = [];
  const loads = r.runs.map((x) => x.load1).sort((a, b) => a - b);
  const errors = r.runs.filter((x) => x.error).length;
  out.push(`Run of ${r.started}: ${r.options.rounds} rounds × ${r.options.seconds} s per pgbench run, scale ` +
    `${r.options.scale}, \`-j ${r.options.jobs}\`; ${r.machine.cpus} × ${r.machine.cpuModel ?? 'CPU'}; node ${r.node}. ` +
    `1-minute load average during the runs: median ${fmt(loads[loads.length >> 1] ?? null, 1)}, ` +
    `max ${fmt(loads[loads.length - 1] ?? null, 1)}${errors ? `; ${errors} run(s) failed` : ''}.`);
  out.push('');
  for (const [name, info] of Object.entries(r.targets)) out.push(`- ${name}: ${info}`);
  for (const [name, why] of Object.entries(r.unavailable)) out.push(`- ${name}: not available (${why})`);
  const groups = new Map<string, ReportRow[]>();
  for (const row of r.summary) {
    const k = `${row.script}, TLS ${row.tls ? 'on' : 'off'}`;
    groups.set(k, [...(groups.get(k) ?? []), row]);
  }
  for (const [title, rows] of groups) {
    out.push('', `**${title}** (medians over rounds)`, '');
    out.push('| -c | target | TPS | avg ms | p99 ms | +µs vs direct | ×direct | ×PgBouncer | ×relay | proxy CPU µs/tx |');
    out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const x of rows) {
      const proxy = x.target !== 'direct';
      out.push(`| ${x.clients} | ${x.target} | ${fmt(x.tps)} | ${fmt(x.avgLatencyMs, 3)} | ${fmt(x.p99LatencyMs, 3)} | ` +
        `${proxy ? fmt(x.addedLatencyUs, 0) : ''} | ${fmt(x.tpsVsDirect, 2)} | ${fmt(x.tpsVsPgbouncer, 2)} | ` +
        `${fmt(x.tpsVsRelay, 2)} | ${proxy ? fmt(x.proxyCpuUsPerTx, 1) : ''} |`);
    }
  }
  if (r.headline.length) out.push('', ...r.headline.map((h) => `- ${h}`));
  return out.join('\n') + '\n';
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: report.ts <passthrough results json>');
    process.exit(2);
  }
  process.stdout.write(markdown(JSON.parse(readFileSync(file, 'utf8')) as ReportFile));
}
