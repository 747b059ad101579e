// AES-256-GCM for randomized cells: body = nonce(12) ‖ ciphertext ‖ tag(16), header as associated data.
import { createCipheriv, createDecipheriv, randomFillSync, type KeyObject } from 'node:crypto';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES } from './format.js';

// Nonces come from a CSPRNG pool refilled 4 KiB at a time: one randomFillSync per 341 cells instead of a
// randomBytes call per cell. Each slice is used once.
const POOL = Buffer.allocUnsafe(4096 - (4096 % GCM_NONCE_BYTES));
let poolPos = POOL.length;

function nextNonce(out: Buffer, off: number): void {
  if (poolPos + GCM_NONCE_BYTES > POOL.length) {
    randomFillSync(POOL);
    poolPos = 0;
  }
  POOL.copy(out, off, poolPos, poolPos + GCM_NONCE_BYTES);
  POOL.fill(0, poolPos, poolPos + GCM_NONCE_BYTES);
  poolPos += GCM_NONCE_BYTES;
}

/** Writes header ‖ nonce ‖ C ‖ tag with a fresh random nonce. */
export function gcmSeal(key: KeyObject, header: Buffer, p: Uint8Array): Buffer {
  return seal(key, header, p, undefined);
}

function seal(key: KeyObject, header: Buffer, p: Uint8Array, nonce: Uint8Array | undefined): Buffer {
  const h = header.length;
  const out = Buffer.allocUnsafe(h + GCM_NONCE_BYTES + p.length + GCM_TAG_BYTES);
  header.copy(out, 0);
  if (nonce === undefined) nextNonce(out, h);
  else {
    if (nonce.length !== GCM_NONCE_BYTES) throw new RangeError('GCM nonce must be 12 bytes');
    out.set(nonce, h);
  }
  const c = createCipheriv('aes-256-gcm', key, out.subarray(h, h + GCM_NONCE_BYTES), { authTagLength: GCM_TAG_BYTES });
  c.setAAD(header);
  const body = c.update(p);
  body.copy(out, h + GCM_NONCE_BYTES);
  c.final();
  c.getAuthTag().copy(out, h + GCM_NONCE_BYTES + p.length);
  return out;
}

/** Opens a GCM cell whose header is `cell[0, headerLen)`; null when authentication fails. */
export function gcmOpen(key: KeyObject, cell: Buffer, headerLen: number): Buffer | null {
  const n0 = headerLen;
  const c0 = n0 + GCM_NONCE_BYTES;
  const t0 = cell.length - GCM_TAG_BYTES;
  if (t0 < c0) return null;
  const d = createDecipheriv('aes-256-gcm', key, cell.subarray(n0, c0), { authTagLength: GCM_TAG_BYTES });
  d.setAAD(cell.subarray(0, n0));
  d.setAuthTag(cell.subarray(t0));
  const p = d.update(cell.subarray(c0, t0));
  try {
    d.final();
  } catch {
    p.fill(0);
    return null;
  }
  return p;
}

/** Test-only: encrypts with a caller-chosen nonce, for the fixed vector in docs/ciphertext-format.md. */
export function gcmSealWithNonceForTests(key: KeyObject, header: Buffer, p: Uint8Array, nonce: Uint8Array): Buffer {
  return seal(key, header, p, nonce);
}
