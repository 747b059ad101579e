// User stories of the read and write paths, end to end through mamori with real drivers and a real server:
// an HR clerk writes and reads My Numbers in plaintext, a viewer sees masks, an outsider is refused, and the
// database itself only ever holds ciphertext.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import postgres from 'postgres';
import type pg from 'pg';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';
import { systemBindir } from '../../harness/cluster.js';

const run = promisify(execFile);
let s: ProtectedStack;
let clerk: pg.Client;
const logLines: string[] = [];

before(async () => {
  s = await startProtectedStack({ logLines });
  clerk = await s.connect(ROLES.clerk);
  await clerk.query("INSERT INTO employees (id, name, my_number) VALUES (1, 'Sato', '1234-5678-9018')");
  await clerk.query('INSERT INTO employees (id, name, my_number) VALUES ($1, $2, $3)', [2, 'Suzuki', '００００００００００１９']);
  await clerk.query('INSERT INTO employees (id, name, my_number) VALUES ($1, $2, NULL)', [3, 'Tanaka']);
});

after(async () => {
  await clerk?.end();
  await s?.stop();
});

describe('an HR clerk (plaintext, search, write)', () => {
  test('reads back what it wrote, normalized, in text and binary result formats', async () => {
    const r = await clerk.query('SELECT id, name, my_number FROM employees ORDER BY id');
    assert.deepEqual(r.rows, [
      { id: 1, name: 'Sato', my_number: '123456789018' },
      { id: 2, name: 'Suzuki', my_number: '000000000019' },
      { id: 3, name: 'Tanaka', my_number: null },
    ]);
    // binary: true asks for every result column in binary format (pg supports it; its typings lag).
    const b = await clerk.query({ text: 'SELECT my_number FROM employees WHERE id = $1', values: [1], binary: true } as pg.QueryConfig);
    assert.equal(b.rows[0].my_number, '123456789018');
    const d = await clerk.query({ text: 'SELECT my_number FROM employees WHERE id = 1' }); // simple protocol (no params)
    assert.equal(d.rows[0].my_number, '123456789018');
  });

  test('finds rows by My Number in any accepted spelling: =, IN, = ANY, IS NOT DISTINCT FROM', async () => {
    assert.deepEqual((await clerk.query('SELECT id FROM employees WHERE my_number = $1', ['1234 5678 9018'])).rows, [{ id: 1 }]);
    assert.deepEqual((await clerk.query("SELECT id FROM employees WHERE my_number IN ('123456789018', '000000000019') ORDER BY id")).rows, [{ id: 1 }, { id: 2 }]);
    assert.deepEqual((await clerk.query('SELECT id FROM employees WHERE my_number = ANY($1) ORDER BY id', [['123456789018', '000000000019']])).rows, [{ id: 1 }, { id: 2 }]);
    assert.deepEqual((await clerk.query('SELECT id FROM employees WHERE my_number IS NOT DISTINCT FROM $1', ['000000000019'])).rows, [{ id: 2 }]);
  });

  test('an invalid My Number is refused with 22P02 naming the column and the check digit, and nothing is stored', async () => {
    await assert.rejects(clerk.query("INSERT INTO employees VALUES (9, 'Bad', '123456789012')"), (e: pg.DatabaseError) => {
      assert.equal(e.code, '22P02');
      assert.match(e.message, /public\.employees\.my_number/);
      assert.match(e.message, /check digit/);
      assert.doesNotMatch(e.message, /123456789012/);
      return true;
    });
    await assert.rejects(clerk.query('INSERT INTO employees VALUES ($1, $2, $3)', [9, 'Bad', '12345678901']), { code: '22P02' });
    assert.equal((await s.cluster.query('SELECT count(*)::int AS n FROM employees WHERE id = 9')).rows[0].n, 0);
  });

  test('UNIQUE on the deterministic column rejects the same number in another spelling', async () => {
    await assert.rejects(clerk.query("INSERT INTO employees VALUES (10, 'Dup', '1234-5678-9018')"), (e: pg.DatabaseError) => {
      assert.equal(e.code, '23505');
      assert.doesNotMatch(JSON.stringify(e), /123456789018/);
      return true;
    });
  });

  test('updates go through encrypted (SET c = $n and SET c = literal)', async () => {
    await clerk.query("INSERT INTO employees VALUES (4, 'Ito', NULL)");
    await clerk.query('UPDATE employees SET my_number = $1 WHERE id = $2', ['000000000027', 4]);
    assert.equal((await clerk.query('SELECT my_number FROM employees WHERE id = 4')).rows[0].my_number, '000000000027');
    await clerk.query("UPDATE employees SET my_number = '111111111118' WHERE id = 4");
    const r = await clerk.query('SELECT my_number FROM employees WHERE id = 4');
    assert.equal(r.rows[0].my_number, '111111111118');
  });
});

describe('the database itself', () => {
  test('holds only cells: every stored My Number starts with the mamori header', async () => {
    const r = await s.cluster.query<{ n: number; cells: number }>(
      "SELECT count(my_number)::int AS n, count(*) FILTER (WHERE substring(my_number FROM 1 FOR 3) = '\\xff6d01'::bytea)::int AS cells FROM employees");
    assert.ok(r.rows[0]!.n >= 2);
    assert.equal(r.rows[0]!.cells, r.rows[0]!.n);
    const raw = await s.cluster.query("SELECT encode(my_number, 'escape') AS t FROM employees WHERE my_number IS NOT NULL");
    for (const row of raw.rows) assert.doesNotMatch(String(row.t), /123456789018|000000000019/);
  });

  test('refuses a plaintext write that bypasses mamori (the guard domain)', async () => {
    await assert.rejects(s.cluster.query("INSERT INTO employees VALUES (20, 'Bypass', convert_to('123456789018', 'UTF8'))"), /mamori_cell|violates check constraint/);
  });
});

describe('a viewer (mask)', () => {
  test('sees masked numbers and cannot search by them', async () => {
    const v = await s.connect(ROLES.viewer);
    try {
      const r = await v.query('SELECT id, my_number FROM employees WHERE id IN (1, 2) ORDER BY id');
      assert.deepEqual(r.rows, [{ id: 1, my_number: '********9018' }, { id: 2, my_number: '********0019' }]);
      await assert.rejects(v.query('SELECT id FROM employees WHERE my_number = $1', ['123456789018']), (e: pg.DatabaseError) => {
        assert.equal(e.code, '42501');
        assert.equal(e.message, 'mamori: permission denied to search column "public.employees.my_number"');
        return true;
      });
      await assert.rejects(v.query("INSERT INTO employees VALUES (30, 'V', '123456789018')"), { code: '42501' });
    } finally {
      await v.end();
    }
  });
});

describe('an outsider (others: deny)', () => {
  test('is refused the column, word for word, but reads the rest of the table', async () => {
    const o = await s.connect(ROLES.outsider);
    try {
      await assert.rejects(o.query('SELECT * FROM employees'), (e: pg.DatabaseError) => {
        assert.equal(e.code, '42501');
        assert.equal(e.message, 'mamori: permission denied to read column "public.employees.my_number"');
        return true;
      });
      assert.deepEqual((await o.query('SELECT id, name FROM employees WHERE id = 1')).rows, [{ id: 1, name: 'Sato' }]);
    } finally {
      await o.end();
    }
  });

  test('a denied DELETE … RETURNING my_number changes nothing', async () => {
    const o = await s.connect(ROLES.outsider);
    try {
      await assert.rejects(o.query('DELETE FROM employees WHERE id = 1 RETURNING my_number'), { code: '42501' });
      assert.equal((await s.cluster.query('SELECT count(*)::int AS n FROM employees WHERE id = 1')).rows[0].n, 1);
    } finally {
      await o.end();
    }
  });
});

describe('sessions that touch protected data', () => {
  test('may not change role (SET ROLE is refused, identity stays the session user)', async () => {
    const c = await s.connect(ROLES.clerk);
    try {
      await c.query('SELECT my_number FROM employees WHERE id = 1');
      await assert.rejects(c.query(`SET ROLE ${ROLES.viewer}`), { code: '42501' });
      assert.equal((await c.query('SELECT current_user AS u')).rows[0].u, ROLES.clerk);
    } finally {
      await c.end();
    }
  });

  test('views that expose the column are protected like the table', async () => {
    await s.cluster.query('CREATE VIEW public.staff AS SELECT id, my_number FROM public.employees');
    await s.cluster.query(`GRANT SELECT ON public.staff TO ${ROLES.clerk}, ${ROLES.viewer}, ${ROLES.outsider}`);
    const c = await s.connect(ROLES.clerk);
    const v = await s.connect(ROLES.viewer);
    try {
      // DDL moved the epoch: the catalog reloads before the next protected statement.
      await new Promise((r) => setTimeout(r, 200));
      assert.equal((await c.query('SELECT my_number FROM staff WHERE id = 1')).rows[0].my_number, '123456789018');
      assert.equal((await v.query('SELECT my_number FROM staff WHERE id = 1')).rows[0].my_number, '********9018');
    } finally {
      await c.end();
      await v.end();
    }
  });
});

describe('other drivers', () => {
  test('postgres.js writes and reads through mamori (unnamed and named statements)', async () => {
    for (const prepare of [false, true]) {
      const sql = postgres({ host: '127.0.0.1', port: s.mamori.port, user: ROLES.clerk, password: PASSWORD, database: 'postgres',
        ssl: { ca: s.cluster.ca.cert, servername: 'localhost' }, max: 1, prepare, onnotice: () => undefined });
      try {
        const id = prepare ? 41 : 40;
        await sql`INSERT INTO employees (id, name, my_number) VALUES (${id}, ${'PJ'}, ${prepare ? '222222222225' : '333333333332'})`;
        const rows = await sql`SELECT my_number FROM employees WHERE id = ${id}`;
        assert.equal(rows[0]!.my_number, prepare ? '222222222225' : '333333333332');
      } finally {
        await sql.end();
      }
    }
  });

  test('psql shows plaintext to the clerk', async () => {
    const bindir = systemBindir();
    const psql = bindir ? join(bindir, 'psql') : 'psql';
    const rc = join(s.dir, 'root.crt');
    writeFileSync(rc, s.cluster.ca.cert);
    const { stdout } = await run(psql, ['-XAt', '-c', 'SELECT my_number FROM employees WHERE id = 1'], {
      env: { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(s.mamori.port), PGUSER: ROLES.clerk, PGPASSWORD: PASSWORD,
        PGDATABASE: 'postgres', PGSSLMODE: 'verify-full', PGSSLROOTCERT: rc },
    });
    assert.equal(stdout.trim(), '123456789018');
  });
});

test('no protected plaintext appears in any log line', () => {
  const all = logLines.join('');
  assert.ok(all.length > 0);
  for (const n of ['123456789018', '000000000019', '111111111118', '1234-5678-9018']) assert.ok(!all.includes(n), `log contains ${n}`);
});
