// Search limits and key rotation through a running mamori: the per-session search rate (53400) and the
// IN / ANY cap (54000) in both protocols; a key version added by another process (Keyring.open on the same
// keystore, as `mamori keys rotate` does) is used by new writes without a restart, old rows stay readable;
// writes to a rotating deterministic domain are refused with 55000 while reads go on.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type pg from 'pg';
import { Keyring, keyringConfigFrom } from '../../../keyring/index.js';
import { defaultConfig } from '../../../config/load.js';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;
let kr: Keyring;
const DET = 'mynumber';
const RAND = 'notes_body';

before(async () => {
  s = await startProtectedStack({
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic', domain: DET,
        read: { plaintext: [ROLES.clerk], mask: [ROLES.viewer] }, search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
      'public.notes.body': {
        type: 'text', mode: 'randomized', domain: RAND,
        read: { plaintext: [ROLES.clerk] }, write: [ROLES.clerk], others: 'deny',
      },
    },
    config: { search: { ratePerSecond: 1, burst: 3, maxInListItems: 3 }, metrics: { enabled: false } },
  });
  await s.cluster.query('CREATE TABLE public.notes (id int PRIMARY KEY, body mamori.text)');
  await s.cluster.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.notes TO ${ROLES.clerk}`);
  const keyring = { keyFile: join(s.dir, 'root.key'), store: { type: 'file' as const, path: join(s.dir, 'keystore.json') } };
  kr = await Keyring.open(keyringConfigFrom(defaultConfig({ keyring }).keyring));
});

after(async () => {
  await kr?.close();
  await s?.stop();
});

/** The key version in the header of a stored cell (bytes 8..11), read directly on the server. */
async function storedVersion(table: string, column: string, id: number): Promise<number> {
  const r = await s.cluster.query(`SELECT ${column}::bytea AS c FROM public.${table} WHERE id = $1`, [id]);
  const cell = r.rows[0].c as Buffer;
  assert.equal(cell.subarray(0, 3).toString('hex'), 'ff6d01');
  return cell.readUInt32BE(8);
}

async function eventually<T>(what: string, fn: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('search limits', () => {
  test('simple protocol: the burst is allowed, then searches are refused with 53400 until the bucket refills; other statements go on', async () => {
    const c = await s.connect(ROLES.clerk);
    try {
      await c.query("INSERT INTO employees VALUES (100, 'Limit', '123456789018')");
      for (let i = 0; i < 3; i++) {
        assert.deepEqual((await c.query("SELECT id FROM employees WHERE my_number = '123456789018'")).rows, [{ id: 100 }]);
      }
      await assert.rejects(c.query("SELECT id FROM employees WHERE my_number = '123456789018'"), (e: pg.DatabaseError) => {
        assert.equal(e.code, '53400');
        assert.match(e.message, /too many searches on protected column public\.employees\.my_number/);
        assert.doesNotMatch(e.message, /123456789018/);
        return true;
      });
      // Reads and writes that do not search are not limited.
      assert.deepEqual((await c.query('SELECT my_number FROM employees WHERE id = 100')).rows, [{ my_number: '123456789018' }]);
      await c.query("UPDATE employees SET name = 'Limit2' WHERE id = 100");
      await new Promise((r) => setTimeout(r, 1100));
      assert.deepEqual((await c.query("SELECT id FROM employees WHERE my_number = '123456789018'")).rows, [{ id: 100 }]);
    } finally {
      await c.end();
    }
  });

  test('extended protocol: each Bind of a searching prepared statement takes a token; the limit is per session', async () => {
    const c = await s.connect(ROLES.clerk);
    const other = await s.connect(ROLES.clerk);
    try {
      const q = { name: 'by_number', text: 'SELECT id FROM employees WHERE my_number = $1' };
      for (let i = 0; i < 3; i++) assert.deepEqual((await c.query({ ...q, values: ['1234-5678-9018'] })).rows, [{ id: 100 }]);
      await assert.rejects(c.query({ ...q, values: ['1234-5678-9018'] }), { code: '53400' });
      // The session stays usable, and another session has its own bucket.
      assert.deepEqual((await c.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
      assert.deepEqual((await other.query({ ...q, values: ['123456789018'] })).rows, [{ id: 100 }]);
    } finally {
      await c.end();
      await other.end();
    }
  });

  test('IN lists and = ANY($1) arrays are capped (54000 naming the column); at the cap they run', async () => {
    const c = await s.connect(ROLES.clerk);
    try {
      const three = ['123456789018', '000000000019', '000000000027'];
      const four = [...three, '000000000035'];
      assert.deepEqual((await c.query('SELECT id FROM employees WHERE my_number = ANY($1)', [three])).rows, [{ id: 100 }]);
      await assert.rejects(c.query('SELECT id FROM employees WHERE my_number = ANY($1)', [four]), (e: pg.DatabaseError) => {
        assert.equal(e.code, '54000');
        assert.equal(e.message, 'mamori: column "public.employees.my_number" is protected: an ANY list of 4 values (parameter $1) exceeds the limit of 3');
        return true;
      });
      await assert.rejects(c.query(`SELECT id FROM employees WHERE my_number IN (${four.map((v) => `'${v}'`).join(', ')})`), (e: pg.DatabaseError) => {
        assert.equal(e.code, '54000');
        assert.match(e.message, /public\.employees\.my_number.*IN list of 4 values exceeds the limit of 3/);
        return true;
      });
    } finally {
      await c.end();
    }
  });
});

describe('key rotation with a running proxy', () => {
  test('a randomized version added in another process is used by new writes without a restart; old rows stay readable (also through a statement prepared before)', async () => {
    const c = await s.connect(ROLES.clerk);
    try {
      await c.query('INSERT INTO notes VALUES ($1, $2)', [1, 'before rotation']);
      const v1 = await storedVersion('notes', 'body', 1);
      const get = { name: 'get_note', text: 'SELECT body FROM notes WHERE id = $1' };
      assert.equal((await c.query({ ...get, values: [1] })).rows[0].body, 'before rotation');
      const v2 = await kr.rotate(RAND);
      assert.equal(v2, v1 + 1);
      // The file watch polls once a second: new writes switch to v2 without anything else happening.
      let id = 2;
      const got = await eventually('new writes under the new version', async () => {
        await c.query('INSERT INTO notes VALUES ($1, $2)', [id, `after rotation ${id}`]);
        const v = await storedVersion('notes', 'body', id);
        id++;
        return v === v2 ? id - 1 : undefined;
      });
      assert.equal((await c.query({ ...get, values: [got] })).rows[0].body, `after rotation ${got}`);
      assert.equal((await c.query({ ...get, values: [1] })).rows[0].body, 'before rotation');
      assert.deepEqual((await c.query('SELECT body FROM notes WHERE id = 1')).rows, [{ body: 'before rotation' }]);
      // SIGHUP's reload picks a change up at once, without waiting for the watch.
      const v3 = await kr.rotate(RAND);
      await s.mamori.reload();
      await c.query('INSERT INTO notes VALUES ($1, $2)', [1000, 'after reload']);
      assert.equal(await storedVersion('notes', 'body', 1000), v3);
      assert.equal((await c.query({ ...get, values: [1000] })).rows[0].body, 'after reload');
    } finally {
      await c.end();
    }
  });

  test('while a deterministic domain rotates, writes are refused with 55000 saying so and reads go on; once it finishes, writes use the new version', async () => {
    const c = await s.connect(ROLES.clerk);
    try {
      await c.query("INSERT INTO employees VALUES (200, 'Rot', '000000000019')");
      const vBefore = await storedVersion('employees', 'my_number', 200);
      const vNew = await kr.rotate(DET);
      assert.equal(kr.isWriteFrozen(DET), true);
      await s.mamori.reload();
      for (const attempt of [
        () => c.query("INSERT INTO employees VALUES (201, 'Rot2', '000000000027')"),
        () => c.query('INSERT INTO employees VALUES ($1, $2, $3)', [201, 'Rot2', '000000000027']),
        () => c.query('UPDATE employees SET my_number = $1 WHERE id = 200', ['000000000035']),
      ]) {
        await assert.rejects(attempt(), (e: pg.DatabaseError) => {
          assert.equal(e.code, '55000');
          assert.match(e.message, /key domain mynumber is rotating; writes are refused until the rotation finishes/);
          return true;
        });
      }
      assert.equal((await s.cluster.query('SELECT count(*)::int AS n FROM employees WHERE id = 201')).rows[0].n, 0);
      // Reads by primary key still decrypt (the old version stays loaded).
      assert.deepEqual((await c.query('SELECT my_number FROM employees WHERE id = 200')).rows, [{ my_number: '000000000019' }]);
      assert.deepEqual((await c.query('SELECT my_number FROM employees WHERE id = $1', [200])).rows, [{ my_number: '000000000019' }]);
      // An equality search encrypts its value too: refused the same way while the domain rotates.
      await assert.rejects(c.query('SELECT id FROM employees WHERE my_number = $1', ['000000000019']), { code: '55000' });
      // Writes that store no value (NULL) are not frozen: nothing is encrypted.
      await c.query("INSERT INTO employees VALUES (202, 'NoNumber', NULL)");
      await kr.finishRotation(DET);
      // Picked up by the watch alone this time.
      await eventually('writes allowed again', async () => {
        try {
          await c.query("INSERT INTO employees VALUES (201, 'Rot2', '000000000027')");
          return true;
        } catch (err) {
          assert.equal((err as pg.DatabaseError).code, '55000');
          return undefined;
        }
      });
      assert.equal(await storedVersion('employees', 'my_number', 201), vNew);
      assert.notEqual(vNew, vBefore);
      assert.deepEqual((await c.query('SELECT my_number FROM employees WHERE id = 201')).rows, [{ my_number: '000000000027' }]);
    } finally {
      await c.end();
    }
  });
});
