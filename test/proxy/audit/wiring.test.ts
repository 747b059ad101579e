// The audit trail and metrics wired into the running proxy, on real PostgreSQL: every event kind gives its
// record, no protected value reaches the trail, the intent precedes the rows (an unwritable trail refuses
// protected reads and nothing else), verify passes, subject search finds exactly the sessions involved,
// /metrics moves and /readyz follows the audit sink.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';
import { runAuditCommand } from '../../../proxy/audit/cli.js';
import { parseRecord, type AuditRecord } from '../../../proxy/audit/record.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import { main } from '../../../proxy/cli.js';

/** A valid My Number from 11 digits (check digit appended). */
function myNumber(first11: string): string {
  return first11 + String(myNumberCheckDigit(first11));
}
const WRITTEN = myNumber('12345678901'); // written and read by the clerk
const SEARCHED = myNumber('98765432109'); // written by the clerk, searched by another clerk session
const UNTOUCHED = myNumber('11122233344'); // never used

function records(dir: string): AuditRecord[] {
  const out: AuditRecord[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.jsonl')).sort()) {
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) if (line.trim()) out.push(parseRecord(line));
  }
  return out;
}

function rawTrail(dir: string): string {
  let s = '';
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else s += readFileSync(join(d, e.name), 'utf8');
    }
  };
  walk(dir);
  return s;
}

async function http(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: await r.text() };
}

function metricValue(text: string, name: string, labels = ''): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name) && (line[name.length] === ' ' || line[name.length] === '{') && line.includes(labels)) total += Number(line.split(' ').at(-1));
  }
  return total;
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('audit wiring (real PostgreSQL)', () => {
  let stack: ProtectedStack;
  let auditDir: string;
  const sessions: Record<string, string> = {};

  before(async () => {
    auditDir = mkdtempSync(join(tmpdir(), 'mamori-audit-'));
    stack = await startProtectedStack({
      config: {
        audit: {
          statements: 'protected', failMode: 'closed', fsync: 'none',
          sinks: [{ type: 'file', path: join(auditDir, 'mamori.jsonl') }],
          checkpointSink: { type: 'file', path: join(auditDir, 'checkpoints', 'mamori.jsonl') },
          signingKeyFile: join(auditDir, 'no-signing.key'),
        },
        metrics: { enabled: true, host: '127.0.0.1', port: 0 },
      },
    });
  });
  after(async () => {
    await stack?.stop();
  });

  test('every event kind is recorded, nothing protected leaks, verify passes, search by subject is exact', async () => {
    const port = stack.mamori.metricsPort!;
    assert.ok(port > 0);
    const m0 = (await http(port, '/metrics')).body;
    assert.equal((await http(port, '/readyz')).status, 200);

    const sid = async (c: pg.Client): Promise<string> => {
      // the session id is only in the trail: the connect record of the newest session of this application name
      const app = (await c.query<{ application_name: string }>('show application_name')).rows[0]!.application_name;
      await waitFor(() => records(auditDir).some((r) => r.kind === 'connect' && r.applicationName === app));
      return records(auditDir).filter((r) => r.kind === 'connect' && r.applicationName === app).at(-1)!.session!;
    };

    const writer = await stack.connect(ROLES.clerk, { application_name: 'writer' });
    sessions.writer = await sid(writer);
    await writer.query(`INSERT INTO employees VALUES (1, 'a', '${WRITTEN}'), (2, 'b', $1)`, [SEARCHED]);
    const seen = await writer.query('SELECT my_number FROM employees WHERE id = 1');
    assert.equal(seen.rows[0].my_number, WRITTEN);
    await writer.end();

    const searcher = await stack.connect(ROLES.clerk, { application_name: 'searcher' });
    sessions.searcher = await sid(searcher);
    const found = await searcher.query<{ id: number }>(`SELECT id FROM employees WHERE my_number = '${SEARCHED}'`);
    assert.deepEqual(found.rows.map((r) => r.id), [2]);
    await searcher.end();

    const viewer = await stack.connect(ROLES.viewer, { application_name: 'viewer' });
    sessions.viewer = await sid(viewer);
    const masked = await viewer.query('SELECT my_number FROM employees ORDER BY id');
    assert.notEqual(masked.rows[0].my_number, WRITTEN);
    await viewer.end();

    const outsider = await stack.connect(ROLES.outsider, { application_name: 'outsider' });
    sessions.outsider = await sid(outsider);
    await assert.rejects(outsider.query('SELECT my_number FROM employees'), (e: Error & { code?: string }) => e.code === '42501');
    assert.equal((await outsider.query('SELECT 1 AS x')).rows[0].x, 1);
    await outsider.end();

    const deleter = await stack.connect(ROLES.clerk, { application_name: 'deleter' });
    sessions.deleter = await sid(deleter);
    const del = await deleter.query('DELETE FROM employees WHERE id = 2');
    assert.equal(del.rowCount, 1);
    await deleter.end();

    const bad = new pg.Client(stack.client(ROLES.clerk, 'wrong password', { ssl: { ca: stack.cluster.ca.cert, servername: 'localhost' }, application_name: 'bad' }));
    await assert.rejects(bad.connect());
    await bad.end().catch(() => undefined);

    await waitFor(() => records(auditDir).filter((r) => r.kind === 'disconnect').length >= 5 && records(auditDir).some((r) => r.kind === 'auth_failure'));
    await waitFor(() => records(auditDir).some((r) => r.kind === 'deletion'));
    const rs = records(auditDir);
    const of = (kind: string, session?: string): AuditRecord[] => rs.filter((r) => r.kind === kind && (session === undefined || r.session === session));

    // connect / disconnect with the session context
    const c = of('connect', sessions.writer)[0]!;
    assert.equal(c.user, ROLES.clerk);
    assert.equal(c.database, 'postgres');
    assert.match(c.client!, /^127\.0\.0\.1:\d+$/);
    assert.equal((c as AuditRecord & { tls: boolean }).tls, true);
    const d = of('disconnect', sessions.writer)[0] as AuditRecord & { bytesIn: number; bytesOut: number };
    assert.ok(d.durationMs! >= 0 && d.bytesIn > 0 && d.bytesOut > 0);
    // auth failure names the user and a reason, not the password
    const af = of('auth_failure').find((r) => r.user === ROLES.clerk)!;
    assert.ok(af, 'auth failure record');
    assert.equal(typeof (af as AuditRecord & { reason: string }).reason, 'string');
    // intent then completion for the protected read, with the decision
    const intents = of('statement_intent', sessions.writer);
    const completes = of('statement_complete', sessions.writer);
    assert.ok(intents.length >= 2 && completes.length >= 2);
    assert.ok(intents[0]!.seq < completes[0]!.seq);
    const readIntent = intents.find((r) => r.command === 'SELECT')!;
    assert.deepEqual(readIntent.columns, [{ column: 'public.employees.my_number', decision: 'plaintext' }]);
    assert.equal(completes.find((r) => r.command === 'SELECT')!.rows, 1);
    assert.equal(of('statement_intent', sessions.viewer)[0]!.columns[0]!.decision, 'mask');
    // search record for the searching session
    const search = of('search', sessions.searcher);
    assert.equal(search.length, 1);
    assert.deepEqual(search[0]!.columns, [{ column: 'public.employees.my_number', decision: 'search' }]);
    // refusal for the outsider
    const refusal = of('refusal', sessions.outsider);
    assert.equal(refusal.length, 1);
    assert.equal(refusal[0]!.sqlstate, '42501');
    assert.match(refusal[0]!.fingerprint!, /select my_number from employees/);
    // deletion record with table and rows
    const deletion = of('deletion', sessions.deleter)[0] as AuditRecord & { table: string; how: string };
    assert.equal(deletion.table, 'public.employees');
    assert.equal(deletion.how, 'delete');
    assert.equal(deletion.rows, 1);
    // key events: the data and subject keys unwrapped at start
    const keyEvents = of('key_event') as (AuditRecord & { event: string; keyId: string })[];
    assert.ok(keyEvents.some((k) => k.event === 'unwrap' && k.keyId.startsWith('mamori.subjects:')), 'subject key unwrap recorded');
    assert.ok(keyEvents.some((k) => k.event === 'unwrap' && !k.keyId.startsWith('mamori.subjects:')), 'data key unwrap recorded');

    // no protected value, in any spelling mamori saw, anywhere in the trail (side files included)
    const raw = rawTrail(auditDir);
    for (const v of [WRITTEN, SEARCHED]) assert.ok(!raw.includes(v), 'a My Number reached the audit trail');

    // verify passes on the produced files
    const out: string[] = [];
    const io = { stdout: (t: string) => out.push(t), stderr: (t: string) => out.push(t) };
    assert.equal(await runAuditCommand(['verify', auditDir, '--no-registry'], io), 0, out.join(''));

    // subject search through `mamori audit search --subject V --config FILE`: the CLI opens the keyring for the
    // subject keys and records the search; it finds exactly the sessions that wrote, saw or searched each number
    const cfgFile = join(auditDir, 'mamori.yaml');
    const kc = stack.config.keyring as unknown as { keyFile: string; store: { path: string } };
    writeFileSync(cfgFile, [
      `upstream: { host: 127.0.0.1, port: ${stack.cluster.port} }`,
      `keyring: { keyFile: ${JSON.stringify(kc.keyFile)}, store: { type: file, path: ${JSON.stringify(kc.store.path)} } }`,
      `audit: { sinks: [ { type: file, path: ${JSON.stringify(join(auditDir, 'mamori.jsonl'))} } ], checkpointSink: none, signingKeyFile: ${JSON.stringify(join(auditDir, 'no-signing.key'))} }`,
    ].join('\n'));
    const sessionsOf = async (value: string): Promise<Set<string>> => {
      const chunks: string[] = [];
      const errs: string[] = [];
      const sink = (to: string[]): NodeJS.WritableStream => new Writable({ write(c: Buffer, _e, cb) { to.push(c.toString()); cb(); } });
      const rc = await main(['audit', 'search', '--config', cfgFile, '--subject', value, '--json'], { stdout: sink(chunks), stderr: sink(errs) });
      assert.equal(rc, 0, errs.join(''));
      const hits = chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRecord);
      return new Set(hits.filter((r) => r.kind !== 'audit_query').map((r) => r.session!));
    };
    assert.deepEqual(await sessionsOf(WRITTEN), new Set([sessions.writer])); // written and returned in plaintext; the viewer saw a mask
    assert.deepEqual(await sessionsOf(SEARCHED), new Set([sessions.writer, sessions.searcher]));
    assert.deepEqual(await sessionsOf(UNTOUCHED), new Set());
    // each search was itself recorded (by a CLI instance, subjects as hashes only)
    const queries = records(auditDir).filter((r) => r.kind === 'audit_query');
    assert.equal(queries.length, 3);
    assert.ok(!rawTrail(auditDir).includes(WRITTEN) && !rawTrail(auditDir).includes(SEARCHED));

    // metrics moved
    const m1 = (await http(port, '/metrics')).body;
    assert.ok(metricValue(m1, 'mamori_connections_total') >= metricValue(m0, 'mamori_connections_total') + 5);
    assert.ok(metricValue(m1, 'mamori_connections_rejected_total', 'reason="auth_failed"') >= 1);
    assert.ok(metricValue(m1, 'mamori_statements_total', 'decision="plaintext"') >= 1);
    assert.ok(metricValue(m1, 'mamori_statements_total', 'decision="none"') >= 1);
    assert.ok(metricValue(m1, 'mamori_refusals_total', 'reason="deny"') >= 1);
    assert.ok(metricValue(m1, 'mamori_bytes_total', 'side="client"') > 0);
    assert.ok(metricValue(m1, 'mamori_audit_records_written_total') > 0);
  });

  test('a GRANT of a policy role to a login gives a membership_change record (refresh or next identity read)', async () => {
    await stack.cluster.query(`GRANT ${ROLES.viewer} TO ${ROLES.outsider}`);
    const deadline = Date.now() + 15_000;
    // identities are re-read after a 5 s TTL (and by the 10 s refresher): a protected statement asks for one
    while (!records(auditDir).some((r) => r.kind === 'membership_change') && Date.now() < deadline) {
      const c = await stack.connect(ROLES.outsider);
      await c.query('SELECT my_number FROM employees').catch(() => undefined);
      await c.end();
      await new Promise((r) => setTimeout(r, 1000));
    }
    const m = records(auditDir).filter((r) => r.kind === 'membership_change') as (AuditRecord & { role: string; member: string; action: string })[];
    assert.deepEqual(m.map((r) => [r.role, r.member, r.action]), [[ROLES.viewer, ROLES.outsider, 'grant']]);
  });
});

describe('an unwritable audit trail (real PostgreSQL)', () => {
  test('protected reads are refused with the documented error, select 1 still runs, /readyz is 503', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mamori-audit-bad-'));
    const blocker = join(dir, 'not-a-directory');
    writeFileSync(blocker, 'x');
    const stack = await startProtectedStack({
      config: {
        audit: {
          statements: 'protected', failMode: 'closed',
          sinks: [{ type: 'file', path: join(blocker, 'audit', 'mamori.jsonl') }],
          checkpointSink: 'none',
          signingKeyFile: join(dir, 'no-signing.key'),
        },
        metrics: { enabled: true, host: '127.0.0.1', port: 0 },
      },
    });
    try {
      const c = await stack.connect(ROLES.clerk);
      await assert.rejects(c.query('SELECT my_number FROM employees'), (e: Error & { code?: string }) => {
        assert.equal(e.code, '58000');
        assert.match(e.message, /audit trail cannot be written/);
        return true;
      });
      assert.equal((await c.query('SELECT 1 AS x')).rows[0].x, 1);
      assert.equal((await c.query('SELECT count(*)::int AS n FROM employees')).rows[0].n, 0);
      await c.end();
      const r = await http(stack.mamori.metricsPort!, '/readyz');
      assert.equal(r.status, 503);
      assert.equal((JSON.parse(r.body) as { checks: Record<string, boolean> }).checks.audit, false);
    } finally {
      await stack.stop();
    }
  });
});

describe('statements: all (real PostgreSQL)', () => {
  test('every statement gets a fingerprinted record without values; protected ones keep their intent/completion pair', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mamori-audit-all-'));
    const stack = await startProtectedStack({
      config: {
        audit: {
          statements: 'all', fsync: 'none',
          sinks: [{ type: 'file', path: join(dir, 'mamori.jsonl') }],
          checkpointSink: 'none',
          signingKeyFile: join(dir, 'no-signing.key'),
        },
      },
    });
    try {
      const c = await stack.connect(ROLES.clerk, { application_name: 'all' });
      await c.query(`SELECT 'secret-literal-1' AS a, 4242424242 AS b`);
      await c.query({ text: 'SELECT $1::text AS p', values: ['secret-param-2'] });
      // a named prepared statement: Parsed once, executed twice, one record per execution
      await c.query({ name: 'named', text: 'SELECT $1::int + 17 AS q', values: [5] });
      await c.query({ name: 'named', text: 'SELECT $1::int + 17 AS q', values: [6] });
      await c.query(`INSERT INTO employees VALUES (7, 'x', '${WRITTEN}')`);
      await c.query('SELECT my_number FROM employees WHERE id = 7');
      await c.query(`SELECT 'after-protected' AS later`); // a session that touched protected data: still recorded
      await c.end();
      await waitFor(() => records(dir).some((r) => r.kind === 'disconnect'));
      const rs = records(dir).filter((r) => r.kind === 'statement_intent') as (AuditRecord & { mode: string })[];
      const all = rs.filter((r) => r.mode === 'all').map((r) => r.fingerprint);
      assert.ok(all.includes("select ? as a, ? as b"), JSON.stringify(all));
      assert.ok(all.includes('select $1::text as p'), JSON.stringify(all));
      assert.ok(all.includes('select ? as later'), JSON.stringify(all));
      assert.equal(all.filter((f) => f === 'select $1::int + ? as q').length, 2, JSON.stringify(all));
      assert.ok(rs.filter((r) => r.mode === 'all').every((r) => r.command === 'SELECT' && String((r as { statement?: unknown }).statement).endsWith(':all')));
      const prot = rs.filter((r) => r.mode === 'protected').map((r) => r.command);
      assert.deepEqual(prot, ['INSERT', 'SELECT']);
      assert.ok(!all.some((f) => /employees/.test(f ?? '')), 'protected statements are not recorded twice');
      const raw = rawTrail(dir);
      for (const v of ['secret-literal-1', '4242424242', 'secret-param-2', 'after-protected', WRITTEN]) assert.ok(!raw.includes(v), `${v.slice(0, 6)}… reached the trail`);
    } finally {
      await stack.stop();
    }
  });
});
