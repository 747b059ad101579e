// Operators see protected work in /metrics: cell encryptions and decryptions by mode, key-cache hits,
// searches and search-limit hits, policy reloads.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack({
    config: { metrics: { enabled: true, host: '127.0.0.1', port: 0 }, search: { ratePerSecond: 1, burst: 2, maxInListItems: 100 } },
  });
});

after(async () => {
  await s?.stop();
});

function value(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

test('crypto operations, key cache, searches and search-limit hits move in /metrics', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query("INSERT INTO employees VALUES (1, 'Sato', '123456789018'), (2, 'Suzuki', '000000000019')");
    await c.query('SELECT my_number FROM employees');
    await c.query('SELECT id FROM employees WHERE my_number = $1', ['123456789018']);
    await c.query('SELECT id FROM employees WHERE my_number = $1', ['000000000019']);
    await assert.rejects(c.query('SELECT id FROM employees WHERE my_number = $1', ['123456789018']), { code: '53400' });
  } finally {
    await c.end();
  }
  const text = await (await fetch(`http://127.0.0.1:${s.mamori.metricsPort}/metrics`)).text();
  assert.equal(value(text, 'mamori_crypto_operations_total', 'mode="siv",op="encrypt"') >= 2, true, 'encryptions counted');
  assert.equal(value(text, 'mamori_crypto_operations_total', 'mode="siv",op="decrypt"') >= 2, true, 'decryptions counted');
  const plain = (name: string): number => Number(text.split('\n').find((l) => l.startsWith(`${name} `))?.split(' ')[1] ?? 0);
  assert.ok(plain('mamori_key_cache_hits_total') >= 1, 'key cache hits counted');
  assert.ok(plain('mamori_searches_total') >= 3, 'searches counted');
  assert.equal(plain('mamori_search_limit_hits_total'), 1, 'the refused search counted');
});
