// The startup phase through mamori on raw sockets: TLS negotiation (SSLRequest, GSSENCRequest, direct TLS
// with ALPN), bytes smuggled before the handshake, protocol 3.2 negotiation relayed from PostgreSQL 15,
// startup GUCs, refusals (replication, protocol 4.0, no user), CancelRequest (plain and over TLS),
// BackendKeyData passed through, and password authentication relayed only over TLS.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import pg from 'pg';
import pino from 'pino';
import { defaultConfig } from '../../../config/load.js';
import type { MamoriConfigInput } from '../../../config/schema.js';
import { startMamori, type MamoriServer } from '../../../proxy/server.js';
import { FORWARD, type Session } from '../../../proxy/session/session.js';
import { decodeNegotiateProtocolVersion } from '../../../proxy/wire/backend.js';
import { encodeQuery } from '../../../proxy/wire/frontend.js';
import { encodeCancelRequest, encodeGSSENCRequest, encodeSSLRequest, encodeStartupMessage } from '../../../proxy/wire/startup.js';
import { BE, STARTUP } from '../../../proxy/wire/types.js';
import { CONTROL_PASSWORD, startStack, type Stack } from '../../harness/mamori.js';
import { RawClient } from '../../harness/raw-client.js';
import { errorOf, Probe, rawLogin, simpleQuery } from '../../harness/startup-probe.js';

const USER = 'su_user';
const PASSWORD = 'startup-pw';
const PW_USER = 'pw_user';
const PW_PASSWORD = 'cleartext-pw';
const MD5_USER = 'md5_user';
const MD5_PASSWORD = 'md5-pw';

let stack: Stack;
let plainMamori: MamoriServer; // the same upstream, no TLS on the client leg
let ca: Buffer;
const sessions = new Map<string, Session>();
const host = '127.0.0.1';

before(async () => {
  stack = await startStack({
    hooks: {
      clientMessage(s) {
        if (s.applicationName) sessions.set(s.applicationName, s);
        return FORWARD;
      },
    },
  });
  ca = readFileSync(stack.cluster.caCertPath);
  await stack.cluster.createRole(USER, PASSWORD);
  await stack.cluster.createRole(PW_USER, PW_PASSWORD);
  await stack.cluster.query('create schema myschema');
  // An md5 verifier, so that the md5 hba line really asks for md5 (with a SCRAM verifier it would use SCRAM).
  await stack.cluster.query(`set password_encryption = 'md5'; create role ${MD5_USER} login password '${MD5_PASSWORD}'`);
  // One role logs in with `password` (cleartext) upstream: mamori must relay it, and only over TLS.
  writeFileSync(join(stack.cluster.dataDir, 'pg_hba.conf'), [
    `host all ${PW_USER} 127.0.0.1/32 password`,
    `host all ${MD5_USER} 127.0.0.1/32 md5`,
    'local all all scram-sha-256', 'host all all 127.0.0.1/32 scram-sha-256', '',
  ].join('\n'));
  await stack.cluster.query('select pg_reload_conf()');
  const config = defaultConfig({
    listen: { host, port: 0 }, metrics: { enabled: false }, audit: { statements: 'none' },
    upstream: { host: stack.cluster.host, port: stack.cluster.port, tls: { mode: 'verify-full', ca: stack.cluster.caCertPath, servername: 'localhost' } },
  } as MamoriConfigInput);
  plainMamori = await startMamori({
    config, secrets: { controlPassword: CONTROL_PASSWORD, auditSinkPasswords: [] }, log: pino({ level: 'silent' }),
  });
});

after(async () => {
  await plainMamori?.shutdown(0);
  await stack?.stop();
});

const login = { user: USER, password: PASSWORD };

function startupBytes(params: Array<[string, string]>, protocol: number = STARTUP.Protocol30): Buffer {
  return encodeStartupMessage({ protocol, params });
}

/** Direct TLS (PostgreSQL 17 style): TLS from the first byte, optionally without ALPN. */
function directTls(port: number, alpn: boolean): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const t = tlsConnect({ host, port, ca, servername: 'localhost', ...(alpn ? { ALPNProtocols: ['postgresql'] } : {}) }, () => resolve(t));
    t.once('error', reject);
  });
}

/** Reads the first backend message after sending a startup packet on a fresh plain socket. */
async function firstMessage(port: number, packet: Buffer): Promise<{ frame: { type: number; body: Buffer } | null; closed: boolean }> {
  const c = RawClient.wrap(await RawClient.socket(host, port));
  c.send(packet);
  try {
    const frame = await c.next(5000);
    return { frame, closed: await c.closedWithin(3000) };
  } catch {
    return { frame: null, closed: c.closed };
  } finally {
    c.close();
  }
}

describe('TLS negotiation', () => {
  test('SSLRequest is answered with S and the TLS session then logs in and queries', async () => {
    const s = await rawLogin(host, stack.mamori.port, { ...login, tls: { ca } });
    assert.ok('encrypted' in s.client.sock && s.client.sock.encrypted, 'the socket is TLS');
    assert.deepEqual(await simpleQuery(s.client, 'select 40 + 2'), ['42']);
    s.client.close();
  });

  test('bytes after SSLRequest in the same packet abort the connection before any S (CVE-2021-23214 class)', async () => {
    const p = await Probe.open(host, stack.mamori.port);
    p.sock.write(Buffer.concat([encodeSSLRequest(), startupBytes([['user', USER], ['database', 'postgres']])]));
    assert.equal(await p.closedWithin(3000), true, 'connection closed');
    assert.equal(p.bytes.length, 0, 'nothing was sent back, in particular no S');
  });

  test('GSSENCRequest is answered with N, then SSLRequest with S, then startup works over TLS', async () => {
    const p = await Probe.open(host, stack.mamori.port);
    p.sock.write(encodeGSSENCRequest());
    assert.equal((await p.waitBytes(1, 3000)).toString(), 'N');
    p.sock.write(encodeSSLRequest());
    assert.equal((await p.waitBytes(2, 3000)).toString(), 'NS');
    p.sock.removeAllListeners('data');
    const t = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ socket: p.sock, ca, servername: 'localhost' }, () => resolve(s));
      s.once('error', reject);
    });
    const c = RawClient.wrap(t);
    c.send(startupBytes([['user', USER], ['database', 'postgres']]));
    await c.authenticate(PASSWORD);
    await c.until(BE.ReadyForQuery);
    assert.deepEqual(await simpleQuery(c, 'select current_user'), [USER]);
    c.close();
  });

  test('direct TLS with ALPN postgresql then a StartupMessage over TLS logs in', async () => {
    const t = await directTls(stack.mamori.port, true);
    assert.equal(t.alpnProtocol, 'postgresql');
    const c = RawClient.wrap(t);
    c.send(startupBytes([['user', USER], ['database', 'postgres']]));
    await c.authenticate(PASSWORD);
    await c.until(BE.ReadyForQuery);
    assert.deepEqual(await simpleQuery(c, "select 'direct'"), ['direct']);
    c.close();
  });

  test('direct TLS without ALPN is closed without a session', async () => {
    // The handshake itself completes (ALPN is optional in TLS); mamori then sees no "postgresql" and closes.
    const t = await directTls(stack.mamori.port, false);
    assert.equal(t.alpnProtocol, false);
    const c = RawClient.wrap(t);
    c.send(startupBytes([['user', USER], ['database', 'postgres']]));
    assert.equal(await c.closedWithin(3000), true, 'closed');
    await assert.rejects(c.next(100), /closed/, 'no message was sent');
  });

  test('direct TLS to a mamori without TLS configured is closed', async () => {
    const closed = await new Promise<boolean>((resolve) => {
      const t = tlsConnect({ host, port: plainMamori.port, ca, servername: 'localhost', ALPNProtocols: ['postgresql'] },
        () => resolve(false));
      t.once('error', () => resolve(true));
      t.once('close', () => resolve(true));
      setTimeout(() => resolve(false), 5000).unref();
    });
    assert.equal(closed, true);
  });

  test('SSLRequest to a mamori without TLS is answered N and plaintext startup continues', async () => {
    const p = await Probe.open(host, plainMamori.port);
    p.sock.write(encodeSSLRequest());
    assert.equal((await p.waitBytes(1, 3000)).toString(), 'N');
    p.close();
  });
});

describe('startup parameters', () => {
  test('protocol 3.2 with a _pq_ option: PostgreSQL 15\'s NegotiateProtocolVersion is relayed, then login works', async () => {
    const s = await rawLogin(host, stack.mamori.port, { ...login, protocol: STARTUP.Protocol32, params: [['_pq_.test_option', 'on']] });
    assert.ok(s.negotiate, 'NegotiateProtocolVersion received');
    const npv = decodeNegotiateProtocolVersion(s.negotiate.body);
    assert.equal(stack.cluster.major, 15);
    assert.equal(npv.version, STARTUP.Protocol30, 'newest minor PostgreSQL 15 supports is 3.0');
    assert.deepEqual(npv.unrecognized, ['_pq_.test_option']);
    assert.deepEqual(await simpleQuery(s.client, 'select 1'), ['1']);
    s.client.close();
  });

  test('options -c GUCs and application_name are honoured and kept in session.startupGucs', async () => {
    const c = new pg.Client(stack.client(USER, PASSWORD, {
      application_name: 'guc-app',
      options: '-c search_path=myschema -c statement_timeout=1234',
    }));
    await c.connect();
    try {
      const r = await c.query<{ search_path: string }>('show search_path');
      assert.equal(r.rows[0]!.search_path, 'myschema');
      assert.equal((await c.query<{ statement_timeout: string }>('show statement_timeout')).rows[0]!.statement_timeout, '1234ms');
      assert.equal((await c.query<{ application_name: string }>('show application_name')).rows[0]!.application_name, 'guc-app');
    } finally {
      await c.end();
    }
    const s = sessions.get('guc-app');
    assert.ok(s, 'the hook saw the session');
    assert.equal(s.startupGucs.get('search_path'), 'myschema');
    assert.equal(s.startupGucs.get('statement_timeout'), '1234');
    assert.equal(s.startupGucs.get('application_name'), 'guc-app');
    assert.equal(s.startupGucs.has('user'), false);
  });

  for (const value of ['database', 'true']) {
    test(`replication=${value} is refused with a FATAL 0A000 naming replication`, async () => {
      const { frame, closed } = await firstMessage(stack.mamori.port,
        startupBytes([['user', USER], ['database', 'postgres'], ['replication', value]]));
      assert.ok(frame && frame.type === BE.ErrorResponse, 'an ErrorResponse');
      const e = errorOf(frame);
      assert.equal(e.code, '0A000');
      assert.equal(e.severity, 'FATAL');
      assert.match(e.message, /replication/);
      assert.equal(closed, true);
    });
  }

  test('protocol 4.0 is refused with PostgreSQL\'s wording', async () => {
    const packet = startupBytes([['user', USER], ['database', 'postgres']], 4 << 16);
    const via = await firstMessage(stack.mamori.port, packet);
    const direct = await firstMessage(stack.cluster.port, packet);
    assert.ok(via.frame && direct.frame, 'both answered');
    const m = errorOf(via.frame);
    const d = errorOf(direct.frame);
    assert.equal(m.code, d.code);
    assert.equal(m.code, '0A000');
    const wording = /^unsupported frontend protocol 4\.0: server supports 3\.0 to 3\.\d$/;
    assert.match(d.message, wording, 'PostgreSQL says so');
    assert.match(m.message, wording, 'mamori says the same');
    assert.equal(via.closed, true);
  });

  test('a StartupMessage without user is refused with 28000 as PostgreSQL does', async () => {
    const { frame, closed } = await firstMessage(stack.mamori.port, startupBytes([['database', 'postgres']]));
    assert.ok(frame && frame.type === BE.ErrorResponse);
    assert.deepEqual({ code: errorOf(frame).code, message: errorOf(frame).message },
      { code: '28000', message: 'no PostgreSQL user name specified in startup packet' });
    assert.equal(closed, true);
  });
});

describe('cancel', () => {
  test('BackendKeyData is PostgreSQL\'s own: its pid is pg_backend_pid()', async () => {
    const s = await rawLogin(host, stack.mamori.port, login);
    assert.deepEqual(await simpleQuery(s.client, 'select pg_backend_pid()'), [String(s.pid)]);
    assert.equal(s.secret.length, 4, 'protocol 3.0 cancel key');
    s.client.close();
  });

  for (const overTls of [false, true]) {
    test(`a CancelRequest ${overTls ? 'after SSLRequest over TLS' : 'on a plain socket'} cancels a running pg_sleep (57014)`, async () => {
      const s = await rawLogin(host, stack.mamori.port, login);
      const started = Date.now();
      s.client.send(encodeQuery('select pg_sleep(5)'));
      await new Promise((r) => setTimeout(r, 300)); // let the sleep start
      const sock = await RawClient.socket(host, stack.mamori.port, overTls ? { ca } : undefined);
      sock.write(encodeCancelRequest({ pid: s.pid, secret: s.secret }));
      const frames = await s.client.until(BE.ReadyForQuery, 10_000);
      const err = frames.find((f) => f.type === BE.ErrorResponse);
      assert.ok(err, 'the sleep ended with an error');
      assert.equal(errorOf(err).code, '57014');
      assert.ok(Date.now() - started < 4000, 'cancelled well before the 5 s sleep ended');
      sock.destroy();
      s.client.close();
    });
  }
});

describe('password authentication relayed for an upstream that requires it', () => {
  for (const [user, password, method] of [[PW_USER, PW_PASSWORD, 'password'], [MD5_USER, MD5_PASSWORD, 'md5']]) {
    test(`${method} works over TLS`, async () => {
      const c = new pg.Client(stack.client(user!, password!, { ssl: { ca, servername: 'localhost' } }));
      await c.connect();
      try {
        assert.equal((await c.query<{ u: string }>('select current_user as u')).rows[0]!.u, user);
      } finally {
        await c.end();
      }
    });
  }

  test('is refused on a plaintext client leg, before the password is asked for', async () => {
    const { frame, closed } = await firstMessage(stack.mamori.port, startupBytes([['user', PW_USER], ['database', 'postgres']]));
    assert.ok(frame && frame.type === BE.ErrorResponse, 'an error, not a password request');
    const e = errorOf(frame);
    assert.equal(e.code, '28000');
    assert.match(e.message, /only over TLS/);
    assert.equal(closed, true);
  });

  test('a wrong password over TLS gets PostgreSQL\'s own error', async () => {
    const c = new pg.Client(stack.client(PW_USER, 'wrong', { ssl: { ca, servername: 'localhost' } }));
    await assert.rejects(c.connect(), (err: Error & { code?: string }) => {
      assert.equal(err.code, '28P01');
      assert.match(err.message, /password authentication failed/);
      return true;
    });
  });
});
