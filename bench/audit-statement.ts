// Micro-benchmark of the audit work one protected statement costs, without sockets or PostgreSQL: N concurrent
// sessions each loop { intent with one subject hash (awaited, as before the first row), completion with the
// subject of the plaintext returned (not awaited, as in the proxy) }. Reports mamori CPU µs per statement
// (user + system of this process / statements; steadier than wall-clock rates on a shared machine) and
// statements/s, median of the rounds. File sink, fsync none, as bench:audit.
// Usage: node --import tsx bench/audit-statement.ts [--seconds 2] [--rounds 5] [--sessions 8]
import { mkdtemp, rm } from 'node:fs/promises';
import { createSecretKey, randomBytes } from 'node:crypto';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AuditTrail } from '../proxy/audit/trail.js';
import { SessionAudit } from '../proxy/audit/session.js';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '2' }, rounds: { type: 'string', default: '5' }, sessions: { type: 'string', default: '8' } },
});
const seconds = Number(values.seconds);
const key = { id: 'mamori.subjects:v1', key: createSecretKey(randomBytes(32)) };
const columns = [{ column: 'public.employees.my_number', decision: 'plaintext' as const }];

async function round(sessions: number): Promise<{ cpuUs: number; perSecond: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'mamori-audit-stmt-'));
  try {
    const trail = await AuditTrail.open(
      { fsync: 'none', checkpointSink: 'none', sinks: [{ type: 'file', path: join(dir, 'a.jsonl'), rotateBytes: 0, rotateSeconds: 0 }] },
      { keyring: { subjectKey: () => key } },
    );
    let n = 0;
    const end = performance.now() + seconds * 1000;
    const session = async (i: number): Promise<void> => {
      const s = new SessionAudit(trail, { session: `bench-${i}`, user: 'hr_clerk', client: '127.0.0.1:50000', tlsSubject: null, applicationName: 'pgbench', database: 'postgres' });
      while (performance.now() < end) {
        const value = Buffer.from(String(100_000_000_000 + (n % 1000)), 'ascii');
        const h = await s.intent({ fingerprint: 'select my_number from employees where id = ?', command: 'SELECT', columns, mode: 'protected' });
        void h.complete({ rows: 1, sqlstate: null, ...trail.hashSubjects('mynumber', [value]) }).catch(() => undefined);
        n++;
      }
    };
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await Promise.all(Array.from({ length: sessions }, (_, i) => session(i)));
    const elapsed = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    await trail.close();
    return { cpuUs: (cpu.user + cpu.system) / n, perSecond: n / elapsed };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sessions = Number(values.sessions);
const results = [];
await round(sessions); // warm-up
for (let r = 0; r < Number(values.rounds); r++) results.push(await round(sessions));
console.log(`audit per protected statement (intent + completion + subject hash), ${sessions} sessions, median of ${results.length} rounds of ${seconds}s`);
console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
console.log(`CPU µs/statement ${median(results.map((x) => x.cpuUs)).toFixed(1)}  statements/s ${median(results.map((x) => x.perSecond)).toFixed(0)}`);
