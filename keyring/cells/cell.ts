// Cells: header ‖ body, the whole header authenticated as associated data.
//   randomized:    header ‖ nonce(12) ‖ C ‖ tag(16)   AES-256-GCM
//   deterministic: header ‖ V(16) ‖ C                 AES-SIV-512, AD vector = [header]
import { createSecretKey, type KeyObject } from 'node:crypto';
import { forgetAesState } from './aes.js';
import {
  CELL_HEADER_BYTES,
  CellDecryptError,
  MODE_DETERMINISTIC,
  MODE_RANDOMIZED,
  encodeCellHeader,
  isCell,
  modeByte,
  type CellHeader,
  type CellMode,
} from './format.js';
import { gcmOpen, gcmSeal } from './gcm.js';
import { sivDecrypt, sivEncryptInto } from './siv.js';

export type CellKey =
  | { mode: 'randomized'; key: KeyObject }
  | { mode: 'deterministic'; macKey: KeyObject; ctrKey: KeyObject };

/** 32 raw bytes for randomized (AES-256), 64 for deterministic (K1 ‖ K2 of RFC 5297, 32 bytes each). */
export function cellKeyFromBytes(mode: CellMode, raw: Buffer): CellKey {
  if (mode === 'randomized') {
    if (raw.length !== 32) throw new RangeError('randomized cell key must be 32 bytes');
    return { mode, key: createSecretKey(Buffer.from(raw)) };
  }
  if (mode === 'deterministic') {
    if (raw.length !== 64) throw new RangeError('deterministic cell key must be 64 bytes');
    return {
      mode,
      macKey: createSecretKey(Buffer.from(raw.subarray(0, 32))),
      ctrKey: createSecretKey(Buffer.from(raw.subarray(32, 64))),
    };
  }
  throw new RangeError('cell mode must be randomized or deterministic');
}

/** Drops cached cipher contexts for a key (call on retire/shred purge, beside dropping the KeyObjects). */
export function forgetCellKey(key: CellKey): void {
  if (key.mode === 'deterministic') {
    forgetAesState(key.macKey);
    forgetAesState(key.ctrKey);
  }
}

// encodeCellHeader validates and allocates; on the hot path the same header repeats, so remember the last one.
// The remembered buffer is only read (copied into cells, used as AD), never handed out.
let lastHeaderMode = '';
let lastHeaderDomain = -1;
let lastHeaderVersion = -1;
let lastHeaderBytes: Buffer = Buffer.alloc(0);

function headerBytes(h: CellHeader): Buffer {
  if (
    h.mode === lastHeaderMode &&
    h.domainId === lastHeaderDomain &&
    h.version === lastHeaderVersion
  ) {
    return lastHeaderBytes;
  }
  const b = encodeCellHeader(h);
  lastHeaderMode = h.mode;
  lastHeaderDomain = h.domainId;
  lastHeaderVersion = h.version;
  lastHeaderBytes = b;
  return b;
}

export function encryptCell(header: CellHeader, key: CellKey, plaintext: Uint8Array): Buffer {
  if (header.mode !== key.mode) throw new TypeError('mamori: cell key mode does not match the header mode');
  const h = headerBytes(header);
  if (key.mode === 'randomized') return gcmSeal(key.key, h, plaintext);
  const out = Buffer.allocUnsafe(CELL_HEADER_BYTES + 16 + plaintext.length);
  h.copy(out, 0);
  sivEncryptInto(key, [h], plaintext, out, CELL_HEADER_BYTES);
  return out;
}

/**
 * Decrypts a cell. Every failure — not a cell, wrong mode, wrong domain, wrong key, tampering, truncation —
 * throws the same CellDecryptError; no plaintext is ever returned unauthenticated.
 */
export function decryptCell(cell: Uint8Array, key: CellKey, expect?: { domainId: number }): Buffer {
  const b = Buffer.isBuffer(cell) ? cell : Buffer.from(cell.buffer, cell.byteOffset, cell.byteLength);
  if (!isCell(b) || b[3] !== modeByte(key.mode)) throw new CellDecryptError();
  if (expect !== undefined && b.readUInt32BE(4) !== expect.domainId) throw new CellDecryptError();
  let p: Buffer | null;
  if (key.mode === 'randomized') {
    p = b[3] === MODE_RANDOMIZED ? gcmOpen(key.key, b, CELL_HEADER_BYTES) : null;
  } else {
    p =
      b[3] === MODE_DETERMINISTIC
        ? sivDecrypt(key, [b.subarray(0, CELL_HEADER_BYTES)], b.subarray(CELL_HEADER_BYTES))
        : null;
  }
  if (p === null) throw new CellDecryptError();
  return p;
}
