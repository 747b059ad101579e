// Subject keys from a real local keyring: the domain is created on first open, hashes follow the current
// version (also after a rotation made by another keyring instance, as `mamori keys rotate` in another process),
// and the search hasher covers every active version and skips shredded ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Keyring, keyringConfigFrom } from '../../../keyring/index.js';
import { defaultConfig } from '../../../config/load.js';
import { KeyringSubjectKeys, keyringSubjectHasher, SUBJECT_DOMAIN } from '../../../proxy/audit/subject-keys.js';
import { subjectHash, normalizeSubject } from '../../../proxy/audit/subject.js';

const NUMBER = '123456789018';

test('subject keys: created on first open, follow rotation, search covers active versions only', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-subject-keys-'));
  const cfg = keyringConfigFrom(defaultConfig({ keyring: { keyFile: join(dir, 'root.key'), store: { type: 'file', path: join(dir, 'keystore.json') } } }).keyring);
  await (await Keyring.init(cfg, { databaseIdentity: 'test-db' })).close();
  const proxy = await Keyring.open(cfg);
  const other = await Keyring.open(cfg);
  try {
    assert.equal(proxy.hasDomain(SUBJECT_DOMAIN), false);
    const keys = await KeyringSubjectKeys.open(proxy);
    assert.equal(proxy.domain(SUBJECT_DOMAIN).purpose, 'subject');
    const v1 = keys.subjectKey();
    assert.equal(v1.id, `${SUBJECT_DOMAIN}:v1`);
    const { logicalType, canonical } = normalizeSubject(NUMBER);
    const h1 = subjectHash(v1.key, logicalType, canonical);

    // another process rotates: this one sees it after its keyring reloads (within the 1 s check)
    await other.reload();
    await other.rotate(SUBJECT_DOMAIN);
    await proxy.reload();
    await new Promise((r) => setTimeout(r, 1100));
    keys.subjectKey(); // notices the new version and loads it
    await new Promise((r) => setTimeout(r, 200));
    const v2 = keys.subjectKey();
    assert.equal(v2.id, `${SUBJECT_DOMAIN}:v2`);
    const h2 = subjectHash(v2.key, logicalType, canonical);
    assert.notEqual(h1, h2);

    // a search hashes under every active version; spelling variants normalize to the same hashes
    assert.deepEqual(new Set((await keyringSubjectHasher(proxy))('1234 5678 9018')), new Set([h1, h2]));
    await proxy.shred(SUBJECT_DOMAIN, 1);
    assert.deepEqual((await keyringSubjectHasher(proxy))(NUMBER), [h2]);
    keys.close();
  } finally {
    await proxy.close();
    await other.close();
  }
});
