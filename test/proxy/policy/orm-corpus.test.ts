// The ORM corpus (test/fixtures/orm-corpus.ts) replayed through mamori with node-postgres: every case in
// the extended protocol with its parameters, literal-only ones also in the simple protocol; the decision
// (rows, row count, or SQLSTATE + message) checked for each; afterwards the server holds only cells.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';
import { BASE_ROWS, CORPUS, N, type CorpusCase, type Protocol, type Role } from '../../fixtures/orm-corpus.js';

let s: ProtectedStack;
const clients = new Map<Role, pg.Client>();
const logLines: string[] = [];

before(async () => {
  // Searches are rate-limited per session: the corpus searches more than the default burst allows in a burst.
  s = await startProtectedStack({ logLines, config: { search: { ratePerSecond: 1000, burst: 1000, maxInListItems: 100 }, metrics: { enabled: false } } });
  for (const r of [ROLES.clerk, ROLES.viewer, ROLES.outsider] as const) clients.set(r, await s.connect(r));
  const clerk = clients.get(ROLES.clerk)!;
  for (const row of BASE_ROWS) await clerk.query('INSERT INTO employees (id, name, my_number) VALUES ($1, $2, $3)', [row.id, row.name, row.my_number]);
});

after(async () => {
  for (const c of clients.values()) await c.end().catch(() => undefined);
  await s?.stop();
});

function protocolsOf(c: CorpusCase): Protocol[] {
  if (c.protocols) return c.protocols;
  return c.params && c.params.length > 0 ? ['extended'] : ['simple', 'extended'];
}

async function runOne(c: CorpusCase, protocol: Protocol, commit: boolean): Promise<pg.QueryResult | pg.DatabaseError> {
  const client = clients.get(c.role ?? ROLES.clerk)!;
  const wrap = c.protocols === undefined; // PREPARE / EXECUTE cases run bare
  if (wrap) await client.query('BEGIN');
  let out: pg.QueryResult | pg.DatabaseError;
  try {
    out = protocol === 'simple'
      ? await client.query(c.sql)
      : await client.query({ text: c.sql, values: c.params ?? [], queryMode: 'extended' } as pg.QueryConfig);
  } catch (err) {
    out = err as pg.DatabaseError;
  }
  if (wrap) await client.query(commit && !(out instanceof Error) ? 'COMMIT' : 'ROLLBACK');
  return out;
}

function check(c: CorpusCase, protocol: Protocol, out: pg.QueryResult | pg.DatabaseError): void {
  const what = `${c.orm}: ${c.name} (${protocol})`;
  if ('error' in c.expect) {
    assert.ok(out instanceof Error, `${what}: expected ${c.expect.error.code}, got rows`);
    assert.equal((out as pg.DatabaseError).code, c.expect.error.code, `${what}: ${out.message}`);
    assert.match(out.message, c.expect.error.message, what);
    // Refusals and server errors never echo a protected value (mamori redacts DETAIL of unique violations).
    for (const v of Object.values(N)) {
      assert.ok(!out.message.includes(v) && !((out as pg.DatabaseError).detail ?? '').includes(v), `${what}: error echoes a My Number`);
    }
    return;
  }
  assert.ok(!(out instanceof Error), `${what}: refused: ${(out as Error).message}`);
  const r = out as pg.QueryResult;
  if ('rows' in c.expect) assert.deepEqual(r.rows.map((x) => ({ ...x })), c.expect.rows, what);
  else assert.equal(r.rowCount ?? 0, c.expect.rowCount, what);
}

describe('ORM corpus through mamori', () => {
  test('every case takes its expected decision, in each protocol it is run in', async () => {
    const failures: string[] = [];
    for (const c of CORPUS) {
      const protocols = protocolsOf(c);
      for (const p of protocols) {
        // A case run in both protocols: simple first, rolled back; the extended run's writes are kept.
        const commit = protocols.length === 1 || p === 'extended';
        const out = await runOne(c, p, commit);
        try {
          check(c, p, out);
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    }
    assert.deepEqual(failures, []);
  });

  test('the corpus covers every ORM style named in the issue, and both outcomes', () => {
    const orms = new Set(CORPUS.map((c) => c.orm));
    for (const o of ['Prisma', 'Drizzle', 'TypeORM', 'Sequelize', 'Rails', 'Hibernate']) assert.ok(orms.has(o as CorpusCase['orm']), o);
    assert.ok(CORPUS.filter((c) => 'error' in c.expect).length >= 8);
    assert.ok(CORPUS.filter((c) => protocolsOf(c).includes('simple')).length >= 8);
  });

  test('on the server every stored My Number is a cell; rows written by the corpus are there', async () => {
    const r = await s.cluster.query<{ id: number; c: Buffer | null }>('SELECT id, my_number::bytea AS c FROM public.employees ORDER BY id');
    const withValue = r.rows.filter((x) => x.c !== null);
    assert.equal(withValue.length, 15, 'rows 1, 2 and the thirteen corpus rows written with a value');
    for (const row of withValue) {
      assert.equal(row.c!.subarray(0, 3).toString('hex'), 'ff6d01', `row ${row.id}`);
      for (const v of Object.values(N)) assert.equal(row.c!.includes(Buffer.from(v)), false, `row ${row.id} holds plaintext`);
    }
    const ids = r.rows.map((x) => x.id);
    for (const id of [1, 2, 3, 101, 111, 121, 131, 132, 133, 134, 141, 142, 151, 152, 161, 171, 195]) assert.ok(ids.includes(id), `row ${id} missing`);
    assert.ok(!ids.includes(112), 'the deleted row is gone');
    assert.ok(!ids.includes(181) && !ids.includes(182) && !ids.includes(191), 'refused writes stored nothing');
  });

  test('no My Number in plaintext in any log line', () => {
    const text = logLines.join('\n');
    for (const v of Object.values(N)) assert.equal(text.includes(v), false, 'a log line holds a My Number');
  });
});
