// Keystore integrity with the file store and a local root: tampered, planted, swapped or rolled-back
// entries are refused with a message naming the entry; root key file permissions; context checks.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, readFileSync, writeFileSync, unlinkSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { Keyring } from '../../keyring/keyring.js';
import { KeystoreIntegrityError, type KeystoreDoc } from '../../keyring/keystore.js';
import { LocalRootProvider } from '../../keyring/providers/index.js';
import { tmpLocal } from './helpers.js';

function readDoc(path: string): KeystoreDoc {
  return JSON.parse(readFileSync(path, 'utf8')) as KeystoreDoc;
}
function writeDoc(path: string, doc: KeystoreDoc): void {
  writeFileSync(path, JSON.stringify(doc, null, 2));
}

async function setup(): Promise<{ t: ReturnType<typeof tmpLocal>; path: string; cell: Buffer }> {
  const t = tmpLocal();
  const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
  await kr.ensureDomain('public.people.mynumber', 'deterministic');
  await kr.ensureDomain('public.people.name', 'randomized');
  const cell = await kr.encrypt('public.people.name', Buffer.from('山田太郎'));
  await kr.close();
  return { t, path: (t.cfg.store as { path: string }).path, cell };
}

describe('keystore integrity (file store)', () => {
  test('an untouched keystore opens and decrypts', async () => {
    const { t, cell } = await setup();
    try {
      const kr = await Keyring.open(t.cfg, { databaseIdentity: 'prod' });
      assert.equal((await kr.decrypt(cell))!.toString(), '山田太郎');
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('a modified entry is refused, naming the entry', async () => {
    const { t, path } = await setup();
    try {
      const doc = readDoc(path);
      doc.versions['2:1']!.encryptions = 0; // e.g. hide the encryption count
      writeDoc(path, doc);
      await assert.rejects(Keyring.open(t.cfg), (err: Error) => {
        assert.ok(err instanceof KeystoreIntegrityError);
        assert.match(err.message, /entry 2:1 \(public\.people\.name version 1\): MAC mismatch/);
        return true;
      });
    } finally {
      t.cleanup();
    }
  });

  test('a planted entry (copied MAC) and a deleted entry are refused by the header MAC', async () => {
    const { t, path } = await setup();
    try {
      const orig = readDoc(path);
      const planted = structuredClone(orig);
      delete planted.versions['1:1'];
      writeDoc(path, planted);
      await assert.rejects(Keyring.open(t.cfg), /header MAC mismatch|current version 1 has no entry/);
      const extra = structuredClone(orig);
      extra.versions['2:2'] = { ...extra.versions['2:1']!, version: 2 };
      writeDoc(path, extra);
      await assert.rejects(Keyring.open(t.cfg), /entry 2:2 .*MAC mismatch/);
    } finally {
      t.cleanup();
    }
  });

  test('swapping two domains’ wrapped keys (or whole entries) is refused', async () => {
    const { t, path } = await setup();
    try {
      const orig = readDoc(path);
      const swapped = structuredClone(orig);
      const a = swapped.versions['1:1']!;
      const b = swapped.versions['2:1']!;
      [a.wrapped, b.wrapped] = [b.wrapped, a.wrapped];
      writeDoc(path, swapped);
      await assert.rejects(Keyring.open(t.cfg), /entry 1:1 .*MAC mismatch/);
      const moved = structuredClone(orig);
      [moved.versions['1:1'], moved.versions['2:1']] = [moved.versions['2:1']!, moved.versions['1:1']!];
      writeDoc(path, moved);
      await assert.rejects(Keyring.open(t.cfg), /stored under the wrong key \(entries were swapped\)/);
      const renamed = structuredClone(orig);
      renamed.header.domains[0]!.name = 'public.people.name';
      renamed.header.domains[1]!.name = 'public.people.mynumber';
      writeDoc(path, renamed);
      await assert.rejects(Keyring.open(t.cfg), /header MAC mismatch/);
    } finally {
      t.cleanup();
    }
  });

  test('restoring an older copy of the keystore (rollback) is refused by the generation pin', async () => {
    const { t, path } = await setup();
    try {
      const backup = `${path}.bak`;
      copyFileSync(path, backup);
      const kr = await Keyring.open(t.cfg);
      await kr.rotate('public.people.name');
      await kr.close();
      copyFileSync(backup, path);
      await assert.rejects(Keyring.open(t.cfg), (err: Error) => {
        assert.ok(err instanceof KeystoreIntegrityError);
        assert.match(err.message, /generation \d+ is older than generation \d+ already seen here .*rollback/);
        return true;
      });
      // Forging a higher generation breaks the header MAC instead.
      const doc = readDoc(path);
      doc.header.generation += 100;
      writeDoc(path, doc);
      await assert.rejects(Keyring.open(t.cfg), /header MAC mismatch/);
    } finally {
      t.cleanup();
    }
  });

  test('a keystore opened for another database identity is refused', async () => {
    const { t } = await setup();
    try {
      await assert.rejects(Keyring.open(t.cfg, { databaseIdentity: 'staging' }), /belongs to database prod, not staging/);
    } finally {
      t.cleanup();
    }
  });

  test('a different root cannot open the keystore', async () => {
    const { t } = await setup();
    try {
      chmodSync(t.cfg.keyFile!, 0o600);
      writeFileSync(t.cfg.keyFile!, randomBytes(32), { mode: 0o600 });
      await assert.rejects(Keyring.open(t.cfg), /wrapped under root local:[0-9a-f]+, but the configured root is local:/);
    } finally {
      t.cleanup();
    }
  });

  test('errors never contain key bytes', async () => {
    const { t, path } = await setup();
    try {
      const key = readFileSync(t.cfg.keyFile!);
      const doc = readDoc(path);
      doc.versions['1:1']!.status = 'retired';
      writeDoc(path, doc);
      const err = await Keyring.open(t.cfg).then(
        () => null,
        (e: Error) => e,
      );
      assert.ok(err);
      const text = `${err.message} ${String(err.stack)}`;
      assert.ok(!text.includes(key.toString('hex')) && !text.includes(key.toString('base64')));
    } finally {
      t.cleanup();
    }
  });
});

describe('local root key file', () => {
  test('is created with mode 0600 and a group/world-readable file is refused', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.close();
      const { statSync } = await import('node:fs');
      assert.equal(statSync(t.cfg.keyFile!).mode & 0o777, 0o600);
      chmodSync(t.cfg.keyFile!, 0o644);
      assert.throws(() => LocalRootProvider.open(t.cfg.keyFile!), /accessible by group or others \(mode 644\); run chmod 600/);
      await assert.rejects(Keyring.open(t.cfg), /mode 644/);
      chmodSync(t.cfg.keyFile!, 0o640);
      await assert.rejects(Keyring.open(t.cfg), /mode 640/);
      chmodSync(t.cfg.keyFile!, 0o600);
      const ok = await Keyring.open(t.cfg);
      await ok.close();
    } finally {
      t.cleanup();
    }
  });

  test('a missing key file is refused with a clear message', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.close();
      unlinkSync(t.cfg.keyFile!);
      await assert.rejects(Keyring.open(t.cfg), /root key file .*root\.key not found \(create one with `mamori keys init`\)/);
    } finally {
      t.cleanup();
    }
  });

  test('init refuses to replace an existing keystore', async () => {
    const t = tmpLocal();
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.close();
      await assert.rejects(Keyring.init(t.cfg, { databaseIdentity: 'prod' }), /already holds a keystore/);
    } finally {
      t.cleanup();
    }
  });
});

describe('encryption context on unwrap', () => {
  test('a wrapped key only unwraps with the exact context it was wrapped with', async () => {
    const t = tmpLocal();
    try {
      const { createLocalRootKey } = await import('../../keyring/providers/index.js');
      createLocalRootKey(t.cfg.keyFile!);
      const p = LocalRootProvider.open(t.cfg.keyFile!);
      const ctx = { purpose: 'data' as const, domainId: 7, version: 3, keystoreId: 'ks', databaseIdentity: 'prod' };
      const dk = randomBytes(32);
      const blob = await p.wrap(dk, ctx);
      assert.deepEqual(await p.unwrap(blob, ctx), dk);
      for (const bad of [
        { ...ctx, domainId: 8 },
        { ...ctx, version: 4 },
        { ...ctx, purpose: 'subject' as const },
        { ...ctx, keystoreId: 'other' },
        { ...ctx, databaseIdentity: 'staging' },
      ]) {
        await assert.rejects(p.unwrap(blob, bad), /encryption context does not match/);
      }
      const flipped = Buffer.from(blob);
      flipped[flipped.length - 5]! ^= 1;
      await assert.rejects(p.unwrap(flipped, ctx), /cannot unwrap data key domain 7 version 3/);
    } finally {
      t.cleanup();
    }
  });
});
