// The metrics registry scraped over the real HTTP listener and parsed: every metric is there with its mamori_
// name, counters move, labels stay bounded, /healthz and /readyz answer as documented.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { createMetrics, commandLabel, type Metrics } from '../../proxy/metrics.js';
import { startHttp, type Readiness } from '../../proxy/http.js';
import { AuditTrail } from '../../proxy/audit/trail.js';
import { fileConfig, intent, tempDir } from './audit/fixtures.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A small parser for the Prometheus text format (enough for prom-client's output). */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name!, type!);
      continue;
    }
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)/.exec(line);
    assert.ok(m, `unparseable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

async function withServer(metrics: Metrics, ready: () => Promise<Readiness>, fn: (base: string) => Promise<void>): Promise<void> {
  const http = await startHttp({ host: '127.0.0.1', port: 0 }, { metrics, ready, readyTimeoutMs: 300 });
  try {
    await fn(`http://127.0.0.1:${http.port}`);
  } finally {
    await http.close();
  }
}

const EXPECTED = [
  ['mamori_connections_active', 'gauge'],
  ['mamori_connections_total', 'counter'],
  ['mamori_connections_rejected_total', 'counter'],
  ['mamori_statements_total', 'counter'],
  ['mamori_statement_duration_seconds', 'histogram'],
  ['mamori_upstream_errors_total', 'counter'],
  ['mamori_bytes_total', 'counter'],
  ['mamori_crypto_operations_total', 'counter'],
  ['mamori_key_cache_hits_total', 'counter'],
  ['mamori_key_cache_misses_total', 'counter'],
  ['mamori_refusals_total', 'counter'],
  ['mamori_searches_total', 'counter'],
  ['mamori_search_limit_hits_total', 'counter'],
  ['mamori_audit_records_written_total', 'counter'],
  ['mamori_audit_records_lost_total', 'counter'],
  ['mamori_audit_records_refused_total', 'counter'],
  ['mamori_audit_write_seconds', 'histogram'],
  ['mamori_config_reloads_total', 'counter'],
  ['mamori_membership_changes_total', 'counter'],
  ['mamori_ready', 'gauge'],
  ['process_cpu_user_seconds_total', 'counter'],
  ['nodejs_eventloop_lag_seconds', 'gauge'],
] as const;

describe('metrics over HTTP', () => {
  test('/metrics lists every metric and counters move', async () => {
    const metrics = createMetrics();
    await withServer(metrics, async () => ({ ok: true, checks: {} }), async (base) => {
      const first = await fetch(`${base}/metrics`);
      assert.equal(first.status, 200);
      assert.match(first.headers.get('content-type') ?? '', /text\/plain/);
      const before = parseExposition(await first.text());
      for (const [name, type] of EXPECTED) assert.equal(before.types.get(name), type, name);
      for (const name of before.types.keys()) assert.ok(/^(mamori_|process_|nodejs_)/.test(name), name);

      metrics.connectionOpened();
      metrics.connectionOpened();
      metrics.connectionClosed();
      metrics.connectionRejected('auth_failed');
      metrics.statement('SELECT 3', 'plaintext', 0.002);
      metrics.statement('SELECT 1', 'plaintext', 0.004);
      metrics.statement('CREATE TABLE', 'none', 0.01);
      metrics.bytes('client', 'in', 100);
      metrics.crypto('siv', 'decrypt', 5);
      metrics.keyCache(true);
      metrics.keyCache(false);
      metrics.refusal('deny');
      metrics.search(true);
      metrics.configReload(false);
      metrics.membershipChange('pending');
      metrics.upstreamError('reset');
      const after = parseExposition(await (await fetch(`${base}/metrics`)).text()).samples;
      assert.equal(value(after, 'mamori_connections_total'), 2);
      assert.equal(value(after, 'mamori_connections_active'), 1);
      assert.equal(value(after, 'mamori_connections_rejected_total', { reason: 'auth_failed' }), 1);
      assert.equal(value(after, 'mamori_statements_total', { command: 'SELECT', decision: 'plaintext' }), 2);
      assert.equal(value(after, 'mamori_statements_total', { command: 'DDL', decision: 'none' }), 1);
      assert.equal(value(after, 'mamori_statement_duration_seconds_count', { command: 'SELECT' }), 2);
      assert.equal(value(after, 'mamori_statement_duration_seconds_bucket', { command: 'SELECT', le: '0.0025' }), 1);
      assert.equal(value(after, 'mamori_bytes_total', { side: 'client', direction: 'in' }), 100);
      assert.equal(value(after, 'mamori_crypto_operations_total', { mode: 'siv', op: 'decrypt' }), 5);
      assert.equal(value(after, 'mamori_key_cache_hits_total'), 1);
      assert.equal(value(after, 'mamori_key_cache_misses_total'), 1);
      assert.equal(value(after, 'mamori_refusals_total', { reason: 'deny' }), 1);
      assert.equal(value(after, 'mamori_search_limit_hits_total'), 1);
      assert.equal(value(after, 'mamori_config_reloads_total', { outcome: 'rejected' }), 1);
      assert.equal(value(after, 'mamori_membership_changes_total', { action: 'pending' }), 1);
      assert.equal(value(after, 'mamori_upstream_errors_total', { kind: 'reset' }), 1);
      assert.ok(!after.some((s) => 'user' in s.labels), 'no user labels unless enabled');
    });
  });

  test('label values stay within the fixed sets; user labels only when enabled', async () => {
    const m = createMetrics({ defaults: false });
    m.connectionRejected('a reason from somewhere' as never);
    m.refusal('select * from secrets' as never);
    m.statement("SELECT '123456789018'", 'weird' as never, 0.001);
    const s = parseExposition(await m.render()).samples;
    assert.equal(value(s, 'mamori_connections_rejected_total', { reason: 'other' }), 1);
    assert.equal(value(s, 'mamori_refusals_total', { reason: 'other' }), 1);
    assert.equal(value(s, 'mamori_statements_total', { command: 'SELECT', decision: 'none' }), 1);
    assert.ok(!(await m.render()).includes('123456789018'));
    assert.equal(commandLabel('INSERT 0 1'), 'INSERT');
    assert.equal(commandLabel('BEGIN'), 'TRANSACTION');
    assert.equal(commandLabel('VACUUM'), 'OTHER');

    const withUsers = createMetrics({ defaults: false, userLabels: true });
    withUsers.statement('SELECT 1', 'mask', 0.001, 'alice');
    withUsers.refusal('deny', 'bob');
    const u = parseExposition(await withUsers.render()).samples;
    assert.equal(value(u, 'mamori_statements_total', { user: 'alice', decision: 'mask' }), 1);
    assert.equal(value(u, 'mamori_refusals_total', { user: 'bob', reason: 'deny' }), 1);
  });

  test('the audit trail reports written and lost records and write latency through the observer', async () => {
    const t = await tempDir();
    const m = createMetrics({ defaults: false });
    try {
      const trail = await AuditTrail.open(fileConfig(t.dir), { observer: m.audit });
      await trail.append(intent(1));
      await trail.append(intent(2));
      await trail.close();
      const blocked = await AuditTrail.open(fileConfig(join(t.dir, 'mamori.jsonl', 'x'), { failMode: 'open' }), { observer: m.audit });
      await blocked.append(intent(3));
      await blocked.close();
      const refusing = await AuditTrail.open(fileConfig(join(t.dir, 'mamori.jsonl', 'y')), { observer: m.audit });
      await assert.rejects(refusing.append(intent(4)));
      await refusing.close();
      const s = parseExposition(await m.render()).samples;
      assert.equal(value(s, 'mamori_audit_records_written_total'), 5); // genesis, start, 2 intents, checkpoint
      assert.equal(value(s, 'mamori_audit_records_lost_total'), 1); // the intent (a trail that never started writes no closing checkpoint)
      assert.equal(value(s, 'mamori_audit_records_refused_total'), 1);
      assert.ok((value(s, 'mamori_audit_write_seconds_count') ?? 0) >= 3);
    } finally {
      await t.cleanup();
    }
  });

  test('/healthz, /readyz (200, 503, timeout), 404 and 405', async () => {
    const metrics = createMetrics({ defaults: false });
    let state: Readiness = { ok: true, checks: { upstream: true, keyring: true, audit: true, catalog: true } };
    let hang = false;
    const ready = (): Promise<Readiness> => (hang ? new Promise(() => undefined) : Promise.resolve(state));
    await withServer(metrics, ready, async (base) => {
      const h = await fetch(`${base}/healthz`);
      assert.equal(h.status, 200);
      assert.equal(await h.text(), 'ok\n');
      const r = await fetch(`${base}/readyz`);
      assert.equal(r.status, 200);
      assert.deepEqual(await r.json(), state);
      state = { ok: false, checks: { upstream: true, keyring: true, audit: false, catalog: true } };
      const bad = await fetch(`${base}/readyz`);
      assert.equal(bad.status, 503);
      assert.deepEqual(await bad.json(), state);
      const s = parseExposition(await metrics.render()).samples;
      assert.equal(value(s, 'mamori_ready', { check: 'audit' }), 0);
      assert.equal(value(s, 'mamori_ready', { check: 'upstream' }), 1);
      hang = true;
      const slow = await fetch(`${base}/readyz`);
      assert.equal(slow.status, 503);
      assert.equal((await fetch(`${base}/nope`)).status, 404);
      const post = await fetch(`${base}/metrics`, { method: 'POST' });
      assert.equal(post.status, 405);
      assert.equal(post.headers.get('allow'), 'GET, HEAD');
      const headReq = await fetch(`${base}/metrics`, { method: 'HEAD' });
      assert.equal(headReq.status, 200);
      assert.equal(await headReq.text(), '');
    });
  });
});
