// Result transforms for protected columns: RowDescription shows the logical type, DataRow fields holding
// cells are decrypted and rendered per the read policy. The DataRow path runs for every protected row, so it
// scans field offsets once, touches only protected fields and writes the output in one allocation.
import { isCell, decryptCell } from '../../keyring/cells/index.js';
import {
  binaryFromCanonical,
  canonicalFromText,
  maskCanonical,
  textFromCanonical,
  type LogicalTypeSpec as KeyringTypeSpec,
} from '../../keyring/logical-types.js';
import { scanDataRow } from '../wire/backend.js';
import { BE, ProtocolError } from '../wire/types.js';
import type { ProtectedColumn } from '../sql/types.js';
import { ByteaSyntaxError, decodeByteaText, encodeByteaEscape, encodeByteaHex } from './bytea.js';
import type { CellKeys } from './keys.js';
import { OID, columnName, logicalTypeOid, toLogicalType } from './logical.js';
import { MamoriError } from '../errors.js';
import type { ClientCodec } from './client-encoding.js';

export { logicalTypeOid } from './logical.js';
export { decodeByteaText } from './bytea.js';

export type FieldAction = 'plaintext' | 'mask' | 'null' | 'ciphertext';

export interface FieldPlan {
  /** 0-based position in the row. */
  index: number;
  column: ProtectedColumn;
  action: FieldAction;
  /** Expected key domain of the cells in this field. */
  domainId: number;
  /**
   * Served from a column in protect's transition (proxy/protect/transition-rewrite.ts): each value is a cell, or
   * 0x00 followed by the plaintext still held in the old column (rendered by the same decision).
   */
  transition?: boolean;
  /**
   * A transition field: its key domain, whose current key makes the cell of a row still in plaintext when the
   * field is read as ciphertext (as the backfill would store it; moved rows hand out their stored cell).
   */
  keyDomain?: string;
}

export type RowErrorReason = 'not_a_cell' | 'wrong_domain' | 'undecryptable' | 'key_unavailable' | 'invalid_plaintext' | 'not_encryptable';

const REASON_TEXT: Record<RowErrorReason, string> = {
  not_a_cell: 'the stored value is not a mamori cell',
  wrong_domain: 'the cell belongs to another key domain',
  undecryptable: 'the cell cannot be decrypted',
  key_unavailable: 'the key of the cell is not available',
  invalid_plaintext: 'the plaintext still stored (the column is being converted) is not a valid value of its type',
  not_encryptable: 'the plaintext still stored (the column is being converted) cannot be encrypted now',
};

/** A protected field that cannot be read; the row must not be sent (fail closed). Names the column, never a value. */
export class RowError extends Error {
  readonly column: string;
  readonly reason: RowErrorReason;
  constructor(column: string, reason: RowErrorReason) {
    super(`protected column ${column}: ${REASON_TEXT[reason]}`);
    this.name = 'RowError';
    this.column = column;
    this.reason = reason;
  }
}

// ---------------------------------------------------------------------------------------------------------
// RowDescription

/**
 * Full 'T' message: each planned field gets the type clients saw before protection (plaintext, null), text
 * for masks, bytea as stored for ciphertext. Everything else, names included, is copied byte for byte.
 */
export function rewriteRowDescription(body: Buffer, plans: readonly FieldPlan[]): Buffer {
  if (body.length < 2) throw new ProtocolError('RowDescription: message is truncated');
  const n = body.readUInt16BE(0);
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = BE.RowDescription;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  // Offsets of each field's fixed part (after its name).
  const fixed = new Int32Array(n);
  let pos = 2;
  for (let i = 0; i < n; i++) {
    const nul = body.indexOf(0, pos);
    if (nul < 0 || nul + 19 > body.length) throw new ProtocolError('RowDescription: message is truncated');
    fixed[i] = nul + 1;
    pos = nul + 19;
  }
  if (pos !== body.length) throw new ProtocolError('RowDescription: unexpected trailing bytes');
  for (const p of plans) {
    if (p.index < 0 || p.index >= n) throw new ProtocolError('RowDescription: planned field out of range');
    if (p.action === 'ciphertext') continue;
    const t = p.action === 'mask' ? { oid: OID.text, typlen: -1, typmod: -1 } : p.column.display ?? logicalTypeOid(p.column.type);
    // A transition field is an expression (origin 0): it is reported as the column it serves.
    if (p.transition && p.column.tableOid !== undefined && p.column.attnum !== undefined) {
      out.writeUInt32BE(p.column.tableOid, 5 + fixed[p.index]!);
      out.writeInt16BE(p.column.attnum, 5 + fixed[p.index]! + 4);
    }
    const at = 5 + fixed[p.index]! + 6; // after table OID (4) and attnum (2)
    out.writeUInt32BE(t.oid, at);
    out.writeInt16BE(t.typlen, at + 4);
    out.writeInt32BE(t.typmod, at + 6);
  }
  return out;
}

/** Full 't' message with the declared types of the given 0-based parameters shown as their logical types. */
export function rewriteParameterDescription(
  body: Buffer,
  params: readonly { index: number; column: ProtectedColumn; array?: boolean }[],
): Buffer {
  if (body.length < 2) throw new ProtocolError('ParameterDescription: message is truncated');
  const n = body.readUInt16BE(0);
  if (body.length !== 2 + 4 * n) throw new ProtocolError('ParameterDescription: invalid length');
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = BE.ParameterDescription;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  for (const p of params) {
    if (p.index < 0 || p.index >= n) throw new ProtocolError('ParameterDescription: parameter out of range');
    const oid = (p.column.display ?? logicalTypeOid(p.column.type)).oid;
    out.writeUInt32BE(p.array === true ? arrayOid(oid) : oid, 5 + 2 + 4 * p.index);
  }
  return out;
}

export function arrayOid(elementOid: number): number {
  switch (elementOid) {
    case OID.text:
      return OID.textArray;
    case OID.varchar:
      return OID.varcharArray;
    case OID.bpchar:
      return OID.bpcharArray;
    case OID.int2:
      return OID.int2Array;
    case OID.int4:
      return OID.int4Array;
    case OID.int8:
      return OID.int8Array;
    case OID.date:
      return OID.dateArray;
    case OID.bytea:
      return OID.byteaArray;
    default:
      throw new RangeError(`no array type known for OID ${elementOid}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// DataRow

const A_PLAINTEXT = 0;
const A_MASK = 1;
const A_NULL = 2;
const A_CIPHERTEXT = 3;

/** Per planned field, everything the hot loop needs, computed once per result set. */
interface Slot {
  index: number;
  action: number;
  binary: boolean;
  domainId: number;
  type: KeyringTypeSpec;
  column: ProtectedColumn;
  name: string;
  transition: boolean;
  keyDomain: string | null;
  /** The keyDomain's cell maker, looked up at first use (undefined: not yet). */
  maker?: ((canonical: Buffer) => Buffer) | null;
}

function actionCode(a: FieldAction): number {
  switch (a) {
    case 'plaintext':
      return A_PLAINTEXT;
    case 'mask':
      return A_MASK;
    case 'null':
      return A_NULL;
    case 'ciphertext':
      return A_CIPHERTEXT;
  }
}

export interface RowRewriterOptions {
  /** Called once per shredded cell read (the caller audits it); the field is sent as NULL. */
  onShredded?(column: ProtectedColumn): void;
  /** The session's bytea_output: how the server sends cells in text format and how bytea values are rendered. */
  byteaOutput?: 'hex' | 'escape';
  /**
   * Called with each value released in plaintext (canonical bytes; the caller hashes them for the subject
   * trail, never keeps them). `stored`: the field's stored cell (a flag for its encoding + the bytes as sent),
   * which identifies the value without holding it; absent for a transition field, whose stored form can be
   * the plaintext itself.
   */
  onPlaintext?(column: ProtectedColumn, canonical: Buffer, stored?: string, format?: string): void;
  /**
   * The session's client encoding at the time a row is rendered (a SET earlier in the same query string
   * changes it between result sets); null when mamori has no converter for it. Default UTF-8.
   */
  codec?(): ClientCodec | null;
  /**
   * The maker of the domain's cells for a transition field read as ciphertext (canonical value → cell under the
   * current key, synchronous), or null when none can be made now.
   */
  cellMaker?(domain: string): ((canonical: Buffer) => Buffer) | null;
}

/**
 * Rewrites the DataRows of one result set. Construct it once per RowDescription (with the result formats
 * from Bind, expanded to one per field), then call rewrite() per row. Not reentrant (reuses scratch arrays).
 */
export class RowRewriter {
  private readonly slots: Slot[];
  /** The slots' field indexes, ascending. */
  private readonly indices: Int32Array;
  private readonly repl: (Buffer | null)[];
  private readonly escape: boolean;
  private readonly onShredded: ((column: ProtectedColumn) => void) | undefined;
  private readonly onPlaintext: ((column: ProtectedColumn, canonical: Buffer, stored?: string, format?: string) => void) | undefined;
  private readonly codec: (() => ClientCodec | null) | undefined;
  private readonly cellMaker: ((domain: string) => ((canonical: Buffer) => Buffer) | null) | undefined;
  private readonly maxIndex: number;

  constructor(
    plans: readonly FieldPlan[],
    resultFormats: readonly number[],
    private readonly keys: CellKeys,
    opts: RowRewriterOptions = {},
  ) {
    const sorted = [...plans].sort((a, b) => a.index - b.index);
    this.slots = [];
    let last = -1;
    for (const p of sorted) {
      if (!Number.isInteger(p.index) || p.index < 0) throw new RangeError('field plan index must be a non-negative integer');
      if (p.index === last) throw new RangeError('two plans for one field');
      last = p.index;
      const type = toLogicalType(p.column.type);
      this.slots.push({
        index: p.index,
        action: actionCode(p.action),
        binary: (resultFormats[p.index] ?? 0) === 1,
        domainId: p.domainId,
        type,
        column: p.column,
        name: columnName(p.column),
        transition: p.transition === true,
        keyDomain: p.keyDomain ?? null,
      });
    }
    this.maxIndex = last;
    this.repl = new Array<Buffer | null>(this.slots.length).fill(null);
    this.indices = Int32Array.from(this.slots, (x) => x.index);
    this.escape = opts.byteaOutput === 'escape';
    this.onShredded = opts.onShredded?.bind(opts);
    this.onPlaintext = opts.onPlaintext?.bind(opts);
    this.codec = opts.codec?.bind(opts);
    this.cellMaker = opts.cellMaker?.bind(opts);
  }

  /** DataRow body → full 'D' message. Throws RowError (fail closed) or ProtocolError (malformed row). */
  rewrite(body: Buffer): Buffer {
    const offsets = scanDataRow(body);
    if (this.maxIndex >= offsets.length >> 1) throw new ProtocolError('DataRow: fewer fields than described');
    const slots = this.slots;
    const repl = this.repl;
    let size = body.length;
    for (let k = 0; k < slots.length; k++) {
      const s = slots[k]!;
      const start = offsets[2 * s.index]!;
      const len = offsets[2 * s.index + 1]!;
      let r: Buffer | null;
      if (len === -1) r = null;
      else if (s.action === A_CIPHERTEXT) r = s.transition ? this.transitionCiphertext(s, body.subarray(start, start + len)) : checkedCiphertext(s, body.subarray(start, start + len), s.binary, this.escape);
      else if (s.action === A_NULL) r = null;
      else r = this.render(s, body.subarray(start, start + len));
      repl[k] = r;
      size += (r === null ? 0 : r.length) - (len > 0 ? len : 0);
    }
    const out = writeDataRow(body, offsets, this.indices, repl, size);
    repl.fill(null); // drop references to row data between calls
    return out;
  }

  /**
   * A transition field read as ciphertext: a moved row's cell as stored; a row still in plaintext gets its value
   * validated, normalized and encrypted now, in the field's format (bytea text or raw bytes).
   */
  private transitionCiphertext(s: Slot, stored: Buffer): Buffer {
    const plain = taggedPlaintext(s, fieldBytes(s, stored, s.binary, this.escape));
    if (plain === null) return checkedCiphertext(s, stored, s.binary, this.escape);
    if (s.maker === undefined) s.maker = s.keyDomain === null ? null : (this.cellMaker?.(s.keyDomain) ?? null);
    if (s.maker === null) throw new RowError(s.name, 'not_encryptable');
    const cell = s.maker(plain);
    if (s.binary) return cell;
    return this.escape ? encodeByteaEscape(cell) : encodeByteaHex(cell);
  }

  /** One stored field (bytea in the client's format) → the rendered value, or null for NULL. */
  private render(s: Slot, stored: Buffer): Buffer | null {
    const canonical = s.transition
      ? openTransitionField(s, stored, s.binary, this.escape, this.keys, this.onShredded)
      : openStoredCell(s, stored, s.binary, this.escape, this.keys, this.onShredded);
    if (canonical === null) return null;
    if (s.action !== A_MASK && this.onPlaintext) {
      this.onPlaintext(s.column, canonical, s.transition ? undefined : stored.toString('latin1'), s.binary ? 'b' : this.escape ? 'e' : 'h');
    }
    return renderCanonical(s, canonical, s.action === A_MASK, s.binary, this.escape, this.codec);
  }
}

/** What opening and rendering a protected field needs to know about it. */
export interface CellField {
  name: string;
  column: ProtectedColumn;
  domainId: number;
  type: KeyringTypeSpec;
}

/**
 * A stored protected field (bytea: raw bytes when `binary`, else its text output, hex or escape) → the
 * canonical plaintext, or null for a shredded cell (after `onShredded`). Throws RowError — naming the column,
 * never a value — for anything that is not a readable cell of the field's key domain. Shared by result rows
 * and COPY TO, so both fail closed the same way.
 */
export function openStoredCell(s: CellField, stored: Buffer, binary: boolean, escape: boolean, keys: CellKeys,
  onShredded?: (column: ProtectedColumn) => void): Buffer | null {
  let cell: Buffer;
  if (binary) cell = stored;
  else {
    try {
      cell = decodeByteaText(stored, escape);
    } catch (e) {
      if (e instanceof ByteaSyntaxError) throw new RowError(s.name, 'not_a_cell');
      throw e;
    }
  }
  if (!isCell(cell)) throw new RowError(s.name, 'not_a_cell');
  if (cell.readUInt32BE(4) !== s.domainId) throw new RowError(s.name, 'wrong_domain');
  const key = keys.get(s.domainId, cell.readUInt32BE(8));
  if (key === undefined) throw new RowError(s.name, 'key_unavailable');
  if (key === 'shredded') {
    onShredded?.(s.column);
    return null;
  }
  try {
    return decryptCell(cell, key, { domainId: s.domainId });
  } catch {
    throw new RowError(s.name, 'undecryptable');
  }
}

/**
 * A field served from a column in protect's transition: a cell (opened as any stored cell), or 0x00 + the
 * UTF-8 plaintext still in the old column, validated and normalized for the logical type like a written value.
 * Either way the caller renders the canonical value by the field's decision.
 */
export function openTransitionField(s: CellField, stored: Buffer, binary: boolean, escape: boolean, keys: CellKeys,
  onShredded?: (column: ProtectedColumn) => void): Buffer | null {
  const value = fieldBytes(s, stored, binary, escape);
  return taggedPlaintext(s, value) ?? openStoredCell(s, value, true, escape, keys, onShredded);
}

/**
 * A transition field's value that is 0x00 + the UTF-8 plaintext still in the old column → its canonical value,
 * validated and normalized like a written value; null when the value is not so tagged (a cell, or not a cell).
 */
function taggedPlaintext(s: CellField, value: Buffer): Buffer | null {
  if (value.length === 0 || value[0] !== 0) return null;
  const c = canonicalFromText(s.type, value.toString('utf8', 1));
  if (!c.ok) throw new RowError(s.name, 'invalid_plaintext');
  return c.value;
}

const HEX_MAGIC = Buffer.from('\\xff6d', 'latin1'); // bytea_output hex of a cell's magic FF 6D
const ESCAPE_MAGIC = Buffer.from('\\377m', 'latin1'); // the same in bytea_output escape

/**
 * A stored field handed out as ciphertext, checked to be a cell (its magic, and in binary its minimum length)
 * without decoding it: anything else in a field mapped to a protected column fails closed instead of passing.
 */
export function checkedCiphertext(s: { name: string }, stored: Buffer, binary: boolean, escape: boolean): Buffer {
  const magic = escape ? ESCAPE_MAGIC : HEX_MAGIC;
  const ok = binary ? isCell(stored) : stored.length > magic.length && stored.compare(magic, 0, magic.length, 0, magic.length) === 0;
  if (!ok) throw new RowError(s.name, 'not_a_cell');
  return stored;
}

/** A bytea field's bytes (raw when binary, else decoded from its text output). */
function fieldBytes(s: CellField, stored: Buffer, binary: boolean, escape: boolean): Buffer {
  try {
    return binary ? stored : decodeByteaText(stored, escape);
  } catch (e) {
    if (e instanceof ByteaSyntaxError) throw new RowError(s.name, 'not_a_cell');
    throw e;
  }
}

const TEXT_CANONICAL = new Set(['text', 'varchar', 'char', 'mynumber', 'corporate_number']);

/**
 * Canonical plaintext → the value as the client asked for it: the mask (null where the type has none), or
 * the logical type's binary or text rendering (text-like types: the canonical bytes are both), text in the
 * session's client encoding (PostgreSQL converts a text column's binary send too). `codec` gives that
 * encoding when the value is not ASCII; without it the value stays UTF-8.
 */
export function renderCanonical(s: CellField, canonical: Buffer, mask: boolean, binary: boolean, escape: boolean,
  codec?: () => ClientCodec | null): Buffer | null {
  try {
    if (mask) {
      const m = maskCanonical(s.type, canonical);
      return m === null ? null : inClientEncoding(s, Buffer.from(m, 'utf8'), codec);
    }
    if (TEXT_CANONICAL.has(s.type.type)) return inClientEncoding(s, binaryFromCanonical(s.type, canonical), codec);
    if (binary) return binaryFromCanonical(s.type, canonical);
    if (s.type.type === 'bytea') return escape ? encodeByteaEscape(canonical) : encodeByteaHex(canonical);
    return Buffer.from(textFromCanonical(s.type, canonical), 'latin1');
  } catch (e) {
    // A canonical value of the wrong shape (e.g. an int4 cell of 3 bytes) is corrupt data, not a bug here.
    if (e instanceof RangeError) throw new RowError(s.name, 'undecryptable');
    throw e;
  }
}


function isAscii(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i]! >= 0x80) return false;
  return true;
}

/**
 * UTF-8 text of a protected field → the client encoding's bytes. A character the encoding cannot represent
 * is PostgreSQL's 22P05, but the error names the column instead of printing the character's bytes.
 */
function inClientEncoding(s: CellField, utf8: Buffer, codec: (() => ClientCodec | null) | undefined): Buffer {
  if (codec === undefined || isAscii(utf8)) return utf8;
  const c = codec();
  if (c === null) {
    throw new MamoriError('object_not_in_prerequisite_state', `protected column ${s.name} holds text that mamori cannot convert to the session's client_encoding (use UTF8 or an encoding listed in docs/results.md)`);
  }
  if (c.utf8) return utf8;
  const out = c.encode(utf8.toString('utf8'));
  if (out === null) throw new MamoriError('untranslatable_character', `a character in protected column ${s.name} has no equivalent in encoding "${c.name}"`);
  return out;
}

/**
 * A DataRow with the fields at `indices` (ascending) replaced by `repl` (null: SQL NULL), as a full 'D' message
 * in one allocation: the untouched stretches are copied, each replaced field gets its new length and bytes.
 * `size` is the new body's length.
 */
export function writeDataRow(body: Buffer, offsets: Int32Array, indices: ArrayLike<number>, repl: readonly (Buffer | null)[], size: number): Buffer {
  const out = Buffer.allocUnsafe(5 + size);
  out[0] = BE.DataRow;
  out.writeInt32BE(4 + size, 1);
  let o = 5;
  let from = 0;
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k]!;
    const start = offsets[2 * i]!;
    const len = offsets[2 * i + 1]!;
    o = copySpan(body, from, start - 4, out, o);
    const r = repl[k]!;
    if (r === null) {
      out.writeInt32BE(-1, o);
      o += 4;
    } else {
      out.writeInt32BE(r.length, o);
      o += 4;
      o = copySpan(r, 0, r.length, out, o);
    }
    from = len > 0 ? start + len : start;
  }
  copySpan(body, from, body.length, out, o);
  return out;
}

/** src[s, e) → out at o; the new offset. Row pieces are mostly a few bytes: a loop beats a native copy. */
function copySpan(src: Buffer, s: number, e: number, out: Buffer, o: number): number {
  if (e - s > 64) return o + src.copy(out, o, s, e);
  for (let p = s; p < e; p++) out[o++] = src[p]!;
  return o;
}
