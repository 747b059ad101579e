// Limits and hygiene through mamori with real clients: the connection limit in PostgreSQL's own words,
// startup and idle timeouts, the rewrite-buffer limit, and many concurrent sessions.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { startStack, type Stack } from '../../harness/mamori.js';
import { eventually, startAnotherMamori } from '../../harness/more-mamori.js';
import { RawClient } from '../../harness/raw-client.js';
import type { MamoriServer } from '../../../proxy/server.js';

const PW = 'bob-pw-limits';
let stack: Stack;
const extra: MamoriServer[] = [];

before(async () => {
  stack = await startStack();
  await stack.cluster.createRole('bob', PW);
});

after(async () => {
  for (const m of extra) await m.shutdown(0);
  await stack?.stop();
});

async function another(limits: Record<string, number>): Promise<MamoriServer> {
  const m = await startAnotherMamori(stack, { limits });
  extra.push(m);
  return m;
}

function clientFor(m: MamoriServer, tls = false): pg.Client {
  const c = new pg.Client({
    host: '127.0.0.1', port: m.port, user: 'bob', password: PW, database: 'postgres',
    ...(tls ? { ssl: { ca: stack.cluster.ca.cert, servername: 'localhost' } } : {}),
  });
  c.on('error', () => undefined); // asynchronous FATALs are asserted where expected
  return c;
}

interface PgError {
  code?: string;
  message?: string;
  severity?: string;
}

describe('connection limit', () => {
  test('with limits.maxConnections 3, the 4th client gets 53300 "sorry, too many clients already", and a freed slot is reusable', async () => {
    const m = await another({ maxConnections: 3 });
    const three = [clientFor(m), clientFor(m, true), clientFor(m)];
    await Promise.all(three.map((c) => c.connect()));
    const fourth = clientFor(m);
    await assert.rejects(fourth.connect(), (e: PgError) => {
      assert.equal(e.code, '53300');
      assert.equal(e.message, 'sorry, too many clients already');
      assert.equal(e.severity, 'FATAL');
      return true;
    });
    // The three admitted sessions are unaffected.
    for (const c of three) assert.equal((await c.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    await three[0]!.end();
    assert.ok(await eventually(() => m.connections === 2, 5000), `connections ${m.connections}`);
    const again = clientFor(m);
    await again.connect();
    assert.equal((await again.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'bob');
    await Promise.all([again.end(), three[1]!.end(), three[2]!.end()]);
    assert.ok(await eventually(() => m.connections === 0, 5000));
  });
});

describe('timeouts', () => {
  test('a connection that never sends a startup packet is closed after startupTimeoutSeconds', async () => {
    // 3 s, not 1: the timer also bounds a real client's whole login, which takes a while on a loaded machine.
    const m = await another({ startupTimeoutSeconds: 3 });
    const started = Date.now();
    const silent = RawClient.wrap(await RawClient.socket('127.0.0.1', m.port));
    assert.ok(await eventually(() => m.connections === 1, 1000));
    assert.equal(await silent.closedWithin(10_000), true);
    const took = Date.now() - started;
    assert.ok(took >= 2900 && took < 9000, `closed after ${took} ms`);
    assert.ok(await eventually(() => m.connections === 0, 2000));
    // A well-behaved client right after is served.
    const c = clientFor(m);
    await c.connect();
    await c.end();
  });

  test('with idleTimeoutSeconds 1, an idle session ends with 57P05 while an active one finishes', async () => {
    const m = await another({ idleTimeoutSeconds: 1 });
    const idle = clientFor(m);
    const busy = clientFor(m);
    const idleError = new Promise<PgError & { at: number }>((resolve) => idle.once('error', (e: PgError) => resolve({ ...e, message: e.message, at: Date.now() })));
    const started = Date.now(); // before the idle session's first ReadyForQuery arms its timer
    await Promise.all([idle.connect(), busy.connect()]);
    // Busy for 2.5 s: longer than the timeout, but a running statement is not idle.
    const r = await busy.query<{ done: string }>("SELECT pg_sleep(2.5)::text || 'slept' AS done");
    const busyDone = Date.now();
    assert.equal(r.rows[0]!.done, 'slept');
    const e = await idleError;
    assert.equal(e.code, '57P05');
    assert.equal(e.message, 'terminating connection due to idle-session timeout');
    assert.ok(e.at - started >= 1000, `ended after ${e.at - started} ms: not before a second of idleness`);
    assert.ok(e.at < busyDone, 'the idle session ended while the busy one was still running');
    // The busy session went idle only when its statement ended; it is still usable right away.
    assert.equal((await busy.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    await busy.end();
    await assert.rejects(idle.query('SELECT 1'));
    assert.ok(await eventually(() => m.connections === 0, 5000));
  });
});

describe('message size limit', () => {
  test('with maxRewriteMessageBytes 64 KiB, a larger Query is refused with 54000 and the next client is served', async () => {
    const m = await another({ maxRewriteMessageBytes: 64 * 1024 });
    const c = clientFor(m);
    await c.connect();
    const fits = `SELECT '${'x'.repeat(60_000)}' AS v`;
    assert.equal((await c.query<{ v: string }>(fits)).rows[0]!.v.length, 60_000);
    const big = `SELECT '${'y'.repeat(100_000)}' AS v`;
    await assert.rejects(c.query(big), (e: PgError) => {
      assert.equal(e.code, '54000');
      assert.match(e.message ?? '', /^mamori: /);
      assert.ok(!(e.message ?? '').includes('yyyy'), 'the statement text is not echoed');
      return true;
    });
    await c.end().catch(() => undefined);
    const next = clientFor(m, true);
    await next.connect();
    assert.equal((await next.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    await next.end();
    assert.ok(await eventually(() => m.connections === 0, 5000));
  });
});

describe('many sessions', () => {
  test('200 concurrent sessions each run a few queries, all succeed, and mamori.connections returns to 0', async () => {
    const N = 200;
    const results = await Promise.allSettled(Array.from({ length: N }, async (_, i) => {
      const c = clientFor(stack.mamori, i % 2 === 0);
      await c.connect();
      try {
        const a = await c.query<{ v: number }>('SELECT $1::int AS v', [i]);
        const b = await c.query<{ s: string }>('SELECT sum(g)::text AS s FROM generate_series(1, $1::int) AS g', [i + 1]);
        const u = await c.query<{ u: string }>('SELECT current_user AS u');
        return [a.rows[0]!.v, b.rows[0]!.s, u.rows[0]!.u] as const;
      } finally {
        await c.end();
      }
    }));
    const failed = results.filter((r) => r.status === 'rejected');
    assert.deepEqual(failed.map((r) => String((r as PromiseRejectedResult).reason)), []);
    results.forEach((r, i) => {
      assert.deepEqual((r as PromiseFulfilledResult<readonly [number, string, string]>).value, [i, String(((i + 1) * (i + 2)) / 2), 'bob']);
    });
    assert.ok(await eventually(() => stack.mamori.connections === 0, 10_000), `connections ${stack.mamori.connections}`);
  });
});
