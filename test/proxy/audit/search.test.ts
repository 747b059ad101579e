// Subject search finds exactly the sessions that wrote, saw or searched a number (under either retention
// period's key, in any written form), and the other filters narrow as documented.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSecretKey, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import { formatRecord, searchAudit, tailAudit, type AuditSearchFilter } from '../../../proxy/audit/search.js';
import { normalizeSubject, subjectHash } from '../../../proxy/audit/subject.js';
import type { AuditEvent, AuditEventCommon } from '../../../proxy/audit/record.js';
import { fileConfig, tempDir } from './fixtures.js';

const period1 = createSecretKey(randomBytes(32));
const period2 = createSecretKey(randomBytes(32));
const N1 = '123456789018';
const N2 = '000000000019';
const h = (key: typeof period1, n: string): string => subjectHash(key, 'mynumber', Buffer.from(n));
const hashSubject = (v: string): string[] => {
  const n = normalizeSubject(v);
  return [period1, period2].map((k) => subjectHash(k, n.logicalType, n.canonical));
};

function stmt(session: string, user: string, kind: 'statement_intent' | 'search', decision: 'write' | 'plaintext' | 'mask' | 'search', subjects: string[], keyId = 'p1'): AuditEvent {
  const base: AuditEventCommon = {
    session,
    user,
    command: decision === 'write' ? 'INSERT' : 'SELECT',
    fingerprint: 'select my_number from people where id = $1',
    columns: [{ column: 'public.people.my_number', decision }],
    subjects,
    subjectKeyId: keyId,
  };
  return kind === 'search' ? { kind, ...base, statement: `${session}-q` } : { kind, ...base, statement: `${session}-q`, mode: 'protected' };
}

async function fixture(): Promise<{ path: string; cleanup: () => Promise<void>; t0: Date; t1: Date }> {
  const t = await tempDir();
  let clock = Date.parse('2026-04-01T00:00:00Z');
  const trail = await AuditTrail.open(fileConfig(t.dir, { maxInlineSubjects: 3 }), { now: () => new Date((clock += 60_000)) });
  await trail.append(stmt('A', 'clerk', 'statement_intent', 'write', [h(period1, N1)]));
  await trail.append(stmt('B', 'auditor', 'statement_intent', 'plaintext', [h(period1, N1), h(period1, N2)]));
  await trail.append(stmt('C', 'clerk', 'statement_intent', 'mask', [h(period1, N2)]));
  await trail.append(stmt('D', 'hr', 'search', 'search', [h(period1, N1)]));
  const t0 = new Date(clock + 1);
  // a large export in the next retention period: the subjects go to a side file
  const many = Array.from({ length: 10 }, (_, i) => `filler-${i}`);
  await trail.append(stmt('E', 'exporter', 'statement_intent', 'plaintext', [...many, h(period2, N1)], 'p2'));
  const t1 = new Date(clock + 1);
  await trail.append({ kind: 'connect', tls: true, session: 'F', user: 'clerk' });
  await trail.close();
  return { path: join(t.dir, 'mamori.jsonl'), cleanup: t.cleanup, t0, t1 };
}

async function sessions(path: string, filter: AuditSearchFilter): Promise<string[]> {
  const out: string[] = [];
  for await (const hit of searchAudit(path, filter)) out.push(hit.record.session ?? '-');
  return out;
}

describe('audit search', () => {
  test('--subject finds exactly the sessions that wrote, saw or searched that number, in any written form', async () => {
    const f = await fixture();
    try {
      assert.deepEqual(await sessions(f.path, { subject: N1, hashSubject }), ['A', 'B', 'D', 'E']);
      assert.deepEqual(await sessions(f.path, { subject: '１２３４－５６７８－９０１８', hashSubject }), ['A', 'B', 'D', 'E']);
      assert.deepEqual(await sessions(f.path, { subject: N2, hashSubject }), ['B', 'C']);
      assert.deepEqual(await sessions(f.path, { subjectHashes: [h(period1, N1)] }), ['A', 'B', 'D'], 'one period only');
      assert.deepEqual(await sessions(f.path, { subject: '000000000027', hashSubject }), []);
      await assert.rejects(sessions(f.path, { subject: N1 }), /hashSubject/);
    } finally {
      await f.cleanup();
    }
  });

  test('--session answers whose numbers a session saw; other filters narrow', async () => {
    const f = await fixture();
    try {
      const hits = [];
      for await (const hit of searchAudit(f.path, { session: 'B' })) hits.push(hit.record);
      assert.equal(hits.length, 1);
      assert.deepEqual(hits[0]!.subjects, [h(period1, N1), h(period1, N2)]);
      assert.deepEqual(await sessions(f.path, { user: 'clerk' }), ['A', 'C', 'F']);
      assert.deepEqual(await sessions(f.path, { column: 'people.my_number', decision: 'plaintext' }), ['B', 'E']);
      assert.deepEqual(await sessions(f.path, { column: 'my_number', decision: 'search' }), ['D']);
      assert.deepEqual(await sessions(f.path, { kinds: ['search'] }), ['D']);
      assert.deepEqual(await sessions(f.path, { from: f.t0, to: f.t1 }), ['E']);
      assert.deepEqual(await sessions(f.path, { user: 'clerk', limit: 2 }), ['A', 'C']);
    } finally {
      await f.cleanup();
    }
  });

  test('tail and the readable format', async () => {
    const f = await fixture();
    try {
      const last = await tailAudit(f.path, 3);
      assert.deepEqual(last.map((x) => x.record.kind), ['statement_intent', 'connect', 'checkpoint']);
      const line = formatRecord(last[0]!.record);
      assert.match(line, /statement_intent user=exporter session=E cmd=SELECT cols=public\.people\.my_number:plaintext subjects=11/);
      assert.ok(!line.includes(h(period2, N1)), 'hashes are not printed in the readable form');
    } finally {
      await f.cleanup();
    }
  });
});
