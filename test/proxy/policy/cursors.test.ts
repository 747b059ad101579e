// Cursors and other indirect reads: rows reach the client through FETCH (text and BINARY cursors, WITH HOLD),
// EXECUTE of an SQL prepared statement, and the FunctionCall message — each decided like a direct read.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack();
  const c = await s.connect(ROLES.clerk);
  await c.query("INSERT INTO employees VALUES (1, 'Sato', '123456789018'), (2, 'Suzuki', '000000000019')");
  await c.end();
});

after(async () => {
  await s?.stop();
});

test('FETCH from a cursor (WITH HOLD, and across a commit) gives plaintext to the clerk and masks to the viewer', async () => {
  for (const [role, first] of [[ROLES.clerk, '123456789018'], [ROLES.viewer, '********9018']] as const) {
    const c = await s.connect(role);
    try {
      await c.query('BEGIN');
      await c.query('DECLARE cur CURSOR WITH HOLD FOR SELECT id, my_number FROM employees ORDER BY id');
      await c.query('COMMIT');
      const r = await c.query('FETCH 1 FROM cur');
      assert.deepEqual(r.rows, [{ id: 1, my_number: first }]);
      await c.query('CLOSE cur');
    } finally {
      await c.end();
    }
  }
});

test('a BINARY cursor returns the plaintext in binary format', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query('BEGIN');
    await c.query('DECLARE bc BINARY CURSOR FOR SELECT my_number FROM employees WHERE id = 2');
    const r = await c.query({ text: 'FETCH 1 FROM bc', rowMode: 'array' });
    // pg hands binary fields of unknown handling back as text for type 25 (text's binary form is its UTF-8 bytes).
    assert.equal(String(r.rows[0]![0]), '000000000019');
    await c.query('COMMIT');
  } finally {
    await c.end();
  }
});

test('a denied role cannot declare a cursor over the column', async () => {
  const c = await s.connect(ROLES.outsider);
  try {
    await c.query('BEGIN');
    await assert.rejects(c.query('DECLARE d CURSOR FOR SELECT my_number FROM employees'), { code: '42501' });
    await c.query('ROLLBACK');
  } finally {
    await c.end();
  }
});

test('EXECUTE of an SQL prepared statement decrypts its result; one without a column list writes a cell', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query('PREPARE sel(int) AS SELECT my_number FROM employees WHERE id = $1');
    assert.equal((await c.query('EXECUTE sel(1)')).rows[0].my_number, '123456789018');
    await c.query('PREPARE ins(int, text) AS INSERT INTO employees VALUES ($1, \'x\', $2)');
    await c.query('BEGIN');
    await c.query("EXECUTE ins(99, '2345 6789 0121')");
    assert.equal((await c.query('SELECT my_number FROM employees WHERE id = 99')).rows[0].my_number, '234567890121');
    await c.query('ROLLBACK');
  } finally {
    await c.end();
  }
});

test('the FunctionCall message is refused once the session has touched protected data', async () => {
  const { RawClient } = await import('../../harness/raw-client.js');
  const { encodeQuery, encodeFunctionCall } = await import('../../../proxy/wire/frontend.js');
  const { decodeNoticeFields } = await import('../../../proxy/wire/backend.js');
  const { BE } = await import('../../../proxy/wire/types.js');
  const { PASSWORD } = await import('../../harness/protected.js');
  const c = await RawClient.connect('127.0.0.1', s.mamori.port, { user: ROLES.clerk, password: PASSWORD, tls: { ca: s.cluster.ca.cert } });
  try {
    const pgBackendPid = 2026; // pg_catalog.pg_backend_pid()
    c.send(encodeFunctionCall({ functionOid: pgBackendPid, argFormats: [], args: [], resultFormat: 0 }));
    const before = await c.until(BE.ReadyForQuery);
    assert.ok(before.some((f) => f.type === BE.FunctionCallResponse), 'allowed before protected data is touched');
    c.send(encodeQuery('SELECT my_number FROM employees WHERE id = 1'));
    await c.until(BE.ReadyForQuery);
    c.send(encodeFunctionCall({ functionOid: pgBackendPid, argFormats: [], args: [], resultFormat: 0 }));
    const after = await c.until(BE.ReadyForQuery);
    const err = after.find((f) => f.type === BE.ErrorResponse);
    assert.ok(err);
    assert.equal(decodeNoticeFields(err.body).C, '0A000');
  } finally {
    c.close();
  }
});
