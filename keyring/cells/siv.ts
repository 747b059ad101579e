// RFC 5297 AES-SIV. The key is two halves: K1 for S2V (CMAC), K2 for CTR. 2 × 16 bytes is AES-SIV-256
// (the RFC's A.1/A.2 vectors), 2 × 32 bytes is AES-SIV-512 (what cells use). Output layout: V ‖ C.
import { timingSafeEqual, type KeyObject } from 'node:crypto';
import { aesState, cmacPadded, dblInPlace, paddedLength, sivCtr, xorInto, type AesState } from './aes.js';

/** D after folding the associated-data vector (before the plaintext), memoized for one-element vectors. */
function s2vPrefix(s: AesState, ad: readonly Uint8Array[]): Buffer {
  if (ad.length === 1) {
    const a = ad[0]!;
    if (s.lastAd !== null && s.lastAd.equals(a)) return s.lastD!;
  }
  const d = Buffer.from(s.d0);
  for (const a of ad) {
    const m = Buffer.alloc(paddedLength(a.length));
    m.set(a);
    const c = cmacPadded(s, m, a.length);
    xorInto(dblInPlace(d), 0, c, 0, 16);
  }
  if (ad.length === 1) {
    // The cell header is the same for every cell of a key version: memoize its fold.
    s.lastAd = Buffer.from(ad[0]!);
    s.lastD = d;
  }
  return d;
}

/** S2V (RFC 5297 §2.4) over ad[0..] and the plaintext; returns V. */
export function s2v(s: AesState, ad: readonly Uint8Array[], p: Uint8Array): Buffer {
  if (ad.length > 126) throw new RangeError('AES-SIV takes at most 126 associated-data components');
  const d = s2vPrefix(s, ad);
  const len = p.length;
  const m = Buffer.alloc(paddedLength(len));
  m.set(p);
  if (len >= 16) {
    xorInto(m, len - 16, d, 0, 16); // T = Sn xorend D
  } else {
    // T = dbl(D) xor pad(Sn); cmacPadded would pad again, so pad here and hand it a full block
    m[len] = 0x80;
    const dd = dblInPlace(Buffer.from(d));
    xorInto(m, 0, dd, 0, 16);
    return cmacPadded(s, m, 16);
  }
  return cmacPadded(s, m, len);
}

export interface SivKey {
  macKey: KeyObject;
  ctrKey: KeyObject;
}

function states(k: SivKey): [AesState, AesState] {
  const mac = aesState(k.macKey);
  const ctr = aesState(k.ctrKey);
  if (mac.bits !== ctr.bits) throw new RangeError('AES-SIV key halves must be the same size');
  return [mac, ctr];
}

/**
 * Encrypts into `out` at `off` (V then C; out must have 16 + p.length bytes there). Allocation-light entry
 * point used by the cell code.
 */
export function sivEncryptInto(k: SivKey, ad: readonly Uint8Array[], p: Uint8Array, out: Buffer, off: number): void {
  const [mac, ctr] = states(k);
  const v = s2v(mac, ad, p);
  v.copy(out, off);
  sivCtr(ctr, v, p, out, off + 16);
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
  const [mac, ctr] = states(k);
  const v = vc.subarray(0, 16);
  const c = vc.subarray(16);
  const p = Buffer.allocUnsafe(c.length);
  sivCtr(ctr, v, c, p, 0);
  const t = s2v(mac, ad, p);
  if (!timingSafeEqual(t, v)) {
    p.fill(0);
    return null;
  }
  return p;
}
