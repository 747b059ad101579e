// A Parse answered before its Bind is sent (libpq's PQprepare then PQexecPrepared, pgbench -M prepared,
// postgres.js describing parameter types first): the Bind waits for the Parse's outcome. For statements on
// the fast path (no protected object) that outcome was dropped, so the Bind waited forever.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import postgres from 'postgres';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';

const run = promisify(execFile);
let s: ProtectedStack;

before(async () => {
  s = await startProtectedStack({ config: { metrics: { enabled: false } } });
  await s.cluster.query('CREATE TABLE public.plain (id int PRIMARY KEY, v text)');
  await s.cluster.query(`INSERT INTO public.plain SELECT g, 'v' || g FROM generate_series(1, 10) g`);
  await s.cluster.query(`GRANT SELECT ON public.plain TO ${ROLES.clerk}`);
});

after(async () => {
  await s?.stop();
});

test('postgres.js (Parse + Describe + Sync, then Bind + Execute + Sync) on an unprotected and a protected table', async () => {
  const sql = postgres({
    host: '127.0.0.1', port: s.mamori.port, user: ROLES.clerk, password: PASSWORD, database: 'postgres',
    ssl: { ca: s.cluster.ca.cert, servername: 'localhost' }, max: 1, connect_timeout: 10,
  });
  try {
    const one = await Promise.race([
      sql`SELECT v FROM plain WHERE id = ${3}`,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the Bind after a synced Parse hung')), 10_000)),
    ]);
    assert.deepEqual([...one], [{ v: 'v3' }]);
    for (let i = 1; i <= 5; i++) assert.equal((await sql`SELECT v FROM plain WHERE id = ${i}`)[0]!.v, `v${i}`);
    assert.deepEqual([...(await sql`SELECT count(*)::int AS n FROM employees WHERE id = ${1}`)], [{ n: 0 }]);
  } finally {
    await sql.end({ timeout: 5 });
  }
});

test('pgbench -M prepared on an unprotected table through mamori completes', async () => {
  const file = join(s.dir, 'plain.sql');
  writeFileSync(file, '\\set id random(1, 10)\nSELECT v FROM plain WHERE id = :id;\n');
  const env = { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(s.mamori.port), PGUSER: ROLES.clerk, PGPASSWORD: PASSWORD, PGDATABASE: 'postgres', PGSSLMODE: 'require' };
  const { stdout } = await run(join(s.cluster.bindir, 'pgbench'), ['-n', '-f', file, '-M', 'prepared', '-c', '2', '-t', '50'], { env, timeout: 30_000 });
  assert.match(stdout, /number of transactions actually processed: 100\/100/);
});
