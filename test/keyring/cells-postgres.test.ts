// Cells as PostgreSQL stores them: the guard CHECK documented in docs/ciphertext-format.md accepts cells and
// refuses plaintext, and deterministic cells of canonical values make UNIQUE, joins and GROUP BY work.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cellKeyFromBytes, decryptCell, encryptCell, type CellHeader } from '../../keyring/cells/index.js';
import { canonicalFromText, parseLogicalType, textFromCanonical } from '../../keyring/logical-types.js';
import { startCluster, type Cluster } from '../harness/cluster.js';

const GUARD = `CHECK (substring(VALUE from 1 for 3) = '\\xff6d01'::bytea AND get_byte(VALUE, 3) IN (1, 2)
  AND octet_length(VALUE) >= CASE get_byte(VALUE, 3) WHEN 1 THEN 40 ELSE 28 END)`;

describe('cells in PostgreSQL', () => {
  let pg: Cluster;
  before(async () => {
    pg = await startCluster({ tls: false });
    await pg.query(`CREATE DOMAIN cell_guard AS bytea ${GUARD}`);
  });
  after(async () => {
    await pg?.stop();
  });

  test('the documented guard CHECK accepts both modes and refuses plaintext and bare headers', async () => {
    await pg.query('CREATE TABLE guarded (v cell_guard)');
    const det = cellKeyFromBytes('deterministic', randomBytes(64));
    const rnd = cellKeyFromBytes('randomized', randomBytes(32));
    const good = [
      encryptCell({ mode: 'deterministic', domainId: 1, version: 1 }, det, Buffer.alloc(0)),
      encryptCell({ mode: 'randomized', domainId: 1, version: 1 }, rnd, Buffer.alloc(0)),
      encryptCell({ mode: 'randomized', domainId: 0xffffffff, version: 9 }, rnd, Buffer.from('123456789018')),
    ];
    for (const c of good) await pg.query('INSERT INTO guarded VALUES ($1)', [c]);
    const bad = [
      Buffer.from('123456789018'),
      Buffer.concat([Buffer.from('ff6d0103', 'hex'), Buffer.alloc(40)]),
      good[0]!.subarray(0, 27),
      good[1]!.subarray(0, 39),
    ];
    for (const b of bad) {
      await assert.rejects(pg.query('INSERT INTO guarded VALUES ($1)', [b]), /violates check constraint/);
    }
    const back = await pg.query<{ v: Buffer }>('SELECT v FROM guarded ORDER BY octet_length(v)');
    assert.equal(back.rows.length, 3);
    assert.deepEqual(decryptCell(back.rows[2]!.v, rnd), Buffer.from('123456789018'));
  });

  test('deterministic cells of canonical My Numbers: UNIQUE, join and GROUP BY see equal values', async () => {
    const t = parseLogicalType('mynumber');
    const key = cellKeyFromBytes('deterministic', randomBytes(64));
    const h: CellHeader = { mode: 'deterministic', domainId: 12, version: 1 };
    const cell = (text: string): Buffer => {
      const c = canonicalFromText(t, text);
      assert.ok(c.ok);
      return encryptCell(h, key, c.value);
    };
    await pg.query('CREATE TABLE people (id int, mn cell_guard UNIQUE)');
    await pg.query('CREATE TABLE payments (mn cell_guard, amount int)');
    await pg.query('INSERT INTO people VALUES (1, $1), (2, $2)', [cell('123456789018'), cell('000000000019')]);
    // the same number typed another way is the same stored bytes: UNIQUE rejects it
    await assert.rejects(
      pg.query('INSERT INTO people VALUES (3, $1)', [cell('１２３４ ５６７８ ９０１８')]),
      /duplicate key value violates unique constraint/,
    );
    for (const [form, amount] of [['1234-5678-9018', 10], ['123456789018', 20], ['0000 0000 0019', 5]] as const) {
      await pg.query('INSERT INTO payments VALUES ($1, $2)', [cell(form), amount]);
    }
    const r = await pg.query<{ id: number; total: string; mn: Buffer }>(
      'SELECT p.id, sum(x.amount) AS total, p.mn FROM people p JOIN payments x USING (mn) GROUP BY p.id, p.mn ORDER BY p.id',
    );
    assert.deepEqual(
      r.rows.map((row) => [row.id, Number(row.total), textFromCanonical(t, decryptCell(row.mn, key, { domainId: 12 }))]),
      [
        [1, 30, '123456789018'],
        [2, 5, '000000000019'],
      ],
    );
  });
});
