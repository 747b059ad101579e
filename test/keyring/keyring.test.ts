// The Keyring with a local root and the file store: caching (one unwrap for concurrent first use, TTL),
// encryption counting and automatic rotation, shredding, root rewrap, purge hooks, escrow and the restore drill.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Keyring, KeyringError, type KeyEvent, type PurgeNotice } from '../../keyring/keyring.js';
import { parseCellHeader } from '../../keyring/cells/index.js';
import { tmpLocal, rsaPair } from './helpers.js';

function collect(kr: Keyring, type: string): KeyEvent[] {
  const out: KeyEvent[] = [];
  kr.events.on(type, (e: KeyEvent) => out.push(e));
  return out;
}

describe('keyring: cells and caching', () => {
  test('concurrent first use of a key unwraps it once', async () => {
    const t = tmpLocal();
    try {
      const a = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await a.ensureDomain('public.t.c', 'randomized');
      const cells = await Promise.all(Array.from({ length: 20 }, (_, i) => a.encrypt('public.t.c', Buffer.from(`v${i}`))));
      await a.close();
      const kr = await Keyring.open(t.cfg);
      const unwraps = collect(kr, 'unwrap');
      const plain = await Promise.all(cells.map((c) => kr.decrypt(c)));
      assert.deepEqual(plain.map((p) => p!.toString()), cells.map((_, i) => `v${i}`));
      assert.equal(unwraps.length, 1);
      assert.equal(unwraps[0]!.domain, 'public.t.c');
      assert.equal(unwraps[0]!.version, 1);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('cached keys expire after the TTL and are unwrapped again', async () => {
    const t = tmpLocal({ cacheTtlSeconds: 1 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('d', 'deterministic');
      const unwraps = collect(kr, 'unwrap');
      const c = await kr.encrypt('d', Buffer.from('123456789018'));
      await kr.decrypt(c);
      assert.equal(unwraps.length, 1);
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal((await kr.decrypt(c))!.toString(), '123456789018');
      assert.equal(unwraps.length, 2);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('deterministic cells are equal for equal plaintexts; cells from another domain are refused', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('a.b.c', 'deterministic');
      await kr.ensureDomain('a.b.d', 'deterministic');
      const x1 = await kr.encrypt('a.b.c', Buffer.from('x'));
      const x2 = await kr.encrypt('a.b.c', Buffer.from('x'));
      assert.deepEqual(x1, x2);
      assert.notDeepEqual(x1, await kr.encrypt('a.b.d', Buffer.from('x')));
      assert.equal((await kr.decrypt(x1, 'a.b.c'))!.toString(), 'x');
      await assert.rejects(kr.decrypt(x1, 'a.b.d'), /cell cannot be decrypted/);
      await assert.rejects(kr.ensureDomain('a.b.c', 'randomized'), /exists as deterministic\/data/);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('encryption reservations come in blocks of threshold/100', async () => {
    const t = tmpLocal({ rotateAfterEncryptions: 1000 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('r', 'randomized');
      for (let i = 0; i < 25; i++) await kr.encrypt('r', Buffer.from('x'));
      // 25 encryptions took three blocks of 10: the keystore never under-counts.
      assert.equal(kr.domain('r').versions[0]!.encryptions, 30);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('encryptions are counted and a randomized domain rotates at the threshold', async () => {
    const t = tmpLocal({ rotateAfterEncryptions: 20 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('r', 'randomized');
      const rotations = collect(kr, 'rotate');
      const cells: Buffer[] = [];
      for (let i = 0; i < 45; i++) cells.push(await kr.encrypt('r', Buffer.from(String(i))));
      const versions = cells.map((c) => parseCellHeader(c)!.version);
      assert.equal(versions.filter((v) => v === 1).length, 20);
      assert.equal(versions.filter((v) => v === 2).length, 20);
      assert.equal(versions.filter((v) => v === 3).length, 5);
      assert.equal(rotations.length, 2);
      const info = kr.domain('r');
      assert.equal(info.current, 3);
      assert.deepEqual(info.versions.map((v) => v.encryptions), [20, 20, 5]);
      for (let i = 0; i < cells.length; i += 7) assert.equal((await kr.decrypt(cells[i]!))!.toString(), String(i));
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('encryptNow: null until a block is reserved and the key unwrapped; then counted like encrypt(), never past a rotation; refused while frozen', async () => {
    // Blocks of 4 (threshold/100): three of every four encryptions are taken from a reserved block.
    const t = tmpLocal({ rotateAfterEncryptions: 400 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('r', 'randomized');
      assert.equal(kr.encryptNow('r', Buffer.from('x')), null, 'nothing reserved or unwrapped yet');
      const cells: Buffer[] = [];
      let now = 0;
      for (let i = 0; i < 900; i++) {
        const p = Buffer.from(String(i));
        const cell = kr.encryptNow('r', p);
        if (cell) now++;
        cells.push(cell ?? await kr.encrypt('r', p));
      }
      assert.equal(now, 900 - 900 / 4, 'three of four encryptions need no wait');
      // The same versions and counts as with encrypt() alone: 400 per version, rotation at the threshold.
      const versions = cells.map((c) => parseCellHeader(c)!.version);
      assert.deepEqual([1, 2, 3].map((v) => versions.filter((x) => x === v).length), [400, 400, 100]);
      assert.deepEqual(kr.domain('r').versions.map((v) => v.encryptions), [400, 400, 100]);
      for (let i = 0; i < cells.length; i += 37) assert.equal((await kr.decrypt(cells[i]!))!.toString(), String(i));

      await kr.ensureDomain('d', 'deterministic');
      const a = await kr.encrypt('d', Buffer.from('123456789018'));
      assert.deepEqual(kr.encryptNow('d', Buffer.from('123456789018')), a);
      await kr.rotate('d');
      assert.throws(() => kr.encryptNow('d', Buffer.from('123456789018')), (e: Error) => e instanceof KeyringError && e.code === 'frozen');
      await kr.finishRotation('d');
      assert.equal(kr.encryptNow('d', Buffer.from('123456789018')), null, 'the new version is not reserved or unwrapped yet');
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('encryptManyNow: all or none within the reserved block (prefix: what is reserved), counted like encrypt(), never past a rotation; refused while frozen', async () => {
    // Blocks of 4 (threshold/100).
    const t = tmpLocal({ rotateAfterEncryptions: 400 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('r', 'randomized');
      const p = (n: number, from = 0): Buffer[] => Array.from({ length: n }, (_, i) => Buffer.from(String(from + i)));
      assert.equal(kr.encryptManyNow('r', p(1)), null, 'nothing reserved or unwrapped yet');
      const first = await kr.encrypt('r', Buffer.from('a')); // reserves a block of 4, one used
      assert.equal(kr.encryptManyNow('r', p(4)), null, 'three are reserved: four is none');
      assert.equal(kr.encryptManyNow('r', p(2))!.length, 2);
      const rest = kr.encryptManyNow('r', p(3, 10), true)!;
      assert.equal(rest.length, 1, 'with prefix: the one left');
      assert.deepEqual(kr.encryptManyNow('r', p(2), true), [], 'none left');
      assert.deepEqual(kr.domain('r').versions.map((v) => v.encryptions), [4]);
      assert.equal((await kr.decrypt(rest[0]!))!.toString(), '10');
      assert.equal(parseCellHeader(first)!.version, 1);
      // Up to the rotation threshold and past it: versions and counts as with encrypt() alone.
      const cells: Buffer[] = [];
      while (cells.length < 500) {
        const batch = p(3, cells.length);
        const now = kr.encryptManyNow('r', batch, true) ?? [];
        cells.push(...now);
        if (now.length < batch.length) cells.push(await kr.encrypt('r', batch[now.length]!));
      }
      const versions = cells.map((c) => parseCellHeader(c)!.version);
      assert.deepEqual([1, 2].map((v) => versions.filter((x) => x === v).length), [396, 104]);
      for (let i = 0; i < cells.length; i += 37) assert.equal((await kr.decrypt(cells[i]!))!.toString(), String(i));

      await kr.ensureDomain('d', 'deterministic');
      const a = await kr.encrypt('d', Buffer.from('123456789018'));
      assert.deepEqual(kr.encryptManyNow('d', [Buffer.from('123456789018')]), [a]);
      await kr.rotate('d');
      assert.throws(() => kr.encryptManyNow('d', [Buffer.from('123456789018')]), (e: Error) => e instanceof KeyringError && e.code === 'frozen');
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('encryptNow waits again once the cached key expires', async () => {
    const t = tmpLocal({ cacheTtlSeconds: 1 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('d', 'deterministic');
      await kr.encrypt('d', Buffer.from('1'));
      assert.ok(kr.encryptNow('d', Buffer.from('2')));
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal(kr.encryptNow('d', Buffer.from('3')), null);
      await kr.encrypt('d', Buffer.from('4'));
      assert.ok(kr.encryptNow('d', Buffer.from('5')));
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('an unknown version is an error; a retired one refuses; the current version cannot be retired', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('r', 'randomized');
      const c1 = await kr.encrypt('r', Buffer.from('one'));
      const forged = Buffer.from(c1);
      forged.writeUInt32BE(9, 8);
      await assert.rejects(kr.decrypt(forged), (e: Error) => e instanceof KeyringError && e.code === 'unknown-version');
      await assert.rejects(kr.retire('r', 1), /current version of r; rotate first/);
      await kr.rotate('r');
      const purges: PurgeNotice[] = [];
      kr.onPurge((n) => purges.push(n));
      await kr.retire('r', 1);
      assert.ok(purges.some((p) => p.domain === 'r' && p.version === 1 && !p.remote));
      await assert.rejects(kr.decrypt(c1), /version 1 is retired/);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });
});

describe('keyring: shredding and root rotation', () => {
  test('shred: cells of the version read as NULL, others survive, the old root is destroyed', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('cohort', 'randomized', 'subject');
      await kr.ensureDomain('other', 'deterministic');
      const old = await kr.encrypt('cohort', Buffer.from('2019 record'));
      const keep = await kr.encrypt('other', Buffer.from('kept'));
      await assert.rejects(kr.shred('cohort', 1), /current version of cohort; rotate first/);
      await kr.rotate('cohort');
      const fresh = await kr.encrypt('cohort', Buffer.from('2020 record'));
      const oldRootBytes = readFileSync(t.cfg.keyFile!);
      const oldRoot = kr.rootIdentity;
      const shreds = collect(kr, 'shred');
      const detail = await kr.shred('cohort', 1);
      assert.match(detail, /2 keys rewrapped under local:[0-9a-f]+; overwrote and removed/);
      assert.equal(shreds.length, 1);
      assert.notEqual(kr.rootIdentity, oldRoot);
      assert.notDeepEqual(readFileSync(t.cfg.keyFile!), oldRootBytes);
      assert.equal(existsSync(`${t.cfg.keyFile}.next`), false);
      assert.equal(await kr.decrypt(old), null);
      assert.equal((await kr.decrypt(fresh))!.toString(), '2020 record');
      assert.equal((await kr.decrypt(keep))!.toString(), 'kept');
      await kr.close();
      // After reopening (new root file) the tombstone still holds.
      const again = await Keyring.open(t.cfg);
      assert.equal(await again.decrypt(old), null);
      assert.equal((await again.decrypt(keep))!.toString(), 'kept');
      assert.equal(again.domain('cohort').versions[0]!.status, 'shredded');
      await assert.rejects(again.shred('cohort', 1), /already shredded/);
      await again.close();
      // The old root can no longer open anything: restoring it is refused.
      writeFileSync(t.cfg.keyFile!, oldRootBytes, { mode: 0o600 });
      await assert.rejects(Keyring.open(t.cfg), /wrapped under root/);
    } finally {
      t.cleanup();
    }
  });

  test('rewrap moves every key under a new root without touching cells', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('a', 'randomized');
      await kr.ensureDomain('b', 'deterministic');
      const ca = await kr.encrypt('a', Buffer.from('A'));
      const cb = await kr.encrypt('b', Buffer.from('B'));
      const before = kr.rootIdentity;
      assert.match(await kr.rewrap(), /2 keys rewrapped/);
      assert.notEqual(kr.rootIdentity, before);
      await kr.close();
      const again = await Keyring.open(t.cfg);
      assert.equal((await again.decrypt(ca))!.toString(), 'A');
      assert.equal((await again.decrypt(cb))!.toString(), 'B');
      await again.close();
    } finally {
      t.cleanup();
    }
  });

  test('a root swap interrupted after the keystore was saved is completed on open', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('a', 'randomized');
      const ca = await kr.encrypt('a', Buffer.from('A'));
      const oldRoot = readFileSync(t.cfg.keyFile!);
      await kr.rewrap();
      await kr.close();
      // Simulate the crash window: the new key still at .next, the old one still in place.
      renameSync(t.cfg.keyFile!, `${t.cfg.keyFile}.next`);
      writeFileSync(t.cfg.keyFile!, oldRoot, { mode: 0o600 });
      const again = await Keyring.open(t.cfg);
      assert.equal((await again.decrypt(ca))!.toString(), 'A');
      assert.equal(existsSync(`${t.cfg.keyFile}.next`), false);
      await again.close();
    } finally {
      t.cleanup();
    }
  });
});

describe('keyring: escrow', () => {
  test('restore drill: lose the root, recover with the escrow private key, read old cells', async () => {
    const t = tmpLocal();
    const { publicKey, privateKey } = rsaPair();
    try {
      writeFileSync(join(t.dir, 'escrow.pub'), publicKey);
      t.cfg.escrow = { publicKeyFile: join(t.dir, 'escrow.pub'), exportDir: join(t.dir, 'escrow-out') };
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('public.people.mynumber', 'deterministic');
      await kr.ensureDomain('subject:2025', 'randomized', 'subject');
      const cell = await kr.encrypt('public.people.mynumber', Buffer.from('123456789018'));
      const subj = await kr.encrypt('subject:2025', Buffer.from('trail'));
      assert.deepEqual(await kr.escrowVerify(privateKey), { recoverable: 2, missing: [] });
      const files = kr.escrowExport();
      assert.equal(files.length, 2);
      await kr.close();

      // Disaster: the root key file is gone.
      renameSync(t.cfg.keyFile!, join(t.dir, 'lost.key'));
      await assert.rejects(Keyring.open(t.cfg), /not found/);
      const wrong = rsaPair();
      await assert.rejects(Keyring.recoverWithEscrow(t.cfg, wrong.privateKey), /integrity key cannot be unwrapped/);
      const rec = await Keyring.recoverWithEscrow(t.cfg, privateKey);
      assert.equal((await rec.decrypt(cell))!.toString(), '123456789018');
      await rec.close();

      const kr2 = await Keyring.open(t.cfg);
      assert.equal((await kr2.decrypt(cell))!.toString(), '123456789018');
      assert.equal((await kr2.decrypt(subj))!.toString(), 'trail');
      // Escrow copies were rewritten with the new root: still recoverable.
      assert.equal((await kr2.escrowVerify(privateKey)).recoverable, 2);
      await kr2.close();
    } finally {
      t.cleanup();
    }
  });

  test('shredding a cohort removes its escrow copies (keystore entry and exported file)', async () => {
    const t = tmpLocal();
    const { publicKey, privateKey } = rsaPair();
    try {
      writeFileSync(join(t.dir, 'escrow.pub'), publicKey);
      t.cfg.escrow = { publicKeyFile: join(t.dir, 'escrow.pub'), exportDir: join(t.dir, 'escrow-out') };
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('subject', 'randomized', 'subject');
      const y1 = await kr.encrypt('subject', Buffer.from('year 1'));
      await kr.rotate('subject');
      kr.escrowExport();
      const dir = join(t.dir, 'escrow-out', kr.keystoreId);
      assert.deepEqual(readdirSync(dir).sort(), ['domain-1-v1.escrow.json', 'domain-1-v2.escrow.json']);
      await kr.shred('subject', 1);
      assert.deepEqual(readdirSync(dir), ['domain-1-v2.escrow.json']);
      assert.equal(kr.domain('subject').versions[0]!.escrowed, false);
      assert.deepEqual(await kr.escrowVerify(privateKey), { recoverable: 1, missing: [] });
      assert.equal(await kr.decrypt(y1), null);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('keys made before escrow was configured are reported, then backfilled', async () => {
    const t = tmpLocal();
    const { publicKey, privateKey } = rsaPair();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('a', 'randomized');
      assert.deepEqual((await kr.escrowVerify(privateKey)).missing, ['a v1']);
      await kr.close();
      writeFileSync(join(t.dir, 'escrow.pub'), publicKey);
      t.cfg.escrow = { publicKeyFile: join(t.dir, 'escrow.pub') };
      const kr2 = await Keyring.open(t.cfg);
      assert.equal(await kr2.escrowBackfill(), 1);
      assert.deepEqual(await kr2.escrowVerify(privateKey), { recoverable: 1, missing: [] });
      await kr2.close();
    } finally {
      t.cleanup();
    }
  });
});

describe('keyring: reload and watch (file store)', () => {
  test('a second instance sees rotations after reload and through the file watch', async () => {
    const t = tmpLocal();
    try {
      const a = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await a.ensureDomain('d', 'deterministic');
      const b = await Keyring.open(t.cfg);
      await a.rotate('d');
      assert.equal(a.isWriteFrozen('d'), true);
      assert.equal(b.isWriteFrozen('d'), false);
      await b.reload();
      assert.equal(b.isWriteFrozen('d'), true);
      await assert.rejects(b.encrypt('d', Buffer.from('x')), (e: Error) => e instanceof KeyringError && e.code === 'frozen');
      await b.watch(20);
      await a.finishRotation('d');
      for (let i = 0; i < 100 && b.isWriteFrozen('d'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(b.isWriteFrozen('d'), false);
      assert.equal(parseCellHeader(await b.encrypt('d', Buffer.from('x')))!.version, 2);
      await a.close();
      await b.close();
    } finally {
      t.cleanup();
    }
  });
});
