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
import { intent, keyPair, tempDir } from './fixtures.js';
import { verifyAuditTrail } from '../../../proxy/audit/verify.js';
import { writeFile } from 'node:fs/promises';

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
      const trail = await AuditTrail.open(
        {
          fsync: 'none',
          heartbeatSeconds: 0,
          checkpointEverySeconds: 0,
          // checkpoints to a table of their own, through the url form
          checkpointSink: { type: 'postgres', url: pg.url(), table: 'offsite.checkpoints' },
          sinks: [
            { type: 'file', path: join(t.dir, 'mamori.jsonl'), rotateBytes: 4000, rotateSeconds: 0 },
            // the records through the connection form, the password from the secrets (as config/load.ts gives it)
            {
              type: 'postgres',
              connection: { host: pg.host, port: pg.port, user: pg.superuser, database: 'postgres', passwordEnv: 'AUDIT_PW' },
              table: 'mamori.audit_log',
              flushIntervalMs: 50,
              batchSize: 7,
              maxLagRecords: 15,
            },
          ],
        },
        { sinkPasswords: [undefined, pg.superPassword], signingKey: keyPair().privateKey },
      );
      const count = async (): Promise<number> => Number((await pg.query<{ n: string }>('SELECT count(*) AS n FROM mamori.audit_log')).rows[0]!.n);
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

      const rows = (await pg.query<{ seq: string; hash: string; kind: string; record: { fingerprint: string | null } }>('SELECT seq, hash, kind, record FROM mamori.audit_log ORDER BY seq')).rows;
      const all: Array<{ seq: number; hash: string }> = [];
      for await (const hit of readTrail(join(t.dir, 'mamori.jsonl'))) all.push(hit.record);
      assert.ok(all.length >= 28, `${all.length} records`);
      assert.deepEqual(rows.map((r) => [Number(r.seq), r.hash]), all.map((r) => [r.seq, r.hash]), 'the table holds exactly the file, once each');
      assert.ok(rows.some((r) => r.kind === 'statement_intent' && r.record.fingerprint?.includes('my_number')));
      const rotated = execFileSync('ls', [t.dir], { encoding: 'utf8' }).split('\n').filter((n) => /^mamori\.\d{8}\./.test(n));
      // the checkpoint table holds the closing checkpoint, and it verifies against the files
      const cps = (await pg.query<{ record: string }>("SELECT record::text AS record FROM offsite.checkpoints WHERE kind = 'checkpoint' ORDER BY seq")).rows;
      assert.equal(cps.length, 1);
      const exported = join(t.dir, 'exported-checkpoints.jsonl');
      await writeFile(exported, cps.map((r) => r.record + '\n').join(''));
      const v = await verifyAuditTrail(join(t.dir, 'mamori.jsonl'), { checkpointSink: exported });
      assert.equal(v.ok, true, v.problem?.message);
      assert.equal(v.checkpoints.sink, 1);
      assert.ok(rotated.length >= 2, `files rotated while the database was down: ${rotated.join(' ')}`);
    } finally {
      if (restarted) pgCtl(pg, ['-m', 'fast', '-w', 'stop']);
      await pg.stop();
      await t.cleanup();
    }
  });
});
