// SCRAM against a real PostgreSQL 15: the lookup function and the control role's privileges, the
// client half logging in with a ClientKey (plain, TLS, TLS + SCRAM-SHA-256-PLUS), and both halves end
// to end: node-postgres's SASL client → mamori's server half → recovered ClientKey → upstream login.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { X509Certificate } from 'node:crypto';
import pg from 'pg';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import {
  DEFAULT_LOOKUP_FUNCTION,
  fetchStoredSecret,
  fetchVerifier,
  installLookupFunction,
  lookupFunctionSql,
  parseLookupFunctionName,
} from '../../../proxy/session/auth-lookup.js';
import {
  ScramServerExchange,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  parseScramVerifier,
  scramKeysFromPassword,
  tlsServerEndPointHash,
  wipeSecret,
  type ScramVerifier,
} from '../../../proxy/session/scram.js';
import { peerCertStream, pgSasl, upstreamLogin } from './scram-helpers.js';

const CONTROL = 'mamori_ctl';
const CONTROL_PW = 'ctl-Secret-1';
const ALICE_PW = 'alice-Pässword 1'; // non-ASCII: SASLprep's NFKC leaves it unchanged

let cluster: Cluster;
let control: pg.Client;

async function superuser(): Promise<pg.Client> {
  const c = new pg.Client({ host: cluster.host, port: cluster.port, user: cluster.superuser, password: cluster.superPassword, database: 'postgres' });
  await c.connect();
  return c;
}

async function verifierFromCatalog(role: string): Promise<ScramVerifier> {
  const r = await cluster.query<{ p: string }>('SELECT rolpassword AS p FROM pg_authid WHERE rolname = $1', [role]);
  const v = parseScramVerifier(r.rows[0]!.p);
  assert.ok(v, 'role has a SCRAM verifier');
  return v;
}

before(async () => {
  cluster = await startCluster({ tls: true });
  await cluster.createRole(CONTROL, CONTROL_PW);
  await cluster.createRole('alice', ALICE_PW);
  await cluster.createRole('bob', 'bob-pw');
  await cluster.query(`CREATE ROLE nologin_role NOLOGIN PASSWORD 'nl-pw'`);
  await cluster.createRole('expired_role', 'ex-pw', `VALID UNTIL '2001-01-01'`);
  await cluster.createRole('future_role', 'fu-pw', `VALID UNTIL 'infinity'`);
  await cluster.query(`SET password_encryption = 'md5'; CREATE ROLE md5_role LOGIN PASSWORD 'md5-pw'`);
  const su = await superuser();
  try {
    await installLookupFunction(su, DEFAULT_LOOKUP_FUNCTION, CONTROL);
    await installLookupFunction(su, DEFAULT_LOOKUP_FUNCTION, CONTROL); // idempotent
  } finally {
    await su.end();
  }
  control = new pg.Client({ host: cluster.host, port: cluster.port, user: CONTROL, password: CONTROL_PW, database: 'postgres' });
  await control.connect();
});

after(async () => {
  await control?.end();
  await cluster?.stop();
});

describe('lookup function and the control role', () => {
  test('the control role is not a superuser and cannot read pg_authid directly', async () => {
    const r = await control.query<{ rolsuper: boolean }>('SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
    assert.equal(r.rows[0]!.rolsuper, false);
    await assert.rejects(control.query('SELECT rolpassword FROM pg_authid'), (e: { code?: string }) => e.code === '42501');
  });

  test('it reads a verifier through the function, equal to the catalog value', async () => {
    const v = await fetchVerifier(control, DEFAULT_LOOKUP_FUNCTION, 'alice');
    assert.ok(v);
    assert.deepEqual(v, await verifierFromCatalog('alice'));
    assert.ok(await fetchVerifier(control, 'MAMORI.GET_AUTH', 'future_role'), 'VALID UNTIL infinity is still valid');
  });

  test('NOLOGIN, expired, unknown and md5 roles give null', async () => {
    for (const role of ['nologin_role', 'expired_role', 'no_such_role', '', 'alice; DROP TABLE x']) {
      assert.equal(await fetchVerifier(control, DEFAULT_LOOKUP_FUNCTION, role), null, role);
      assert.equal(await fetchStoredSecret(control, DEFAULT_LOOKUP_FUNCTION, role), null, role);
    }
    assert.match((await fetchStoredSecret(control, DEFAULT_LOOKUP_FUNCTION, 'md5_role'))!, /^md5[0-9a-f]{32}$/);
    assert.equal(await fetchVerifier(control, DEFAULT_LOOKUP_FUNCTION, 'md5_role'), null);
  });

  test('other roles cannot execute it; it is SECURITY DEFINER with a pinned search_path, owned by a superuser', async () => {
    const bob = new pg.Client({ host: cluster.host, port: cluster.port, user: 'bob', password: 'bob-pw', database: 'postgres' });
    await bob.connect();
    try {
      await assert.rejects(fetchVerifier(bob, DEFAULT_LOOKUP_FUNCTION, 'alice'), (e: { code?: string }) => e.code === '42501');
    } finally {
      await bob.end();
    }
    const r = await cluster.query<{ prosecdef: boolean; proconfig: string[]; owner_super: boolean; public_exec: boolean; ctl_exec: boolean }>(
      `SELECT p.prosecdef, p.proconfig, o.rolsuper AS owner_super,
              has_function_privilege('bob', p.oid, 'EXECUTE') AS public_exec,
              has_function_privilege($1, p.oid, 'EXECUTE') AS ctl_exec
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_roles o ON o.oid = p.proowner
        WHERE n.nspname = 'mamori' AND p.proname = 'get_auth'`,
      [CONTROL],
    );
    assert.equal(r.rows.length, 1);
    const row = r.rows[0]!;
    assert.equal(row.prosecdef, true);
    assert.deepEqual(row.proconfig, ['search_path=pg_catalog, pg_temp']);
    assert.equal(row.owner_super, true);
    assert.equal(row.public_exec, false);
    assert.equal(row.ctl_exec, true);
  });

  test('a configurable name and an awkward control-role name install and work', async () => {
    await cluster.query(`CREATE ROLE "Ctl ""Two""" LOGIN PASSWORD 'two-pw'`);
    const su = await superuser();
    try {
      await installLookupFunction(su, '"Auth X".lookup', 'Ctl "Two"');
    } finally {
      await su.end();
    }
    const two = new pg.Client({ host: cluster.host, port: cluster.port, user: 'Ctl "Two"', password: 'two-pw', database: 'postgres' });
    await two.connect();
    try {
      assert.deepEqual(await fetchVerifier(two, '"Auth X".LOOKUP', 'alice'), await verifierFromCatalog('alice'));
      // It was granted only the new function, not mamori's.
      await assert.rejects(fetchVerifier(two, DEFAULT_LOOKUP_FUNCTION, 'alice'), (e: { code?: string }) => e.code === '42501');
    } finally {
      await two.end();
    }
  });

  test('function names are validated as schema-qualified identifiers', () => {
    for (const bad of ['get_auth', 'a.b.c', 'x;drop', 'mamori.get-auth', 'mamori.', '.f', '1a.f', 'a.f()', '"a.f', 'a."', 'a. f']) {
      assert.throws(() => lookupFunctionSql(bad, CONTROL), /schema\.function/, bad);
    }
    assert.deepEqual(parseLookupFunctionName('Mamori.Get_Auth'), { schema: 'mamori', name: 'get_auth' });
    assert.deepEqual(parseLookupFunctionName('"My Schema"."get""auth"'), { schema: 'My Schema', name: 'get"auth' });
    assert.match(lookupFunctionSql('mamori.get_auth', 'x"y'), /TO "x""y";/);
  });
});

describe('client half (ScramClientWithKey) against PostgreSQL', () => {
  let verifier: ScramVerifier;
  let clientKey: Buffer;
  before(async () => {
    verifier = await verifierFromCatalog('alice');
    // ClientKey = HMAC(SaltedPassword, "Client Key"): what a client proves knowledge of.
    const derived = scramKeysFromPassword(ALICE_PW.normalize('NFKC'), verifier.salt, verifier.iterations);
    assert.ok(derived.verifier.storedKey.equals(verifier.storedKey), 'password derivation matches the server');
    clientKey = derived.clientKey;
  });
  const login = (o: { tls: boolean; bind?: boolean; corruptBinding?: boolean; key?: Buffer; v?: ScramVerifier }) =>
    upstreamLogin({
      host: cluster.host, port: cluster.port, user: 'alice', database: 'postgres',
      clientKey: Buffer.from(o.key ?? clientKey), verifier: o.v ?? verifier, tls: o.tls, bind: o.bind,
      corruptBinding: o.corruptBinding, ca: cluster.ca.cert,
    });

  test('without TLS: SCRAM-SHA-256 → AuthenticationOk', async () => {
    assert.deepEqual(await login({ tls: false }), { ok: true, mechanism: SCRAM_SHA_256 });
  });

  test('over TLS: SCRAM-SHA-256-PLUS bound to the server certificate → AuthenticationOk', async () => {
    assert.deepEqual(await login({ tls: true }), { ok: true, mechanism: SCRAM_SHA_256_PLUS });
  });

  test("over TLS without binding support ('n') → AuthenticationOk with SCRAM-SHA-256", async () => {
    assert.deepEqual(await login({ tls: true, bind: false }), { ok: true, mechanism: SCRAM_SHA_256 });
  });

  test('wrong binding data is refused by the server', async () => {
    const r = await login({ tls: true, corruptBinding: true });
    assert.equal(r.ok, false);
    assert.match(r.error!, /C:28000 M:SCRAM channel binding check failed/);
  });

  test('a wrong ClientKey is refused with 28P01', async () => {
    const r = await login({ tls: false, key: Buffer.alloc(32, 1) });
    assert.equal(r.ok, false);
    assert.match(r.error!, /C:28P01 M:password authentication failed for user "alice"/);
  });

  test('a stale verifier (password changed upstream) is detected before any proof is sent', async () => {
    const other = scramKeysFromPassword('old password', Buffer.alloc(16, 9), verifier.iterations);
    const r = await login({ tls: false, key: other.clientKey, v: other.verifier });
    assert.deepEqual(r, { ok: false, mechanism: SCRAM_SHA_256, error: 'server salt differs from the verifier (password changed?)' });
  });
});

describe('end to end: client proof → recovered ClientKey → upstream login', () => {
  // A TCP relay in front of PostgreSQL that counts connections, to show when upstream is contacted.
  let relay: Server;
  let relayPort = 0;
  let upstreamConnections = 0;
  const sockets = new Set<Socket>();
  before(async () => {
    relay = createServer((c) => {
      upstreamConnections++;
      const u = connect(cluster.port, cluster.host);
      sockets.add(c).add(u);
      c.pipe(u).pipe(c);
      c.on('error', () => u.destroy());
      u.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    relayPort = (relay.address() as { port: number }).port;
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => relay.close(() => r()));
  });

  // mamori's certificate for the client leg: the client binds to it, not to PostgreSQL's.
  const mamoriCert = () => new X509Certificate(cluster.ca.issueServer('mamori').cert).raw;

  /** What the proxy does: look up, authenticate the client, and only then log in upstream. */
  async function proxyLogin(user: string, password: string, clientTls: boolean) {
    const der = clientTls ? mamoriCert() : null;
    const verifier = await fetchVerifier(control, DEFAULT_LOOKUP_FUNCTION, user);
    const server = new ScramServerExchange({ verifier, channelBinding: der ? tlsServerEndPointHash(der) : null, user });
    const stream = der ? peerCertStream(der) : undefined;
    const session = pgSasl.startSession(server.mechanisms(), stream);
    const s1 = server.clientFirst(session.mechanism, Buffer.from(session.response));
    if (!s1.ok) return { client: s1.reason };
    await pgSasl.continueSession(session, password, s1.serverFirst.toString(), stream);
    const s2 = server.clientFinal(Buffer.from(session.response));
    if (!s2.ok) return { client: s2.reason };
    pgSasl.finalizeSession(session, s2.serverFinal.toString());
    const key = s2.clientKey;
    try {
      const up = await upstreamLogin({
        host: '127.0.0.1', port: relayPort, user, database: 'postgres', clientKey: key, verifier: verifier!, tls: true,
        ca: cluster.ca.cert,
      });
      return { client: 'ok', mechanism: session.mechanism, upstream: up, keyWiped: key.equals(Buffer.alloc(32)) };
    } finally {
      wipeSecret(key);
    }
  }

  test('right password over TLS: client bound to mamori, upstream bound to PostgreSQL, AuthenticationOk', async () => {
    const before = upstreamConnections;
    const r = await proxyLogin('alice', ALICE_PW, true);
    assert.deepEqual(r, {
      client: 'ok', mechanism: SCRAM_SHA_256_PLUS, upstream: { ok: true, mechanism: SCRAM_SHA_256_PLUS }, keyWiped: true,
    });
    assert.equal(upstreamConnections, before + 1);
  });

  test('right password without client TLS also reaches AuthenticationOk upstream', async () => {
    const r = await proxyLogin('bob', 'bob-pw', false);
    assert.deepEqual(r, {
      client: 'ok', mechanism: SCRAM_SHA_256, upstream: { ok: true, mechanism: SCRAM_SHA_256_PLUS }, keyWiped: true,
    });
  });

  test('a wrong password, an unknown user and an expired role never reach upstream', async () => {
    const before = upstreamConnections;
    assert.deepEqual(await proxyLogin('alice', 'not her password', true), { client: 'bad_proof' });
    assert.deepEqual(await proxyLogin('mallory', 'whatever', true), { client: 'unknown_user' });
    assert.deepEqual(await proxyLogin('expired_role', 'ex-pw', false), { client: 'unknown_user' });
    assert.equal(upstreamConnections, before);
  });
});
