// AES-SIV and CMAC: RFC 4493 and RFC 5297 vectors exactly, and the 512-bit path against @noble/ciphers.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createSecretKey } from 'node:crypto';
import { aessiv } from '@noble/ciphers/aes.js';
import fc from 'fast-check';
import { aesState, cmac, sivCtr } from '../../keyring/cells/aes.js';
import { sivDecrypt, sivEncrypt, type SivKey } from '../../keyring/cells/siv.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s/g, ''), 'hex');
const sivKey = (raw: Buffer): SivKey => ({
  macKey: createSecretKey(raw.subarray(0, raw.length / 2)),
  ctrKey: createSecretKey(raw.subarray(raw.length / 2)),
});

describe('CMAC (RFC 4493 §4)', () => {
  const key = createSecretKey(hex('2b7e1516 28aed2a6 abf71588 09cf4f3c'));
  const msg = hex(`6bc1bee2 2e409f96 e93d7e11 7393172a ae2d8a57 1e03ac9c 9eb76fac 45af8e51
                   30c81c46 a35ce411 e5fbc119 1a0a52ef f69f2445 df4f9b17 ad2b417b e66c3710`);
  const cases: [number, string][] = [
    [0, 'bb1d6929 e9593728 7fa37d12 9b756746'],
    [16, '070a16b4 6b4d4144 f79bdd9d d04a287c'],
    [40, 'dfa66747 de9ae630 30ca3261 1497c827'],
    [64, '51f0bebf 7e3b9d92 fc497417 79363cfe'],
  ];
  test('subkeys K1 and K2', () => {
    const s = aesState(key);
    assert.equal(s.k1.toString('hex'), 'fbeed618357133667c85e08f7236a8de');
    assert.equal(s.k2.toString('hex'), 'f7ddac306ae266ccf90bc11ee46d513b');
  });
  for (const [len, tag] of cases) {
    test(`example of ${len} bytes`, () => {
      assert.equal(cmac(aesState(key), msg.subarray(0, len)).toString('hex'), hex(tag).toString('hex'));
    });
  }
  test('the long-lived CBC context gives the same tags in any order (chaining value cancelled)', () => {
    const s = aesState(key);
    for (const [len, tag] of [...cases].reverse().concat(cases)) {
      assert.equal(cmac(s, msg.subarray(0, len)).toString('hex'), hex(tag).toString('hex'));
    }
  });
});

describe('AES-SIV (RFC 5297 appendix A)', () => {
  test('A.1 deterministic authenticated encryption', () => {
    const k = sivKey(hex('fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff'));
    const ad = hex('10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627');
    const p = hex('11223344 55667788 99aabbcc ddee');
    const expected = hex('85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c');
    const out = sivEncrypt(k, [ad], p);
    assert.deepEqual(out, expected);
    assert.deepEqual(sivDecrypt(k, [ad], out), p);
  });

  test('A.2 nonce-based authenticated encryption (three AD components)', () => {
    const k = sivKey(hex('7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f'));
    const ad1 = hex(`00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988
                     77665544 33221100`);
    const ad2 = hex('10203040 50607080 90a0');
    const nonce = hex('09f91102 9d74e35b d84156c5 635688c0');
    const p = hex(`74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970
                   74207573 696e6720 5349562d 414553`);
    const expected = hex(`7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17
                          dba77ceb 094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d`);
    const out = sivEncrypt(k, [ad1, ad2, nonce], p);
    assert.deepEqual(out, expected);
    assert.deepEqual(sivDecrypt(k, [ad1, ad2, nonce], out), p);
  });

  test('a flipped bit anywhere in V ‖ C, or a changed AD, fails verification', () => {
    const k = sivKey(hex('fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff'));
    const ad = hex('10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627');
    const out = sivEncrypt(k, [ad], hex('11223344 55667788 99aabbcc ddee'));
    for (let bit = 0; bit < out.length * 8; bit++) {
      const t = Buffer.from(out);
      t[bit >> 3] = t[bit >> 3]! ^ (1 << (bit & 7));
      assert.equal(sivDecrypt(k, [ad], t), null, `bit ${bit}`);
    }
    const ad2 = Buffer.from(ad);
    ad2[0] = ad2[0]! ^ 1;
    assert.equal(sivDecrypt(k, [ad2], out), null);
    assert.equal(sivDecrypt(k, [], out), null);
  });
});

describe('AES-SIV-512 against @noble/ciphers aessiv', () => {
  // Lengths cover empty, sub-block, exact blocks, multi-block, and both CTR paths (JS keystream < 512 B,
  // native CTR from 512 B).
  const lengths = fc.oneof(
    fc.constantFrom(0, 1, 12, 15, 16, 17, 31, 32, 33, 200, 511, 512, 513, 1024),
    fc.integer({ min: 0, max: 80 }),
    fc.integer({ min: 0, max: 1500 }),
  );
  const bytes = (len: fc.Arbitrary<number>) =>
    len.chain((n) => fc.uint8Array({ minLength: n, maxLength: n }));

  test('3000 random keys, AD vectors and plaintexts give identical output and round-trip', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 64, maxLength: 64 }),
        fc.array(bytes(fc.integer({ min: 0, max: 40 })), { minLength: 0, maxLength: 3 }),
        bytes(lengths),
        (raw, ads, p) => {
          const k = sivKey(Buffer.from(raw));
          const ours = sivEncrypt(k, ads, p);
          const theirs = Buffer.from(aessiv(raw, ...ads).encrypt(p));
          assert.deepEqual(ours, theirs);
          assert.deepEqual(sivDecrypt(k, ads, ours), Buffer.from(p));
        },
      ),
      { numRuns: 3000, seed: 0x6d616d6f },
    );
  });

  test('one key reused across many messages (memoized header fold and long-lived contexts stay correct)', () => {
    const raw = new Uint8Array(64).map((_, i) => (i * 37 + 11) & 0xff);
    const k = sivKey(Buffer.from(raw));
    const headers = [new Uint8Array(12).fill(1), new Uint8Array(12).fill(2)];
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1 }), bytes(lengths), (hi, p) => {
        const ad = headers[hi]!;
        const ours = sivEncrypt(k, [ad], p);
        assert.deepEqual(ours, Buffer.from(aessiv(raw, ad).encrypt(p)));
        assert.deepEqual(sivDecrypt(k, [ad], ours), Buffer.from(p));
      }),
      { numRuns: 2000, seed: 42 },
    );
  });

  test('SIV CTR with an all-ones V: bits 63 and 31 cleared, counter runs past 0x7fffffff like a 128-bit add', () => {
    // Reference: OpenSSL's own 128-bit CTR from the cleared Q; both our keystream paths must agree with it.
    const raw = Buffer.alloc(32, 9);
    const key = createSecretKey(raw);
    const v = Buffer.alloc(16, 0xff);
    const q = Buffer.from(v);
    q[8] = 0x7f;
    q[12] = 0x7f;
    for (const len of [1, 16, 40, 511, 512, 3000]) {
      const input = Buffer.alloc(len, 0x5a);
      const expected = createCipheriv('aes-256-ctr', key, q).update(input);
      const out = Buffer.alloc(len + 3);
      sivCtr(aesState(key), v, input, out, 3);
      assert.deepEqual(out.subarray(3), expected, `length ${len}`);
    }
  });
});
