// The keyring against a real PostgreSQL (the test harness): the shared table keystore (two instances,
// tampering, NOTIFY-driven reload), online reencryption and retirement for both modes with rows readable
// throughout, resumable runs, and the `mamori keys` CLI end to end.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { startCluster, type Cluster } from '../harness/cluster.js';
import { Keyring, KeyringError } from '../../keyring/keyring.js';
import { parseCellHeader } from '../../keyring/cells/index.js';
import { countVersionRows, reencryptColumn, retireVersion, rotateAndReencrypt } from '../../keyring/rotation.js';
import { runKeysCommand } from '../../keyring/cli.js';
import type { KeyringConfig } from '../../keyring/config-types.js';
import { tmpLocal } from './helpers.js';

let cluster: Cluster;
let pool: pg.Pool;

before(async () => {
  cluster = await startCluster({ tls: false });
  pool = new pg.Pool({ connectionString: cluster.url(), max: 4 });
  // pool.end() resolves before idle sockets close; the server's shutdown notice may still reach one.
  pool.on('error', () => undefined);
});

after(async () => {
  await pool?.end();
  await cluster?.stop();
});

function tableCfg(dir: string, table: string): KeyringConfig {
  return { provider: 'local', keyFile: join(dir, 'root.key'), store: { type: 'postgres', table }, stateFile: join(dir, 'a.state') };
}

async function readAll(kr: Keyring, table: string, domain: string): Promise<Map<number, string>> {
  const r = await pool.query<{ id: number; c: Buffer }>(`SELECT id, c FROM ${table} ORDER BY id`);
  const out = new Map<number, string>();
  for (const row of r.rows) out.set(row.id, (await kr.decrypt(row.c, domain))!.toString());
  return out;
}

describe('table keystore shared by instances', () => {
  test('two instances see each other’s rotations after reload and through NOTIFY', async () => {
    const t = tmpLocal();
    try {
      const cfg = tableCfg(t.dir, 'mamori.data_keys');
      const a = await Keyring.init(cfg, { databaseIdentity: 'prod', pg: pool });
      await a.ensureDomain('public.people.name', 'randomized');
      // A second instance: its own pool and its own generation pin.
      const poolB = new pg.Pool({ connectionString: cluster.url(), max: 3 });
      poolB.on('error', () => undefined);
      const b = await Keyring.open({ ...cfg, stateFile: join(t.dir, 'b.state') }, { pg: poolB, databaseIdentity: 'prod' });
      const c1 = await a.encrypt('public.people.name', Buffer.from('佐藤'));
      assert.equal((await b.decrypt(c1))!.toString(), '佐藤');
      await a.rotate('public.people.name');
      assert.equal(b.domain('public.people.name').current, 1);
      await b.reload();
      assert.equal(b.domain('public.people.name').current, 2);
      assert.equal(parseCellHeader(await b.encrypt('public.people.name', Buffer.from('x')))!.version, 2);

      await b.watch();
      await a.rotate('public.people.name');
      for (let i = 0; i < 100 && b.domain('public.people.name').current !== 3; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(b.domain('public.people.name').current, 3);

      // Both write at once: optimistic concurrency retries, nothing is lost.
      await Promise.all([a.ensureDomain('public.people.a', 'deterministic'), b.ensureDomain('public.people.b', 'randomized')]);
      await a.reload();
      await b.reload();
      assert.deepEqual(a.list().map((d) => d.name).sort(), b.list().map((d) => d.name).sort());
      assert.equal(a.list().length, 3);
      await a.close();
      await b.close();
      await poolB.end();
    } finally {
      t.cleanup();
    }
  });

  test('a row edited, deleted or replayed in the table is refused', async () => {
    const t = tmpLocal();
    try {
      const cfg = tableCfg(t.dir, 'ks2.keys');
      const kr = await Keyring.init(cfg, { databaseIdentity: 'prod', pg: pool });
      await kr.ensureDomain('public.t.a', 'randomized');
      await kr.rotate('public.t.a');
      await kr.close();
      const snapshot = await pool.query<{ keystore_id: string; entry: string; body: unknown }>(`SELECT keystore_id, entry, body FROM ks2.keys`);
      await pool.query(`UPDATE ks2.keys SET body = jsonb_set(body, '{encryptions}', '123') WHERE entry = '1:2'`);
      await assert.rejects(Keyring.open(cfg, { pg: pool }), /entry 1:2 \(public\.t\.a version 2\): MAC mismatch/);
      const orig12 = snapshot.rows.find((r) => r.entry === '1:2')!.body;
      await pool.query(`UPDATE ks2.keys SET body = $1 WHERE entry = '1:2'`, [orig12]);
      const ok = await Keyring.open(cfg, { pg: pool });
      await ok.rotate('public.t.a');
      await ok.close();
      // Replaying the whole older table content is a rollback.
      await pool.query(`DELETE FROM ks2.keys`);
      for (const r of snapshot.rows) {
        await pool.query(`INSERT INTO ks2.keys (keystore_id, entry, body) VALUES ($1, $2, $3)`, [r.keystore_id, r.entry, r.body]);
      }
      await assert.rejects(Keyring.open(cfg, { pg: pool }), /older than generation .*rollback/);
      await pool.query(`DELETE FROM ks2.keys WHERE entry = '1:1'`);
      await assert.rejects(Keyring.open(cfg, { pg: pool }), /header MAC mismatch/);
    } finally {
      t.cleanup();
    }
  });
});

describe('rotation against real rows', () => {
  test('randomized: rotate, reencrypt online (rows readable throughout, concurrent writes kept), retire refused then allowed', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      const dom = 'public.rnd.c';
      await kr.ensureDomain(dom, 'randomized');
      await pool.query('CREATE TABLE rnd (id int PRIMARY KEY, c bytea)');
      const n = 600;
      for (let i = 0; i < n; i += 100) {
        const vals: unknown[] = [];
        const ph: string[] = [];
        for (let j = i; j < i + 100; j++) {
          vals.push(j, await kr.encrypt(dom, Buffer.from(`name-${j}`)));
          ph.push(`($${vals.length - 1}, $${vals.length})`);
        }
        await pool.query(`INSERT INTO rnd VALUES ${ph.join(',')}`, vals);
      }
      await pool.query('INSERT INTO rnd VALUES (100000, NULL)');
      await kr.rotate(dom);
      await assert.rejects(retireVersion(kr, pool, dom, 1, ['public.rnd.c']), /version 1 is still used by 600 rows \(600 in public\.rnd\.c\)/);

      let reads = 0;
      let stop = false;
      const reader = (async () => {
        while (!stop) {
          const all = await readAll(kr, 'rnd WHERE c IS NOT NULL', dom);
          assert.equal(all.size, n);
          assert.equal(all.get(123), 'name-123');
          reads += 1;
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      // A concurrent writer changes row 599 between the job's read of its batch and the update.
      let batches = 0;
      const p = await reencryptColumn(kr, pool, dom, 'public.rnd.c', {
        batchSize: 100,
        beforeBatchUpdate: async () => {
          if (++batches === 6) await pool.query('UPDATE rnd SET c = $1 WHERE id = 599', [await kr.encrypt(dom, Buffer.from('changed'))]);
        },
      });
      stop = true;
      await reader;
      assert.ok(reads >= 1);
      assert.equal(p.total, n);
      assert.deepEqual([p.done, p.conflicts, p.shredded], [n - 1, 1, 0]);
      assert.equal(await countVersionRows(kr, pool, dom, 1, 'public.rnd.c'), 0);
      const all = await readAll(kr, 'rnd WHERE c IS NOT NULL', dom);
      assert.equal(all.get(599), 'changed');
      assert.equal(all.get(0), 'name-0');
      // Idempotent: a second run finds nothing to do.
      const again = await reencryptColumn(kr, pool, dom, 'public.rnd.c');
      assert.deepEqual([again.total, again.done], [0, 0]);
      await retireVersion(kr, pool, dom, 1, ['public.rnd.c']);
      assert.equal(kr.domain(dom).versions[0]!.status, 'retired');
      await kr.close();
    } finally {
      await pool.query('DROP TABLE IF EXISTS rnd');
      t.cleanup();
    }
  });

  test('reencrypt is resumable after an interruption', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      const dom = 'public.res.c';
      await kr.ensureDomain(dom, 'randomized');
      await pool.query('CREATE TABLE res (a int, b text, c bytea, PRIMARY KEY (a, b))');
      for (let i = 0; i < 50; i++) await pool.query('INSERT INTO res VALUES ($1, $2, $3)', [i % 5, `k${i}`, await kr.encrypt(dom, Buffer.from(String(i)))]);
      await kr.rotate(dom);
      await assert.rejects(
        reencryptColumn(kr, pool, dom, 'public.res.c', {
          batchSize: 10,
          onProgress: (p) => {
            if (p.done >= 20) throw new Error('interrupted');
          },
        }),
        /interrupted/,
      );
      assert.equal(await countVersionRows(kr, pool, dom, 1, 'public.res.c'), 30);
      const rest = await reencryptColumn(kr, pool, dom, 'public.res.c', { batchSize: 7 });
      assert.deepEqual([rest.total, rest.done, rest.conflicts], [30, 30, 0]);
      assert.equal(await countVersionRows(kr, pool, dom, 1, 'public.res.c'), 0);
      const r = await pool.query<{ a: number; b: string; c: Buffer }>('SELECT a, b, c FROM res');
      for (const row of r.rows) assert.equal((await kr.decrypt(row.c))!.toString(), row.b.slice(1));
      await kr.close();
    } finally {
      await pool.query('DROP TABLE IF EXISTS res');
      t.cleanup();
    }
  });

  test('deterministic: rotate + reencrypt as one job with writes frozen; UNIQUE holds; retire afterwards', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      const dom = 'public.det.mynumber';
      await kr.ensureDomain(dom, 'deterministic');
      await pool.query('CREATE TABLE det (id bigint PRIMARY KEY, mynumber bytea UNIQUE)');
      for (let i = 0; i < 200; i++) {
        await pool.query('INSERT INTO det VALUES ($1, $2)', [i, await kr.encrypt(dom, Buffer.from(String(100000000000 + i)))]);
      }
      const frozenSeen: boolean[] = [];
      const res = await rotateAndReencrypt(kr, pool, dom, ['public.det.mynumber'], {
        batchSize: 50,
        onProgress: async () => {
          frozenSeen.push(kr.isWriteFrozen(dom));
          await assert.rejects(kr.encrypt(dom, Buffer.from('1')), (e: Error) => e instanceof KeyringError && e.code === 'frozen');
          // Rows stay readable mid-job (old and new versions side by side).
          const r = await pool.query<{ id: string; mynumber: Buffer }>('SELECT id, mynumber FROM det WHERE id IN (0, 199)');
          for (const row of r.rows) assert.equal((await kr.decrypt(row.mynumber))!.toString(), String(100000000000 + Number(row.id)));
        },
      });
      assert.ok(frozenSeen.length > 0 && frozenSeen.every(Boolean));
      assert.deepEqual([res.version, res.finished], [2, true]);
      assert.equal(kr.isWriteFrozen(dom), false);
      // Equal plaintext → the same stored bytes as the reencrypted row: UNIQUE still catches the duplicate.
      const dup = await kr.encrypt(dom, Buffer.from('100000000007'));
      assert.equal(parseCellHeader(dup)!.version, 2);
      await assert.rejects(pool.query('INSERT INTO det VALUES (999, $1)', [dup]), /duplicate key value/);
      await retireVersion(kr, pool, dom, 1, ['public.det.mynumber']);
      assert.deepEqual(kr.domain(dom).versions.map((v) => v.status), ['retired', 'active']);
      await kr.close();
    } finally {
      await pool.query('DROP TABLE IF EXISTS det');
      t.cleanup();
    }
  });
});

describe('mamori keys CLI', () => {
  test('init, add, list, rotate/reencrypt/retire with -d, shred needs --yes, exit codes', async () => {
    const t = tmpLocal();
    const out: string[] = [];
    const err: string[] = [];
    const io = { stdout: { write: (s: string) => out.push(s) }, stderr: { write: (s: string) => err.push(s) } };
    const run = (...args: string[]) => runKeysCommand([...args, '--config', join(t.dir, 'mamori.yaml')], io);
    try {
      writeFileSync(
        join(t.dir, 'mamori.yaml'),
        `keyring:\n  provider: local\n  keyFile: ./root.key\n  store: { type: postgres, table: clikeys.data_keys }\n`,
      );
      const url = cluster.url();
      assert.equal(await run('init', '-d', url, '--identity', 'prod'), 0);
      assert.match(out.join(''), /keystore [0-9a-f-]+ created \(clikeys\.data_keys\)/);
      assert.equal(await run('init', '-d', url, '--identity', 'prod'), 1);
      assert.match(err.join(''), /already holds a keystore/);
      assert.equal(await run('add', 'public.cli.c', '--mode', 'randomized', '-d', url), 0);
      assert.equal(await run('add', 'public.cli.c', '--mode', 'sideways', '-d', url), 2);
      assert.equal(await run('frobnicate'), 2);

      const kr = await Keyring.open({ provider: 'local', keyFile: join(t.dir, 'root.key'), store: { type: 'postgres', table: 'clikeys.data_keys' } }, { pg: pool });
      await pool.query('CREATE TABLE cli (id int PRIMARY KEY, c bytea)');
      for (let i = 0; i < 30; i++) await pool.query('INSERT INTO cli VALUES ($1, $2)', [i, await kr.encrypt('public.cli.c', Buffer.from(`v${i}`))]);

      out.length = 0;
      assert.equal(await run('rotate', 'public.cli.c', '-d', url), 0);
      assert.match(out.join(''), /new writes use version 2/);
      out.length = 0;
      err.length = 0;
      assert.equal(await run('retire', 'public.cli.c', '1', '-d', url), 1);
      assert.match(err.join(''), /still used by 30 rows/);
      assert.equal(await run('reencrypt', 'public.cli.c', '-d', url, '--batch', '8'), 0);
      assert.match(out.join(''), /public\.cli\.c: 30\/30 moved/);
      assert.equal(await run('retire', 'public.cli.c', '1', '-d', url), 0);

      out.length = 0;
      assert.equal(await run('list', '-d', url), 0);
      const listing = out.join('');
      assert.match(listing, /1\tpublic\.cli\.c\trandomized\tdata/);
      assert.match(listing, /\tv1\tretired\t\d+ encryptions/);
      assert.match(listing, /\tv2\tactive \(current\)\t\d+ encryptions/);

      await kr.reload();
      const cell = await kr.encrypt('public.cli.c', Buffer.from('old'));
      await kr.close();
      assert.equal(await run('rotate', 'public.cli.c', '-d', url), 0);
      err.length = 0;
      assert.equal(await run('shred', 'public.cli.c', '--version', '2', '-d', url), 1);
      assert.match(err.join(''), /add --yes/);
      assert.equal(await run('shred', 'public.cli.c', '--version', '2', '--yes', '-d', url), 0);
      const kr2 = await Keyring.open({ provider: 'local', keyFile: join(t.dir, 'root.key'), store: { type: 'postgres', table: 'clikeys.data_keys' } }, { pg: pool });
      assert.equal(await kr2.decrypt(cell), null);
      const r = await pool.query<{ c: Buffer }>('SELECT c FROM cli WHERE id = 3');
      assert.equal(await kr2.decrypt(r.rows[0]!.c), null); // reencrypted to v2, which is now shredded
      await kr2.close();
    } finally {
      await pool.query('DROP TABLE IF EXISTS cli');
      t.cleanup();
    }
  });
});
