// A DBA changes the policy: the running proxy applies it from each session's next statement, after checking
// it against the catalog; a policy naming a column that does not exist is refused and the old one stays.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultConfig } from '../../../config/load.js';
import type { MamoriConfigInput } from '../../../config/schema.js';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack();
  const c = await s.connect(ROLES.clerk);
  await c.query("INSERT INTO employees VALUES (1, 'Sato', '123456789018')");
  await c.end();
});

after(async () => {
  await s?.stop();
});

function withColumns(columns: MamoriConfigInput['columns']) {
  const cfg = s.config;
  return defaultConfig({
    listen: cfg.listen, upstream: { host: cfg.upstream.host, port: cfg.upstream.port }, keyring: { keyFile: cfg.keyring.keyFile, store: cfg.keyring.store },
    approval: { members: 'none' }, audit: { statements: 'none' }, metrics: { enabled: false }, columns,
  } as MamoriConfigInput);
}

test('a reloaded policy applies to open sessions from their next statement', async () => {
  const engine = s.mamori.engine!;
  const clerk = await s.connect(ROLES.clerk);
  try {
    assert.equal((await clerk.query('SELECT my_number FROM employees WHERE id = 1')).rows[0].my_number, '123456789018');
    const next = withColumns({
      'public.employees.my_number': { type: 'mynumber', mode: 'deterministic', read: { mask: [ROLES.clerk] }, others: 'deny' },
    });
    assert.deepEqual(await engine.validatePolicy(next), []);
    await engine.applyPolicy(next);
    assert.equal((await clerk.query('SELECT my_number FROM employees WHERE id = 1')).rows[0].my_number, '********9018');
  } finally {
    await clerk.end();
  }
});

test('a policy naming a column that does not exist is refused by validation', async () => {
  const engine = s.mamori.engine!;
  const bad = withColumns({
    'public.employees.my_numbr': { type: 'mynumber', mode: 'deterministic', read: { plaintext: [ROLES.clerk] } },
  });
  const issues = await engine.validatePolicy(bad);
  assert.ok(issues.length > 0);
  assert.match(issues[0]!.path, /my_numbr/);
});
