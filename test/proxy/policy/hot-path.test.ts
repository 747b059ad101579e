// The protected hot path decides a prepared statement's Bind/Describe/Execute without waiting when keys,
// catalog and identity are current, and keeps field plans, result shapes and row rewriters with the
// statement. These tests re-execute one prepared statement across every change those caches must follow:
// a policy reload, a membership change, a search_path change; and pipeline many statements on one
// connection (several decisions per client read, one upstream write).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';
import { defaultConfig } from '../../../config/load.js';
import type { MamoriConfigInput } from '../../../config/schema.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';

const LOGIN = 'hp_login';
let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack();
  // DDL before any session: a second, unprotected employees table for the search_path test.
  await s.cluster.query('CREATE SCHEMA other');
  await s.cluster.query('CREATE TABLE other.employees (id int PRIMARY KEY, name text, my_number text)');
  await s.cluster.query("INSERT INTO other.employees VALUES (1, 'x', 'not-a-cell')");
  await s.cluster.query(`GRANT USAGE ON SCHEMA other TO ${ROLES.clerk}`);
  await s.cluster.query(`GRANT SELECT ON other.employees TO ${ROLES.clerk}`);
  await s.cluster.query(`CREATE ROLE ${LOGIN} LOGIN PASSWORD '${PASSWORD}'`);
  await s.cluster.query(`GRANT SELECT ON public.employees TO ${LOGIN}`);
  const c = await s.connect(ROLES.clerk);
  await c.query("INSERT INTO employees VALUES (1, 'Sato', '123456789018')");
  await c.end();
});

after(async () => {
  await s?.stop();
});

function driver(user: string): postgres.Sql {
  return postgres({ host: '127.0.0.1', port: s.mamori.port, user, password: PASSWORD, database: 'postgres',
    ssl: { ca: s.cluster.ca.cert, servername: 'localhost' }, max: 1, onnotice: () => undefined });
}

function policy(read: Record<string, string[]>): ReturnType<typeof defaultConfig> {
  const cfg = s.config;
  return defaultConfig({
    listen: cfg.listen, upstream: { host: cfg.upstream.host, port: cfg.upstream.port }, keyring: { keyFile: cfg.keyring.keyFile, store: cfg.keyring.store },
    approval: { members: 'none' }, audit: { statements: 'none' }, metrics: { enabled: false },
    columns: {
      'public.employees.my_number': { type: 'mynumber', mode: 'deterministic', read, search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny' },
    },
  } as MamoriConfigInput);
}

test('one prepared statement, re-executed across policy reloads, follows each policy', async () => {
  const engine = s.mamori.engine!;
  const c = await s.connect(ROLES.clerk);
  const q = { name: 'hp_reload', text: 'SELECT my_number FROM employees WHERE id = $1', values: [1] };
  try {
    for (let i = 0; i < 3; i++) assert.equal((await c.query(q)).rows[0].my_number, '123456789018');
    await engine.applyPolicy(policy({ mask: [ROLES.clerk] }));
    for (let i = 0; i < 3; i++) assert.equal((await c.query(q)).rows[0].my_number, '********9018');
    await engine.applyPolicy(policy({ plaintext: [ROLES.viewer] }));
    await assert.rejects(c.query(q), { code: '42501' });
  } finally {
    await engine.applyPolicy(policy({ plaintext: [ROLES.clerk], mask: [ROLES.viewer] }));
    await c.end();
  }
});

test('a prepared statement stops returning plaintext once the login loses the role (identity re-read)', async () => {
  const engine = s.mamori.engine!;
  await s.cluster.query(`GRANT ${ROLES.clerk} TO ${LOGIN}`);
  await engine.membership.refreshAll();
  const sql = driver(LOGIN);
  try {
    // postgres.js prepares once, then sends Bind/Execute/Sync only: the statement's cached shape is used.
    for (let i = 0; i < 3; i++) assert.equal((await sql`SELECT my_number FROM employees WHERE id = ${1}`)[0]!.my_number, '123456789018');
    await s.cluster.query(`REVOKE ${ROLES.clerk} FROM ${LOGIN}`);
    await engine.membership.refreshAll();
    await new Promise((r) => setTimeout(r, 1100)); // the session re-reads its identity at most a second later
    await assert.rejects(sql`SELECT my_number FROM employees WHERE id = ${1}`, { code: '42501' });
    await s.cluster.query(`GRANT ${ROLES.clerk} TO ${LOGIN}`);
    await engine.membership.refreshAll();
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal((await sql`SELECT my_number FROM employees WHERE id = ${1}`)[0]!.my_number, '123456789018');
  } finally {
    await sql.end();
  }
});

test('a prepared statement re-resolved under another search_path is mapped by its new origin each way', async () => {
  const sql = driver(ROLES.clerk);
  try {
    const read = async (): Promise<unknown> => (await sql`SELECT my_number FROM employees WHERE id = ${1}`)[0]!.my_number;
    assert.equal(await read(), '123456789018');
    assert.equal(await read(), '123456789018');
    await sql.unsafe('SET search_path TO other');
    assert.equal(await read(), 'not-a-cell');
    assert.equal(await read(), 'not-a-cell');
    await sql.unsafe('SET search_path TO public');
    assert.equal(await read(), '123456789018');
  } finally {
    await sql.end();
  }
});

test('many pipelined prepared reads and writes on one connection each get their own, correct result', async () => {
  const sql = driver(ROLES.clerk);
  const num = (id: number): string => {
    const base = String(30_000_000_000 + id * 7919).padStart(11, '0');
    return base + myNumberCheckDigit(base);
  };
  try {
    const ids = Array.from({ length: 60 }, (_, i) => 100 + i);
    // Sent without waiting: postgres.js pipelines them, so one client read carries several statements.
    await Promise.all(ids.map((id) => sql`INSERT INTO employees (id, name, my_number) VALUES (${id}, ${'p'}, ${num(id)})`));
    const byId = await Promise.all(ids.map((id) => sql`SELECT id, my_number FROM employees WHERE id = ${id}`));
    const byNumber = await Promise.all(ids.map((id) => sql`SELECT id FROM employees WHERE my_number = ${num(id)}`));
    ids.forEach((id, i) => {
      assert.deepEqual(byId[i]!.map((r) => [r.id, r.my_number]), [[id, num(id)]]);
      assert.deepEqual(byNumber[i]!.map((r) => r.id), [id]);
    });
    const stored = await s.cluster.query("SELECT id, encode(my_number::bytea, 'hex') AS h FROM employees WHERE id >= 100");
    assert.equal(stored.rows.length, ids.length);
    for (const r of stored.rows) assert.ok(!Buffer.from(r.h, 'hex').includes(num(r.id)), 'no plaintext reached the table');
  } finally {
    await sql.end();
  }
});

test('simple-protocol lookups that differ only in a constant reuse one analysis (statement shapes) and still follow each role and each policy', async () => {
  const engine = s.mamori.engine!;
  await engine.applyPolicy(policy({ plaintext: [ROLES.clerk], mask: [ROLES.viewer] }));
  const clerk = await s.connect(ROLES.clerk);
  const viewer = await s.connect(ROLES.viewer);
  const outsider = await s.connect(ROLES.outsider);
  const num = (id: number): string => {
    const base = String(40_000_000_000 + id * 7919).padStart(11, '0');
    return base + myNumberCheckDigit(base);
  };
  try {
    const ids = Array.from({ length: 20 }, (_, i) => 200 + i);
    const inserted = engine.analysisCache.shapeHits;
    for (const id of ids) await clerk.query(`INSERT INTO employees (id, name, my_number) VALUES (${id}, 'shape', '${num(id)}')`);
    // Each insert after the first reuses the analysis (its value is its own) and the verified splice.
    assert.equal(engine.analysisCache.shapeHits - inserted, ids.length - 1);
    const stored = await s.cluster.query("SELECT id, encode(my_number::bytea, 'hex') AS h FROM employees WHERE name = 'shape'");
    assert.equal(stored.rows.length, ids.length);
    for (const r of stored.rows) assert.ok(!Buffer.from(r.h, 'hex').includes(num(r.id)), 'no plaintext reached the table');
    const before = engine.analysisCache.shapeHits;
    // A new text for every id, as pgbench -M simple and string-building applications send them.
    for (const id of ids) {
      assert.deepEqual((await clerk.query(`SELECT id, my_number FROM employees WHERE id = ${id}`)).rows, [{ id, my_number: num(id) }]);
      assert.deepEqual((await viewer.query(`SELECT id, my_number FROM employees WHERE id = ${id}`)).rows, [{ id, my_number: `********${num(id).slice(8)}` }]);
      await assert.rejects(outsider.query(`SELECT id, my_number FROM employees WHERE id = ${id}`), (e: { code?: string; message: string }) => e.code === '42501' && /my_number/.test(e.message));
    }
    // Clerk and viewer: every text after the first is a reuse. The outsider's refusals are analysed each time.
    assert.equal(engine.analysisCache.shapeHits - before, 2 * (ids.length - 1));
    // A reload clears what was reused: the viewer now gets plaintext, the clerk masks.
    await engine.applyPolicy(policy({ plaintext: [ROLES.viewer], mask: [ROLES.clerk] }));
    assert.deepEqual((await viewer.query(`SELECT my_number FROM employees WHERE id = ${ids[3]}`)).rows, [{ my_number: num(ids[3]!) }]);
    assert.deepEqual((await clerk.query(`SELECT my_number FROM employees WHERE id = ${ids[4]}`)).rows, [{ my_number: `********${num(ids[4]!).slice(8)}` }]);
    // The same shape with the constant moved into a positional GROUP BY is its own statement: not reused.
    await assert.rejects(outsider.query('SELECT count(*), my_number FROM employees GROUP BY 2'), (e: { code?: string }) => e.code === '42501');
  } finally {
    await engine.applyPolicy(policy({ plaintext: [ROLES.clerk] }));
    await Promise.all([clerk.end(), viewer.end(), outsider.end()]);
  }
});
