// Vectors from real bytes: node-postgres and postgres.js talk to a real PostgreSQL through a TCP tap; every
// message captured in both directions must decode, and re-encode to exactly the bytes that were on the wire.
// The captured server errors also exercise error redaction on PostgreSQL's own texts.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import pg from 'pg';
import Cursor from 'pg-cursor';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import postgres from 'postgres';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { decodeBackend, encodeBackend } from '../../../proxy/wire/backend.js';
import { decodeFrontend, decodeSASLInitialResponse, encodeFrontend, encodeSASLInitialResponse } from '../../../proxy/wire/frontend.js';
import { decodeStartupPacket, encodeStartupPacket } from '../../../proxy/wire/startup.js';
import { FE, type BackendMessage, type NoticeFields } from '../../../proxy/wire/types.js';
import { redactErrorFields } from '../../../proxy/errors.js';

interface Capture {
  c2s: Buffer[];
  s2c: Buffer[];
  closed: Promise<void>;
}

let cluster: Cluster;
let tap: Server;
let tapPort: number;
const captures: Capture[] = [];

before(async () => {
  cluster = await startCluster({ tls: false });
  tap = createServer((client: Socket) => {
    const upstream = connect(cluster.port, cluster.host);
    const cap: Capture = { c2s: [], s2c: [], closed: Promise.resolve() };
    cap.closed = new Promise<void>((resolve) => {
      let open = 2;
      const done = () => {
        if (--open === 0) resolve();
      };
      client.on('close', done);
      upstream.on('close', done);
    });
    client.on('data', (d: Buffer) => cap.c2s.push(Buffer.from(d)));
    upstream.on('data', (d: Buffer) => cap.s2c.push(Buffer.from(d)));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    captures.push(cap);
  });
  await new Promise<void>((resolve) => tap.listen(0, '127.0.0.1', resolve));
  const addr = tap.address();
  assert.ok(addr !== null && typeof addr === 'object');
  tapPort = addr.port;
});

after(async () => {
  await new Promise<void>((resolve) => tap.close(() => resolve()));
  await cluster.stop();
});

/** Splits a captured stream of typed messages. */
function splitTyped(stream: Buffer): Array<{ type: number; body: Buffer; raw: Buffer }> {
  const out: Array<{ type: number; body: Buffer; raw: Buffer }> = [];
  let pos = 0;
  while (pos < stream.length) {
    assert.ok(stream.length - pos >= 5, 'capture ends inside a header');
    const len = stream.readInt32BE(pos + 1);
    const raw = stream.subarray(pos, pos + 1 + len);
    assert.equal(raw.length, 1 + len, 'capture ends inside a message');
    out.push({ type: stream[pos]!, body: raw.subarray(5), raw });
    pos += 1 + len;
  }
  return out;
}

async function exercise(): Promise<void> {
  const c = new pg.Client({ host: '127.0.0.1', port: tapPort, user: cluster.superuser, password: cluster.superPassword, database: 'postgres', ssl: false });
  await c.connect();
  try {
    await c.query('create table people (id int primary key, my_number text unique not null, name text)');
    await c.query('create table orders (id int, my_number text references people (my_number))');
    await c.query("insert into people values (1, '123456789018', '山田')");
    await assert.rejects(c.query("insert into people values (2, '123456789018', 'dup')"), /duplicate key/);
    await assert.rejects(c.query("insert into orders values (1, '987654321098')"), /foreign key/);
    await assert.rejects(c.query('insert into people (id, my_number) values ($1, $2)', [3, null]), /not-null/);
    const named = { name: 'by_id', text: 'select id, my_number, name from people where id = $1', values: [1] };
    assert.equal((await c.query(named)).rows.length, 1);
    assert.equal((await c.query(named)).rows.length, 1);
    await c.query({ text: 'select $1::bytea as b, null::text as n', values: [Buffer.from([0, 1, 2])] });
    await c.query('');
    await c.query("do $$ begin raise notice 'hello from %', 'plpgsql'; end $$");
    const notified = new Promise<void>((resolve) => c.once('notification', () => resolve()));
    await c.query('listen ch');
    await c.query("notify ch, 'payload'");
    await notified;
    const cursor = c.query(new Cursor('select g from generate_series(1, 10) g'));
    assert.equal((await cursor.read(3)).length, 3);
    assert.equal((await cursor.read(3)).length, 3);
    await cursor.close();
    await pipeline(Readable.from(['10\t100000000010\tx\n', '11\t100000000011\t\\N\n']), c.query(copyFrom('copy people from stdin')));
    const chunks: Buffer[] = [];
    const out = c.query(copyTo('copy people to stdout'));
    for await (const chunk of out) chunks.push(chunk as Buffer);
    assert.match(Buffer.concat(chunks).toString(), /100000000011/);
    await c.query('begin');
    await assert.rejects(c.query('select 1/0'), /division by zero/);
    await c.query('rollback');
  } finally {
    await c.end();
  }
  const sql = postgres({ host: '127.0.0.1', port: tapPort, user: cluster.superuser, pass: cluster.superPassword, database: 'postgres', ssl: false, onnotice: () => {} });
  try {
    const rows = await sql`select ${1}::int as x, ${'マイナンバー'}::text as y`;
    assert.equal(rows[0]!.y, 'マイナンバー');
    await sql`select id from people where my_number = ${'123456789018'}`;
  } finally {
    await sql.end();
  }
}

test('every message real clients and PostgreSQL exchange decodes and re-encodes byte-identically', async () => {
  await exercise();
  await Promise.all(captures.map((c) => c.closed));
  assert.equal(captures.length, 2);
  const seen = new Set<string>();
  const errors: NoticeFields[] = [];
  for (const cap of captures) {
    // Server → client
    let saslStarted = false;
    for (const { type, body, raw } of splitTyped(Buffer.concat(cap.s2c))) {
      const m: BackendMessage = decodeBackend(type, body);
      seen.add(m.kind);
      assert.deepEqual(encodeBackend(m), raw, m.kind);
      if (m.kind === 'ErrorResponse') errors.push(m.fields);
      if (m.kind === 'AuthenticationSASL') saslStarted = true;
    }
    assert.ok(saslStarted, 'SCRAM was offered');
    // Client → server: untyped startup packet, then typed messages
    const stream = Buffer.concat(cap.c2s);
    const startupLen = stream.readInt32BE(0);
    const startup = decodeStartupPacket(stream.subarray(4, startupLen));
    assert.equal(startup.kind, 'StartupMessage');
    assert.deepEqual(encodeStartupPacket(startup), stream.subarray(0, startupLen));
    let firstP = true;
    for (const { type, body, raw } of splitTyped(stream.subarray(startupLen))) {
      const m = decodeFrontend(type, body);
      seen.add(m.kind);
      assert.deepEqual(encodeFrontend(m), raw, m.kind);
      if (type === FE.AuthResponse && firstP) {
        firstP = false;
        const init = decodeSASLInitialResponse(body);
        assert.equal(init.mechanism, 'SCRAM-SHA-256');
        assert.deepEqual(encodeSASLInitialResponse(init), raw);
      }
    }
  }
  for (const kind of [
    'AuthenticationSASL', 'AuthenticationSASLContinue', 'AuthenticationSASLFinal', 'AuthenticationOk', 'ParameterStatus',
    'BackendKeyData', 'ReadyForQuery', 'RowDescription', 'DataRow', 'CommandComplete', 'EmptyQueryResponse', 'ErrorResponse',
    'NoticeResponse', 'NotificationResponse', 'ParseComplete', 'BindComplete', 'CloseComplete', 'NoData', 'PortalSuspended',
    'ParameterDescription', 'CopyInResponse', 'CopyOutResponse', 'CopyData', 'CopyDone',
    'Query', 'Parse', 'Bind', 'Describe', 'Execute', 'Close', 'Sync', 'Flush', 'Terminate', 'AuthResponse',
  ]) {
    assert.ok(seen.has(kind), `captured a ${kind}`);
  }

  // Redaction on PostgreSQL's own error texts.
  const unique = errors.find((f) => f.C === '23505')!;
  assert.match(unique.D!, /^Key \(my_number\)=\(123456789018\) already exists\.$/);
  assert.equal(unique.t, 'people');
  const r1 = redactErrorFields(unique, ['public.people']);
  assert.equal(r1.D, undefined);
  assert.equal(r1.M, unique.M);
  assert.equal(r1.C, '23505');
  assert.ok(!Object.values(r1).some((v) => v?.includes('123456789018')), 'no field echoes the value');
  assert.equal(redactErrorFields(unique, ['public.orders']).D, unique.D, 'other tables: untouched');

  const fk = errors.find((f) => f.C === '23503')!;
  assert.equal(fk.t, 'orders');
  assert.match(fk.D!, /is not present in table "people"/);
  assert.equal(redactErrorFields(fk, ['people']).D, undefined, 'a foreign key into a protected table is caught by its detail');

  const notNull = errors.find((f) => f.C === '23502')!;
  assert.match(notNull.D!, /^Failing row contains/);
  assert.equal(redactErrorFields(notNull, ['public.people']).D, undefined);
});
