// The role matrix on one column: plaintext, mask, ciphertext (raw cells, for backup jobs), null and others —
// through node-postgres and postgres.js, in text and binary result formats.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import type pg from 'pg';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';

let s: ProtectedStack;
const BACKUP = 'backup_job';
const AUDITOR = 'auditor';

before(async () => {
  s = await startProtectedStack({
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk], mask: [ROLES.viewer], ciphertext: [BACKUP], null: [AUDITOR] },
        search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
    },
  });
  for (const r of [BACKUP, AUDITOR]) {
    await s.cluster.query(`CREATE ROLE ${r} LOGIN PASSWORD '${PASSWORD}'`);
    await s.cluster.query(`GRANT SELECT ON employees TO ${r}`);
  }
  const c = await s.connect(ROLES.clerk);
  await c.query("INSERT INTO employees VALUES (1, 'Sato', '123456789018')");
  await c.end();
});

after(async () => {
  await s?.stop();
});

async function read(role: string, binary: boolean): Promise<unknown> {
  const c = await s.connect(role);
  try {
    const r = await c.query({ text: 'SELECT my_number FROM employees WHERE id = $1', values: [1], binary } as pg.QueryConfig);
    return r.rows[0]?.my_number;
  } finally {
    await c.end();
  }
}

test('each decision in text and binary result formats (node-postgres)', async () => {
  const stored = (await s.cluster.query('SELECT my_number FROM employees WHERE id = 1')).rows[0].my_number as Buffer;
  for (const binary of [false, true]) {
    assert.equal(await read(ROLES.clerk, binary), '123456789018');
    assert.equal(await read(ROLES.viewer, binary), '********9018');
    assert.equal(await read(AUDITOR, binary), null);
    const cipher = await read(BACKUP, binary);
    if (!binary) {
      // pg parses text-format bytea into a Buffer (compared by tag: the runner and pg may see different realms).
      assert.equal(Object.prototype.toString.call(cipher), '[object Uint8Array]', 'ciphertext arrives as bytea');
      assert.deepEqual(Buffer.from(cipher as Uint8Array), Buffer.from(stored));
    } else {
      // pg has no binary bytea parser and hands the raw bytes over as a latin1-ish string: the cell's bytes.
      assert.ok(cipher !== null && !String(cipher).includes('123456789018'));
    }
    await assert.rejects(read(ROLES.outsider, binary), { code: '42501' });
  }
});

test('each decision through postgres.js (extended protocol, binary-capable driver)', async () => {
  const expect: Record<string, unknown> = { [ROLES.clerk]: '123456789018', [ROLES.viewer]: '********9018', [AUDITOR]: null };
  for (const [role, want] of Object.entries(expect)) {
    const sql = postgres({ host: '127.0.0.1', port: s.mamori.port, user: role, password: PASSWORD, database: 'postgres',
      ssl: { ca: s.cluster.ca.cert, servername: 'localhost' }, max: 1, onnotice: () => undefined });
    try {
      const rows = await sql`SELECT my_number FROM employees WHERE id = ${1}`;
      assert.equal(rows[0]!.my_number, want, role);
    } finally {
      await sql.end();
    }
  }
});
