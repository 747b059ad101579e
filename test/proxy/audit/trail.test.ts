// AuditTrail against real files: record kinds round-trip, fsync policies, size rotation, fail modes on an
// unusable directory and a full disk, concurrent appends keep one linear chain, subject side files, torn-tail
// repair, the series lock, and the stdout sink.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { appendFile, mkdir, open, readFile, readdir, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { AuditTrail, isoTime } from '../../../proxy/audit/trail.js';
import fc from 'fast-check';
import { AuditUnavailableError } from '../../../proxy/audit/errors.js';
import { AUDIT_KINDS, parseRecord, type AuditEvent, type AuditRecord } from '../../../proxy/audit/record.js';
import { verifyAuditTrail } from '../../../proxy/audit/verify.js';
import { fileConfig, intent, keyPair, tempDir, writeTrail } from './fixtures.js';

async function records(path: string): Promise<AuditRecord[]> {
  const text = await readFile(path, 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => parseRecord(l));
}

const ctx = { session: 's1', user: 'alice', client: '10.0.0.5:41000', tlsSubject: 'CN=alice', applicationName: 'psql', database: 'app' };
const EVENTS: AuditEvent[] = [
  { kind: 'connect', tls: true, protocol: '3.0', ...ctx },
  { kind: 'auth_failure', reason: 'password', sqlstate: '28P01', ...ctx, session: null },
  { kind: 'disconnect', reason: 'client', durationMs: 1234, ...ctx },
  { ...intent(1), subjects: ['aaaaaaaaaaaaaaaaaaaaaa'], subjectKeyId: 'subject-2026' },
  { kind: 'statement_complete', statement: 'st-1', rows: 3, durationMs: 1.5, sqlstate: '00000', ...ctx },
  { kind: 'refusal', reason: 'deny', sqlstate: '42501', fingerprint: 'select my_number from people', command: 'SELECT', columns: [{ column: 'public.people.my_number', decision: 'deny' }], ...ctx },
  { kind: 'search', statement: 'st-2', limitHit: false, fingerprint: 'select id from people where my_number = $1', columns: [{ column: 'public.people.my_number', decision: 'search' }], subjects: ['bbbbbbbbbbbbbbbbbbbbbb'], subjectKeyId: 'subject-2026', ...ctx },
  { kind: 'deletion', table: 'public.people', how: 'update_null', rows: 1, columns: [{ column: 'public.people.my_number', decision: 'delete' }], ...ctx },
  { kind: 'shredded_read', keyId: 'k-2019', columns: [{ column: 'public.people.my_number', decision: 'null' }], ...ctx },
  { kind: 'policy_reload', ok: true, digest: 'abc123' },
  { kind: 'membership_change', role: 'mynumber_reader', member: 'bob', action: 'pending', by: 'dba' },
  { kind: 'password_change', role: 'mynumber_reader', action: 'observed' },
  { kind: 'key_event', event: 'unwrap', keyId: 'dk-1', purpose: 'data' },
  { kind: 'audit_query', query: { user: 'alice', subjectHashes: 2 }, results: 4 },
  { kind: 'shadow_decision', shadow: true, outcome: 'would_refuse', reason: 'permission denied', sqlstate: '42501', fingerprint: 'select my_number from contractors', columns: [{ column: 'public.contractors.my_number', decision: 'deny' }], ...ctx },
];

describe('AuditTrail', () => {
  test('appendLater: a record alone is written by the lazy timer, which re-arms after firing (or after a flush took its record first); chain order is call order', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir), { instanceId: 'inst-L' });
      const path = join(t.dir, 'mamori.jsonl');
      const kinds = async (): Promise<string[]> => (await records(path)).filter((r) => r.kind === 'disconnect' || r.kind === 'statement_intent').map((r) => `${r.kind}:${r.kind === 'statement_intent' ? r.statement : r.kind === 'disconnect' ? r.reason : ''}`);
      // 1: alone — only the timer writes it
      const first = trail.appendLater({ kind: 'disconnect', reason: 'lazy-1' });
      assert.deepEqual(await kinds(), [], 'not written synchronously');
      await first;
      assert.deepEqual(await kinds(), ['disconnect:lazy-1']);
      // 2: a lazy record, then an intent in the same turn: the intent's flush takes both, in call order
      const lazy = trail.appendLater({ kind: 'disconnect', reason: 'lazy-2' });
      await trail.append({ kind: 'statement_intent', statement: 'st-9', mode: 'protected' });
      await lazy;
      assert.deepEqual(await kinds(), ['disconnect:lazy-1', 'disconnect:lazy-2', 'statement_intent:st-9']);
      // 3: the timer (which then fired idle, or is still running) still writes a later lonely record
      await new Promise((r) => setTimeout(r, 20));
      await trail.appendLater({ kind: 'disconnect', reason: 'lazy-3' });
      await trail.appendLater({ kind: 'disconnect', reason: 'lazy-4' });
      assert.deepEqual((await kinds()).slice(-2), ['disconnect:lazy-3', 'disconnect:lazy-4']);
      await trail.close();
      const v = await verifyAuditTrail(path);
      assert.equal(v.ok, true, v.problem?.message);
    } finally {
      await t.cleanup();
    }
  });

  test('every record kind round-trips through the file with its fields intact', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir), { signingKey: keyPair().privateKey, instanceId: 'inst-A' });
      for (const e of EVENTS) await trail.append(e);
      await trail.heartbeat();
      await trail.close();
      const rs = await records(join(t.dir, 'mamori.jsonl'));
      assert.deepEqual(new Set(rs.map((r) => r.kind)), new Set(AUDIT_KINDS));
      assert.deepEqual(rs.map((r) => r.seq), rs.map((_, i) => i + 1));
      for (const r of rs) assert.equal(r.instance, 'inst-A');
      for (const e of EVENTS) {
        const r = rs.find((x) => x.kind === e.kind)!;
        for (const [k, v] of Object.entries(e)) assert.deepEqual((r as unknown as Record<string, unknown>)[k], v, `${e.kind}.${k}`);
      }
      // fields a kind does not use are present and null (a stable shape for log tools)
      const reload = rs.find((r) => r.kind === 'policy_reload')!;
      assert.equal(reload.user, null);
      assert.equal(reload.fingerprint, null);
      assert.deepEqual(reload.columns, []);
      assert.ok(!Number.isNaN(Date.parse(reload.time)));
      const v = await verifyAuditTrail(join(t.dir, 'mamori.jsonl'));
      assert.equal(v.ok, true, v.problem?.message);
    } finally {
      await t.cleanup();
    }
  });

  for (const fsync of ['none', 'interval', 'always'] as const) {
    test(`fsync ${fsync}: records reach the file, and datasync runs as the policy says`, async () => {
      const t = await tempDir();
      // count datasync calls on file handles (node's own FileHandle, not a stand-in)
      const probe = await open(join(t.dir, 'probe'), 'w');
      const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
      await probe.close();
      const original = proto.datasync;
      let syncs = 0;
      proto.datasync = function (this: unknown) {
        syncs++;
        return original.call(this);
      };
      try {
        const trail = await AuditTrail.open(fileConfig(t.dir, { fsync, fsyncIntervalMs: 30 }));
        const before = syncs;
        await writeTrail(trail, 5);
        const afterWrites = syncs - before;
        await new Promise((r) => setTimeout(r, 120));
        const afterWait = syncs - before;
        await trail.close();
        if (fsync === 'none') assert.equal(syncs, 0);
        if (fsync === 'always') assert.ok(afterWrites >= 5, `one sync per write, got ${afterWrites}`);
        if (fsync === 'interval') {
          assert.ok(afterWrites <= 1, `no sync per write, got ${afterWrites}`);
          assert.ok(afterWait >= 1, 'the interval timer synced');
        }
        assert.equal((await records(join(t.dir, 'mamori.jsonl'))).length, 8);
      } finally {
        proto.datasync = original;
        await t.cleanup();
      }
    });
  }

  test('rotation by size: rotated files sort in write order, stay under the limit, and are in the manifest', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir, {}, 2000));
      await writeTrail(trail, 30);
      await trail.close();
      const names = (await readdir(t.dir)).filter((n) => /^mamori\.\d{8}\.\d{8}T\d{6}Z\.jsonl$/.test(n));
      assert.ok(names.length >= 5, `rotated ${names.length} files`);
      const manifest = JSON.parse(await readFile(join(t.dir, 'mamori.manifest.json'), 'utf8')) as { files: Array<{ name: string; lastSeq: number }> };
      assert.deepEqual(manifest.files.map((f) => f.name), [...names].sort());
      let lastSeq = 0;
      for (const n of [...names].sort()) {
        assert.ok(statSync(join(t.dir, n)).size <= 2000);
        const rs = await records(join(t.dir, n));
        assert.equal(rs[0]!.seq, lastSeq + 1, 'files continue one another');
        lastSeq = rs.at(-1)!.seq;
      }
      const v = await verifyAuditTrail(join(t.dir, 'mamori.jsonl'));
      assert.equal(v.ok, true, v.problem?.message);
      assert.equal(v.records, 33);
    } finally {
      await t.cleanup();
    }
  });

  test('failMode closed: an unusable directory rejects with AuditUnavailableError, and the trail recovers', async () => {
    const t = await tempDir();
    try {
      const blocker = join(t.dir, 'audit');
      await writeFile(blocker, 'not a directory');
      const trail = await AuditTrail.open(fileConfig(blocker));
      await assert.rejects(trail.append(intent(1)), (e: unknown) => {
        assert.ok(e instanceof AuditUnavailableError);
        assert.equal(e.reason, 'io');
        assert.match(e.message, /ENOTDIR|EEXIST/);
        return true;
      });
      assert.equal(trail.writable(), false);
      await unlink(blocker);
      await mkdir(blocker);
      await new Promise((r) => setTimeout(r, 1100)); // past the reopen backoff
      await trail.append(intent(2));
      assert.equal(trail.writable(), true);
      await trail.close();
      const rs = await records(join(blocker, 'mamori.jsonl'));
      assert.deepEqual(rs.map((r) => r.kind).slice(0, 3), ['genesis', 'instance_start', 'statement_intent']);
      assert.equal((rs[2] as AuditRecord & { statement: string }).statement, 'st-2');
    } finally {
      await t.cleanup();
    }
  });

  test('failMode closed on a full disk rejects and leaves no partial record; open mode counts the loss', async () => {
    if (!existsSync('/dev/full')) return assert.fail('/dev/full is needed for the disk-full case');
    const t = await tempDir();
    try {
      await symlink('/dev/full', join(t.dir, 'mamori.jsonl'));
      const closed = await AuditTrail.open(fileConfig(t.dir));
      await assert.rejects(closed.append(intent(1)), (e: unknown) => e instanceof AuditUnavailableError && /ENOSPC/.test(e.message));
      await closed.close();
      const lost: number[] = [];
      const openMode = await AuditTrail.open(fileConfig(t.dir, { failMode: 'open' }), { observer: { lost: (n) => lost.push(n) } });
      await openMode.append(intent(1));
      await openMode.append(intent(2));
      assert.equal(openMode.stats().lost, 2);
      assert.equal(lost.reduce((a, b) => a + b, 0), 2);
      await openMode.close();
    } finally {
      await t.cleanup();
    }
  });

  test('failMode open on an unusable directory resolves and counts lost records', async () => {
    const t = await tempDir();
    try {
      const blocker = join(t.dir, 'audit');
      await writeFile(blocker, 'x');
      const trail = await AuditTrail.open(fileConfig(blocker, { failMode: 'open' }));
      await trail.append(intent(1));
      await trail.append(intent(2));
      assert.equal(trail.stats().lost, 2);
      assert.equal(trail.writable(), false);
      await trail.close();
    } finally {
      await t.cleanup();
    }
  });

  test('an event that cannot be serialized (a non-finite number) fails its own batch; the trail goes on and verifies', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir));
      await trail.append(intent(1));
      await assert.rejects(trail.append({ ...intent(2), rows: Number.NaN }), AuditUnavailableError);
      await trail.append(intent(3));
      await trail.close();
      const rs = await records(join(t.dir, 'mamori.jsonl'));
      assert.deepEqual(rs.filter((r) => r.kind === 'statement_intent').map((r) => (r as { statement: string }).statement), ['st-1', 'st-3']);
      assert.deepEqual(rs.map((r) => r.seq), rs.map((_, i) => i + 1));
      assert.equal((await verifyAuditTrail(t.dir)).ok, true);
    } finally {
      await t.cleanup();
    }
  });

  test('a full pending buffer refuses (closed) instead of queueing without bound', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir, { maxBufferedRecords: 5 }));
      const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => trail.append(intent(i))));
      const rejected = results.filter((r) => r.status === 'rejected');
      assert.equal(results.length - rejected.length, 5); // five waiting: the writer takes them at the end of the turn
      for (const r of rejected) assert.equal(((r as PromiseRejectedResult).reason as AuditUnavailableError).reason, 'buffer_full');
      await trail.close();
    } finally {
      await t.cleanup();
    }
  });

  test('concurrent appends: one linear chain, grouped writes, each promise settles after its own bytes are in the file', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir));
      const path = join(t.dir, 'mamori.jsonl');
      let early = 0;
      await Promise.all(
        Array.from({ length: 300 }, (_, i) =>
          trail.append(intent(i)).then(() => {
            if (!readFileSync(path, 'utf8').includes(`"statement":"st-${i}"`)) early++;
          }),
        ),
      );
      assert.equal(early, 0);
      await trail.close();
      const rs = await records(path);
      assert.deepEqual(rs.map((r) => r.seq), rs.map((_, i) => i + 1));
      for (let i = 1; i < rs.length; i++) assert.equal(rs[i]!.prev, rs[i - 1]!.hash);
      const statements = rs.filter((r) => r.kind === 'statement_intent').map((r) => (r as AuditRecord & { statement: string }).statement);
      assert.deepEqual(statements, Array.from({ length: 300 }, (_, i) => `st-${i}`), 'append order is chain order');
      assert.equal((await verifyAuditTrail(path)).ok, true);
    } finally {
      await t.cleanup();
    }
  });

  test('subject lists beyond maxInlineSubjects go to a side file the record hashes; verify checks it', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir, { maxInlineSubjects: 4 }));
      const subjects = Array.from({ length: 10 }, (_, i) => `subject-hash-${i}`);
      await trail.append({ ...intent(1), subjects, subjectKeyId: 'subject-2026' });
      await trail.append({ ...intent(2), subjects: subjects.slice(0, 3), subjectKeyId: 'subject-2026' });
      await trail.close();
      const rs = (await records(join(t.dir, 'mamori.jsonl'))).filter((r) => r.kind === 'statement_intent');
      assert.equal(rs[0]!.subjects, undefined);
      assert.equal(rs[0]!.subjectCount, 10);
      const side = join(t.dir, 'mamori.subjects', `${rs[0]!.subjectsRef}.json`);
      assert.deepEqual(JSON.parse(await readFile(side, 'utf8')), { subjectKeyId: 'subject-2026', subjects });
      assert.deepEqual(rs[1]!.subjects, subjects.slice(0, 3));
      assert.equal((await verifyAuditTrail(join(t.dir, 'mamori.jsonl'))).ok, true);
      await appendFile(side, ' ');
      assert.equal((await verifyAuditTrail(join(t.dir, 'mamori.jsonl'))).problem?.kind, 'modified');
      await rm(side);
      assert.equal((await verifyAuditTrail(join(t.dir, 'mamori.jsonl'))).problem?.kind, 'missing_side_file');
    } finally {
      await t.cleanup();
    }
  });

  test('a torn final line from a crash is cut at the next open and noted in the genesis record', async () => {
    const t = await tempDir();
    try {
      const path = join(t.dir, 'mamori.jsonl');
      const a = await AuditTrail.open(fileConfig(t.dir));
      await writeTrail(a, 2);
      await a.close();
      const torn = '{"kind":"statement_intent","half';
      await appendFile(path, torn);
      const b = await AuditTrail.open(fileConfig(t.dir));
      await b.close();
      const rs = await records(path);
      const genesis = rs.filter((r) => r.kind === 'genesis')[1]!;
      assert.equal(genesis.kind === 'genesis' && genesis.repairedTailBytes, Buffer.byteLength(torn));
      assert.equal((await verifyAuditTrail(path)).ok, true);
    } finally {
      await t.cleanup();
    }
  });

  test('one writer per series: a second trail on the same file is refused with reason locked; stale locks are taken over', async () => {
    const t = await tempDir();
    try {
      const a = await AuditTrail.open(fileConfig(t.dir));
      const b = await AuditTrail.open(fileConfig(t.dir));
      await assert.rejects(b.append(intent(1)), (e: unknown) => e instanceof AuditUnavailableError && e.reason === 'locked');
      await b.close();
      await a.append(intent(2));
      await a.close();
      assert.equal((await verifyAuditTrail(join(t.dir, 'mamori.jsonl'))).ok, true);
      // stale locks are taken over: a dead process's, and our pid left by an earlier process (container restart)
      for (const stale of ['2147483646 0', `${process.pid} 1`]) {
        await writeFile(join(t.dir, 'mamori.lock'), stale);
        const c = await AuditTrail.open(fileConfig(t.dir));
        await c.append(intent(3));
        await c.close();
      }
      assert.equal((await verifyAuditTrail(join(t.dir, 'mamori.jsonl'))).instances.length, 3); // a, and the two takers-over (b never wrote)
    } finally {
      await t.cleanup();
    }
  });

  test('stdout as the only sink: a chain of JSON lines on the stream', async () => {
    const stream = new PassThrough();
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    const trail = await AuditTrail.open({ heartbeatSeconds: 0, checkpointEverySeconds: 0, checkpointSink: 'none', sinks: [{ type: 'stdout' }] }, { stdout: stream });
    await trail.append(intent(1));
    await trail.close();
    const rs = Buffer.concat(chunks).toString('utf8').trim().split('\n').map((l) => parseRecord(l));
    assert.deepEqual(rs.map((r) => r.kind), ['genesis', 'instance_start', 'statement_intent', 'checkpoint']);
    for (let i = 1; i < rs.length; i++) assert.equal(rs[i]!.prev, rs[i - 1]!.hash);
  });

  test('rotation by age follows the clock', async () => {
    const t = await tempDir();
    try {
      let clock = Date.parse('2026-01-01T00:00:00Z');
      const trail = await AuditTrail.open(
        { ...fileConfig(t.dir), sinks: [{ type: 'file', path: join(t.dir, 'mamori.jsonl'), rotateBytes: 0, rotateSeconds: 3600 }] },
        { now: () => new Date(clock) },
      );
      await trail.append(intent(1));
      clock += 30 * 60_000;
      await trail.append(intent(2)); // same file: 30 minutes old
      clock += 31 * 60_000;
      await trail.append(intent(3)); // over an hour: rotated first
      await trail.close();
      const names = (await readdir(t.dir)).filter((n) => /^mamori\.\d{8}\./.test(n));
      assert.deepEqual(names, ['mamori.00000001.20260101T010100Z.jsonl']);
      assert.equal((await records(join(t.dir, names[0]!))).length, 4);
      assert.equal((await verifyAuditTrail(join(t.dir, 'mamori.jsonl'))).ok, true);
    } finally {
      await t.cleanup();
    }
  });

  test('heartbeats and checkpoints on their timers; the registry file follows', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open({ ...fileConfig(t.dir), heartbeatSeconds: 0.05, checkpointEverySeconds: 0.08 }, { signingKey: keyPair().privateKey });
      await new Promise((r) => setTimeout(r, 400));
      await trail.close();
      const rs = await records(join(t.dir, 'mamori.jsonl'));
      assert.ok(rs.filter((r) => r.kind === 'heartbeat').length >= 3);
      assert.ok(rs.filter((r) => r.kind === 'checkpoint').length >= 3);
      const registry = JSON.parse(await readFile(join(t.dir, 'mamori.registry.json'), 'utf8')) as { instances: Record<string, { lastSeq: number; head: string; ended?: string }> };
      const entry = registry.instances[trail.instanceId]!;
      assert.equal(entry.lastSeq, rs.at(-1)!.seq);
      assert.equal(entry.head, rs.at(-1)!.hash);
      assert.ok(entry.ended);
    } finally {
      await t.cleanup();
    }
  });

  test('subject hashes from the keyring source, and writeMode async', async () => {
    const t = await tempDir();
    try {
      const { createSecretKey, randomBytes } = await import('node:crypto');
      const key = createSecretKey(randomBytes(32));
      const trail = await AuditTrail.open({ ...fileConfig(t.dir), writeMode: 'async' }, { keyring: { subjectKey: () => ({ id: 'subject-2026', key }) } });
      const hashed = trail.hashSubjects('mynumber', [Buffer.from('123456789018'), Buffer.from('123456789018'), Buffer.from('000000000019')]);
      assert.equal(hashed.subjectKeyId, 'subject-2026');
      assert.equal(hashed.subjects.length, 2, 'deduplicated');
      await trail.append({ ...intent(1), ...hashed });
      await trail.close();
      const text = await readFile(join(t.dir, 'mamori.jsonl'), 'utf8');
      assert.ok(text.includes(hashed.subjects[0]!));
      assert.ok(!text.includes('123456789018'));
    } finally {
      await t.cleanup();
    }
  });

  test('an unreadable last line does not stop the trail; verify points at it', async () => {
    const t = await tempDir();
    try {
      const path = join(t.dir, 'mamori.jsonl');
      const a = await AuditTrail.open(fileConfig(t.dir));
      await writeTrail(a, 2);
      await a.close();
      await appendFile(path, 'garbage that is not a record\n');
      const b = await AuditTrail.open(fileConfig(t.dir));
      await b.append(intent(3));
      await b.close();
      const r = await verifyAuditTrail(path);
      assert.equal(r.problem?.kind, 'modified');
      assert.equal(r.problem?.line, 6);
    } finally {
      await t.cleanup();
    }
  });

  test('stdout as a mirror of the file, and a stuck checkpoint sink does not hold up appends', async () => {
    const t = await tempDir();
    try {
      const mirror = new PassThrough();
      const seen: Buffer[] = [];
      mirror.on('data', (c: Buffer) => seen.push(c));
      const mirrored = await AuditTrail.open({ ...fileConfig(t.dir), sinks: [{ type: 'file', path: join(t.dir, 'mamori.jsonl') }, { type: 'stdout' }] }, { stdout: mirror });
      await mirrored.append(intent(1));
      await mirrored.close();
      assert.equal(Buffer.concat(seen).toString('utf8'), await readFile(join(t.dir, 'mamori.jsonl'), 'utf8'));

      // a checkpoint sink whose writes never complete
      const stuck = new Writable({ write: () => undefined });
      const trail = await AuditTrail.open(
        { ...fileConfig(join(t.dir, 'b')), checkpointSink: { type: 'stdout' } },
        { stdout: stuck, closeTimeoutMs: 200 },
      );
      await trail.checkpoint();
      const t0 = Date.now();
      await trail.append(intent(2));
      await trail.checkpoint();
      await trail.append(intent(3));
      assert.ok(Date.now() - t0 < 1000);
      await trail.close();
      assert.equal((await verifyAuditTrail(join(t.dir, 'b', 'mamori.jsonl'))).ok, true);
    } finally {
      await t.cleanup();
    }
  });
});

describe('isoTime (record times without a Date per batch)', () => {
  test('property: the same string as toISOString, across seconds, years and the edges of the four-digit range', () => {
    const edges = [0, 1, 999, 1000, 1001, 59_999, 60_000, Date.parse('2026-12-31T23:59:59.999Z'), Date.parse('2027-01-01T00:00:00.000Z'), 253402300799999, 253402300800000, -1, -86_400_001];
    for (const ms of edges) assert.equal(isoTime(ms), new Date(ms).toISOString());
    fc.assert(
      fc.property(fc.integer({ min: -1e13, max: 3e14 }), fc.integer({ min: 0, max: 2500 }), (ms, step) => {
        // consecutive calls within and across a second share the cached prefix correctly
        for (const t of [ms, ms + step, ms + step + 1, ms]) assert.equal(isoTime(t), new Date(t).toISOString());
      }),
      { numRuns: 2000 },
    );
  });
});
