// The aws-kms root provider. AWS KMS is not reachable from this machine, so these tests inject a fake KMS
// client at the Encryption SDK's client interface (`clientProvider` → an object with generateDataKey /
// encrypt / decrypt, plus scheduleKeyDeletion), implemented locally with AES-256-GCM and binding the
// encryption context as AAD like KMS does. Everything above the client — the SDK's KMS keyrings, the
// committing suite, the context checks, the keystore — is the production code path unchanged.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Keyring, KeyringError } from '../../keyring/keyring.js';
import { canonicalJson } from '../../keyring/keystore.js';
import type { KmsClientLike } from '../../keyring/providers/index.js';
import type { KeyringConfig } from '../../keyring/config-types.js';
import { tmpLocal } from './helpers.js';

type Ctx = Record<string, string> | undefined;

/** Key ids are the part after `key/`, so replicas of a multi-region key (same id, other region) share a key. */
const keyIdOf = (arn: string): string => arn.slice(arn.indexOf(':key/') + 5);

class FakeKms implements KmsClientLike {
  readonly masters = new Map<string, Buffer>();
  readonly calls: { op: string; keyId: string; ctx: Ctx }[] = [];
  readonly deletions: { KeyId: string; PendingWindowInDays?: number }[] = [];
  down = false;

  constructor(arns: string[]) {
    for (const a of arns) this.masters.set(keyIdOf(a), randomBytes(32));
  }

  private seal(arn: string, plain: Uint8Array, ctx: Ctx): Buffer {
    const key = this.masters.get(keyIdOf(arn));
    if (!key) throw new Error('NotFoundException');
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', key, iv);
    c.setAAD(Buffer.from(canonicalJson(ctx ?? {})));
    const body = Buffer.concat([c.update(plain), c.final()]);
    const id = Buffer.from(keyIdOf(arn));
    return Buffer.concat([Buffer.from([id.length]), id, iv, c.getAuthTag(), body]);
  }

  private check(op: string, keyId: string, ctx: Ctx): void {
    this.calls.push({ op, keyId, ctx });
    if (this.down) throw new Error('KMS unavailable (simulated)');
  }

  async generateDataKey(a: { KeyId: string; EncryptionContext?: Record<string, string>; NumberOfBytes?: number }) {
    this.check('GenerateDataKey', a.KeyId, a.EncryptionContext);
    const plain = randomBytes(a.NumberOfBytes ?? 32);
    return { Plaintext: plain, CiphertextBlob: this.seal(a.KeyId, plain, a.EncryptionContext), KeyId: a.KeyId };
  }

  async encrypt(a: { KeyId: string; Plaintext: Uint8Array; EncryptionContext?: Record<string, string> }) {
    this.check('Encrypt', a.KeyId, a.EncryptionContext);
    return { CiphertextBlob: this.seal(a.KeyId, a.Plaintext, a.EncryptionContext), KeyId: a.KeyId };
  }

  async decrypt(a: { KeyId?: string; CiphertextBlob: Uint8Array; EncryptionContext?: Record<string, string> }) {
    this.check('Decrypt', a.KeyId ?? '', a.EncryptionContext);
    const blob = Buffer.from(a.CiphertextBlob);
    const id = blob.subarray(1, 1 + blob[0]!).toString();
    if (a.KeyId && keyIdOf(a.KeyId) !== id) throw new Error('IncorrectKeyException');
    const key = this.masters.get(id);
    if (!key) throw new Error('KMSInvalidStateException: key pending deletion or absent');
    const off = 1 + blob[0]!;
    const d = createDecipheriv('aes-256-gcm', key, blob.subarray(off, off + 12));
    d.setAuthTag(blob.subarray(off + 12, off + 28));
    d.setAAD(Buffer.from(canonicalJson(a.EncryptionContext ?? {})));
    const plain = Buffer.concat([d.update(blob.subarray(off + 28)), d.final()]);
    return { Plaintext: plain, KeyId: a.KeyId ?? `arn:aws:kms:ap-northeast-1:111122223333:key/${id}` };
  }

  async scheduleKeyDeletion(a: { KeyId: string; PendingWindowInDays?: number }) {
    this.deletions.push(a);
    this.masters.delete(keyIdOf(a.KeyId));
    return { KeyState: 'PendingDeletion', DeletionDate: new Date(Date.now() + (a.PendingWindowInDays ?? 30) * 86_400_000) };
  }
}

const ARN1 = 'arn:aws:kms:ap-northeast-1:111122223333:key/1111aaaa-2222-bbbb-3333-cccc44445555';
const ARN2 = 'arn:aws:kms:ap-northeast-1:111122223333:key/9999aaaa-2222-bbbb-3333-cccc44445555';
const MRK_PRIMARY = 'arn:aws:kms:ap-northeast-1:111122223333:key/mrk-0123456789abcdef0123456789abcdef';
const MRK_REPLICA = 'arn:aws:kms:ap-northeast-3:111122223333:key/mrk-0123456789abcdef0123456789abcdef';

function kmsCfg(dir: string, keyArn: string, extra: Partial<KeyringConfig['kms']> = {}): KeyringConfig {
  return {
    provider: 'aws-kms',
    kms: { keyArn, region: keyArn.split(':')[3]!, ...extra },
    store: { type: 'file', path: `${dir}/keystore.json` },
    stateFile: `${dir}/keyring.state`,
  };
}

describe('aws-kms root (injected KMS client)', () => {
  test('wraps through KMS with the encryption context, decrypts, and fails closed when KMS is down', async () => {
    const t = tmpLocal();
    const kms = new FakeKms([ARN1]);
    try {
      const cfg = kmsCfg(t.dir, ARN1);
      const kr = await Keyring.init(cfg, { databaseIdentity: 'prod', kms: { clientProvider: () => kms } });
      await kr.ensureDomain('public.people.mynumber', 'deterministic');
      const cell = await kr.encrypt('public.people.mynumber', Buffer.from('123456789018'));
      const gen = kms.calls.find((c) => c.op === 'GenerateDataKey' && c.ctx?.['mamori:purpose'] === 'data')!;
      assert.equal(gen.keyId, ARN1);
      assert.deepEqual(
        Object.fromEntries(Object.entries(gen.ctx!).filter(([k]) => k.startsWith('mamori:'))),
        { 'mamori:purpose': 'data', 'mamori:domain': '1', 'mamori:version': '1', 'mamori:keystore': kr.keystoreId, 'mamori:database': 'prod' },
      );
      assert.ok(kms.calls.some((c) => c.ctx?.['mamori:purpose'] === 'integrity'));
      await kr.close();

      const again = await Keyring.open(cfg, { kms: { clientProvider: () => kms } });
      assert.equal((await again.decrypt(cell))!.toString(), '123456789018');
      assert.ok(kms.calls.some((c) => c.op === 'Decrypt' && c.ctx?.['mamori:domain'] === '1'));
      await again.close();

      kms.down = true;
      await assert.rejects(Keyring.open(cfg, { kms: { clientProvider: () => kms } }), /integrity key cannot be unwrapped.*KMS unavailable/);
      kms.down = false;
      const k3 = await Keyring.open(cfg, { kms: { clientProvider: () => kms } });
      kms.down = true;
      await assert.rejects(k3.decrypt(cell), (e: Error) => e instanceof KeyringError && e.code === 'unwrap' && /refusing reads and writes/.test(e.message));
      await assert.rejects(k3.encrypt('public.people.mynumber', Buffer.from('123456789018')), /KMS unavailable|cannot be unwrapped/);
      kms.down = false;
      await k3.close();
    } finally {
      t.cleanup();
    }
  });

  test('a multi-region key: what the primary wrapped, a replica in another region unwraps', async () => {
    const t = tmpLocal();
    const kms = new FakeKms([MRK_PRIMARY]);
    try {
      const kr = await Keyring.init(kmsCfg(t.dir, MRK_PRIMARY, { multiRegion: true }), { databaseIdentity: 'prod', kms: { clientProvider: () => kms } });
      await kr.ensureDomain('d', 'randomized');
      const cell = await kr.encrypt('d', Buffer.from('replicated'));
      await kr.close();
      const replica = await Keyring.open(kmsCfg(t.dir, MRK_REPLICA, { multiRegion: true }), { kms: { clientProvider: () => kms } });
      assert.equal((await replica.decrypt(cell))!.toString(), 'replicated');
      assert.ok(kms.calls.some((c) => c.op === 'Decrypt' && c.keyId === MRK_REPLICA));
      await replica.close();
    } finally {
      t.cleanup();
    }
  });

  test('shred rewraps survivors under the new KMS key and schedules deletion of the old one', async () => {
    const t = tmpLocal();
    const kms = new FakeKms([ARN1, ARN2]);
    try {
      const inject = { clientProvider: () => kms, pendingWindowInDays: 7 };
      const kr = await Keyring.init(kmsCfg(t.dir, ARN1), { databaseIdentity: 'prod', kms: inject });
      await kr.ensureDomain('cohort', 'randomized', 'subject');
      const y1 = await kr.encrypt('cohort', Buffer.from('2019'));
      await kr.rotate('cohort');
      const y2 = await kr.encrypt('cohort', Buffer.from('2020'));
      await assert.rejects(kr.shred('cohort', 1), /needs a new KMS key \(--new-key-arn\)/);
      const detail = await kr.shred('cohort', 1, { keyArn: ARN2 });
      assert.match(detail, /scheduled deletion of .*1111aaaa.*replicas of a multi-region key/);
      assert.deepEqual(kms.deletions, [{ KeyId: ARN1, PendingWindowInDays: 7 }]);
      assert.equal(await kr.decrypt(y1), null);
      assert.equal((await kr.decrypt(y2))!.toString(), '2020');
      await kr.close();
      // The config now has to name the new key; the old one refuses.
      await assert.rejects(Keyring.open(kmsCfg(t.dir, ARN1), { kms: inject }), /wrapped under root aws-kms:.*9999aaaa/);
      const k2 = await Keyring.open(kmsCfg(t.dir, ARN2), { kms: inject });
      assert.equal((await k2.decrypt(y2))!.toString(), '2020');
      assert.equal(await k2.decrypt(y1), null);
      await k2.close();
    } finally {
      t.cleanup();
    }
  });

  test('a KMS key ARN is validated', async () => {
    const t = tmpLocal();
    try {
      await assert.rejects(Keyring.init(kmsCfg(t.dir, 'not-an-arn'), { databaseIdentity: 'x', kms: { clientProvider: () => new FakeKms([]) } }), /must be a KMS key ARN/);
    } finally {
      t.cleanup();
    }
  });
});
