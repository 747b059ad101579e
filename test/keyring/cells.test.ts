// Cells: header format, round trips, the format's own vectors (docs/ciphertext-format.md), and every
// failure mode giving the one CellDecryptError.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createSecretKey, randomBytes } from 'node:crypto';
import { aessiv } from '@noble/ciphers/aes.js';
import fc from 'fast-check';
import {
  CELL_HEADER_BYTES,
  CellDecryptError,
  cellKeyFromBytes,
  decryptCell,
  encodeCellHeader,
  encryptCell,
  isCell,
  parseCellHeader,
  type CellHeader,
  type CellKey,
  type CellMode,
} from '../../keyring/cells/index.js';
import { gcmSealWithNonceForTests } from '../../keyring/cells/gcm.js';

const MODES: CellMode[] = ['randomized', 'deterministic'];
const keyBytes = (mode: CellMode): number => (mode === 'randomized' ? 32 : 64);
const newKey = (mode: CellMode): CellKey => cellKeyFromBytes(mode, randomBytes(keyBytes(mode)));

function assertCellError(fn: () => unknown): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CellDecryptError);
    assert.equal(e.code, 'MAMORI_CELL');
    assert.equal(e.message, 'mamori: cell cannot be decrypted');
    return true;
  });
}

describe('header', () => {
  test('encode/parse round trip over the uint32 range, 12 bytes, fixed magic', () => {
    assert.equal(CELL_HEADER_BYTES, 12);
    fc.assert(
      fc.property(
        fc.constantFrom<CellMode>('randomized', 'deterministic'),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (mode, domainId, version) => {
          const h: CellHeader = { mode, domainId, version };
          const b = encodeCellHeader(h);
          assert.equal(b.length, 12);
          assert.deepEqual([...b.subarray(0, 4)], [0xff, 0x6d, 0x01, mode === 'randomized' ? 1 : 2]);
          assert.equal(b.readUInt32BE(4), domainId);
          assert.equal(b.readUInt32BE(8), version);
          assert.deepEqual(parseCellHeader(b), h);
        },
      ),
      { numRuns: 500 },
    );
  });

  test('refuses out-of-range ids and unknown modes', () => {
    assert.throws(() => encodeCellHeader({ mode: 'randomized', domainId: -1, version: 1 }), RangeError);
    assert.throws(() => encodeCellHeader({ mode: 'randomized', domainId: 1, version: 2 ** 32 }), RangeError);
    assert.throws(() => encodeCellHeader({ mode: 'randomized', domainId: 1.5, version: 1 }), RangeError);
    assert.throws(() => encodeCellHeader({ mode: 'other' as CellMode, domainId: 1, version: 1 }), RangeError);
  });

  test('parseCellHeader and isCell reject non-cells', () => {
    const good = encodeCellHeader({ mode: 'deterministic', domainId: 3, version: 4 });
    for (const [i, v] of [[0, 0xfe], [1, 0x6e], [2, 0x02], [3, 0x00], [3, 0x03]] as const) {
      const b = Buffer.from(good);
      b[i] = v;
      assert.equal(parseCellHeader(b), null);
      assert.equal(isCell(Buffer.concat([b, Buffer.alloc(40)])), false);
    }
    assert.equal(parseCellHeader(good.subarray(0, 11)), null);
    assert.equal(isCell(Buffer.from('123456789018')), false);
    assert.equal(isCell(Buffer.from('ｍａｍｏｒｉ テキスト')), false);
    // a bare header is parseable but not a cell: the body is missing
    assert.equal(isCell(good), false);
    assert.equal(isCell(Buffer.concat([good, Buffer.alloc(16)])), true);
    const g = encodeCellHeader({ mode: 'randomized', domainId: 3, version: 4 });
    assert.equal(isCell(Buffer.concat([g, Buffer.alloc(27)])), false);
    assert.equal(isCell(Buffer.concat([g, Buffer.alloc(28)])), true);
  });
});

describe('keys', () => {
  test('cellKeyFromBytes checks sizes and splits SIV keys K1 ‖ K2', () => {
    assert.throws(() => cellKeyFromBytes('randomized', Buffer.alloc(31)), RangeError);
    assert.throws(() => cellKeyFromBytes('randomized', Buffer.alloc(64)), RangeError);
    assert.throws(() => cellKeyFromBytes('deterministic', Buffer.alloc(32)), RangeError);
    const raw = randomBytes(64);
    const k = cellKeyFromBytes('deterministic', raw);
    assert.equal(k.mode, 'deterministic');
    if (k.mode !== 'deterministic') return;
    assert.deepEqual(k.macKey.export(), raw.subarray(0, 32));
    assert.deepEqual(k.ctrKey.export(), raw.subarray(32));
    // the key owns its bytes: wiping the caller's buffer does not change it
    const before = k.macKey.export();
    raw.fill(0);
    assert.deepEqual(k.macKey.export(), before);
  });
});

describe('round trips', () => {
  for (const mode of MODES) {
    test(`${mode}: random plaintexts of 0..300 bytes`, () => {
      const key = newKey(mode);
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 0xffffffff }), (p, domainId) => {
          const h: CellHeader = { mode, domainId, version: 1 };
          const cell = encryptCell(h, key, p);
          const overhead = mode === 'randomized' ? 12 + 12 + 16 : 12 + 16;
          assert.equal(cell.length, p.length + overhead);
          assert.ok(isCell(cell));
          assert.deepEqual(parseCellHeader(cell), h);
          assert.deepEqual(decryptCell(cell, key, { domainId }), Buffer.from(p));
          // a Uint8Array view with an offset works too
          const view = new Uint8Array(cell.length + 5);
          view.set(cell, 5);
          assert.deepEqual(decryptCell(view.subarray(5), key), Buffer.from(p));
        }),
        { numRuns: 400 },
      );
    });
  }

  test('deterministic: equal plaintexts give equal cells; different headers or keys give different ones', () => {
    const key = newKey('deterministic');
    const h: CellHeader = { mode: 'deterministic', domainId: 9, version: 2 };
    const p = Buffer.from('123456789018');
    const a = encryptCell(h, key, p);
    assert.deepEqual(encryptCell(h, key, Buffer.from('123456789018')), a);
    assert.notDeepEqual(encryptCell({ ...h, domainId: 10 }, key, p).subarray(12), a.subarray(12));
    assert.notDeepEqual(encryptCell({ ...h, version: 3 }, key, p).subarray(12), a.subarray(12));
    assert.notDeepEqual(encryptCell(h, newKey('deterministic'), p), a);
  });

  test('randomized: equal plaintexts give different cells (fresh nonces, none repeated in 20000)', () => {
    const key = newKey('randomized');
    const h: CellHeader = { mode: 'randomized', domainId: 1, version: 1 };
    const seen = new Set<string>();
    for (let i = 0; i < 20000; i++) {
      const c = encryptCell(h, key, Buffer.from('x'));
      seen.add(c.subarray(12, 24).toString('hex'));
    }
    assert.equal(seen.size, 20000);
  });

  test('encryptCell refuses a key of the other mode', () => {
    assert.throws(
      () => encryptCell({ mode: 'deterministic', domainId: 1, version: 1 }, newKey('randomized'), Buffer.from('a')),
      TypeError,
    );
  });
});

describe('every failure is the same CellDecryptError, never garbage', () => {
  for (const mode of MODES) {
    const key = newKey(mode);
    const h: CellHeader = { mode, domainId: 77, version: 5 };
    const cell = encryptCell(h, key, Buffer.from('123456789018'));

    test(`${mode}: every single flipped bit`, () => {
      for (let bit = 0; bit < cell.length * 8; bit++) {
        const t = Buffer.from(cell);
        t[bit >> 3] = t[bit >> 3]! ^ (1 << (bit & 7));
        assertCellError(() => decryptCell(t, key));
      }
    });

    test(`${mode}: every truncation and an appended byte`, () => {
      for (let n = 0; n < cell.length; n++) assertCellError(() => decryptCell(cell.subarray(0, n), key));
      assertCellError(() => decryptCell(Buffer.concat([cell, Buffer.of(0)]), key));
    });

    test(`${mode}: wrong key, wrong expected domain, header swapped to another domain or version`, () => {
      assertCellError(() => decryptCell(cell, newKey(mode)));
      assertCellError(() => decryptCell(cell, key, { domainId: 78 }));
      const moved = Buffer.from(cell);
      moved.writeUInt32BE(78, 4);
      assertCellError(() => decryptCell(moved, key));
      assertCellError(() => decryptCell(moved, key, { domainId: 78 }));
      const bumped = Buffer.from(cell);
      bumped.writeUInt32BE(6, 8);
      assertCellError(() => decryptCell(bumped, key));
    });

    test(`${mode}: key of the other mode, and the header's mode byte switched`, () => {
      const other: CellMode = mode === 'randomized' ? 'deterministic' : 'randomized';
      assertCellError(() => decryptCell(cell, newKey(other)));
      const switched = Buffer.from(cell);
      switched[3] = other === 'randomized' ? 1 : 2;
      assertCellError(() => decryptCell(switched, newKey(other)));
    });
  }

  test('a cell of one domain pasted into another (same key shared by mistake) fails the domain check', () => {
    const key = newKey('deterministic');
    const a = encryptCell({ mode: 'deterministic', domainId: 1, version: 1 }, key, Buffer.from('v'));
    assertCellError(() => decryptCell(a, key, { domainId: 2 }));
    assert.deepEqual(decryptCell(a, key, { domainId: 1 }), Buffer.from('v'));
  });
});

describe('format vectors (docs/ciphertext-format.md)', () => {
  const sivRaw = Buffer.from(Array.from({ length: 64 }, (_, i) => i)); // 00 01 … 3f
  const gcmRaw = Buffer.from(Array.from({ length: 32 }, (_, i) => 0x40 + i)); // 40 41 … 5f
  const p = Buffer.from('123456789018');

  test('deterministic vector (and it equals @noble/ciphers aessiv with AD = [header])', () => {
    const h: CellHeader = { mode: 'deterministic', domainId: 7, version: 1 };
    const expected =
      'ff6d01020000000700000001' + 'e6078ce9db68cb5de1229cc69ec54ad3' + '86175cd2a398db4a77f43017';
    const cell = encryptCell(h, cellKeyFromBytes('deterministic', sivRaw), p);
    assert.equal(cell.toString('hex'), expected);
    const header = encodeCellHeader(h);
    assert.equal(Buffer.from(aessiv(sivRaw, header).encrypt(p)).toString('hex'), expected.slice(24));
    assert.deepEqual(decryptCell(Buffer.from(expected, 'hex'), cellKeyFromBytes('deterministic', sivRaw)), p);
  });

  test('deterministic vector, empty plaintext', () => {
    const h: CellHeader = { mode: 'deterministic', domainId: 7, version: 1 };
    const expected = 'ff6d01020000000700000001' + '271cc1fb672c610a9ae0b46edfb891c5';
    const key = cellKeyFromBytes('deterministic', sivRaw);
    assert.equal(encryptCell(h, key, Buffer.alloc(0)).toString('hex'), expected);
    assert.equal(decryptCell(Buffer.from(expected, 'hex'), key).length, 0);
  });

  test('randomized vector with a fixed nonce (test-only entry point), checked against plain node:crypto', () => {
    const h: CellHeader = { mode: 'randomized', domainId: 7, version: 1 };
    const nonce = Buffer.from('000102030405060708090a0b', 'hex');
    const expected =
      'ff6d01010000000700000001' +
      '000102030405060708090a0b' +
      '0b375f4c42ba7398fb22b1fa' +
      '13ae51774976286cec7035b4ee971e00';
    const header = encodeCellHeader(h);
    const cell = gcmSealWithNonceForTests(createSecretKey(gcmRaw), header, p, nonce);
    assert.equal(cell.toString('hex'), expected);
    const c = createCipheriv('aes-256-gcm', gcmRaw, nonce);
    c.setAAD(header);
    const body = Buffer.concat([c.update(p), c.final(), c.getAuthTag()]);
    assert.equal(body.toString('hex'), expected.slice(48));
    assert.deepEqual(decryptCell(Buffer.from(expected, 'hex'), cellKeyFromBytes('randomized', gcmRaw)), p);
  });
});
