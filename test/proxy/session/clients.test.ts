// Real clients through mamori, against a real PostgreSQL (upstream leg verify-full): libpq's psql and
// pgbench, node-postgres (with pg-cursor and pg-copy-streams) and postgres.js. Each test is a user story:
// what a client of PostgreSQL does, done through mamori, with the same visible outcome.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import Cursor from 'pg-cursor';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import postgres from 'postgres';
import { startStack, type Stack } from '../../harness/mamori.js';

const ALICE_PW = 'alice-pw-clients';
let stack: Stack;

before(async () => {
  stack = await startStack();
  await stack.cluster.createRole('alice', ALICE_PW);
  await stack.cluster.query('CREATE DATABASE bench');
  await stack.cluster.query('CREATE TABLE public.copy_target (id int PRIMARY KEY, label text NOT NULL)');
  await stack.cluster.query('GRANT ALL ON public.copy_target TO alice');
});

after(async () => {
  await stack?.stop();
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a libpq program from the cluster's bindir with PG* variables pointing at mamori. */
function runLibpq(program: string, args: string[], env: Record<string, string>, timeout = 60_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(join(stack.cluster.bindir, program), args, {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        PGHOST: 'localhost', PGHOSTADDR: '127.0.0.1', PGPORT: String(stack.mamori.port), PGDATABASE: 'postgres',
        PGCONNECT_TIMEOUT: '20',
        ...env,
      },
      timeout,
      maxBuffer: 16 << 20,
    }, (err, stdout, stderr) => {
      const code = err ? Number((err as { code?: number | string }).code ?? 1) : 0;
      resolve({ code: Number.isFinite(code) ? code : 1, stdout: stdout.trim(), stderr: stderr.trim() });
    });
  });
}

/** Waits until some backend is running `pg_sleep` (so a cancel cannot arrive before the statement). */
async function sleeperRunning(marker: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await stack.cluster.query(
      "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' AND query LIKE $1", [`%${marker}%`]);
    if (r.rowCount) return;
    if (Date.now() > deadline) throw new Error('the sleeping statement never started');
    await new Promise((res) => setTimeout(res, 50));
  }
}

const WHO = "SELECT current_user || ' ' || (SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid())";

describe('psql through mamori', () => {
  test('a psql user with sslmode=verify-full and channel_binding=require logs in (SCRAM-SHA-256-PLUS), upstream over verify-full TLS', async () => {
    const r = await runLibpq('psql', ['-XAtc', WHO], {
      PGUSER: 'alice', PGPASSWORD: ALICE_PW, PGSSLMODE: 'verify-full', PGSSLROOTCERT: stack.cluster.caCertPath,
      PGCHANNELBINDING: 'require',
    });
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
    // pg_stat_ssl is the server's view: the mamori → PostgreSQL leg is TLS too.
    assert.equal(r.stdout, 'alice true');
  });

  test('a psql user with channel_binding=prefer logs in', async () => {
    const r = await runLibpq('psql', ['-XAtc', WHO], {
      PGUSER: 'alice', PGPASSWORD: ALICE_PW, PGSSLMODE: 'verify-full', PGSSLROOTCERT: stack.cluster.caCertPath,
      PGCHANNELBINDING: 'prefer',
    });
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'alice true');
  });

  test('a psql user with sslmode=disable logs in to a mamori without tls.require (plain SCRAM-SHA-256)', async () => {
    assert.equal(stack.config.tls?.require, false);
    const r = await runLibpq('psql', ['-XAtc', "SELECT current_user || ' ' || inet_client_addr()::text"], {
      PGUSER: 'alice', PGPASSWORD: ALICE_PW, PGSSLMODE: 'disable',
    });
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'alice 127.0.0.1/32');
  });

  test('a psql user with a wrong password sees exactly PostgreSQL\'s message', async () => {
    const r = await runLibpq('psql', ['-XAtc', 'SELECT 1'], {
      PGUSER: 'alice', PGPASSWORD: 'not-the-password', PGSSLMODE: 'verify-full', PGSSLROOTCERT: stack.cluster.caCertPath,
    });
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    // libpq prefixes its own connection description; the server's text follows "FATAL:  ".
    const fatal = r.stderr.split('\n').find((l) => l.includes('FATAL:'));
    assert.ok(fatal, r.stderr);
    assert.equal(fatal.slice(fatal.indexOf('FATAL:')), 'FATAL:  password authentication failed for user "alice"');
    assert.ok(!r.stderr.includes('not-the-password'));
  });
});

describe('pgbench through mamori', () => {
  const env = (): Record<string, string> => ({
    PGUSER: stack.cluster.superuser, PGPASSWORD: stack.cluster.superPassword, PGDATABASE: 'bench',
    PGSSLMODE: 'verify-full', PGSSLROOTCERT: stack.cluster.caCertPath,
  });

  test('pgbench -i -s 1 initialises its tables through mamori', async () => {
    const r = await runLibpq('pgbench', ['-i', '-s', '1', '-q'], env());
    assert.equal(r.code, 0, r.stderr);
    const n = await stack.cluster.query<{ n: string }>('SELECT count(*) AS n FROM pgbench_accounts', [], { database: 'bench' });
    assert.equal(n.rows[0]!.n, '100000');
  });

  for (const protocol of ['simple', 'extended', 'prepared'] as const) {
    test(`pgbench -t 50 -c 4 --protocol=${protocol} runs every transaction`, async () => {
      const before = await stack.cluster.query<{ n: string }>('SELECT count(*) AS n FROM pgbench_history', [], { database: 'bench' });
      const r = await runLibpq('pgbench', ['-n', '-t', '50', '-c', '4', `--protocol=${protocol}`], env());
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`query mode: ${protocol}`));
      assert.match(r.stdout, /number of transactions actually processed: 200\/200/);
      assert.match(r.stdout, /number of failed transactions: 0 /);
      // Each TPC-B-like transaction inserts one history row: the server saw all of them.
      const after = await stack.cluster.query<{ n: string }>('SELECT count(*) AS n FROM pgbench_history', [], { database: 'bench' });
      assert.equal(Number(after.rows[0]!.n) - Number(before.rows[0]!.n), 200);
    });
  }
});

describe('node-postgres through mamori', () => {
  const connect = async (): Promise<pg.Client> => {
    const c = new pg.Client(stack.client('alice', ALICE_PW, { ssl: { ca: stack.cluster.ca.cert, servername: 'localhost' } }));
    await c.connect();
    return c;
  };

  test('a named prepared statement is parsed once and reused across calls', async () => {
    const c = await connect();
    try {
      for (const n of [1, 2, 3]) {
        const r = await c.query<{ d: number }>({ name: 'double_it', text: 'SELECT $1::int * 2 AS d', values: [n] });
        assert.equal(r.rows[0]!.d, n * 2);
      }
      const ps = await c.query<{ name: string; statement: string }>(
        "SELECT name, statement FROM pg_prepared_statements WHERE name = 'double_it'");
      assert.equal(ps.rowCount, 1);
    } finally {
      await c.end();
    }
  });

  test('pg-cursor reads a result in batches', async () => {
    const c = await connect();
    try {
      const cursor = c.query(new Cursor<{ g: number }>('SELECT g FROM generate_series(1, 2500) AS g'));
      const sizes: number[] = [];
      const seen: number[] = [];
      for (;;) {
        const rows = await cursor.read(1000);
        if (rows.length === 0) break;
        sizes.push(rows.length);
        for (const r of rows) seen.push(r.g);
      }
      await cursor.close();
      assert.deepEqual(sizes, [1000, 1000, 500]);
      assert.deepEqual(seen, Array.from({ length: 2500 }, (_, i) => i + 1));
      assert.equal((await c.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    } finally {
      await c.end();
    }
  });

  test('COPY FROM STDIN and COPY TO STDOUT move 10k rows intact', async () => {
    const N = 10_000;
    const line = (i: number): string => `${i}\tlabel ${i} ${'é'.repeat(i % 7)}\n`;
    const c = await connect();
    try {
      const source = Readable.from((function* () {
        for (let i = 0; i < N; i += 500) yield Array.from({ length: 500 }, (_, k) => line(i + k)).join('');
      })());
      const ingest = c.query(copyFrom('COPY public.copy_target (id, label) FROM STDIN'));
      await pipeline(source, ingest);
      assert.equal(ingest.rowCount, N);
      const check = await stack.cluster.query<{ n: string; s: string }>('SELECT count(*) AS n, sum(id) AS s FROM public.copy_target');
      assert.deepEqual(check.rows[0], { n: String(N), s: String((N * (N - 1)) / 2) });

      const chunks: Buffer[] = [];
      await pipeline(
        c.query(copyTo('COPY (SELECT id, label FROM public.copy_target ORDER BY id) TO STDOUT')),
        new Writable({ write(chunk: Buffer, _enc, cb) { chunks.push(chunk); cb(); } }),
      );
      const expected = Array.from({ length: N }, (_, i) => line(i)).join('');
      assert.equal(Buffer.concat(chunks).toString('utf8'), expected);
      assert.equal((await c.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    } finally {
      await c.end();
    }
  });

  test('a cancel sent through mamori stops pg_sleep with 57014 and the session goes on', async () => {
    const c = await connect();
    try {
      const sleeping = c.query("SELECT pg_sleep(10), 'pg-cancel-marker'");
      const started = Date.now();
      await sleeperRunning('pg-cancel-marker');
      // pg's own cancel path (what Client#cancel does): a new pg.Connection to the same host/port sends a
      // CancelRequest with the BackendKeyData this client got through mamori.
      const keys = c as unknown as { processID: number; secretKey: number };
      const con = new pg.Connection() as pg.Connection & { connect(port: number, host: string): void; cancel(pid: number, key: number): void };
      con.on('connect', () => con.cancel(keys.processID, keys.secretKey));
      con.on('error', () => undefined);
      con.connect(stack.mamori.port, '127.0.0.1');
      await assert.rejects(sleeping, (e: { code?: string; message?: string }) =>
        e.code === '57014' && e.message === 'canceling statement due to user request');
      assert.ok(Date.now() - started < 8000);
      assert.equal((await c.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    } finally {
      await c.end();
    }
  });

  test('LISTEN/NOTIFY: a notification from another session is delivered through mamori', async () => {
    const listener = await connect();
    const notifier = await connect();
    try {
      await listener.query('LISTEN mamori_chan');
      const got = new Promise<pg.Notification>((resolve) => listener.once('notification', resolve));
      await notifier.query("SELECT pg_notify('mamori_chan', 'hello through mamori')");
      const n = await got;
      assert.equal(n.channel, 'mamori_chan');
      assert.equal(n.payload, 'hello through mamori');
      assert.equal((await listener.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    } finally {
      await listener.end();
      await notifier.end();
    }
  });

  test('a NoticeResponse from RAISE NOTICE reaches the client', async () => {
    const c = await connect();
    try {
      const notices: string[] = [];
      c.on('notice', (m) => notices.push(`${m.severity ?? ''}: ${m.message}`));
      await c.query("DO $$ BEGIN RAISE NOTICE 'mamori says %', 42; END $$");
      assert.deepEqual(notices, ['NOTICE: mamori says 42']);
    } finally {
      await c.end();
    }
  });

  test('SET application_name sends a ParameterStatus the client sees', async () => {
    const c = await connect();
    try {
      const statuses: Array<[string, string]> = [];
      const conn = (c as unknown as { connection: NodeJS.EventEmitter }).connection;
      conn.on('parameterStatus', (m: { parameterName: string; parameterValue: string }) => statuses.push([m.parameterName, m.parameterValue]));
      await c.query("SET application_name = 'through-mamori'");
      assert.deepEqual(statuses, [['application_name', 'through-mamori']]);
      const r = await c.query<{ a: string }>("SELECT application_name AS a FROM pg_stat_activity WHERE pid = pg_backend_pid()");
      assert.equal(r.rows[0]!.a, 'through-mamori');
    } finally {
      await c.end();
    }
  });
});

describe('postgres.js through mamori', () => {
  const open = (extra: postgres.Options<Record<string, postgres.PostgresType>> = {}): postgres.Sql =>
    postgres({
      host: '127.0.0.1', port: stack.mamori.port, user: 'alice', password: ALICE_PW, database: 'postgres',
      ssl: { ca: stack.cluster.ca.cert, servername: 'localhost' }, max: 1, ...extra,
    });

  test('many concurrent queries on one connection pipeline and each gets its own answer', async () => {
    const sql = open();
    try {
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => sql<{ v: number; pid: number }[]>`SELECT ${i}::int AS v, pg_backend_pid() AS pid`));
      assert.deepEqual(results.map((r) => r[0]!.v), Array.from({ length: 200 }, (_, i) => i));
      assert.equal(new Set(results.map((r) => r[0]!.pid)).size, 1); // one connection (max: 1)
    } finally {
      await sql.end();
    }
  });

  test('unnamed statements (prepare: false) work, concurrently too', async () => {
    const sql = open({ prepare: false });
    try {
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => sql<{ s: string }[]>`SELECT ${'v' + i}::text || '!' AS s`));
      assert.deepEqual(results.map((r) => r[0]!.s), Array.from({ length: 50 }, (_, i) => `v${i}!`));
      const named = await sql<{ n: string }[]>`SELECT count(*) AS n FROM pg_prepared_statements`;
      assert.equal(named[0]!.n, '0');
    } finally {
      await sql.end();
    }
  });

  test('sql.begin commits a transaction and rolls one back on error', async () => {
    const sql = open();
    try {
      await sql`CREATE TEMP TABLE t (x int)`;
      const inside = await sql.begin(async (tx) => {
        await tx`INSERT INTO t VALUES (1), (2)`;
        return tx<{ n: string }[]>`SELECT count(*) AS n FROM t`;
      });
      assert.equal(inside[0]!.n, '2');
      await assert.rejects(sql.begin(async (tx) => {
        await tx`INSERT INTO t VALUES (3)`;
        await tx`SELECT 1/0`;
      }), (e: { code?: string }) => e.code === '22012');
      const after = await sql<{ s: number }[]>`SELECT sum(x)::int AS s FROM t`;
      assert.equal(after[0]!.s, 3);
    } finally {
      await sql.end();
    }
  });

  test('query.cancel() cancels pg_sleep through mamori with 57014', async () => {
    const sql = open();
    try {
      await sql`SELECT 1`; // connected, BackendKeyData known
      const q = sql`SELECT pg_sleep(10), 'postgresjs-cancel-marker'`;
      const started = Date.now();
      const done = q.then(() => null, (e: unknown) => e as { code?: string });
      await sleeperRunning('postgresjs-cancel-marker');
      q.cancel();
      const err = await done;
      assert.equal(err?.code, '57014');
      assert.ok(Date.now() - started < 8000);
      const still = await sql<{ one: number }[]>`SELECT 1 AS one`;
      assert.equal(still[0]!.one, 1);
    } finally {
      await sql.end();
    }
  });
});
