// Micro-benchmark of AuditTrail.append on the local disk: appends/s for each fsync policy, one appender awaiting
// each record (a single session's intent records) and many appenders at once (group commit), median of 5 rounds.
// Usage: node --import tsx bench/audit-append.ts [--seconds 1] [--rounds 5] [--concurrency 64] [--dir /path]
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AuditTrail } from '../proxy/audit/trail.js';
import type { AuditEvent } from '../proxy/audit/record.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '64' },
    dir: { type: 'string' },
  },
});
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);

const event = (i: number): AuditEvent => ({
  kind: 'statement_intent',
  statement: `s${i}`,
  mode: 'protected',
  session: 'bench-session',
  user: 'clerk',
  client: '127.0.0.1:50000',
  applicationName: 'bench',
  database: 'app',
  fingerprint: 'select name, my_number from people where id = $1',
  command: 'SELECT',
  columns: [{ column: 'public.people.my_number', decision: 'plaintext' }],
  subjects: ['q2Vb1o3Yl8m0hQx4nKp7Zw'],
  subjectKeyId: 'subject-2026',
});

async function round(fsync: 'none' | 'interval' | 'always', workers: number): Promise<{ perSecond: number; perCpuSecond: number; p99us: number }> {
  const dir = await mkdtemp(join(values.dir ?? tmpdir(), 'mamori-audit-bench-'));
  try {
    const trail = await AuditTrail.open({ fsync, heartbeatSeconds: 0, checkpointEverySeconds: 0, checkpointSink: 'none', sinks: [{ type: 'file', path: join(dir, 'a.jsonl'), rotateBytes: 0, rotateSeconds: 0 }] });
    const latencies: number[] = [];
    let n = 0;
    const end = performance.now() + seconds * 1000;
    const worker = async (): Promise<void> => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await trail.append(event(n++));
        latencies.push(performance.now() - t0);
      }
    };
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    await Promise.all(Array.from({ length: workers }, worker));
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    await trail.close();
    latencies.sort((a, b) => a - b);
    return {
      perSecond: latencies.length / elapsed,
      // appends per CPU-second of this process (user + system): steadier than wall-clock rates on a shared machine
      perCpuSecond: latencies.length / ((cpu.user + cpu.system) / 1e6),
      p99us: (latencies[Math.floor(latencies.length * 0.99)] ?? 0) * 1000,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const rows: string[] = [];
for (const workers of [1, concurrency]) {
  for (const fsync of ['none', 'interval', 'always'] as const) {
    const results = [];
    for (let r = 0; r < rounds; r++) results.push(await round(fsync, workers));
    const perSecond = median(results.map((x) => x.perSecond));
    const perCpu = median(results.map((x) => x.perCpuSecond));
    const p99 = median(results.map((x) => x.p99us));
    rows.push(
      `| ${fsync.padEnd(8)} | ${String(workers).padStart(9)} | ${Math.round(perSecond).toString().padStart(9)} | ${Math.round(perCpu).toString().padStart(15)} | ${p99.toFixed(0).padStart(14)} |`,
    );
  }
}
console.log(`audit append, median of ${rounds} rounds of ${seconds}s, dir ${values.dir ?? tmpdir()}`);
console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${cpus().length} CPUs`);
console.log('| fsync    | appenders | appends/s | appends/CPU-s   | p99 latency µs |');
console.log('|----------|-----------|-----------|-----------------|----------------|');
for (const r of rows) console.log(r);
