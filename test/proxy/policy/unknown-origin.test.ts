// Cells that reach a client through result fields of unknown origin (DESIGN.md §5): function results,
// expressions over them, cursors over them, and copies of cells in a table that is not protected. Each value
// carrying a cell header is decided by the header's key domain → the protected column → the role's read
// decision; a denied one ends the result with 42501 and the session stays usable.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import postgres from 'postgres';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';
import { RawClient } from '../../harness/raw-client.js';
import { encodeBind, encodeDescribe, encodeExecute, encodeParse, encodeQuery, encodeSync } from '../../../proxy/wire/frontend.js';
import { decodeDataRow, decodeNoticeFields } from '../../../proxy/wire/backend.js';
import { BE } from '../../../proxy/wire/types.js';

const BACKUP = 'backup_job';
const NULLED = 'hr_nulled';
const MY_NUMBER = '123456789018';
const SECOND = '000000000019';

let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack({
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk], mask: [ROLES.viewer], ciphertext: [BACKUP], null: [NULLED] },
        search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
    },
  });
  for (const r of [BACKUP, NULLED]) {
    await s.cluster.createRole(r, PASSWORD);
    await s.cluster.query(`GRANT SELECT ON public.employees TO ${r}`);
  }
  const c = await s.connect(ROLES.clerk);
  await c.query(`INSERT INTO employees VALUES (1, 'Sato', '${MY_NUMBER}'), (2, 'Suzuki', '${SECOND}')`);
  await c.end();
  // Created by the superuser directly (not through mamori): functions over the protected column, and a copy
  // of its cells in a table mamori does not protect.
  await s.cluster.query(`CREATE FUNCTION public.f_num(int) RETURNS bytea LANGUAGE sql STABLE
    AS 'SELECT my_number FROM public.employees WHERE id = $1'`);
  await s.cluster.query(`CREATE FUNCTION public.f_all() RETURNS TABLE (id int, num bytea) LANGUAGE plpgsql STABLE
    AS $$ BEGIN RETURN QUERY SELECT e.id, e.my_number::bytea FROM public.employees e ORDER BY e.id; END $$`);
  await s.cluster.query('CREATE EXTENSION IF NOT EXISTS citext');
  await s.cluster.query(`CREATE TABLE public.cell_copies AS SELECT id, my_number::bytea AS cell FROM public.employees`);
  await s.cluster.query(`CREATE TABLE public.blobs (id int, data bytea)`);
  await s.cluster.query(`INSERT INTO public.blobs VALUES (1, '\\x0102ff'), (2, '\\xff6d0103000000010000000100'), (3, NULL)`);
  for (const r of [...Object.values(ROLES), BACKUP, NULLED]) {
    await s.cluster.query(`GRANT SELECT ON public.cell_copies, public.blobs TO ${r}`);
  }
});

after(async () => {
  await s?.stop();
});

async function as<T>(role: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await s.connect(role);
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** pg's value for a bytea field: a Buffer (text and binary results alike). */
function bytes(v: unknown): Buffer {
  assert.ok(Buffer.isBuffer(v), `expected a Buffer, got ${typeof v}`);
  return v;
}

interface RawResult {
  rows: (Buffer | null)[][];
  error: { code: string; message: string } | null;
  /** What a query sent after it returned (the session still works). */
  after: string | null;
}

/**
 * Parse/Bind/(Describe)/Execute/Sync with binary results, over a raw connection (pg reads binary fields as
 * UTF-8 strings, which would mangle bytea): the DataRows' bytes as sent, then a follow-up query.
 */
async function binaryRows(role: string, sql: string, params: string[], describe = true): Promise<RawResult> {
  const c = await RawClient.connect('127.0.0.1', s.mamori.port, { user: role, password: PASSWORD, tls: { ca: s.cluster.ca.cert } });
  try {
    c.send(Buffer.concat([
      encodeParse({ name: '', sql, paramTypes: [] }),
      encodeBind({ portal: '', statement: '', paramFormats: [], params: params.map((p) => Buffer.from(p)), resultFormats: [1] }),
      ...(describe ? [encodeDescribe({ target: 'P', name: '' })] : []),
      encodeExecute({ portal: '', maxRows: 0 }),
      encodeSync(),
    ]));
    const frames = await c.until(BE.ReadyForQuery);
    const err = frames.find((f) => f.type === BE.ErrorResponse);
    const fields = err ? decodeNoticeFields(err.body) : null;
    c.send(encodeQuery("SELECT 'still here'"));
    const next = await c.until(BE.ReadyForQuery);
    const row = next.find((f) => f.type === BE.DataRow);
    return {
      rows: frames.filter((f) => f.type === BE.DataRow).map((f) => decodeDataRow(f.body).fields.map((v) => (v === null ? null : Buffer.from(v)))),
      error: fields ? { code: fields.C ?? '', message: fields.M ?? '' } : null,
      after: row ? String(decodeDataRow(row.body).fields[0]) : null,
    };
  } finally {
    c.close();
  }
}

function isCell(b: Buffer): boolean {
  return b.length >= 40 && b[0] === 0xff && b[1] === 0x6d && b[2] === 0x01;
}

function assertDenied(e: unknown, via: RegExp): true {
  const err = e as { code: string; message: string };
  assert.equal(err.code, '42501');
  assert.match(err.message, /permission denied to read column "public\.employees\.my_number"/);
  assert.match(err.message, via);
  return true;
}

describe('a function returning the protected column (SELECT f(), SELECT * FROM f())', () => {
  for (const extended of [false, true]) {
    const how = extended ? 'text results (extended protocol)' : 'text results (simple protocol)';
    const run = (c: pg.Client, text: string): Promise<pg.QueryResult> =>
      extended ? c.query({ text: text.replace('$1', '$1::int'), values: [1] }) : c.query(text.replace('$1', '1'));

    test(`${how}: plaintext, mask, ciphertext and null roles each get their decision`, async () => {
      assert.equal(bytes((await as(ROLES.clerk, (c) => run(c, 'SELECT f_num($1) AS n'))).rows[0].n).toString('latin1'), MY_NUMBER);
      assert.equal(bytes((await as(ROLES.viewer, (c) => run(c, 'SELECT f_num($1) AS n'))).rows[0].n).toString('latin1'), '********9018');
      const cell = bytes((await as(BACKUP, (c) => run(c, 'SELECT f_num($1) AS n'))).rows[0].n);
      assert.ok(isCell(cell), 'the ciphertext role gets the stored cell');
      assert.equal((await as(NULLED, (c) => run(c, 'SELECT f_num($1) AS n'))).rows[0].n, null);
    });

    test(`${how}: a denied role gets 42501 naming the column and the function result, and the session goes on`, async () => {
      await as(ROLES.outsider, async (c) => {
        await assert.rejects(run(c, 'SELECT f_num($1) AS n'), (e) => assertDenied(e, /result column "n" of unknown origin/));
        await assert.rejects(run(c, 'SELECT * FROM f_all() WHERE id >= $1'), (e) => assertDenied(e, /result column "num" of unknown origin/));
        assert.deepEqual((await c.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
      });
    });

    test(`${how}: SELECT * FROM f() for the clerk gives every row in plaintext`, async () => {
      const r = await as(ROLES.clerk, (c) => run(c, 'SELECT * FROM f_all() WHERE id >= $1 ORDER BY id'));
      assert.deepEqual(r.rows.map((x: { id: number; num: Buffer }) => [x.id, bytes(x.num).toString('latin1')]), [[1, MY_NUMBER], [2, SECOND]]);
    });
  }

  for (const describe of [true, false]) {
    const how = `binary results (extended protocol, ${describe ? 'with' : 'without'} the client's Describe)`;
    test(`${how}: each role gets its decision in binary; a denied role gets 42501 and the session goes on`, async () => {
      const one = async (role: string): Promise<Buffer | null> => {
        const r = await binaryRows(role, 'SELECT f_num($1::int) AS n', ['1'], describe);
        assert.equal(r.error, null);
        assert.equal(r.rows.length, 1);
        return r.rows[0]![0]!;
      };
      assert.equal((await one(ROLES.clerk))!.toString('latin1'), MY_NUMBER);
      assert.equal((await one(ROLES.viewer))!.toString('latin1'), '********9018');
      assert.ok(isCell((await one(BACKUP))!));
      assert.equal(await one(NULLED), null);
      const denied = await binaryRows(ROLES.outsider, 'SELECT * FROM f_all() WHERE id >= $1::int', ['1'], describe);
      assertDenied(denied.error, /result column "num" of unknown origin/);
      assert.equal(denied.rows.length, 0);
      assert.equal(denied.after, 'still here');
      const all = await binaryRows(ROLES.clerk, 'SELECT * FROM f_all() WHERE id >= $1::int ORDER BY id', ['1'], describe);
      assert.deepEqual(all.rows.map((r) => [r[0]!.readInt32BE(0), r[1]!.toString('latin1')]), [[1, MY_NUMBER], [2, SECOND]]);
    });
  }

  test('a denial inside a transaction block leaves it failed, as a server error would', async () => {
    await as(ROLES.outsider, async (c) => {
      await c.query('BEGIN');
      await assert.rejects(c.query('SELECT f_num(1)'), { code: '42501' });
      await assert.rejects(c.query('SELECT 1'), { code: '25P02' });
      await c.query('ROLLBACK');
      await c.query('BEGIN');
      await assert.rejects(c.query({ text: 'SELECT f_num($1::int)', values: [2] }), { code: '42501' });
      await assert.rejects(c.query({ text: 'SELECT $1::int', values: [1] }), { code: '25P02' });
      await c.query('ROLLBACK');
      assert.equal((await c.query({ text: 'SELECT $1::int AS v', values: [7] })).rows[0].v, 7);
    });
  });

  test('no cell bytes reach a denied client: rows before the first cell pass, the rest is replaced by the error', async () => {
    const c = await RawClient.connect('127.0.0.1', s.mamori.port, { user: ROLES.outsider, password: PASSWORD, tls: { ca: s.cluster.ca.cert } });
    try {
      // The first row carries no cell (NULL), the second does.
      c.send(encodeQuery('SELECT x.id, CASE WHEN x.id = 1 THEN NULL ELSE f_num(x.id) END AS n FROM generate_series(1, 2) AS x(id) ORDER BY x.id'));
      const frames = await c.until(BE.ReadyForQuery);
      const types = frames.map((f) => String.fromCharCode(f.type)).join('');
      assert.equal(types, 'TDEZ', 'RowDescription, the cell-free row, the error, ReadyForQuery');
      for (const f of frames) assert.equal(f.body.includes(Buffer.from([0xff, 0x6d, 0x01])), false, 'no cell bytes');
      assert.ok(frames.every((f) => !f.body.toString('latin1').includes('\\xff6d01')));
      const err = frames.find((f) => f.type === BE.ErrorResponse)!;
      assert.equal(decodeNoticeFields(err.body).C, '42501');
      assert.equal(frames.at(-1)!.body.toString('latin1'), 'I');
      c.send(encodeQuery('SELECT 2'));
      const next = await c.until(BE.ReadyForQuery);
      assert.ok(next.some((f) => f.type === BE.DataRow) && !next.some((f) => f.type === BE.ErrorResponse));
    } finally {
      c.close();
    }
  });
});

describe('expressions, cursors and copies', () => {
  test('f()::text carries the hex form of the cell: decided like the bytea', async () => {
    assert.equal((await as(ROLES.clerk, (c) => c.query('SELECT f_num(1)::text AS t'))).rows[0].t, MY_NUMBER);
    assert.equal((await as(ROLES.viewer, (c) => c.query({ text: 'SELECT f_num($1::int)::text AS t', values: [2] }))).rows[0].t, '********0019');
    const raw = (await as(BACKUP, (c) => c.query('SELECT f_num(1)::text AS t'))).rows[0].t as string;
    assert.match(raw, /^\\xff6d0102[0-9a-f]{72}$/);
    await as(ROLES.outsider, async (c) => {
      await assert.rejects(c.query('SELECT f_num(1)::text AS t'), (e) => assertDenied(e, /result column "t" of unknown origin/));
      // name keeps the header and most of the body (63 bytes): still the column's cell, still refused
      await assert.rejects(c.query('SELECT f_num(1)::text::name AS t'), (e) => assertDenied(e, /result column "t" of unknown origin/));
      await assert.rejects(c.query('SELECT f_num(1)::text::xml AS t'), (e) => assertDenied(e, /result column "t" of unknown origin/));
      // a type the database defines (an extension's): its text form is looked at too
      await assert.rejects(c.query('SELECT f_num(1)::text::citext AS t'), (e) => assertDenied(e, /result column "t" of unknown origin/));
    });
  });

  test('a cursor over a function result: FETCH is decided per role', async () => {
    const fetch = (role: string): Promise<unknown[]> => as(role, async (c) => {
      await c.query('BEGIN');
      try {
        await c.query('DECLARE cur CURSOR FOR SELECT f_num(x) AS n FROM generate_series(1, 2) AS x ORDER BY x');
        return (await c.query('FETCH ALL FROM cur')).rows.map((r: { n: Buffer | null }) => r.n === null ? null : r.n.toString('latin1'));
      } finally {
        await c.query('ROLLBACK');
      }
    });
    assert.deepEqual(await fetch(ROLES.clerk), [MY_NUMBER, SECOND]);
    assert.deepEqual(await fetch(ROLES.viewer), ['********9018', '********0019']);
    assert.deepEqual(await fetch(NULLED), [null, null]);
    await assert.rejects(fetch(ROLES.outsider), (e) => assertDenied(e, /result column "n" of unknown origin/));
  });

  test('cells copied into a table that is not protected are decided by their header', async () => {
    const read = (role: string, extended: boolean): Promise<pg.QueryResult> => as(role, (c) =>
      extended ? c.query({ text: 'SELECT cell FROM cell_copies WHERE id = $1', values: [1] }) : c.query('SELECT cell FROM cell_copies WHERE id = 1'));
    const origin = /result column "cell" of a column that is not protected \(table OID \d+, attnum 2\)/;
    for (const extended of [false, true]) {
      assert.equal(bytes((await read(ROLES.clerk, extended)).rows[0].cell).toString('latin1'), MY_NUMBER);
      assert.equal(bytes((await read(ROLES.viewer, extended)).rows[0].cell).toString('latin1'), '********9018');
      await assert.rejects(read(ROLES.outsider, extended), (e) => assertDenied(e, origin));
    }
    const bin = await binaryRows(ROLES.clerk, 'SELECT cell FROM cell_copies WHERE id = $1::int', ['2']);
    assert.equal(bin.rows[0]![0]!.toString('latin1'), SECOND);
    assertDenied((await binaryRows(ROLES.outsider, 'SELECT cell FROM cell_copies WHERE id = $1::int', ['2'])).error, origin);
  });

  test('a forged header naming an unknown key domain is refused (fail closed), whatever the role', async () => {
    const forged = '\\xff6d0102000003e700000001' + '00'.repeat(28);
    for (const role of [ROLES.clerk, BACKUP]) {
      await as(role, async (c) => {
        await assert.rejects(c.query(`SELECT '${forged}'::bytea AS b`), (e: { code: string; message: string }) => {
          assert.equal(e.code, '42501');
          assert.match(e.message, /result column "b" of unknown origin .* carries a mamori cell of key domain id 999, which no protected column of this database uses/);
          return true;
        });
        assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
      });
    }
  });

  test('bytea and text that carry no cell are not affected (simple and extended, text and binary)', async () => {
    await as(ROLES.outsider, async (c) => {
      const simple = await c.query('SELECT id, data FROM blobs ORDER BY id');
      const ext = await c.query({ text: 'SELECT id, data, $1::text AS t FROM blobs ORDER BY id', values: ['\\xff6d01'] });
      for (const r of [simple, ext]) {
        assert.deepEqual(r.rows.map((x: { data: Buffer | null }) => x.data?.toString('hex') ?? null), ['0102ff', 'ff6d0103000000010000000100', null]);
      }
      assert.equal(ext.rows[0].t, '\\xff6d01');
    });
    const bin = await binaryRows(ROLES.outsider, 'SELECT data FROM blobs WHERE id <= $1::int ORDER BY id', ['2'], false);
    assert.equal(bin.error, null);
    assert.deepEqual(bin.rows.map((r) => r[0]!.toString('hex')), ['0102ff', 'ff6d0103000000010000000100']);
  });
});

describe('COPY … TO STDOUT of rows that are not a protected table\'s', () => {
  async function copyOut(role: string, sql: string): Promise<{ types: string; data: string; error: { code: string; message: string } | null; after: boolean }> {
    const c = await RawClient.connect('127.0.0.1', s.mamori.port, { user: role, password: PASSWORD, tls: { ca: s.cluster.ca.cert } });
    try {
      c.send(encodeQuery(sql));
      const frames = await c.until(BE.ReadyForQuery);
      const err = frames.find((f) => f.type === BE.ErrorResponse);
      const fields = err ? decodeNoticeFields(err.body) : null;
      c.send(encodeQuery('SELECT 1'));
      const next = await c.until(BE.ReadyForQuery);
      return {
        types: frames.map((f) => String.fromCharCode(f.type)).join(''),
        data: Buffer.concat(frames.filter((f) => f.type === BE.CopyData).map((f) => f.body)).toString('latin1'),
        error: fields ? { code: fields.C ?? '', message: fields.M ?? '' } : null,
        after: next.some((f) => f.type === BE.DataRow),
      };
    } finally {
      c.close();
    }
  }

  test('a denied role: 42501 ends the COPY, no cell bytes, the session goes on', async () => {
    for (const sql of ['COPY (SELECT f_num(1)) TO STDOUT', 'COPY cell_copies TO STDOUT (FORMAT csv)', 'COPY cell_copies TO STDOUT (FORMAT binary)']) {
      const r = await copyOut(ROLES.outsider, sql);
      assertDenied(r.error, /a row of COPY TO of unknown origin/);
      assert.equal(r.types, 'HEZ', sql);
      assert.equal(r.after, true);
    }
  });

  test('the ciphertext role copies the cells as stored; other readers are refused (COPY rows are not rewritten)', async () => {
    const backup = await copyOut(BACKUP, 'COPY (SELECT id, f_num(id) FROM generate_series(1, 2) id) TO STDOUT');
    assert.equal(backup.error, null);
    assert.match(backup.data, /^1\t\\\\xff6d0102[0-9a-f]{72}\n2\t\\\\xff6d0102[0-9a-f]{72}\n$/);
    const clerk = await copyOut(ROLES.clerk, 'COPY (SELECT f_num(1)::text) TO STDOUT');
    assert.equal(clerk.error?.code, '0A000');
    assert.match(clerk.error!.message, /COPY TO carries a cell of column "public\.employees\.my_number".*only a role that reads it as ciphertext may copy it/);
    assert.equal(clerk.data, '');
  });

  test('through the extended protocol (Parse/Bind/Execute, no Describe): decided the same way', async () => {
    const extended = async (role: string, sql: string): Promise<{ types: string; data: string; code: string | null; after: boolean }> => {
      const c = await RawClient.connect('127.0.0.1', s.mamori.port, { user: role, password: PASSWORD, tls: { ca: s.cluster.ca.cert } });
      try {
        c.send(Buffer.concat([
          encodeParse({ name: '', sql, paramTypes: [] }),
          encodeBind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }),
          encodeExecute({ portal: '', maxRows: 0 }),
          encodeSync(),
        ]));
        const frames = await c.until(BE.ReadyForQuery);
        const err = frames.find((f) => f.type === BE.ErrorResponse);
        c.send(encodeQuery('SELECT 1'));
        const next = await c.until(BE.ReadyForQuery);
        return {
          types: frames.map((f) => String.fromCharCode(f.type)).join(''),
          data: Buffer.concat(frames.filter((f) => f.type === BE.CopyData).map((f) => f.body)).toString('latin1'),
          code: err ? decodeNoticeFields(err.body).C ?? '' : null,
          after: next.some((f) => f.type === BE.DataRow),
        };
      } finally {
        c.close();
      }
    };
    const denied = await extended(ROLES.outsider, 'COPY (SELECT f_num(1)) TO STDOUT');
    assert.equal(denied.code, '42501');
    assert.ok(!denied.data.includes('ff6d01'), 'no cell bytes');
    assert.equal(denied.after, true);
    const clerk = await extended(ROLES.clerk, 'COPY (SELECT f_num(1)) TO STDOUT');
    assert.equal(clerk.code, '0A000');
    assert.equal(clerk.data, '');
    const backup = await extended(BACKUP, 'COPY (SELECT f_num(1)) TO STDOUT');
    assert.equal(backup.code, null);
    assert.match(backup.data, /^\\\\xff6d0102[0-9a-f]{72}\n$/);
    const plain = await extended(ROLES.outsider, 'COPY (SELECT data FROM blobs ORDER BY id) TO STDOUT');
    assert.equal(plain.code, null);
    assert.equal(plain.data, '\\\\x0102ff\n\\\\xff6d0103000000010000000100\n\\N\n');
  });

  test('COPY of bytea without cells is not affected', async () => {
    const r = await copyOut(ROLES.outsider, 'COPY (SELECT data FROM blobs ORDER BY id) TO STDOUT');
    assert.equal(r.error, null);
    assert.equal(r.data, '\\\\x0102ff\n\\\\xff6d0103000000010000000100\n\\N\n');
    const bin = await copyOut(ROLES.outsider, 'COPY (SELECT data FROM blobs ORDER BY id) TO STDOUT (FORMAT binary)');
    assert.equal(bin.error, null);
    assert.ok(bin.data.includes('\xff\x6d\x01\x03'));
  });
});

test('postgres.js (extended protocol with described statements): decided per role, denial keeps the connection', async () => {
  const open = (role: string): ReturnType<typeof postgres> => postgres({ host: '127.0.0.1', port: s.mamori.port, user: role, password: PASSWORD,
    database: 'postgres', ssl: { ca: s.cluster.ca.cert, servername: 'localhost' }, max: 1, onnotice: () => undefined });
  const clerk = open(ROLES.clerk);
  try {
    for (let i = 0; i < 2; i++) { // the second run reuses the prepared statement and its kept shape
      const rows = await clerk`SELECT f_num(${1}::int) AS n, ${'x'}::text AS t`;
      assert.equal(bytes(rows[0]!.n).toString('latin1'), MY_NUMBER);
    }
  } finally {
    await clerk.end();
  }
  const outsider = open(ROLES.outsider);
  try {
    await assert.rejects(outsider`SELECT f_num(${2}::int) AS n`, (e) => assertDenied(e, /result column "n" of unknown origin/));
    const rows = await outsider`SELECT ${3}::int AS v`;
    assert.equal(rows[0]!.v, 3);
  } finally {
    await outsider.end();
  }
});
