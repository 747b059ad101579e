// The harness itself: a throwaway cluster with SCRAM and TLS that real clients can use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { startCluster } from './cluster.js';

test('harness starts PostgreSQL with SCRAM-only auth and TLS, and tears it down', async () => {
  const cluster = await startCluster({ tls: true });
  try {
    await cluster.createRole('alice', 'alice-pw');
    const ok = new pg.Client({ host: cluster.host, port: cluster.port, user: 'alice', password: 'alice-pw', database: 'postgres',
      ssl: { ca: readFileSync(cluster.caCertPath), servername: 'localhost' } });
    await ok.connect();
    try {
      const r = await ok.query<{ ssl: boolean }>('select ssl from pg_stat_ssl where pid = pg_backend_pid()');
      assert.equal(r.rows[0]?.ssl, true);
    } finally {
      await ok.end();
    }
    const bad = new pg.Client({ host: cluster.host, port: cluster.port, user: 'alice', password: 'wrong', database: 'postgres' });
    await assert.rejects(bad.connect(), /password authentication failed/);
    const v = await cluster.query<{ p: string }>("select rolpassword as p from pg_authid where rolname = 'alice'");
    assert.match(v.rows[0]!.p, /^SCRAM-SHA-256\$4096:/);
  } finally {
    await cluster.stop();
  }
});
