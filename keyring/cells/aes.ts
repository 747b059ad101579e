// AES building blocks for AES-SIV on node:crypto: CMAC (RFC 4493) and the SIV flavour of CTR (RFC 5297 §2.5).
//
// Speed: cells are short, so creating OpenSSL cipher contexts would dominate. Each KeyObject gets, once,
// a long-lived ECB context (raw block encryption: CTR keystream) and a long-lived CBC context (CMAC chain).
// A CBC context keeps its chaining value between update() calls; XOR-ing that value into the first block of
// the next message cancels it, so every message still gets a zero-IV CBC-MAC, with one update() call for the
// whole padded message and no createCipheriv at all. State lives in a WeakMap, so it dies with the KeyObject.
import { createCipheriv, type KeyObject } from 'node:crypto';

type Ctx = ReturnType<typeof createCipheriv>;

export interface AesState {
  readonly key: KeyObject;
  readonly bits: 128 | 256;
  readonly ecb: Ctx;
  readonly cbc: Ctx;
  /** the CBC context's current chaining value (last ciphertext block it produced) */
  readonly chain: Buffer;
  /** CMAC subkeys K1, K2 (RFC 4493 §2.3) */
  readonly k1: Buffer;
  readonly k2: Buffer;
  /** S2V memo: CMAC(<zero>) and the D value after the last single-AD vector seen (the cell header) */
  d0: Buffer;
  lastAd: Buffer | null;
  /** [D, dbl(D)] for lastAd */
  lastD: [Buffer, Buffer] | null;
}

const states = new WeakMap<KeyObject, AesState>();
const ZERO16 = Buffer.alloc(16);

/** Large inputs go through a native CTR context: one createCipheriv beats a JS XOR loop past this size. */
const NATIVE_CTR_FROM = 512;

/** dbl() of RFC 5297 / the CMAC subkey doubling in GF(2^128), in place. */
export function dblInPlace(b: Buffer): Buffer {
  const carry = b[0]! >>> 7;
  for (let i = 0; i < 15; i++) b[i] = ((b[i]! << 1) | (b[i + 1]! >>> 7)) & 0xff;
  b[15] = ((b[15]! << 1) & 0xff) ^ (carry * 0x87);
  return b;
}

export function xorInto(dst: Buffer, dstOff: number, src: Buffer, srcOff: number, len: number): void {
  for (let i = 0; i < len; i++) dst[dstOff + i] = dst[dstOff + i]! ^ src[srcOff + i]!;
}

export function aesState(key: KeyObject): AesState {
  let s = states.get(key);
  if (s) return s;
  const size = key.symmetricKeySize;
  if (key.type !== 'secret' || (size !== 16 && size !== 32)) {
    throw new RangeError('AES key must be a 16- or 32-byte secret KeyObject');
  }
  const bits = size === 16 ? 128 : 256;
  const ecb = createCipheriv(`aes-${bits}-ecb`, key, null).setAutoPadding(false);
  const cbc = createCipheriv(`aes-${bits}-cbc`, key, ZERO16).setAutoPadding(false);
  const l = ecb.update(ZERO16);
  const k1 = dblInPlace(Buffer.from(l));
  const k2 = dblInPlace(Buffer.from(k1));
  s = { key, bits, ecb, cbc, chain: Buffer.alloc(16), k1, k2, d0: ZERO16, lastAd: null, lastD: null };
  s.d0 = cmac(s, ZERO16);
  states.set(key, s);
  return s;
}

/** Drops the cached contexts of a key (retire/shred); the next use rebuilds them. */
export function forgetAesState(key: KeyObject): void {
  states.delete(key);
}

/**
 * CMAC over `m[0, len)`, where `m` is a scratch buffer of the padded length (a multiple of 16, at least 16)
 * whose bytes past `len` are zero. The scratch is overwritten. Returns a fresh 16-byte tag.
 */
export function cmacPadded(s: AesState, m: Buffer, len: number): Buffer {
  const n = m.length;
  if (len > 0 && len % 16 === 0) {
    xorInto(m, n - 16, s.k1, 0, 16);
  } else {
    m[len] = 0x80;
    xorInto(m, n - 16, s.k2, 0, 16);
  }
  xorInto(m, 0, s.chain, 0, 16); // cancel the context's carried chaining value: zero-IV CBC-MAC
  const out = s.cbc.update(m);
  const tag = out.subarray(n - 16);
  tag.copy(s.chain);
  return tag;
}

export function paddedLength(len: number): number {
  return len === 0 ? 16 : (len + 15) & ~15;
}

export function cmac(s: AesState, msg: Uint8Array): Buffer {
  const m = Buffer.allocUnsafe(paddedLength(msg.length));
  m.set(msg);
  m.fill(0, msg.length);
  return cmacPadded(s, m, msg.length);
}

/**
 * SIV CTR (RFC 5297 §2.6): counter Q = V with bits 63 and 31 cleared, incremented per block, XOR-ed with
 * `input` into `out` at `outOff`. Clearing bit 31 means the low 32-bit word never carries for inputs below
 * 2^31 blocks, so incrementing that word alone equals the RFC's 128-bit addition.
 */
export function sivCtr(s: AesState, v: Uint8Array, input: Uint8Array, out: Buffer, outOff: number): void {
  const len = input.length;
  if (len === 0) return;
  const q = Buffer.allocUnsafe(16);
  q.set(v.subarray(0, 16));
  q[8] = q[8]! & 0x7f;
  q[12] = q[12]! & 0x7f;
  if (len >= NATIVE_CTR_FROM) {
    const c = createCipheriv(`aes-${s.bits}-ctr`, s.key, q);
    const x = c.update(input);
    x.copy(out, outOff);
    x.fill(0);
    return;
  }
  const blocks = (len + 15) >>> 4;
  const ctr = Buffer.allocUnsafe(blocks * 16);
  const base = q.readUInt32BE(12);
  for (let i = 0; i < blocks; i++) {
    q.copy(ctr, i * 16, 0, 12);
    ctr.writeUInt32BE((base + i) >>> 0, i * 16 + 12);
  }
  const ks = s.ecb.update(ctr);
  for (let i = 0; i < len; i++) out[outOff + i] = input[i]! ^ ks[i]!;
  ks.fill(0); // keystream + ciphertext would give the plaintext back

}
