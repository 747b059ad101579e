// EngineKeys' statement encryption (proxy/policy/keys.ts) against a real keyring with a file store: a batch of
// values is encrypted in order, across reservation blocks and key domains, each value counted once in the
// keystore; encryptAllNow answers without waiting only when the whole batch is reserved and counts nothing
// otherwise; both refuse while a domain's writes are frozen.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Keyring, KeyringError } from '../../../keyring/keyring.js';
import { parseCellHeader } from '../../../keyring/cells/index.js';
import { EngineKeys } from '../../../proxy/policy/keys.js';
import { tmpLocal } from '../../keyring/helpers.js';

const item = (domain: string, i: number): { domain: string; canonical: Buffer } => ({ domain, canonical: Buffer.from(`${domain}-${i}`) });

describe('EngineKeys batch encryption', () => {
  test('encryptAll: every value in order, across blocks and domains, counted once each', async () => {
    // Blocks of 4 encryptions (threshold / 100); deterministic domains do not rotate.
    const t = tmpLocal({ rotateAfterEncryptions: 400 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('a', 'deterministic');
      await kr.ensureDomain('b', 'deterministic');
      const keys = new EngineKeys(kr);
      const items = [
        ...Array.from({ length: 11 }, (_, i) => item('a', i)),
        ...Array.from({ length: 6 }, (_, i) => item('b', i)),
        ...Array.from({ length: 3 }, (_, i) => item('a', 100 + i)),
      ];
      const cells = await keys.encryptAll(items);
      assert.equal(cells.length, items.length);
      for (let i = 0; i < items.length; i++) {
        assert.equal(parseCellHeader(cells[i]!)!.domainId, kr.domainId(items[i]!.domain));
        assert.deepEqual(await kr.decrypt(cells[i]!), items[i]!.canonical);
      }
      // Counted once per value, rounded up to the blocks reserved (3 of a: 12 + 4; 2 of b: 8).
      assert.deepEqual(kr.domain('a').versions.map((v) => v.encryptions), [16]);
      assert.deepEqual(kr.domain('b').versions.map((v) => v.encryptions), [8]);
      // Deterministic: the same value gives the same cell on either path.
      const again = keys.encryptAllNow([item('a', 100)]) ?? await keys.encryptAll([item('a', 100)]);
      assert.deepEqual(again[0], cells[17]);
      await kr.close();
    } finally {
      t.cleanup();
    }
  });

  test('encryptAllNow: the whole batch at once when reserved, else null and nothing counted; frozen refused', async () => {
    const t = tmpLocal({ rotateAfterEncryptions: 400 });
    try {
      const kr = await Keyring.init(t.cfg, { databaseIdentity: 'prod' });
      await kr.ensureDomain('a', 'deterministic');
      const keys = new EngineKeys(kr);
      assert.equal(keys.encryptAllNow([item('a', 0)]), null, 'no key unwrapped, nothing reserved');
      await keys.encryptAll([item('a', 0)]); // reserves a block of 4, one used
      assert.equal(keys.encryptAllNow([0, 1, 2, 3].map((i) => item('a', i))), null, 'three reserved: four is too many');
      const three = keys.encryptAllNow([1, 2, 3].map((i) => item('a', i)));
      assert.equal(three?.length, 3);
      for (let i = 0; i < 3; i++) assert.deepEqual(await kr.decrypt(three![i]!), item('a', i + 1).canonical);
      assert.deepEqual(kr.domain('a').versions.map((v) => v.encryptions), [4], 'the refused batch counted nothing');
      await kr.rotate('a');
      assert.throws(() => keys.encryptAllNow([item('a', 9)]), (e: Error) => e instanceof KeyringError && e.code === 'frozen');
      await assert.rejects(keys.encryptAll([item('a', 9)]), (e: Error) => e instanceof KeyringError && e.code === 'frozen');
      await kr.close();
    } finally {
      t.cleanup();
    }
  });
});
