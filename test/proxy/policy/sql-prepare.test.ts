// SQL-level PREPARE / EXECUTE with parameters bound for protected columns, through mamori to a real server:
// the PREPARE's protected parameters become bytea, and each EXECUTE has its constants validated, encrypted
// and spliced in, so the server only ever sees cells (checked directly as superuser).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';
import { systemBindir } from '../../harness/cluster.js';
import { RawClient } from '../../harness/raw-client.js';
import { encodeBind, encodeExecute, encodeQuery, encodeSync } from '../../../proxy/wire/frontend.js';
import { decodeDataRow, decodeNoticeFields } from '../../../proxy/wire/backend.js';
import { BE } from '../../../proxy/wire/types.js';
import { parseRecord, type AuditRecord } from '../../../proxy/audit/record.js';

const run = promisify(execFile);
let s: ProtectedStack;
let clerk: pg.Client;
let admin: pg.Client;
const logLines: string[] = [];
// Valid My Numbers (check digits right), in the spellings the tests use.
const N = { a: '234567890121', b: '345678901234', c: '987654321093' };

const INS = 'PREPARE ins(int, text, text) AS INSERT INTO employees (id, name, my_number) VALUES ($1, $2, $3)';

before(async () => {
  s = await startProtectedStack({ logLines });
  clerk = await s.connect(ROLES.clerk);
  admin = new pg.Client({ host: s.cluster.host, port: s.cluster.port, user: s.cluster.superuser, password: s.cluster.superPassword, database: 'postgres' });
  await admin.connect();
});

after(async () => {
  await clerk?.end();
  await admin?.end();
  await s?.stop();
});

/** What the server stores for a row, read directly (not through mamori). */
async function stored(id: number): Promise<string | null | undefined> {
  const r = await admin.query('SELECT my_number::bytea::text AS v FROM employees WHERE id = $1', [id]);
  return r.rows[0]?.v as string | null | undefined;
}

function assertCell(v: string | null | undefined, plaintext: string): void {
  assert.ok(typeof v === 'string', 'a value is stored');
  assert.match(v, /^\\x[0-9a-f]+$/);
  assert.ok(!v.includes(Buffer.from(plaintext).toString('hex')), 'the stored value is not the plaintext');
}

const code = (expected: string, pattern?: RegExp) => (e: pg.DatabaseError): boolean => {
  assert.equal(e.code, expected);
  if (pattern) assert.match(e.message, pattern);
  return true;
};

describe('pg, simple protocol', () => {
  test('PREPARE/EXECUTE INSERT stores ciphertext and reads back normalized', async () => {
    await clerk.query(INS);
    await clerk.query(`EXECUTE ins(10, 'Ito', '2345-6789-0121')`);
    assertCell(await stored(10), N.a);
    assert.deepEqual((await clerk.query('SELECT my_number FROM employees WHERE id = 10')).rows, [{ my_number: N.a }]);
  });

  test('PREPARE/EXECUTE UPDATE, with a cast parameter and a cast argument', async () => {
    await clerk.query('PREPARE upd AS UPDATE employees SET my_number = $1::text WHERE id = $2');
    const r = await clerk.query(`EXECUTE upd('${N.b}'::varchar, 10)`);
    assert.equal(r.rowCount, 1);
    assertCell(await stored(10), N.b);
    assert.deepEqual((await clerk.query('SELECT my_number FROM employees WHERE id = 10')).rows, [{ my_number: N.b }]);
  });

  test('a search by My Number with the search grant finds the row, decrypted', async () => {
    await clerk.query('PREPARE find(text) AS SELECT id, my_number FROM employees WHERE my_number = $1');
    assert.deepEqual((await clerk.query(`EXECUTE find('3456 7890 1234')`)).rows, [{ id: 10, my_number: N.b }]);
    assert.deepEqual((await clerk.query(`EXECUTE find('${N.c}')`)).rows, []);
    await clerk.query('PREPARE find_in AS SELECT id FROM employees WHERE my_number IN ($1, $2) ORDER BY id');
    assert.deepEqual((await clerk.query(`EXECUTE find_in('${N.b}', '${N.c}')`)).rows, [{ id: 10 }]);
  });

  test('the same search is refused for a role without the search grant', async () => {
    const viewer = await s.connect(ROLES.viewer);
    try {
      await assert.rejects(viewer.query('PREPARE vfind(text) AS SELECT id FROM employees WHERE my_number = $1'), code('42501', /public\.employees\.my_number/));
      await assert.rejects(viewer.query(`EXECUTE vfind('${N.b}')`), code('0A000', /not known to mamori/));
    } finally {
      await viewer.end();
    }
  });

  test('an invalid My Number in EXECUTE is refused with 22P02 and nothing is stored', async () => {
    await assert.rejects(clerk.query(`EXECUTE ins(11, 'Bad', '123456789012')`), (e: pg.DatabaseError) => {
      assert.equal(e.code, '22P02');
      assert.match(e.message, /public\.employees\.my_number/);
      assert.match(e.message, /check digit/);
      assert.doesNotMatch(e.message, /123456789012/);
      return true;
    });
    assert.equal(await stored(11), undefined);
  });

  test('an expression passed for a protected parameter is refused with 0A000 naming the column', async () => {
    await assert.rejects(clerk.query(`EXECUTE ins(12, 'X', '2345' || '67890121')`), code('0A000', /EXECUTE ins: argument 3 is bound for protected column public\.employees\.my_number and is an expression/));
    await assert.rejects(clerk.query(`EXECUTE ins(12, 'X', (SELECT my_number FROM employees WHERE id = 10))`), (e: pg.DatabaseError) => e.code === '0A000' || e.code === '42501');
    assert.equal(await stored(12), undefined);
    // Unprotected parameters take any expression.
    await clerk.query(`EXECUTE ins(6 + 6, upper('x'), NULL)`);
    assert.deepEqual((await clerk.query('SELECT name, my_number FROM employees WHERE id = 12')).rows, [{ name: 'X', my_number: null }]);
  });

  test('UNIQUE rejects a duplicate written through EXECUTE in another spelling', async () => {
    await assert.rejects(clerk.query(`EXECUTE ins(13, 'Dup', '3456-7890-1234')`), code('23505'));
    assert.equal(await stored(13), undefined);
  });

  test('PREPARE and EXECUTE in one query string', async () => {
    await clerk.query(`PREPARE one(int, text, text) AS INSERT INTO employees (id, name, my_number) VALUES ($1, $2, $3); EXECUTE one(14, 'One', '${N.c}')`);
    assertCell(await stored(14), N.c);
    assert.deepEqual((await clerk.query('SELECT my_number FROM employees WHERE id = 14')).rows, [{ my_number: N.c }]);
  });

  test('DEALLOCATE, DEALLOCATE ALL and DISCARD ALL forget the statement: EXECUTE then fails', async () => {
    await clerk.query('DEALLOCATE ins');
    await assert.rejects(clerk.query(`EXECUTE ins(15, 'Y', '${N.a}')`), code('0A000', /prepared statement "ins" is not known to mamori/));
    await clerk.query(INS);
    await clerk.query('DEALLOCATE ALL');
    await assert.rejects(clerk.query(`EXECUTE ins(15, 'Y', '${N.a}')`), code('0A000', /not known to mamori/));
    await clerk.query(INS);
    await clerk.query('DISCARD ALL');
    await assert.rejects(clerk.query(`EXECUTE ins(15, 'Y', '${N.a}')`), code('0A000', /not known to mamori/));
    // Without arguments nothing can leak: the server answers for an unknown statement.
    await assert.rejects(clerk.query('EXECUTE ins'), code('26000'));
    assert.equal(await stored(15), undefined);
    // Prepared again under the same name, it works again.
    await clerk.query(INS);
    await clerk.query(`EXECUTE ins(15, 'Y', '${N.a.slice(0, 4)} ${N.a.slice(4, 8)} ${N.a.slice(8)}')`);
    assertCell(await stored(15), N.a);
    await clerk.query('DELETE FROM employees WHERE id = 15');
  });

  test('EXPLAIN EXECUTE and CREATE TABLE AS EXECUTE are refused', async () => {
    await clerk.query('PREPARE byid(int) AS SELECT my_number FROM employees WHERE id = $1');
    await assert.rejects(clerk.query('EXPLAIN EXECUTE byid(10)'), code('0A000', /EXPLAIN EXECUTE/));
    await assert.rejects(clerk.query('CREATE TEMP TABLE t AS EXECUTE byid(10)'), code('0A000', /CREATE TABLE AS EXECUTE/));
    assert.deepEqual((await clerk.query('EXECUTE byid(10)')).rows, [{ my_number: N.b }]);
  });
});

describe('pg, extended protocol', () => {
  test('EXECUTE sent through Parse: constants are encrypted; a Bind parameter for a protected argument is refused', async () => {
    await clerk.query('PREPARE find(text) AS SELECT id, my_number FROM employees WHERE my_number = $1');
    const extended = (text: string, values: unknown[] = []): pg.QueryConfig => ({ text, values, queryMode: 'extended' } as pg.QueryConfig);
    assert.deepEqual((await clerk.query(extended(`EXECUTE find('3456-7890-1234')`))).rows, [{ id: 10, my_number: N.b }]);
    await clerk.query(extended(`EXECUTE ins(16, 'Parsed', '${N.a}')`));
    assertCell(await stored(16), N.a);
    await assert.rejects(clerk.query(extended(`EXECUTE ins(17, 'Bad', '123456789012')`)), code('22P02', /check digit/));
    await assert.rejects(clerk.query(extended('EXECUTE find($1)', [N.b])), code('0A000', /EXECUTE find: argument 1 is bound for protected column public\.employees\.my_number and is a parameter \(\$1\)/));
    assert.equal(await stored(17), undefined);
    await clerk.query('DELETE FROM employees WHERE id = 16');
  });

  test('SQL EXECUTE of a statement the driver prepared (Parse) uses that statement\'s plan', async () => {
    assert.deepEqual((await clerk.query({ name: 'pgnamed', text: 'SELECT id FROM employees WHERE my_number = $1', values: [N.b] })).rows, [{ id: 10 }]);
    assert.deepEqual((await clerk.query(`EXECUTE pgnamed('3456-7890-1234')`)).rows, [{ id: 10 }]);
    await assert.rejects(clerk.query(`EXECUTE pgnamed('3456-7890-1235')`), code('22P02', /check digit/));
  });

  test('a PREPARE sent through Parse keeps its plan too: EXECUTE of it is encrypted', async () => {
    await clerk.query({ text: 'PREPARE viaparse(text) AS SELECT id, my_number FROM employees WHERE my_number = $1', values: [], queryMode: 'extended' } as pg.QueryConfig);
    assert.deepEqual((await clerk.query(`EXECUTE viaparse('3456 7890 1234')`)).rows, [{ id: 10, my_number: N.b }]);
    assert.deepEqual((await clerk.query({ text: `EXECUTE viaparse('${N.b}')`, values: [], queryMode: 'extended' } as pg.QueryConfig)).rows, [{ id: 10, my_number: N.b }]);
    await clerk.query('DEALLOCATE viaparse');
  });
});

describe('raw protocol', () => {
  const raw = (): Promise<RawClient> => RawClient.connect('127.0.0.1', s.mamori.port, { user: ROLES.clerk, password: PASSWORD, database: 'postgres', tls: { ca: s.cluster.ca.cert, servername: 'localhost' } });
  const errorsOf = (frames: { type: number; body: Buffer }[]): string[] =>
    frames.filter((f) => f.type === BE.ErrorResponse).map((f) => { const e = decodeNoticeFields(f.body); return `${e.C} ${e.M}`; });

  test('a Bind to a statement made by SQL PREPARE has its protected values encrypted', async () => {
    const c = await raw();
    try {
      c.send(encodeQuery('PREPARE rawins(int, text, text) AS INSERT INTO employees (id, name, my_number) VALUES ($1, $2, $3)'));
      assert.deepEqual(errorsOf(await c.until(BE.ReadyForQuery)), []);
      c.send(encodeBind({ portal: '', statement: 'rawins', paramFormats: [], params: [Buffer.from('21'), Buffer.from('Raw'), Buffer.from(N.a)], resultFormats: [] }),
        encodeExecute({ portal: '', maxRows: 0 }), encodeSync());
      assert.deepEqual(errorsOf(await c.until(BE.ReadyForQuery)), []);
      assertCell(await stored(21), N.a);
    } finally {
      c.close();
      await admin.query('DELETE FROM employees WHERE id = 21');
    }
  });

  test('pipelined Queries: an EXECUTE sent before its PREPARE completes waits for it', async () => {
    const c = await raw();
    try {
      c.send(encodeQuery('PREPARE rawfind(text) AS SELECT id, my_number FROM employees WHERE my_number = $1'), encodeQuery(`EXECUTE rawfind('${N.b}')`),
        encodeQuery('DEALLOCATE rawfind'), encodeQuery(`EXECUTE rawfind('${N.b}')`));
      const first = await c.until(BE.ReadyForQuery);
      assert.deepEqual(errorsOf(first), []);
      const second = await c.until(BE.ReadyForQuery);
      assert.deepEqual(errorsOf(second), []);
      const rows = second.filter((f) => f.type === BE.DataRow).map((f) => decodeDataRow(f.body).fields.map((x) => x?.toString()));
      assert.deepEqual(rows, [['10', N.b]]);
      assert.deepEqual(errorsOf(await c.until(BE.ReadyForQuery)), []);
      const fourth = errorsOf(await c.until(BE.ReadyForQuery));
      assert.equal(fourth.length, 1);
      assert.match(fourth[0]!, /^0A000 .*prepared statement "rawfind" is not known to mamori/);
    } finally {
      c.close();
    }
  });
});

test('psql: PREPARE / EXECUTE INSERT and search', async () => {
  const bindir = systemBindir();
  const psql = bindir ? join(bindir, 'psql') : 'psql';
  const rc = join(s.dir, 'root.crt');
  writeFileSync(rc, s.cluster.ca.cert);
  const { stdout } = await run(psql, ['-XAt', '-v', 'ON_ERROR_STOP=1',
    '-c', 'PREPARE pins(int, text, text) AS INSERT INTO employees (id, name, my_number) VALUES ($1, $2, $3)',
    '-c', `EXECUTE pins(20, 'Psql', '1234-5678-9018')`,
    '-c', 'PREPARE pfind(text) AS SELECT id, my_number FROM employees WHERE my_number = $1',
    '-c', `EXECUTE pfind('123456789018')`], {
    env: { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(s.mamori.port), PGUSER: ROLES.clerk, PGPASSWORD: PASSWORD,
      PGDATABASE: 'postgres', PGSSLMODE: 'verify-full', PGSSLROOTCERT: rc },
  });
  assert.deepEqual(stdout.trim().split('\n'), ['PREPARE', 'INSERT 0 1', 'PREPARE', '20|123456789018']);
  assertCell(await stored(20), '123456789018');
});

test('no protected plaintext appears in any log line', () => {
  const all = logLines.join('');
  assert.ok(all.length > 0);
  for (const n of [...Object.values(N), '123456789018', '1234-5678-9018', '2345-6789-0121', '3456 7890 1234']) assert.ok(!all.includes(n), `log contains ${n}`);
});

describe('audit records and the search rate limit', () => {
  let t: ProtectedStack;
  let auditDir: string;
  const records = (): AuditRecord[] => readdirSync(auditDir).filter((n) => n.endsWith('.jsonl')).sort()
    .flatMap((f) => readFileSync(join(auditDir, f), 'utf8').split('\n').filter((l) => l.trim()).map((l) => parseRecord(l)));

  before(async () => {
    auditDir = mkdtempSync(join(tmpdir(), 'mamori-audit-'));
    t = await startProtectedStack({
      config: {
        search: { ratePerSecond: 0.01, burst: 2, maxInListItems: 100 }, metrics: { enabled: false },
        audit: {
          statements: 'protected', failMode: 'closed', fsync: 'none',
          sinks: [{ type: 'file', path: join(auditDir, 'mamori.jsonl') }],
          checkpointSink: { type: 'file', path: join(auditDir, 'checkpoints', 'mamori.jsonl') },
          signingKeyFile: join(auditDir, 'no-signing.key'),
        },
      },
    });
  });
  after(async () => {
    await t?.stop();
  });

  test('EXECUTE writes the intent and completion of the statement it runs; each EXECUTE of a search is one search', async () => {
    const c = await t.connect(ROLES.clerk);
    try {
      await c.query(INS);
      await c.query(`EXECUTE ins(30, 'Audited', '${N.a}')`);
      await c.query('PREPARE find(text) AS SELECT id FROM employees WHERE my_number = $1');
      assert.deepEqual((await c.query(`EXECUTE find('${N.a}')`)).rows, [{ id: 30 }]);
      assert.deepEqual((await c.query(`EXECUTE find('${N.c}')`)).rows, []);
      // Burst 2, refilled once in 100 s: the PREPARE took no token, the third EXECUTE finds none left.
      await assert.rejects(c.query(`EXECUTE find('${N.a}')`), code('53400', /too many searches on protected column public\.employees\.my_number/));
    } finally {
      await c.end();
    }
    await new Promise((r) => setTimeout(r, 300)); // completions are written after the rows
    const all = records();
    const insert = all.find((r) => r.kind === 'statement_intent' && r.command === 'INSERT');
    assert.ok(insert, 'an intent for the INSERT the EXECUTE ran');
    assert.deepEqual(insert.columns, [{ column: 'public.employees.my_number', decision: 'write' }]);
    const done = all.find((r) => r.kind === 'statement_complete' && r.fingerprint === insert.fingerprint);
    assert.equal(done?.rows, 1);
    const searches = all.filter((r) => r.kind === 'search');
    assert.equal(searches.length, 2, 'one search record per EXECUTE of the search that ran');
    assert.deepEqual(searches[0]!.columns, [{ column: 'public.employees.my_number', decision: 'search' }]);
    const trail = readdirSync(auditDir).filter((n) => n.endsWith('.jsonl')).map((f) => readFileSync(join(auditDir, f), 'utf8')).join('');
    for (const v of Object.values(N)) assert.ok(!trail.includes(v), 'the trail holds no My Number');
  });
});
