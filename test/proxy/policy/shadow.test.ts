// Shadow mode: a column declared with `enforce: false` and not yet protected is analysed and its decisions
// logged and written to the audit trail (`shadow_decision` records, never values), but nothing is refused or rewritten — so an application can be moved over and its statements
// checked before `mamori protect`. Protected columns next to it stay enforced.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';
import { parseRecord, type AuditRecord, type RecordOf } from '../../../proxy/audit/record.js';

let s: ProtectedStack;
const logLines: string[] = [];
const auditDir = mkdtempSync(join(tmpdir(), 'mamori-shadow-'));
const trailText = (): string => readFileSync(join(auditDir, 'mamori.jsonl'), 'utf8');
const records = (): AuditRecord[] => trailText().split('\n').filter(Boolean).map((l) => parseRecord(l));

before(async () => {
  s = await startProtectedStack({
    logLines,
    config: {
      audit: {
        statements: 'protected', fsync: 'none', checkpointSink: 'none',
        sinks: [{ type: 'file', path: join(auditDir, 'mamori.jsonl') }],
        signingKeyFile: join(auditDir, 'no-signing.key'),
      },
    },
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk], mask: [ROLES.viewer] }, search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
      'public.contractors.my_number': {
        type: 'mynumber', mode: 'deterministic', enforce: false,
        read: { plaintext: [ROLES.clerk] }, search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
    },
  });
  await s.cluster.query('CREATE TABLE public.contractors (id int PRIMARY KEY, my_number text)');
  await s.cluster.query(`GRANT SELECT, INSERT ON public.contractors TO ${ROLES.clerk}, ${ROLES.outsider}`);
});

after(async () => {
  await s?.stop();
});

test('a shadow-mode column is neither refused nor rewritten, and the decision that would apply is logged without values', async () => {
  const clerk = await s.connect(ROLES.clerk);
  const outsider = await s.connect(ROLES.outsider);
  try {
    await clerk.query("INSERT INTO contractors VALUES (1, '123456789018')");
    // Stored as the application wrote it: shadow mode changes nothing.
    assert.equal((await s.cluster.query('SELECT my_number FROM contractors WHERE id = 1')).rows[0].my_number, '123456789018');
    // The outsider would be refused once enforced; in shadow mode it reads, and the log says what would happen.
    assert.equal((await outsider.query('SELECT my_number FROM contractors WHERE id = 1')).rows[0].my_number, '123456789018');
    assert.equal((await clerk.query("SELECT count(*)::int AS n FROM contractors WHERE my_number LIKE '1234%'")).rows[0].n, 1);
    const shadow = logLines.filter((l) => l.includes('shadow-mode decision'));
    assert.ok(shadow.some((l) => l.includes('would refuse') && l.includes('public.contractors.my_number')), 'outsider read logged as would refuse');
    assert.ok(shadow.some((l) => l.includes('LIKE')), 'LIKE logged as would refuse');
    for (const l of shadow) assert.ok(!l.includes('123456789018'), 'no value in shadow log lines');
    // … and the same decisions are in the audit trail, marked shadow, without values
    const deadline = Date.now() + 5000;
    const shadowRecords = (): RecordOf<'shadow_decision'>[] => records().filter((r): r is RecordOf<'shadow_decision'> => r.kind === 'shadow_decision');
    while (shadowRecords().length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const recs = shadowRecords();
    for (const r of recs) assert.equal(r.shadow, true);
    const outsiderRead = recs.find((r) => r.user === ROLES.outsider && r.fingerprint?.includes('from contractors'));
    assert.ok(outsiderRead, 'the outsider read has its shadow record');
    assert.equal(outsiderRead.outcome, 'would_refuse');
    assert.equal(outsiderRead.sqlstate, '42501');
    const like = recs.find((r) => r.fingerprint?.includes('like'));
    assert.ok(like && like.outcome === 'would_refuse' && like.user === ROLES.clerk, 'the LIKE search is recorded as would refuse');
    const write = recs.find((r) => r.fingerprint?.startsWith('insert into contractors'));
    assert.ok(write && write.outcome === 'would_allow', 'the clerk insert would be allowed');
    assert.deepEqual(write.columns, [{ column: 'public.contractors.my_number', decision: 'write' }]);
    assert.ok(!trailText().includes('123456789018') && !trailText().includes('1234%'), 'no value or literal in the trail');
    // nothing protected was touched in shadow mode: no intent records for contractors
    assert.ok(!records().some((r) => r.kind === 'statement_intent' && r.fingerprint?.includes('contractors')));
    // The protected column next to it is still enforced.
    await assert.rejects(outsider.query('SELECT my_number FROM employees'), { code: '42501' });
  } finally {
    await clerk.end();
    await outsider.end();
  }
});
