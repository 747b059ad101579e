// TLS on both legs: client certificates against a configured CA (mTLS identity), tls.require, and every
// upstream mode (require, verify-ca, verify-full) — including a server that injects bytes after its 'S'.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import pg from 'pg';
import pino from 'pino';
import { defaultConfig } from '../../../config/load.js';
import type { MamoriConfigInput } from '../../../config/schema.js';
import { startMamori, type MamoriServer } from '../../../proxy/server.js';
import { FORWARD, type Session } from '../../../proxy/session/session.js';
import { createTestCA } from '../../harness/certs.js';
import { startStack, CONTROL_PASSWORD, type Stack } from '../../harness/mamori.js';

let stack: Stack;
const sessions: Session[] = [];

before(async () => {
  stack = await startStack({
    hooks: { clientMessage: (session) => { if (!sessions.includes(session)) sessions.push(session); return FORWARD; } },
  });
  await stack.cluster.createRole('alice', 'alice-pw');
});

after(async () => {
  await stack?.stop();
});

async function extraMamori(config: MamoriConfigInput): Promise<MamoriServer> {
  const cfg = defaultConfig({
    listen: { host: '127.0.0.1', port: 0 }, metrics: { enabled: false }, audit: { statements: 'none' },
    ...config,
    upstream: { host: stack.cluster.host, port: stack.cluster.port, ...config.upstream },
  } as MamoriConfigInput);
  return startMamori({ config: cfg, secrets: { controlPassword: CONTROL_PASSWORD, auditSinkPasswords: [] }, log: pino({ level: 'silent' }) });
}

async function login(port: number, ssl: pg.ClientConfig['ssl']): Promise<string> {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'alice', password: 'alice-pw', database: 'postgres', ssl });
  await c.connect();
  try {
    return (await c.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u;
  } finally {
    await c.end();
  }
}

test('with tls.clientCa, a client certificate from that CA becomes part of the identity; an untrusted one is refused', async () => {
  const server = stack.cluster.ca.issueServer('mamori-mtls');
  const m = await extraMamori({ tls: { cert: server.certPath, key: server.keyPath, clientCa: stack.cluster.ca.certPath, require: true },
    upstream: { tls: { mode: 'verify-full', ca: stack.cluster.caCertPath, servername: 'localhost' } } } as MamoriConfigInput);
  try {
    const good = stack.cluster.ca.issueClient('alice');
    assert.equal(await login(m.port, { ca: stack.cluster.ca.cert, servername: 'localhost', cert: good.cert, key: good.key }), 'alice');
    const rogueCa = createTestCA(undefined, 'rogue CA');
    const bad = rogueCa.issueClient('alice');
    await assert.rejects(login(m.port, { ca: stack.cluster.ca.cert, servername: 'localhost', cert: bad.cert, key: bad.key }), /client certificate is not trusted|certificate|socket/i);
    // tls.require: a plaintext client is refused with a clear FATAL.
    await assert.rejects(login(m.port, false), /TLS is required/);
  } finally {
    await m.shutdown(0);
  }
});

test('the client certificate subject is recorded on the session', async () => {
  const server = stack.cluster.ca.issueServer('mamori-mtls2');
  const seen: Session[] = [];
  const cfg = defaultConfig({
    listen: { host: '127.0.0.1', port: 0 }, metrics: { enabled: false }, audit: { statements: 'none' },
    tls: { cert: server.certPath, key: server.keyPath, clientCa: stack.cluster.ca.certPath },
    upstream: { host: stack.cluster.host, port: stack.cluster.port, tls: { mode: 'verify-full', ca: stack.cluster.caCertPath, servername: 'localhost' } },
  } as MamoriConfigInput);
  const m = await startMamori({ config: cfg, secrets: { controlPassword: CONTROL_PASSWORD, auditSinkPasswords: [] }, log: pino({ level: 'silent' }),
    hooks: { clientMessage: (session) => { seen.push(session); return FORWARD; } } });
  try {
    const cert = stack.cluster.ca.issueClient('alice-card');
    await login(m.port, { ca: stack.cluster.ca.cert, servername: 'localhost', cert: cert.cert, key: cert.key });
    assert.match(seen[0]!.tlsSubject ?? '', /CN=alice-card/);
  } finally {
    await m.shutdown(0);
  }
});

test('upstream modes: require and verify-ca connect; verify-ca with another CA and verify-full with the wrong name are refused', async () => {
  for (const mode of ['require', 'verify-ca'] as const) {
    const m = await extraMamori({ upstream: { tls: { mode, ...(mode === 'verify-ca' ? { ca: stack.cluster.caCertPath } : {}) } } } as MamoriConfigInput);
    try {
      assert.equal(await login(m.port, false), 'alice', mode);
    } finally {
      await m.shutdown(0);
    }
  }
  const other = createTestCA(undefined, 'other CA');
  for (const tls of [{ mode: 'verify-ca', ca: other.certPath }, { mode: 'verify-full', ca: stack.cluster.caCertPath, servername: 'db.example.invalid' }]) {
    const m = await extraMamori({ upstream: { tls } } as MamoriConfigInput);
    try {
      await assert.rejects(login(m.port, false), /could not connect to the upstream server|upstream/);
    } finally {
      await m.shutdown(0);
    }
  }
});

test('an upstream that sends bytes after its S and before the TLS handshake is dropped (CVE-2021-23222 class)', async () => {
  const evil: Server = createServer((sock) => {
    sock.once('data', () => sock.write(Buffer.from('SZ\0\0\0\x05I'))); // 'S' then an injected ReadyForQuery
  });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', () => r()));
  const port = (evil.address() as { port: number }).port;
  const cfg = defaultConfig({
    listen: { host: '127.0.0.1', port: 0 }, metrics: { enabled: false }, audit: { statements: 'none' },
    upstream: { host: '127.0.0.1', port: stack.cluster.port, tls: { mode: 'require' } },
  } as MamoriConfigInput);
  // The control connection goes to the real server; sessions go to the injecting one.
  const m = await startMamori({ config: { ...cfg }, secrets: { controlPassword: CONTROL_PASSWORD, auditSinkPasswords: [] }, log: pino({ level: 'silent' }) });
  const { openUpstream } = await import('../../../proxy/session/upstream.js');
  try {
    await assert.rejects(openUpstream({ host: '127.0.0.1', port, tls: { mode: 'require' } }), /unexpected data before the TLS handshake/);
  } finally {
    await m.shutdown(0);
    evil.close();
  }
});
