// RFC 5297 AES-SIV. The key is two halves: K1 for S2V (CMAC), K2 for CTR. 2 × 16 bytes is AES-SIV-256
// (the RFC's A.1/A.2 vectors), 2 × 32 bytes is AES-SIV-512 (what cells use). Output layout: V ‖ C.
import { timingSafeEqual, type KeyObject } from 'node:crypto';
import { aesState, cmacPadded, dblInPlace, paddedLength, sivCtr, xorInto, type AesState } from './aes.js';

/**
 * D after folding the associated-data vector (before the plaintext), and dbl(D) for short plaintexts.
 * Memoized for one-element vectors: the cell header is the same for every cell of a key version.
 * Callers must not modify the returned buffers.
 */
function s2vPrefix(s: AesState, ad: readonly Uint8Array[]): [Buffer, Buffer] {
  if (ad.length === 1 && s.lastAd !== null && s.lastAd.equals(ad[0]!)) return s.lastD!;
  const d = Buffer.from(s.d0);
  for (const a of ad) {
    const c = cmacPadded(s, zeroPadded(a), a.length);
    xorInto(dblInPlace(d), 0, c, 0, 16);
  }
  const r: [Buffer, Buffer] = [d, dblInPlace(Buffer.from(d))];
  if (ad.length === 1) {
    s.lastAd = Buffer.from(ad[0]!);
    s.lastD = r;
  }
  return r;
}

/** A copy of `a` zero-padded to CMAC's padded length (pooled allocation, then explicit zeroing). */
function zeroPadded(a: Uint8Array): Buffer {
  const n = paddedLength(a.length);
  const m = Buffer.allocUnsafe(n);
  m.set(a);
  m.fill(0, a.length);
  return m;
}

/** S2V (RFC 5297 §2.4) over ad[0..] and the plaintext; returns V. */
export function s2v(s: AesState, ad: readonly Uint8Array[], p: Uint8Array): Buffer {
  if (ad.length > 126) throw new RangeError('AES-SIV takes at most 126 associated-data components');
  const [d, dd] = s2vPrefix(s, ad);
  const len = p.length;
  const m = zeroPadded(p);
  let v: Buffer;
  if (len >= 16) {
    xorInto(m, len - 16, d, 0, 16); // T = Sn xorend D
    v = cmacPadded(s, m, len);
  } else {
    // T = dbl(D) xor pad(Sn); cmacPadded would pad again, so pad here and hand it one full block
    m[len] = 0x80;
    xorInto(m, 0, dd, 0, 16);
    v = cmacPadded(s, m, 16);
  }
  m.fill(0); // the scratch held plaintext and sits in Node's shared allocation pool: leave nothing behind
  return v;
}

export interface SivKey {
  macKey: KeyObject;
  ctrKey: KeyObject;
}

function ctrState(k: SivKey, mac: AesState): AesState {
  const ctr = aesState(k.ctrKey);
  if (mac.bits !== ctr.bits) throw new RangeError('AES-SIV key halves must be the same size');
  return ctr;
}

/**
 * Encrypts into `out` at `off` (V then C; out must have 16 + p.length bytes there). Allocation-light entry
 * point used by the cell code.
 */
export function sivEncryptInto(k: SivKey, ad: readonly Uint8Array[], p: Uint8Array, out: Buffer, off: number): void {
  const mac = aesState(k.macKey);
  const v = s2v(mac, ad, p);
  v.copy(out, off);
  sivCtr(ctrState(k, mac), v, p, out, off + 16);
}

/** AES-SIV encrypt: returns V ‖ C. */
export function sivEncrypt(k: SivKey, ad: readonly Uint8Array[], p: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(16 + p.length);
  sivEncryptInto(k, ad, p, out, 0);
  return out;
}

/** AES-SIV decrypt of V ‖ C; null when the synthetic IV does not verify (no plaintext is released). */
export function sivDecrypt(k: SivKey, ad: readonly Uint8Array[], vc: Uint8Array): Buffer | null {
  if (vc.length < 16) return null;
  const mac = aesState(k.macKey);
  const v = vc.subarray(0, 16);
  const c = vc.subarray(16);
  const p = Buffer.allocUnsafe(c.length);
  sivCtr(ctrState(k, mac), v, c, p, 0);
  const t = s2v(mac, ad, p);
  if (!timingSafeEqual(t, v)) {
    p.fill(0);
    return null;
  }
  return p;
}
