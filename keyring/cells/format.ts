// The cell header and the one decryption error. Byte layout (docs/ciphertext-format.md):
//   0  0xFF  magic (never a valid UTF-8 byte, so no text value can look like a cell)
//   1  0x6D  magic ('m')
//   2  0x01  format version
//   3  mode: 0x01 randomized (AES-256-GCM), 0x02 deterministic (AES-SIV-512)
//   4  key-domain id, uint32 big-endian
//   8  key version, uint32 big-endian
// The whole 12-byte header is the AEAD associated data.

export type CellMode = 'randomized' | 'deterministic';

export interface CellHeader {
  mode: CellMode;
  /** uint32, stable id from the keystore (so RENAME does not break decryption) */
  domainId: number;
  /** uint32 key version */
  version: number;
}

export const CELL_MAGIC_0 = 0xff;
export const CELL_MAGIC_1 = 0x6d;
export const CELL_FORMAT_VERSION = 0x01;
export const MODE_RANDOMIZED = 0x01;
export const MODE_DETERMINISTIC = 0x02;
export const CELL_HEADER_BYTES = 12;

/** GCM body: 96-bit nonce + 128-bit tag around the ciphertext. */
export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;
/** SIV body: the 128-bit synthetic IV before the ciphertext. */
export const SIV_BYTES = 16;

export class CellDecryptError extends Error {
  readonly code = 'MAMORI_CELL' as const;
  constructor() {
    // One message for every cause (wrong key, domain, mode, tampering, truncation): no oracle, no detail.
    super('mamori: cell cannot be decrypted');
    this.name = 'CellDecryptError';
  }
}

function checkUint32(name: string, n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cell header ${name} must be a uint32`);
}

export function modeByte(mode: CellMode): number {
  if (mode === 'randomized') return MODE_RANDOMIZED;
  if (mode === 'deterministic') return MODE_DETERMINISTIC;
  throw new RangeError('cell header mode must be randomized or deterministic');
}

export function encodeCellHeader(h: CellHeader): Buffer {
  checkUint32('domainId', h.domainId);
  checkUint32('version', h.version);
  const b = Buffer.allocUnsafe(CELL_HEADER_BYTES);
  b[0] = CELL_MAGIC_0;
  b[1] = CELL_MAGIC_1;
  b[2] = CELL_FORMAT_VERSION;
  b[3] = modeByte(h.mode);
  b.writeUInt32BE(h.domainId, 4);
  b.writeUInt32BE(h.version, 8);
  return b;
}

function hasMagic(b: Uint8Array): boolean {
  return (
    b.length >= CELL_HEADER_BYTES &&
    b[0] === CELL_MAGIC_0 &&
    b[1] === CELL_MAGIC_1 &&
    b[2] === CELL_FORMAT_VERSION &&
    (b[3] === MODE_RANDOMIZED || b[3] === MODE_DETERMINISTIC)
  );
}

/** Reads the header; null if the bytes do not start with a mamori v1 header (the body is not checked). */
export function parseCellHeader(cell: Uint8Array): CellHeader | null {
  if (!hasMagic(cell)) return null;
  const dv = new DataView(cell.buffer, cell.byteOffset, CELL_HEADER_BYTES);
  return {
    mode: cell[3] === MODE_RANDOMIZED ? 'randomized' : 'deterministic',
    domainId: dv.getUint32(4),
    version: dv.getUint32(8),
  };
}

/** Smallest possible cell of each mode (empty plaintext). */
export function minCellBytes(modeB: number): number {
  return CELL_HEADER_BYTES + (modeB === MODE_RANDOMIZED ? GCM_NONCE_BYTES + GCM_TAG_BYTES : SIV_BYTES);
}

/** Fast check for result fields of unknown origin: magic, format version, mode, and a body long enough. */
export function isCell(bytes: Uint8Array): boolean {
  return hasMagic(bytes) && bytes.length >= minCellBytes(bytes[3]!);
}
