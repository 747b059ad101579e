// Real clients (libpq's psql, node-postgres, postgres.js) authenticating against mamori's SCRAM server
// half, which then logs in upstream with the recovered ClientKey. The listener below is a test-only
// stand-in for mamori's session layer: SSLRequest → TLS with mamori's certificate → StartupMessage →
// SASL with ScramServerExchange → upstream login with ScramClientWithKey → byte relay.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { TLSSocket, createSecureContext } from 'node:tls';
import pg from 'pg';
import postgres from 'postgres';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { DEFAULT_LOOKUP_FUNCTION, fetchVerifier, installLookupFunction } from '../../../proxy/session/auth-lookup.js';
import { ScramServerExchange, scramFailureError, tlsServerEndPointHash, wipeSecret, type ScramFailure } from '../../../proxy/session/scram.js';
import { MessageReader, typed, upstreamLogin, type OpenUpstream } from './scram-helpers.js';

const ALICE_PW = 'alice-pw-42';
let cluster: Cluster;
let control: pg.Client;
let listener: Server;
let port = 0;
const open = new Set<Socket>();
/** What the listener observed per login, for assertions (reasons only, never secrets). */
const outcomes: string[] = [];

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n, 0);
  return b;
}

function fatal(sock: Socket, code: string, message: string, detail?: string): void {
  const d = detail === undefined ? '' : `D${detail}\0`;
  sock.end(typed('E', Buffer.from(`SFATAL\0VFATAL\0C${code}\0M${message}\0${d}\0`)));
}

async function serve(raw: Socket, cert: { key: Buffer; cert: Buffer; der: Buffer }): Promise<void> {
  let sock: Socket = raw;
  let reader = new MessageReader(raw);
  let binding: Buffer | null = null;
  let startup = await reader.untyped();
  if (startup.length === 4 && startup.readInt32BE(0) === 80877103) {
    reader.detach();
    raw.write('S');
    const t = new TLSSocket(raw, { isServer: true, secureContext: createSecureContext({ cert: cert.cert, key: cert.key }) });
    await once(t, 'secure');
    open.add(t);
    sock = t;
    reader = new MessageReader(t);
    binding = tlsServerEndPointHash(cert.der);
    startup = await reader.untyped();
  }
  const fields = startup.subarray(4).toString('utf8').split('\0');
  const params = new Map<string, string>();
  for (let i = 0; i + 1 < fields.length && fields[i] !== ''; i += 2) params.set(fields[i]!, fields[i + 1]!);
  const user = params.get('user') ?? '';
  const database = params.get('database') ?? user;

  const verifier = await fetchVerifier(control, DEFAULT_LOOKUP_FUNCTION, user);
  const ex = new ScramServerExchange({ verifier, channelBinding: binding, user });
  sock.write(typed('R', Buffer.concat([int32(10), ...ex.mechanisms().map((m) => Buffer.from(`${m}\0`)), Buffer.from([0])])));
  const init = await reader.message();
  const nul = init.body.indexOf(0);
  const mechanism = init.body.toString('utf8', 0, nul);
  const dataLen = init.body.readInt32BE(nul + 1);
  const s1 = ex.clientFirst(mechanism, init.body.subarray(nul + 5, nul + 5 + Math.max(0, dataLen)));
  const authFailed = (reason: ScramFailure) => {
    const e = scramFailureError(reason, user);
    fatal(sock, e.code, e.message, e.detail);
  };
  if (!s1.ok) {
    outcomes.push(s1.reason);
    return authFailed(s1.reason);
  }
  sock.write(typed('R', Buffer.concat([int32(11), s1.serverFirst])));
  const resp = await reader.message();
  const s2 = ex.clientFinal(resp.body);
  if (!s2.ok) {
    outcomes.push(s2.reason);
    return authFailed(s2.reason);
  }
  let up: OpenUpstream | null = null;
  const r = await upstreamLogin({
    host: cluster.host, port: cluster.port, user, database, clientKey: s2.clientKey, verifier: verifier!, tls: true,
    ca: cluster.ca.cert, keepOpen: (u) => (up = u),
  });
  wipeSecret(s2.clientKey);
  outcomes.push(`${mechanism} → upstream ${r.mechanism ?? '-'} ${r.ok ? 'ok' : 'failed'}`);
  if (!r.ok || !up) return fatal(sock, '08006', 'upstream login failed');
  const upstream: OpenUpstream = up;
  open.add(upstream.socket);
  sock.write(typed('R', Buffer.concat([int32(12), s2.serverFinal])));
  sock.write(typed('R', int32(0)));
  sock.write(upstream.pending);
  reader.detach();
  sock.pipe(upstream.socket).pipe(sock);
  sock.on('error', () => upstream.socket.destroy());
  upstream.socket.on('error', () => sock.destroy());
  sock.on('close', () => upstream.socket.destroy());
  upstream.socket.on('close', () => sock.destroy());
}

before(async () => {
  cluster = await startCluster({ tls: true });
  await cluster.createRole('mamori_ctl', 'ctl-pw');
  await cluster.createRole('alice', ALICE_PW);
  await cluster.query('GRANT pg_read_all_stats TO alice');
  const su = new pg.Client({ host: cluster.host, port: cluster.port, user: cluster.superuser, password: cluster.superPassword, database: 'postgres' });
  await su.connect();
  await installLookupFunction(su, DEFAULT_LOOKUP_FUNCTION, 'mamori_ctl');
  await su.end();
  control = new pg.Client({ host: cluster.host, port: cluster.port, user: 'mamori_ctl', password: 'ctl-pw', database: 'postgres' });
  await control.connect();
  const pair = cluster.ca.issueServer('mamori');
  const cert = { cert: pair.cert, key: pair.key, der: new X509Certificate(pair.cert).raw };
  listener = createServer((s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
    s.on('error', () => undefined);
    serve(s, cert).catch(() => s.destroy());
  });
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  port = (listener.address() as { port: number }).port;
});

after(async () => {
  for (const s of open) s.destroy();
  await new Promise<void>((r) => listener?.close(() => r()));
  await control?.end();
  await cluster?.stop();
});

function psql(conninfo: string, password: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      join(cluster.bindir, 'psql'),
      [conninfo, '-XAtc', "SELECT current_user || ' ' || coalesce((SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '?')"],
      { env: { ...process.env, PGPASSWORD: password, PGSSLROOTCERT: cluster.caCertPath }, timeout: 20_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout: stdout.trim(), stderr }),
    );
  });
}

describe('libpq (psql) through the SCRAM server half', () => {
  const conn = (extra: string) => `host=localhost port=${port} user=alice dbname=postgres ${extra}`;

  test('sslmode=verify-full channel_binding=require: -PLUS to mamori, -PLUS upstream', async () => {
    outcomes.length = 0;
    const r = await psql(conn('sslmode=verify-full channel_binding=require'), ALICE_PW);
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'alice true'); // upstream session is TLS too
    assert.deepEqual(outcomes, ['SCRAM-SHA-256-PLUS → upstream SCRAM-SHA-256-PLUS ok']);
  });

  test('channel_binding=prefer also binds', async () => {
    outcomes.length = 0;
    const r = await psql(conn('sslmode=require channel_binding=prefer'), ALICE_PW);
    assert.equal(r.stdout, 'alice true');
    assert.deepEqual(outcomes, ['SCRAM-SHA-256-PLUS → upstream SCRAM-SHA-256-PLUS ok']);
  });

  test('sslmode=disable: plain SCRAM-SHA-256 to mamori', async () => {
    outcomes.length = 0;
    const r = await psql(conn('sslmode=disable'), ALICE_PW);
    assert.equal(r.stdout, 'alice true');
    assert.deepEqual(outcomes, ['SCRAM-SHA-256 → upstream SCRAM-SHA-256-PLUS ok']);
  });

  test('wrong password: PostgreSQL wording, nothing reaches upstream', async () => {
    outcomes.length = 0;
    const r = await psql(conn('sslmode=verify-full channel_binding=require'), 'wrong');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /password authentication failed for user "alice"/);
    assert.deepEqual(outcomes, ['bad_proof']);
  });

  test('unknown user: the same message', async () => {
    outcomes.length = 0;
    const r = await psql(`host=localhost port=${port} user=nobody dbname=postgres sslmode=require`, 'x');
    assert.match(r.stderr, /password authentication failed for user "nobody"/);
    assert.deepEqual(outcomes, ['unknown_user']);
  });
});

describe('node drivers through the SCRAM server half', () => {
  for (const enableChannelBinding of [true, false]) {
    // node-postgres binds only when asked; otherwise it sends 'n' (no binding support), which is accepted.
    const mech = enableChannelBinding ? 'SCRAM-SHA-256-PLUS' : 'SCRAM-SHA-256';
    test(`node-postgres over TLS, enableChannelBinding=${enableChannelBinding} → ${mech}`, async () => {
      outcomes.length = 0;
      const c = new pg.Client({
        host: 'localhost', port, user: 'alice', password: ALICE_PW, database: 'postgres', ssl: { ca: cluster.ca.cert }, enableChannelBinding,
      });
      await c.connect();
      try {
        assert.equal((await c.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'alice');
      } finally {
        await c.end();
      }
      assert.deepEqual(outcomes, [`${mech} → upstream SCRAM-SHA-256-PLUS ok`]);
    });
  }

  test('node-postgres with a wrong password gets 28P01', async () => {
    const c = new pg.Client({ host: 'localhost', port, user: 'alice', password: 'nope', database: 'postgres', ssl: { ca: cluster.ca.cert } });
    await assert.rejects(c.connect(), (e: { code?: string; message?: string }) => e.code === '28P01' && /password authentication failed/.test(e.message ?? ''));
  });

  test("postgres.js over TLS (it implements SCRAM-SHA-256 only and sends 'n')", async () => {
    outcomes.length = 0;
    const sql = postgres({ host: 'localhost', port, user: 'alice', password: ALICE_PW, database: 'postgres', ssl: { ca: cluster.ca.cert }, max: 1 });
    try {
      const rows = await sql<{ u: string }[]>`SELECT current_user AS u`;
      assert.equal(rows[0]!.u, 'alice');
    } finally {
      await sql.end();
    }
    assert.deepEqual(outcomes, ['SCRAM-SHA-256 → upstream SCRAM-SHA-256-PLUS ok']);
  });
});
