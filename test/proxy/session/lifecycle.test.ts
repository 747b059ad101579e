// mamori's life as a process, driven through the CLI an operator uses (node bin/mamori.js): graceful
// shutdown on SIGTERM, certificate reload on SIGHUP, `mamori setup-db`, and the embedded default.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import pg from 'pg';
import { stringify } from 'yaml';
import { CONTROL_PASSWORD, startStack, type Stack } from '../../harness/mamori.js';
import { exitWithin, runMamori, type ChildMamori } from '../../harness/child-mamori.js';
import { RawClient } from '../../harness/raw-client.js';

const PW = 'carol-pw-lifecycle';
let stack: Stack;
let dir: string;
const children: ChildMamori[] = [];

before(async () => {
  stack = await startStack();
  await stack.cluster.createRole('carol', PW);
  dir = mkdtempSync(join(tmpdir(), 'mamori-lifecycle-'));
});

after(async () => {
  for (const c of children) {
    c.kill('SIGKILL');
    await c.exited;
  }
  await stack?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Writes a mamori.yaml in front of the stack's cluster (TLS on both legs, upstream verify-full). */
function writeConfig(name: string, extra: Record<string, unknown> = {}, tls?: { cert: string; key: string }): string {
  const c = stack.config;
  const cfg = {
    listen: { host: '127.0.0.1', port: 0 },
    tls: tls ?? { cert: c.tls!.cert, key: c.tls!.key },
    upstream: { host: c.upstream.host, port: c.upstream.port, tls: { mode: 'verify-full', ca: stack.cluster.caCertPath, servername: 'localhost' } },
    control: { user: 'mamori', passwordEnv: 'MAMORI_CONTROL_PASSWORD' },
    log: { level: 'info' },
    metrics: { enabled: false },
    ...extra,
  };
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, stringify(cfg));
  return file;
}

async function startChild(configFile: string): Promise<{ m: ChildMamori; port: number }> {
  const m = runMamori(['start', '--config', configFile], { env: { ...process.env, MAMORI_CONTROL_PASSWORD: CONTROL_PASSWORD } });
  children.push(m);
  const match = await m.waitFor(/"port":(\d+)[^\n]*"msg":"mamori listening"/, 30_000);
  return { m, port: Number(match[1]) };
}

function client(port: number, extra: Partial<pg.ClientConfig> = {}): pg.Client {
  const c = new pg.Client({ host: '127.0.0.1', port, user: 'carol', password: PW, database: 'postgres',
    ssl: { ca: stack.cluster.ca.cert, servername: 'localhost' }, ...extra });
  return c;
}

interface PgError {
  code?: string;
  message?: string;
}

describe('graceful shutdown (SIGTERM)', () => {
  test('an operator stops mamori: new connections are refused, the open session finishes its statement, the process exits 0 within the grace period', async () => {
    const { m, port } = await startChild(writeConfig('graceful', { limits: { shutdownGraceSeconds: 20 } }));
    const a = client(port);
    a.on('error', () => undefined);
    await a.connect();
    const inFlight = a.query<{ v: string }>("SELECT pg_sleep(1)::text || 'finished' AS v");
    await new Promise((r) => setTimeout(r, 200));
    const signalled = Date.now();
    m.kill('SIGTERM');
    await m.waitFor(/"msg":"shutting down"/, 5000);
    // A newcomer is turned away in PostgreSQL's words (the listener stays open during the grace period).
    const b = client(port);
    b.on('error', () => undefined);
    await assert.rejects(b.connect(), (e: PgError) => {
      assert.equal(e.code, '57P03', e.message);
      assert.equal(e.message, 'the database system is shutting down');
      return true;
    });
    // The statement that was running completes, and the session may still run another one.
    assert.equal((await inFlight).rows[0]!.v, 'finished');
    assert.equal((await a.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'carol');
    await a.end();
    const code = await exitWithin(m, 20_000);
    assert.equal(code, 0, m.stderr());
    assert.ok(Date.now() - signalled < 20_000);
  });

  test('with shutdownGraceSeconds 1, a session still open after the deadline gets 57P01 and the process exits 0', async () => {
    const { m, port } = await startChild(writeConfig('deadline', { limits: { shutdownGraceSeconds: 1 } }));
    const a = client(port);
    const ended = new Promise<PgError>((resolve) => a.once('error', resolve));
    a.on('error', () => undefined); // pg also reports the closed socket after the FATAL
    await a.connect();
    assert.equal((await a.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    const signalled = Date.now();
    m.kill('SIGTERM');
    const e = await ended;
    const waited = Date.now() - signalled;
    assert.equal(e.code, '57P01');
    assert.equal(e.message, 'terminating connection due to administrator command');
    assert.ok(waited >= 900, `ended after ${waited} ms`);
    assert.equal(await exitWithin(m, 15_000), 0, m.stderr());
    await a.end().catch(() => undefined);
  });
});

function peerCertificate(port: number): Promise<PeerCertificate> {
  return RawClient.socket('127.0.0.1', port, { ca: stack.cluster.ca.cert, servername: 'localhost' }).then((s) => {
    const cert = (s as TLSSocket).getPeerCertificate();
    s.destroy();
    return cert;
  });
}

describe('certificate reload (SIGHUP)', () => {
  test('an operator replaces the certificate and sends SIGHUP: new connections see the new one, an open session keeps working', async () => {
    const a = stack.cluster.ca.issueServer('reload-a', ['mamori-a.test', 'localhost', '127.0.0.1']);
    const b = stack.cluster.ca.issueServer('reload-b', ['mamori-b.test', 'localhost', '127.0.0.1']);
    const certPath = join(dir, 'live.crt');
    const keyPath = join(dir, 'live.key');
    copyFileSync(a.certPath, certPath);
    copyFileSync(a.keyPath, keyPath);
    const { m, port } = await startChild(writeConfig('reload', {}, { cert: certPath, key: keyPath }));
    assert.equal((await peerCertificate(port)).subject.CN, 'mamori-a.test');

    const old = client(port, { enableChannelBinding: true });
    await old.connect();
    copyFileSync(b.certPath, certPath);
    copyFileSync(b.keyPath, keyPath);
    m.kill('SIGHUP');
    await m.waitFor(/"msg":"TLS certificate reloaded"/, 10_000);

    assert.equal((await peerCertificate(port)).subject.CN, 'mamori-b.test');
    // SCRAM-SHA-256-PLUS binds to the certificate a client sees: a new login over the new one succeeds.
    const fresh = client(port, { enableChannelBinding: true });
    await fresh.connect();
    assert.equal((await fresh.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'carol');
    await fresh.end();
    // The session opened before the reload still runs statements on its original TLS session.
    assert.equal((await old.query<{ one: number }>('SELECT 1 AS one')).rows[0]!.one, 1);
    const stream = (old as unknown as { connection: { stream: TLSSocket } }).connection.stream;
    assert.equal(stream.getPeerCertificate().subject.CN, 'mamori-a.test');
    await old.end();

    m.kill('SIGTERM');
    assert.equal(await exitWithin(m, 15_000), 0);
  });
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], env: NodeJS.ProcessEnv, cwd = process.cwd(), timeout = 60_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(process.cwd(), 'bin', 'mamori.js'), ...args], { env, cwd, timeout }, (err, stdout, stderr) => {
      const code = err ? Number((err as { code?: number | string }).code ?? 1) : 0;
      resolve({ code: Number.isFinite(code) ? code : 1, stdout, stderr });
    });
  });
}

describe('mamori setup-db', () => {
  test('a DBA runs setup-db with the superuser in PG* variables: the lookup function is installed and logins through mamori work', async () => {
    // Start from a database without the function: logins through mamori cannot be verified.
    await stack.cluster.query('DROP SCHEMA mamori CASCADE');
    const before = client(stack.mamori.port);
    before.on('error', () => undefined);
    await assert.rejects(before.connect());

    const r = await runCli(['setup-db', '-d', 'postgres'], { ...stack.cluster.env() });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /installed mamori\.get_auth\(text\) in database "postgres", executable by mamori only/);
    assert.ok(!r.stdout.includes(stack.cluster.superPassword) && !r.stderr.includes(stack.cluster.superPassword));

    const after = client(stack.mamori.port);
    await after.connect();
    assert.equal((await after.query<{ u: string }>('SELECT current_user AS u')).rows[0]!.u, 'carol');
    await after.end();
  });

  test('setup-db refuses clearly when the control role does not exist', async () => {
    const file = writeConfig('norole', { control: { user: 'no_such_control', passwordEnv: 'MAMORI_CONTROL_PASSWORD' } });
    const r = await runCli(['setup-db', '--config', file, '-d', 'postgres'], { ...stack.cluster.env() });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the control role "no_such_control" does not exist; create it first/);
    const fn = await stack.cluster.query("SELECT 1 FROM pg_proc p JOIN pg_roles r ON has_function_privilege(r.oid, p.oid, 'EXECUTE') WHERE r.rolname = 'no_such_control'");
    assert.equal(fn.rowCount, 0);
  });
});

/** Live processes whose command line names `needle` (postgres is started with -D <data dir>). */
function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) pids.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

describe('the embedded default', () => {
  test('a newcomer runs `mamori start` with no config: PostgreSQL 18 behind mamori, psql connects with the printed password, SIGTERM stops both', { timeout: 180_000 }, async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'mamori-embedded-'));
    chmodSync(cwd, 0o755); // as root the embedded server runs as another OS user, which must reach ./.mamori
    try {
      const m = runMamori(['start', '--port', '0', '--metrics-port', '0'], { cwd, env: { ...process.env } });
      children.push(m);
      const line = await m.waitFor(/mamori is listening on ([\d.]+):(\d+)/, 150_000);
      const port = Number(line[2]);
      await m.waitFor(/psql "postgresql:\/\/postgres@[\d.]+:\d+\/postgres\?sslmode=require"/, 5000);
      const pwFile = join(cwd, '.mamori', 'embedded', 'postgres.password');
      const password = readFileSync(pwFile, 'utf8').trim();
      const dataDir = join(cwd, '.mamori', 'embedded', 'pgdata');
      assert.ok(existsSync(join(dataDir, 'PG_VERSION')));
      assert.ok(processesMentioning(dataDir).length > 0, 'the embedded server runs');

      const psql = await new Promise<Run>((resolve) => {
        execFile(join(stack.cluster.bindir, 'psql'), ['-XAtc', 'select version()'], {
          env: { PATH: process.env.PATH ?? '/usr/bin', PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'postgres', PGDATABASE: 'postgres', PGPASSWORD: password, PGSSLMODE: 'require' },
          timeout: 30_000,
        }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout: stdout.trim(), stderr }));
      });
      assert.equal(psql.code, 0, psql.stderr);
      assert.match(psql.stdout, /^PostgreSQL 18\./);

      // SIGHUP reloads the certificate; it does not stop the embedded default.
      m.kill('SIGHUP');
      await m.waitFor(/"msg":"TLS certificate reloaded"/, 10_000);
      assert.ok(processesMentioning(dataDir).length > 0, 'the embedded server still runs after SIGHUP');

      m.kill('SIGTERM');
      assert.equal(await exitWithin(m, 60_000), 0, m.stderr());
      assert.deepEqual(processesMentioning(dataDir), []);
      assert.equal(existsSync(join(dataDir, 'postmaster.pid')), false);
      assert.ok(!m.stdout().includes(password) && !m.stderr().includes(password), 'the password is not printed');
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });
});
