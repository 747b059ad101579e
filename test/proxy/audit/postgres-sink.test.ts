// The PostgreSQL sink against a real server: records arrive in the table, the server is stopped (appends go on,
// into the file, and rotate) and restarted, and every record arrives once it is back; past maxLagRecords a
// closed-mode trail refuses appends.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { startCluster, serverRunAs, type Cluster } from '../../harness/cluster.js';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import { AuditUnavailableError } from '../../../proxy/audit/errors.js';
import { readTrail } from '../../../proxy/audit/search.js';
import { intent, tempDir } from './fixtures.js';

function pgCtl(pg: Cluster, args: string[]): void {
  const who = serverRunAs();
  execFileSync(join(pg.bindir, 'pg_ctl'), ['-D', pg.dataDir, ...args], {
    ...(who ? { uid: who.uid, gid: who.gid } : {}),
    stdio: 'ignore',
  });
}

async function waitFor(what: string, fn: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('postgres audit sink', () => {
  test('fed from the file; survives the database going down and coming back', { timeout: 90_000 }, async () => {
    const pg = await startCluster({ tls: false });
    const t = await tempDir();
    let restarted = false;
    try {
      const trail = await AuditTrail.open({
        fsync: 'none',
        heartbeatSeconds: 0,
        checkpointEverySeconds: 0,
        checkpointSink: 'none',
        sinks: [
          { type: 'file', path: join(t.dir, 'mamori.jsonl'), rotateBytes: 4000, rotateSeconds: 0 },
          { type: 'postgres', url: pg.url(), table: 'mamori_audit', flushIntervalMs: 50, batchSize: 7, maxLagRecords: 15 },
        ],
      });
      const count = async (): Promise<number> => Number((await pg.query<{ n: string }>('SELECT count(*) AS n FROM mamori_audit')).rows[0]!.n);
      for (let i = 0; i < 10; i++) await trail.append(intent(i));
      await waitFor('the first 12 records in the table', async () => (await count().catch(() => 0)) === 12);

      pgCtl(pg, ['-m', 'fast', '-w', 'stop']);
      for (let i = 10; i < 20; i++) await trail.append(intent(i)); // the file takes them
      let refused: AuditUnavailableError | null = null;
      for (let i = 20; i < 40 && !refused; i++) {
        await trail.append(intent(i)).catch((e: unknown) => {
          refused = e as AuditUnavailableError;
        });
      }
      assert.ok(refused, 'a closed-mode trail refuses once the database sink lags past maxLagRecords');
      assert.equal((refused as AuditUnavailableError).reason, 'sink_lag');

      pgCtl(pg, ['-w', '-l', join(dirname(pg.dataDir), 'restart.log'), 'start']);
      restarted = true;
      const fileRecords: Array<{ instance: string; seq: number; hash: string }> = [];
      for await (const hit of readTrail(join(t.dir, 'mamori.jsonl'))) fileRecords.push(hit.record);
      await waitFor('every file record in the table', async () => (await count().catch(() => 0)) === fileRecords.length);
      await trail.append(intent(99)); // accepted again now the lag is gone
      await trail.close();

      const rows = (await pg.query<{ seq: string; hash: string; kind: string; record: { fingerprint: string | null } }>('SELECT seq, hash, kind, record FROM mamori_audit ORDER BY seq')).rows;
      const all: Array<{ seq: number; hash: string }> = [];
      for await (const hit of readTrail(join(t.dir, 'mamori.jsonl'))) all.push(hit.record);
      assert.ok(all.length >= 28, `${all.length} records`);
      assert.deepEqual(rows.map((r) => [Number(r.seq), r.hash]), all.map((r) => [r.seq, r.hash]), 'the table holds exactly the file, once each');
      assert.ok(rows.some((r) => r.kind === 'statement_intent' && r.record.fingerprint?.includes('my_number')));
      const rotated = execFileSync('ls', [t.dir], { encoding: 'utf8' }).split('\n').filter((n) => /^mamori\.\d{8}\./.test(n));
      assert.ok(rotated.length >= 2, `files rotated while the database was down: ${rotated.join(' ')}`);
    } finally {
      if (restarted) pgCtl(pg, ['-m', 'fast', '-w', 'stop']);
      await pg.stop();
      await t.cleanup();
    }
  });
});
