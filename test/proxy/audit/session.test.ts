// SessionAudit: context on every record, intent/completion pairs with one statement id and a duration, and a
// refused intent (closed mode) surfaces as a rejection before any row could be released.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import { SessionAudit } from '../../../proxy/audit/session.js';
import { AuditUnavailableError } from '../../../proxy/audit/errors.js';
import { parseRecord, recordHash } from '../../../proxy/audit/record.js';
import { verifyAuditTrail } from '../../../proxy/audit/verify.js';
import { fileConfig, tempDir } from './fixtures.js';

const ctx = { session: 'S9', user: 'clerk', client: '10.1.2.3:5000', tlsSubject: null, applicationName: 'app', database: 'hr' };
const start = { fingerprint: 'select my_number from people where id = $1', command: 'SELECT', columns: [{ column: 'public.people.my_number', decision: 'plaintext' as const }], mode: 'protected' as const };

describe('SessionAudit', () => {
  test('intent then completion, sharing a statement id, with the session context and a duration', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir));
      const s = new SessionAudit(trail, ctx);
      await s.record({ kind: 'connect', tls: true });
      const h = await s.intent(start);
      await new Promise((r) => setTimeout(r, 5));
      await h.complete({ rows: 1, sqlstate: '00000', subjects: ['abc'], subjectKeyId: 'p1' });
      const h2 = await s.intent(start);
      await trail.close();
      const rs = (await readFile(join(t.dir, 'mamori.jsonl'), 'utf8')).trim().split('\n').map((l) => parseRecord(l));
      const mine = rs.filter((r) => r.session === 'S9');
      assert.deepEqual(mine.map((r) => r.kind), ['connect', 'statement_intent', 'statement_complete', 'statement_intent']);
      for (const r of mine) assert.deepEqual({ user: r.user, client: r.client, database: r.database, app: r.applicationName }, { user: 'clerk', client: '10.1.2.3:5000', database: 'hr', app: 'app' });
      const [intent, complete] = [mine[1]!, mine[2]!];
      assert.equal(intent.kind === 'statement_intent' && intent.statement, 'S9:1');
      assert.equal(complete.kind === 'statement_complete' && complete.statement, 'S9:1');
      assert.equal(h2.id, 'S9:2');
      assert.equal(complete.rows, 1);
      assert.equal(complete.sqlstate, '00000');
      assert.deepEqual(complete.subjects, ['abc']);
      assert.ok(complete.durationMs! >= 4);
      assert.equal(complete.fingerprint, start.fingerprint);
    } finally {
      await t.cleanup();
    }
  });

  test('records of a statement run again (sealed from its templates) carry their own ids, decisions and outcomes, and verify', async () => {
    const t = await tempDir();
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir, { maxInlineSubjects: 2 }));
      const s = new SessionAudit(trail, ctx);
      const masked = { ...start, columns: [{ column: 'public.people.my_number', decision: 'mask' as const }] };
      const runs = [start, start, masked, { ...start, command: 'SELECT 1' }, { ...start, mode: 'all' as const }, start];
      const subjects = [undefined, ['a'], ['a', 'b', 'c'], undefined, ['d'], undefined];
      for (let i = 0; i < runs.length; i++) {
        const h = await s.intent({ ...runs[i]!, subjects: subjects[i], subjectKeyId: subjects[i] ? 'p1' : undefined });
        await h.complete({ rows: i, sqlstate: i === 3 ? '42501' : null, subjects: subjects[i], subjectKeyId: subjects[i] ? 'p1' : undefined });
      }
      await trail.close();
      const path = join(t.dir, 'mamori.jsonl');
      assert.equal((await verifyAuditTrail(path)).ok, true);
      const rs = (await readFile(path, 'utf8')).trim().split('\n').map((l) => parseRecord(l));
      for (const r of rs) assert.equal(recordHash(r), r.hash);
      const mine = rs.filter((r) => r.session === 'S9');
      assert.equal(mine.length, runs.length * 2);
      for (let i = 0; i < runs.length; i++) {
        const [intent, complete] = [mine[2 * i]!, mine[2 * i + 1]!];
        assert.equal(intent.kind, 'statement_intent');
        assert.equal(complete.kind, 'statement_complete');
        for (const r of [intent, complete]) {
          assert.equal((r as { statement?: string }).statement, `S9:${i + 1}`);
          assert.deepEqual(r.columns, runs[i]!.columns);
          assert.equal(r.command, runs[i]!.command);
          assert.equal(r.fingerprint, start.fingerprint);
          assert.deepEqual({ user: r.user, client: r.client, database: r.database, app: r.applicationName, tls: r.tlsSubject }, { user: 'clerk', client: '10.1.2.3:5000', database: 'hr', app: 'app', tls: null });
        }
        assert.equal((intent as { mode?: string }).mode, runs[i]!.mode);
        assert.equal(complete.rows, i);
        assert.equal(complete.sqlstate, i === 3 ? '42501' : null);
        // three subjects are beyond maxInlineSubjects (2): they went to a side file the record names
        if (i === 2) for (const r of [intent, complete]) assert.deepEqual([r.subjects, r.subjectCount, typeof r.subjectsRef], [undefined, 3, 'string']);
        else for (const r of [intent, complete]) assert.deepEqual(r.subjects, subjects[i]);
      }
    } finally {
      await t.cleanup();
    }
  });

  test('a refused intent rejects (closed mode), so the caller refuses instead of releasing rows', async () => {
    const t = await tempDir();
    try {
      await writeFile(join(t.dir, 'blocked'), 'x');
      const trail = await AuditTrail.open(fileConfig(join(t.dir, 'blocked')));
      const s = new SessionAudit(trail, ctx);
      let released = false;
      await assert.rejects(
        s.intent(start).then(() => {
          released = true;
        }),
        AuditUnavailableError,
      );
      assert.equal(released, false);
      await trail.close();
    } finally {
      await t.cleanup();
    }
  });
});
