// Rewritten statements run on a real PostgreSQL: literals spliced as E'\\x…'::bytea and casts of parameters
// turned into $n::bytea store and find exactly the intended bytes, with standard_conforming_strings on and off.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import pg from 'pg';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { loadParser } from '../../../proxy/sql/parser.js';
import { analyse } from '../../../proxy/sql/analyse.js';
import { byteaEdit, nullEdit, paramCastEdit, rewrite, type ExpectedEdit } from '../../../proxy/sql/splice.js';
import type { AnalysisContext, ProtectedColumn } from '../../../proxy/sql/types.js';
import { ctx } from './fixture.js';

// Stand-in for the cell cipher: deterministic per (domain, value), never the plaintext.
const cipher = (c: ProtectedColumn, v: string) => Buffer.concat([Buffer.from([0xff, 0x6d, 0x01]), createHash('sha256').update(`${c.domain}\0${v}`).digest()]);

function rewriteFor(sql: string, over: Partial<AnalysisContext> = {}): { text: string; params: Map<number, ProtectedColumn> } {
  const buf = Buffer.from(sql, 'utf8');
  const a = analyse(buf, ctx(over));
  assert.equal(a.kind, 'protected', JSON.stringify(a));
  const edits: ExpectedEdit[] = [];
  const params = new Map<number, ProtectedColumn>();
  if (a.kind === 'protected') {
    for (const p of a.statements) {
      for (const l of p.literals) edits.push(l.value === null ? nullEdit(l) : byteaEdit(l, cipher(l.column, l.value)));
      for (const q of p.params) {
        params.set(q.index, q.column);
        if (q.cast) edits.push(paramCastEdit(q.cast, q.index, !!q.array));
      }
    }
  }
  return { text: rewrite(buf, edits).toString('utf8'), params };
}

describe('rewritten statements on PostgreSQL', () => {
  let cluster: Cluster;
  let client: pg.Client;
  before(async () => {
    await loadParser();
    cluster = await startCluster({ tls: false });
    client = new pg.Client({ connectionString: cluster.url() });
    await client.connect();
    await client.query(`
      CREATE TABLE employees (id serial PRIMARY KEY, name text, my_number bytea UNIQUE, secret_note bytea, dept_id int, created_at timestamptz DEFAULT now());
      CREATE TABLE dependents (id serial PRIMARY KEY, employee_id int, name text, my_number bytea);`);
  });
  after(async () => {
    await client?.end();
    await cluster?.stop();
  });

  test('INSERT with literals, casts and NULL stores the ciphertext bytes', async () => {
    const { text } = rewriteFor(
      "INSERT INTO employees (name, my_number, secret_note) VALUES ('山田', '123456789018', NULL::text), ('b', CAST('000000000019' AS varchar(12)), 'x'::text)",
    );
    await client.query(text);
    const r = await client.query('SELECT name, my_number, secret_note FROM employees ORDER BY id');
    assert.deepEqual(r.rows[0].my_number, cipher(ctx().catalog.protectedColumns[0]!, '123456789018'));
    assert.equal(r.rows[0].secret_note, null);
    assert.ok(!JSON.stringify(r.rows).includes('123456789018'));
  });

  test('equality, IN, ANY(ARRAY[…]) and a join find the rows', async () => {
    const q1 = rewriteFor("SELECT name FROM employees WHERE my_number = '123456789018'::text");
    assert.deepEqual((await client.query(q1.text)).rows, [{ name: '山田' }]);
    const q2 = rewriteFor("SELECT count(*)::int AS n FROM employees WHERE my_number IN ('123456789018', '000000000019') AND my_number = ANY(ARRAY['000000000019'])");
    assert.deepEqual((await client.query(q2.text)).rows, [{ n: 1 }]);
    const ins = rewriteFor("INSERT INTO dependents (employee_id, name, my_number) VALUES (1, 'child', '123456789018')");
    await client.query(ins.text);
    const q3 = rewriteFor('SELECT d.name FROM dependents d JOIN employees e ON e.my_number = d.my_number');
    assert.deepEqual((await client.query(q3.text)).rows, [{ name: 'child' }]);
  });

  test('parameters with casts become $n::bytea and bind encrypted values (text[] arrays too)', async () => {
    const one = rewriteFor('SELECT name FROM employees WHERE my_number = $1::text');
    assert.match(one.text, /\$1::bytea/);
    const col = one.params.get(1)!;
    assert.deepEqual((await client.query(one.text, [cipher(col, '000000000019')])).rows, [{ name: 'b' }]);
    const arr = rewriteFor('SELECT count(*)::int AS n FROM employees WHERE my_number = ANY($1::text[])');
    assert.match(arr.text, /\$1::bytea\[\]/);
    const r = await client.query(arr.text, [[cipher(col, '000000000019'), cipher(col, '123456789018')]]);
    assert.deepEqual(r.rows, [{ n: 2 }]);
  });

  test("E'\\\\x…'::bytea means the same bytes with standard_conforming_strings off", async () => {
    const { text } = rewriteFor("SELECT name FROM employees WHERE my_number = '123456789018'");
    await client.query('SET standard_conforming_strings = off');
    try {
      assert.deepEqual((await client.query(text)).rows, [{ name: '山田' }]);
    } finally {
      await client.query('SET standard_conforming_strings = on');
    }
  });

  test('UPDATE … SET and ON CONFLICT DO UPDATE with EXCLUDED run', async () => {
    const up = rewriteFor("UPDATE employees SET secret_note = 'note' WHERE my_number = '000000000019' RETURNING id");
    assert.equal((await client.query(up.text)).rowCount, 1);
    const oc = rewriteFor("INSERT INTO employees (name, my_number) VALUES ('dup', '123456789018') ON CONFLICT (my_number) DO UPDATE SET my_number = EXCLUDED.my_number, name = 'renamed'");
    await client.query(oc.text);
    const r = await client.query("SELECT count(*)::int AS n FROM employees WHERE name = 'renamed'");
    assert.deepEqual(r.rows, [{ n: 1 }]);
  });
});
