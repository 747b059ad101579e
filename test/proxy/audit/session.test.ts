// SessionAudit: context on every record, intent/completion pairs with one statement id and a duration, and a
// refused intent (closed mode) surfaces as a rejection before any row could be released.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import { SessionAudit } from '../../../proxy/audit/session.js';
import { AuditUnavailableError } from '../../../proxy/audit/errors.js';
import { parseRecord } from '../../../proxy/audit/record.js';
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
