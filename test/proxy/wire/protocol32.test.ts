// Protocol 3.2 against a real server, spoken only through mamori's codecs on a raw socket: version and `_pq_.*`
// negotiation (NegotiateProtocolVersion arrives before authentication), then a SCRAM login in the codecs alone; on PostgreSQL 18 a long BackendKeyData and a
// variable-length CancelRequest carrying it.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { decodeBackend, encodeBackend } from '../../../proxy/wire/backend.js';
import { encodeQuery, encodeSASLInitialResponse, encodeSASLResponse, encodeTerminate } from '../../../proxy/wire/frontend.js';
import { encodeCancelRequest, encodeStartupMessage } from '../../../proxy/wire/startup.js';
import { STARTUP, type BackendMessage } from '../../../proxy/wire/types.js';

/** Reads typed backend messages off a socket, checking each re-encodes to its exact bytes. */
class Conn {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private closed = false;
  constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  static open(cluster: Cluster): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = connect(cluster.port, cluster.host, () => resolve(new Conn(s)));
      s.once('error', reject);
    });
  }
  async next(): Promise<BackendMessage> {
    for (;;) {
      if (this.buf.length >= 5) {
        const len = this.buf.readInt32BE(1);
        if (this.buf.length >= 1 + len) {
          const raw = this.buf.subarray(0, 1 + len);
          this.buf = this.buf.subarray(1 + len);
          const m = decodeBackend(raw[0]!, raw.subarray(5));
          assert.deepEqual(encodeBackend(m), raw, m.kind);
          return m;
        }
      }
      if (this.closed) throw new Error('connection closed');
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
  async until<K extends BackendMessage['kind']>(kind: K, seen: BackendMessage[] = []): Promise<Extract<BackendMessage, { kind: K }>> {
    for (;;) {
      const m = await this.next();
      seen.push(m);
      if (m.kind === kind) return m as Extract<BackendMessage, { kind: K }>;
      if (m.kind === 'ErrorResponse' && kind !== 'ErrorResponse') throw new Error(`server error ${m.fields.C}`);
    }
  }
}

const hmac = (key: Buffer, s: string) => createHmac('sha256', key).update(s).digest();

/** A minimal SCRAM-SHA-256 client (no channel binding), enough to log in over plain TCP. */
async function scramLogin(c: Conn, password: string): Promise<void> {
  const sasl = await c.until('AuthenticationSASL');
  assert.ok(sasl.mechanisms.includes('SCRAM-SHA-256'));
  const clientFirstBare = `n=,r=${randomBytes(18).toString('base64')}`;
  c.sock.write(encodeSASLInitialResponse({ mechanism: 'SCRAM-SHA-256', data: Buffer.from(`n,,${clientFirstBare}`) }));
  const serverFirst = (await c.until('AuthenticationSASLContinue')).data.toString();
  const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
  const salted = pbkdf2Sync(password, Buffer.from(attrs.s!, 'base64'), Number(attrs.i), 32, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const withoutProof = `c=biws,r=${attrs.r}`;
  const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
  const signature = hmac(createHash('sha256').update(clientKey).digest(), authMessage);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]!));
  c.sock.write(encodeSASLResponse(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
  const final = (await c.until('AuthenticationSASLFinal')).data.toString();
  assert.equal(final, `v=${hmac(hmac(salted, 'Server Key'), authMessage).toString('base64')}`);
  await c.until('AuthenticationOk');
}

const clusters: Cluster[] = [];
after(async () => {
  await Promise.all(clusters.map((c) => c.stop()));
});

describe('protocol 3.2 on real servers', () => {
  test('PostgreSQL 15 answers a 3.2 startup with NegotiateProtocolVersion naming the unknown _pq_ option', async () => {
    const pg15 = await startCluster({ tls: false });
    clusters.push(pg15);
    const c = await Conn.open(pg15);
    c.sock.write(
      encodeStartupMessage({
        protocol: STARTUP.Protocol32,
        params: [['user', pg15.superuser], ['database', 'postgres'], ['_pq_.mamori_probe', 'on']],
      }),
    );
    const first = await c.next();
    assert.deepEqual(first, { kind: 'NegotiateProtocolVersion', version: pg15.major >= 18 ? STARTUP.Protocol32 : STARTUP.Protocol30, unrecognized: ['_pq_.mamori_probe'] });
    await scramLogin(c, pg15.superPassword);
    const key = await c.until('BackendKeyData');
    assert.equal(key.secret.length, 4, 'a 3.0 session has a 4-byte key');
    await c.until('ReadyForQuery');
    c.sock.end(encodeTerminate());
  });

  test('PostgreSQL 18: 3.2 login, a long BackendKeyData and a variable-length CancelRequest', async (t) => {
    const pg18 = await startCluster({ tls: false, embedded: true });
    clusters.push(pg18);
    assert.ok(pg18.major >= 18, `embedded server is ${pg18.major}`);
    const c = await Conn.open(pg18);
    c.sock.write(encodeStartupMessage({ protocol: STARTUP.Protocol32, params: [['user', pg18.superuser], ['database', 'postgres']] }));
    await scramLogin(c, pg18.superPassword);
    const seen: BackendMessage[] = [];
    const key = await c.until('BackendKeyData', seen);
    assert.ok(key.secret.length > 4 && key.secret.length <= 256, `3.2 key length ${key.secret.length}`);
    await c.until('ReadyForQuery', seen);
    assert.ok(!seen.some((m) => m.kind === 'NegotiateProtocolVersion'), '3.2 accepted as is');

    c.sock.write(encodeQuery('select pg_sleep(30)'));
    // wait until the sleep runs, then cancel it with the long key over a second socket
    for (;;) {
      const r = await pg18.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where pid = $1 and state = 'active'", [key.pid]);
      if (r.rows[0]!.n === 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const cancel = connect(pg18.port, pg18.host);
    cancel.end(encodeCancelRequest({ pid: key.pid, secret: key.secret }));
    await new Promise((r) => cancel.on('close', r));
    const err = await c.until('ErrorResponse');
    assert.equal(err.fields.C, '57014');
    assert.equal((await c.until('ReadyForQuery')).status, 'I');
    c.sock.end(encodeTerminate());
    t.diagnostic(`PostgreSQL ${pg18.major}: cancel key ${key.secret.length} bytes`);
  });
});
