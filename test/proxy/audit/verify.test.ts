// verifyAuditTrail on real files: an intact trail verifies, and each kind of tampering is reported as the first
// problem, at the right file, line and seq.
import { describe, test } from 'node:test';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { cp, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import { verifyAuditTrail } from '../../../proxy/audit/verify.js';
import { parseRecord, sealRecord, serializeRecord } from '../../../proxy/audit/record.js';
import { fileConfig, intent, keyPair, tempDir, writeTrail } from './fixtures.js';

const keys = keyPair();

async function lines(path: string): Promise<string[]> {
  const text = await readFile(path, 'utf8');
  return text.split('\n').slice(0, -1);
}
async function writeLines(path: string, ls: string[]): Promise<void> {
  await writeFile(path, ls.map((l) => l + '\n').join(''));
}

/** A closed trail: genesis, instance_start, 20 intents with a checkpoint after every 10th, and the closing
 * checkpoint: 25 lines. */
async function fixture(rotateBytes = 0): Promise<{ dir: string; active: string; cpSink: string; cleanup: () => Promise<void> }> {
  const t = await tempDir();
  const cpSink = join(t.dir, 'offsite', 'checkpoints.jsonl');
  const trail = await AuditTrail.open(fileConfig(t.dir, { checkpointSink: { type: 'file', path: cpSink } }, rotateBytes), {
    signingKey: keys.privateKey,
  });
  await writeTrail(trail, 20, 10);
  await trail.close();
  return { dir: t.dir, active: join(t.dir, 'mamori.jsonl'), cpSink, cleanup: t.cleanup };
}

describe('verifyAuditTrail', () => {
  test('an intact trail verifies, with every checkpoint signature checked', async () => {
    const f = await fixture();
    try {
      const r = await verifyAuditTrail(f.active, { publicKey: keys.publicKey, checkpointSink: f.cpSink });
      assert.equal(r.problem, null);
      assert.equal(r.ok, true);
      assert.equal(r.records, 25);
      assert.equal(r.checkpoints.total, 3);
      assert.equal(r.checkpoints.verified, 3);
      assert.equal(r.checkpoints.sink, 3);
      assert.equal(r.head?.seq, 25);
      // the same trail through the directory form
      const d = await verifyAuditTrail(f.dir, { publicKey: keys.publicKey });
      assert.equal(d.ok, true);
      assert.equal(d.records, 25);
    } finally {
      await f.cleanup();
    }
  });

  test('a modified byte is reported at its line and seq', async () => {
    const f = await fixture();
    try {
      const ls = await lines(f.active);
      ls[6] = ls[6]!.replace('"user":"alice"', '"user":"alicf"');
      await writeLines(f.active, ls);
      const r = await verifyAuditTrail(f.active, { publicKey: keys.publicKey });
      assert.equal(r.ok, false);
      assert.equal(r.problem?.kind, 'modified');
      assert.equal(r.problem?.line, 7);
      assert.equal(r.problem?.seq, 7);
      assert.equal(r.problem?.file, f.active);
    } finally {
      await f.cleanup();
    }
  });

  test('a rewritten record with a recomputed hash is still caught by its successor', async () => {
    const f = await fixture();
    try {
      const ls = await lines(f.active);
      const rec = parseRecord(ls[8]!);
      const { hash: _h, seq, prev, time, instance, ...event } = rec;
      const forged = sealRecord({ ...event, user: 'mallory' } as Parameters<typeof sealRecord>[0], { seq, prev, time, instance });
      ls[8] = serializeRecord(forged);
      await writeLines(f.active, ls);
      const r = await verifyAuditTrail(f.active);
      assert.equal(r.problem?.kind, 'modified');
      assert.equal(r.problem?.line, 9);
      assert.equal(r.problem?.seq, 9);
    } finally {
      await f.cleanup();
    }
  });

  test('a deleted line is reported as a seq gap where it was', async () => {
    const f = await fixture();
    try {
      const ls = await lines(f.active);
      ls.splice(6, 1); // seq 7
      await writeLines(f.active, ls);
      const r = await verifyAuditTrail(f.active);
      assert.equal(r.problem?.kind, 'deleted');
      assert.equal(r.problem?.line, 7);
      assert.equal(r.problem?.seq, 8);
      assert.match(r.problem!.message, /seq 7\.\.7/);
    } finally {
      await f.cleanup();
    }
  });

  test('an inserted line (a copy, or a forged record chained onto its predecessor) is reported', async () => {
    const f = await fixture();
    try {
      const ls = await lines(f.active);
      const copy = [...ls];
      copy.splice(9, 0, ls[3]!);
      await writeLines(f.active, copy);
      const r1 = await verifyAuditTrail(f.active);
      assert.equal(r1.problem?.kind, 'inserted');
      assert.equal(r1.problem?.line, 10);

      const base = parseRecord(ls[8]!);
      const forged = sealRecord(intent(99, 'mallory'), { seq: base.seq + 1, prev: base.hash, time: base.time, instance: base.instance });
      const withForged = [...ls];
      withForged.splice(9, 0, serializeRecord(forged));
      await writeLines(f.active, withForged);
      const r2 = await verifyAuditTrail(f.active);
      assert.equal(r2.problem?.kind, 'inserted');
      assert.equal(r2.problem?.line, 10);
      assert.equal(r2.problem?.seq, 10);
    } finally {
      await f.cleanup();
    }
  });

  test('two swapped lines are reported as reordered', async () => {
    const f = await fixture();
    try {
      const ls = await lines(f.active);
      [ls[5], ls[6]] = [ls[6]!, ls[5]!];
      await writeLines(f.active, ls);
      const r = await verifyAuditTrail(f.active);
      assert.equal(r.problem?.kind, 'reordered');
      assert.equal(r.problem?.line, 6);
      assert.equal(r.problem?.seq, 7);
    } finally {
      await f.cleanup();
    }
  });

  test('a truncated file: cut mid-record, or whole records cut (stale head against the registry and the checkpoint sink)', async () => {
    const f = await fixture();
    try {
      const text = await readFile(f.active, 'utf8');
      await writeFile(f.active, text.slice(0, text.length - 40));
      const torn = await verifyAuditTrail(f.active);
      assert.equal(torn.problem?.kind, 'truncated');
      assert.equal(torn.problem?.line, 25);

      const ls = (await lines(f.active)).slice(0, 20);
      await writeLines(f.active, ls);
      const stale = await verifyAuditTrail(f.active);
      assert.equal(stale.problem?.kind, 'stale_head');
      assert.equal(stale.problem?.seq, 25);
      assert.match(stale.problem!.message, /trail ends at seq 20/);

      // without the local registry, the off-site checkpoint still gives it away
      const viaSink = await verifyAuditTrail(f.active, { registry: false, checkpointSink: f.cpSink, publicKey: keys.publicKey });
      assert.equal(viaSink.problem?.kind, 'rollback');
      assert.equal(viaSink.problem?.seq, 24); // the first shipped checkpoint the trail lacks
      // and an expected head from elsewhere
      const head = parseRecord((await readFile(f.cpSink, 'utf8')).trim().split('\n').at(-1)!);
      const viaHead = await verifyAuditTrail(f.active, { registry: false, expectedHead: { instance: head.instance, seq: head.seq, hash: head.hash } });
      assert.equal(viaHead.problem?.kind, 'stale_head');
    } finally {
      await f.cleanup();
    }
  });

  test('a deleted rotated file is reported from the manifest', async () => {
    const f = await fixture(1500);
    try {
      const rotated = (await readdir(f.dir)).filter((n) => /^mamori\.\d{8}\./.test(n)).sort();
      assert.ok(rotated.length >= 3, `expected several rotated files, got ${rotated.length}`);
      const ok = await verifyAuditTrail(f.active, { publicKey: keys.publicKey, checkpointSink: f.cpSink });
      assert.equal(ok.ok, true, ok.problem?.message);
      await unlink(join(f.dir, rotated[1]!));
      const r = await verifyAuditTrail(f.active);
      assert.equal(r.problem?.kind, 'missing_file');
      assert.equal(r.problem?.file, join(f.dir, rotated[1]!));
      // an explicit file list checked against an archived copy of the manifest
      const listed = [...rotated.filter((_, i) => i !== 1).map((n) => join(f.dir, n)), f.active];
      const archived = await verifyAuditTrail(listed, { manifest: join(f.dir, 'mamori.manifest.json') });
      assert.equal(archived.problem?.kind, 'missing_file');
      // without the manifest the chain still shows the gap at the first record of the next file
      const noManifest = await verifyAuditTrail(f.active, { manifest: false });
      assert.equal(noManifest.problem?.kind, 'deleted');
      assert.equal(noManifest.problem?.file, join(f.dir, rotated[2]!));
      assert.equal(noManifest.problem?.line, 1);
    } finally {
      await f.cleanup();
    }
  });

  test('files replaced by an older copy after a later checkpoint was shipped: rollback', async () => {
    const t = await tempDir();
    const dir = join(t.dir, 'audit');
    const backup = join(t.dir, 'backup');
    const cpSink = join(t.dir, 'offsite', 'cp.jsonl');
    try {
      const cfg = fileConfig(dir, { checkpointSink: { type: 'file', path: cpSink } });
      const a = await AuditTrail.open(cfg, { signingKey: keys.privateKey });
      await writeTrail(a, 5);
      await a.close();
      await cp(dir, backup, { recursive: true });
      const b = await AuditTrail.open(cfg, { signingKey: keys.privateKey });
      await writeTrail(b, 5);
      await b.close();
      const full = await verifyAuditTrail(join(dir, 'mamori.jsonl'), { publicKey: keys.publicKey, checkpointSink: cpSink });
      assert.equal(full.ok, true, full.problem?.message);
      assert.equal(full.instances.length, 2);
      await rm(dir, { recursive: true });
      await cp(backup, dir, { recursive: true });
      const alone = await verifyAuditTrail(join(dir, 'mamori.jsonl'), { publicKey: keys.publicKey });
      assert.equal(alone.ok, true, 'an older copy is self-consistent on its own');
      const r = await verifyAuditTrail(join(dir, 'mamori.jsonl'), { publicKey: keys.publicKey, checkpointSink: cpSink });
      assert.equal(r.problem?.kind, 'rollback');
      assert.equal(r.problem?.instance, b.instanceId);
      assert.equal(r.problem?.file, cpSink);
      assert.equal(r.problem?.line, 2);
    } finally {
      await t.cleanup();
    }
  });

  test('a bad signature: wrong public key, or a signature altered in the checkpoint sink', async () => {
    const f = await fixture();
    try {
      const other = keyPair();
      const r = await verifyAuditTrail(f.active, { publicKey: other.publicKey });
      assert.equal(r.problem?.kind, 'bad_signature');
      assert.equal(r.problem?.line, 13); // the first checkpoint: after genesis, start and 10 intents
      const sinkLines = await lines(f.cpSink);
      const rec = parseRecord(sinkLines[0]!);
      const { hash: _h, seq, prev, time, instance, ...event } = rec;
      const sig = Buffer.from(rec.kind === 'checkpoint' ? rec.sig! : '', 'base64');
      sig[5]! ^= 1;
      const resealed = sealRecord({ ...event, sig: sig.toString('base64') } as Parameters<typeof sealRecord>[0], { seq, prev, time, instance });
      sinkLines[0] = serializeRecord(resealed);
      await writeLines(f.cpSink, sinkLines);
      const s = await verifyAuditTrail(f.active, { publicKey: keys.publicKey, checkpointSink: f.cpSink });
      assert.equal(s.problem?.kind, 'bad_signature');
      assert.equal(s.problem?.file, f.cpSink);
      assert.equal(s.problem?.line, 1);
    } finally {
      await f.cleanup();
    }
  });

  test('runs chain through genesis records; deleting a whole run in the middle is caught', async () => {
    const t = await tempDir();
    try {
      const cfg = fileConfig(t.dir);
      const counts: number[] = [];
      for (let run = 0; run < 3; run++) {
        const trail = await AuditTrail.open(cfg, { program: 'proxy' });
        await writeTrail(trail, 3);
        await trail.close();
        counts.push(6); // genesis, start, 3 intents, checkpoint
      }
      const active = join(t.dir, 'mamori.jsonl');
      const ok = await verifyAuditTrail(active);
      assert.equal(ok.ok, true, ok.problem?.message);
      assert.equal(ok.instances.length, 3);
      const ls = await lines(active);
      const genesis2 = parseRecord(ls[6]!);
      assert.equal(genesis2.kind, 'genesis');
      assert.deepEqual(genesis2.kind === 'genesis' && genesis2.previous, { instance: parseRecord(ls[5]!).instance, seq: 6, hash: parseRecord(ls[5]!).hash });
      ls.splice(6, 6);
      await writeLines(active, ls);
      const r = await verifyAuditTrail(active, { registry: false });
      assert.equal(r.problem?.kind, 'deleted');
      assert.equal(r.problem?.line, 7);
    } finally {
      await t.cleanup();
    }
  });

  test('property: any byte changed, any line dropped, duplicated or moved is reported', async () => {
    const f = await fixture();
    try {
      const original = await readFile(f.active);
      const ls = await lines(f.active);
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            fc.record({ op: fc.constant('byte' as const), at: fc.nat(original.length - 1), to: fc.integer({ min: 0, max: 255 }) }),
            fc.record({ op: fc.constant('drop' as const), at: fc.nat(ls.length - 1) }),
            fc.record({ op: fc.constant('dup' as const), at: fc.nat(ls.length - 1), to: fc.nat(ls.length) }),
            fc.record({ op: fc.constant('move' as const), at: fc.nat(ls.length - 1), to: fc.nat(ls.length - 1) }),
          ),
          async (t) => {
            let changed: Buffer;
            if (t.op === 'byte') {
              if (original[t.at] === t.to) return;
              changed = Buffer.from(original);
              changed[t.at] = t.to;
            } else {
              const x = [...ls];
              if (t.op === 'drop') x.splice(t.at, 1);
              if (t.op === 'dup') x.splice(t.to, 0, ls[t.at]!);
              if (t.op === 'move') {
                if (t.at === t.to) return;
                const [line] = x.splice(t.at, 1);
                x.splice(t.to, 0, line!);
              }
              changed = Buffer.from(x.map((l) => l + '\n').join(''));
            }
            await writeFile(f.active, changed);
            const r = await verifyAuditTrail(f.active, { publicKey: keys.publicKey, checkpointSink: f.cpSink });
            assert.equal(r.ok, false, `undetected: ${JSON.stringify(t)}`);
          },
        ),
        { numRuns: 150 },
      );
      await writeFile(f.active, original);
      assert.equal((await verifyAuditTrail(f.active, { publicKey: keys.publicKey, checkpointSink: f.cpSink })).ok, true);
    } finally {
      await f.cleanup();
    }
  });
});
