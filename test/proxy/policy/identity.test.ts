// Identity and session-state stories: DBAs cannot give themselves plaintext (superusers only by login,
// self-granted membership held until the security officer approves), a temp table shadowing a protected one
// is not protected, sessions whose text the parser would read differently are refused, and server errors
// that could echo a protected value lose those fields.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { Keyring, keyringConfigFrom } from '../../../keyring/index.js';
import { Approvals, approvalsMacKey, approvalsPath } from '../../../proxy/policy/approvals.js';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack({
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk, 'boss'], mask: [ROLES.viewer] },
        search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
    },
    config: { approval: { members: 'required', passwords: 'allowed' }, audit: { statements: 'none' } },
  });
  // hr_clerk is named by login: no approval needed. Seed one row through mamori.
  const c = await s.connect(ROLES.clerk);
  await c.query("INSERT INTO employees VALUES (1, 'Sato', '123456789018')");
  await c.end();
  await s.cluster.query(`CREATE ROLE boss LOGIN SUPERUSER PASSWORD '${PASSWORD}'`);
  await s.cluster.query(`CREATE ROLE dba LOGIN SUPERUSER PASSWORD '${PASSWORD}'`);
  await s.cluster.query(`GRANT ${ROLES.clerk} TO dba`);
  await s.cluster.query(`CREATE ROLE newbie LOGIN PASSWORD '${PASSWORD}'`);
  await s.cluster.query(`GRANT ${ROLES.clerk} TO newbie`);
  await s.cluster.query('GRANT SELECT ON employees TO newbie');
});

after(async () => {
  await s?.stop();
});

async function myNumberAs(role: string): Promise<unknown> {
  const c = await s.connect(role);
  try {
    return (await c.query('SELECT my_number FROM employees WHERE id = 1')).rows[0]?.my_number;
  } finally {
    await c.end();
  }
}

test('a superuser gets plaintext only when named by login, not through a role it is a member of', async () => {
  assert.equal(await myNumberAs('boss'), '123456789018');
  await assert.rejects(myNumberAs('dba'), { code: '42501' });
});

test('a self-granted member of a plaintext role gets nothing from it until the security officer approves', async () => {
  await assert.rejects(myNumberAs('newbie'), { code: '42501' });
  // `mamori policy approve` in effect: the MACed approvals file, written with the keyring's key.
  const kr = await Keyring.open(keyringConfigFrom(s.config.keyring));
  try {
    const path = approvalsPath(s.config);
    const approvals = Approvals.load(path, await approvalsMacKey(kr));
    approvals.approve(ROLES.clerk, 'newbie');
    approvals.save();
  } finally {
    await kr.close();
  }
  let got: unknown = null;
  for (let i = 0; i < 40 && got !== '123456789018'; i++) {
    await new Promise((r) => setTimeout(r, 150));
    got = await myNumberAs('newbie').catch(() => null);
  }
  assert.equal(got, '123456789018');
});

test('a temp table that shadows the protected table is not protected (name resolution as the server does it)', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query('CREATE TEMP TABLE employees (id int, my_number text)');
    await c.query("INSERT INTO employees VALUES (7, '999999999999')"); // not a valid My Number: would be refused if protected
    assert.deepEqual((await c.query('SELECT id, my_number FROM employees')).rows, [{ id: 7, my_number: '999999999999' }]);
    assert.equal((await c.query('SELECT my_number FROM public.employees WHERE id = 1')).rows[0].my_number, '123456789018');
  } finally {
    await c.end();
  }
});

test('protected statements are refused while standard_conforming_strings is off and a backslash could change the parse', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query('SET standard_conforming_strings = off');
    await assert.rejects(c.query("SELECT id FROM employees WHERE name = 'a\\\\' OR my_number = '123456789018'"), (e: pg.DatabaseError) => {
      assert.equal(e.code, '0A000');
      assert.match(e.message, /standard_conforming_strings/);
      return true;
    });
  } finally {
    await c.end();
  }
});

test('SJIS: protected statements are read in the client encoding; text that is not valid SJIS is refused (0A000)', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query("SET client_encoding = 'SJIS'");
    // pg sends UTF-8 whatever the session says: 'テスト' in UTF-8 is not valid SJIS (the server would refuse
    // it with 22021), so mamori cannot read the statement and refuses it before it runs.
    await assert.rejects(c.query("SELECT my_number FROM employees WHERE name = 'テスト'"), (e: pg.DatabaseError) => {
      assert.equal(e.code, '0A000');
      assert.equal(e.message, 'mamori: statements that may reach protected columns must be readable by mamori: the text is not valid in client_encoding SJIS, or mamori has no converter for it (docs/results.md lists the encodings it converts; UTF8 always works)');
      return true;
    });
    // The same search with the text as SJIS bytes (a binary parameter) is read as the server reads it.
    const sjis = Buffer.from('836583588367', 'hex'); // テスト
    assert.deepEqual((await c.query('SELECT my_number FROM employees WHERE name = $1', [sjis])).rows, []);
    assert.deepEqual((await c.query('SELECT my_number FROM employees WHERE id = 1')).rows, [{ my_number: '123456789018' }]);
  } finally {
    await c.end();
  }
});

test('a unique violation on the protected column is reported without the DETAIL that would echo the value', async () => {
  const c = await s.connect(ROLES.clerk);
  try {
    await assert.rejects(c.query("INSERT INTO employees VALUES (2, 'Dup', '1234 5678 9018')"), (e: pg.DatabaseError) => {
      assert.equal(e.code, '23505');
      assert.equal(e.detail, undefined);
      assert.doesNotMatch(`${e.message} ${e.detail ?? ''}`, /ff6d01|123456789018/);
      return true;
    });
    // The server itself reports the key (as a cell) in DETAIL: what mamori removed.
    const direct = new pg.Client({ host: s.cluster.host, port: s.cluster.port, user: s.cluster.superuser, password: s.cluster.superPassword, database: 'postgres' });
    await direct.connect();
    try {
      const cell = (await direct.query('SELECT my_number FROM employees WHERE id = 1')).rows[0].my_number as Buffer;
      await assert.rejects(direct.query('INSERT INTO employees VALUES (3, $1, $2)', ['Dup', cell]), (e: pg.DatabaseError) => {
        assert.match(e.detail ?? '', /Key \(my_number\)=/);
        return true;
      });
    } finally {
      await direct.end();
    }
  } finally {
    await c.end();
  }
});

test('a session that changes its role at startup (-c role=…) gets no protected data; identity stays the login', async () => {
  const c = await s.connect(ROLES.clerk, { options: `-c role=${ROLES.clerk}` });
  try {
    await assert.rejects(c.query('SELECT my_number FROM employees WHERE id = 1'), (e: pg.DatabaseError) => {
      assert.equal(e.code, '42501');
      assert.match(e.message, /role at startup/);
      return true;
    });
    assert.equal((await c.query('SELECT name FROM employees WHERE id = 1')).rows[0].name, 'Sato');
  } finally {
    await c.end();
  }
});
