// Shadow mode: a column declared with `enforce: false` and not yet protected is analysed and its decisions
// logged, but nothing is refused or rewritten — so an application can be moved over and its statements
// checked before `mamori protect`. Protected columns next to it stay enforced.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;
const logLines: string[] = [];

before(async () => {
  s = await startProtectedStack({
    logLines,
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
    // The protected column next to it is still enforced.
    await assert.rejects(outsider.query('SELECT my_number FROM employees'), { code: '42501' });
  } finally {
    await clerk.end();
    await outsider.end();
  }
});
