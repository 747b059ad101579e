// Cells that reach a client through result fields of unknown origin (DESIGN.md §5): a function result
// (`SELECT f()`, `SELECT * FROM f()`), an expression (`f()::text`), or a column of a table that is not
// protected (a copy of cells). Such fields are not mapped to a protected column by RowDescription, so each
// value that carries a mamori cell header is decided by the header's key domain instead. Only fields whose
// type can carry a cell are looked at, and each value costs a compare of its first bytes (docs/results.md).
import { scanDataRow } from '../wire/backend.js';
import { ProtocolError } from '../wire/types.js';
import type { FieldDescription } from '../wire/types.js';
import type { ProtectedColumn } from '../sql/types.js';
import { MamoriError } from '../errors.js';
import { ByteaSyntaxError, decodeByteaText, encodeByteaEscape, encodeByteaHex } from './bytea.js';
import type { CellKeys } from './keys.js';
import { columnName, toLogicalType } from './logical.js';
import { openStoredCell, renderCanonical, RowError, writeDataRow, type CellField, type FieldAction } from './rows.js';
import type { ClientCodec } from './client-encoding.js';

/**
 * How a field can carry a cell: `bytea` (bytea itself and the guard domains, which RowDescription reports
 * by their base type) as raw bytes in binary format or as bytea text (`\x…` hex or escape) in text format;
 * `text` (text, varchar, char(n), name, unknown, cstring: e.g. `f()::text`, `byteaout(f())`) as the bytea text
 * form in either format (their binary form is the text itself).
 */
export type CarrierKind = 'bytea' | 'text';

/** PostgreSQL's FirstNormalObjectId: OIDs below it are built in. */
const FIRST_USER_OID = 16384;

const CARRIERS: ReadonlyMap<number, CarrierKind> = new Map<number, CarrierKind>([
  [17, 'bytea'], // bytea (and domains over it: mamori.mynumber …)
  [25, 'text'], // text
  [1043, 'text'], // varchar
  [1042, 'text'], // bpchar
  [705, 'text'], // unknown
  [2275, 'text'], // cstring
  [19, 'text'], // name: 63 bytes hold a cell's header and most of its body (`f()::text::name`)
  [142, 'text'], // xml: text content is a valid fragment (`f()::text::xml`)
]);

/** The carrier kind of a result type OID, or null when no value of that type can be a cell. */
export function carrierKind(typeOid: number): CarrierKind | null {
  // Types created in the database (OIDs from 16384: extensions such as citext, user-defined types) are looked
  // at in their text form too: mamori cannot know that a cast into one does not keep the cell's text.
  return CARRIERS.get(typeOid) ?? (typeOid >= FIRST_USER_OID ? 'text' : null);
}

/** A result field that is not mapped to a protected column but can carry a cell. */
export interface OriginField {
  index: number;
  /** The result column's name as the client sees it (used in refusals). */
  name: string;
  kind: CarrierKind;
  binary: boolean;
  /** 0 for a function or expression result; else the (unprotected) table the column comes from. */
  tableOid: number;
  attnum: number;
}

/**
 * The fields of a RowDescription that need inspection: cell-capable types not already planned as protected
 * columns (`mapped`). `formats` are the result formats per field (from Bind, or the RowDescription's own).
 */
export function originFields(fields: readonly FieldDescription[], mapped: ReadonlySet<number>, formats: readonly number[]): OriginField[] {
  const out: OriginField[] = [];
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i]!;
    const kind = carrierKind(f.typeOid);
    if (kind === null || mapped.has(i)) continue;
    out.push({ index: i, name: f.name, kind, binary: (formats[i] ?? 0) === 1, tableOid: f.tableOid, attnum: f.attnum });
  }
  return out;
}

/**
 * Walks a RowDescription's fields without decoding names: true as soon as `visit` says so for one. Used to
 * let result sets with nothing to look at pass without building anything.
 */
export function someField(body: Buffer, visit: (tableOid: number, attnum: number, typeOid: number) => boolean): boolean {
  if (body.length < 2) throw new ProtocolError('RowDescription: message is truncated');
  const n = body.readUInt16BE(0);
  let pos = 2;
  for (let i = 0; i < n; i++) {
    const nul = body.indexOf(0, pos);
    if (nul < 0 || nul + 19 > body.length) throw new ProtocolError('RowDescription: message is truncated');
    if (visit(body.readUInt32BE(nul + 1), body.readInt16BE(nul + 5), body.readUInt32BE(nul + 7))) return true;
    pos = nul + 19;
  }
  return false;
}

/** True when some field of the RowDescription has a type that can carry a cell. */
export function mayCarryCells(body: Buffer): boolean {
  return someField(body, (_t, _a, typeOid) => carrierKind(typeOid) !== null);
}

const BACKSLASH = 0x5c;

/** Hex digit value (either case), or -1. */
function hexValue(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** The byte written as two hex digits at `i`, or -1. */
function hexPair(v: Buffer, i: number): number {
  const hi = hexValue(v[i]);
  const lo = hexValue(v[i + 1]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// `\377m\001`: a cell header's first bytes in bytea_output = escape.
const ESCAPE_PREFIX = Buffer.from('\\377m\\001', 'latin1');

/**
 * The key-domain id named by a value's cell header, or -1 when the value does not start like a cell (magic,
 * format version 1, mode 1 or 2, a domain id). `raw` is true for the raw bytes of a binary bytea field;
 * otherwise the value is bytea text, hex or escape (whatever the session's bytea_output, since a text field
 * may carry either). The first byte decides almost every value: 0xFF never starts UTF-8 text, `\` rarely.
 */
export function headerDomain(v: Buffer, start: number, len: number, raw: boolean): number {
  if (raw) {
    if (len < 12 || v[start] !== 0xff || v[start + 1] !== 0x6d || v[start + 2] !== 0x01) return -1;
    const mode = v[start + 3];
    return mode === 1 || mode === 2 ? v.readUInt32BE(start + 4) : -1;
  }
  if (len < 18 || v[start] !== BACKSLASH) return -1;
  if (v[start + 1] === 0x78) {
    // hex: \x ff 6d 01 0m dddddddd (either case: upper-case digits are valid bytea input too)
    if (hexPair(v, start + 2) !== 0xff || hexPair(v, start + 4) !== 0x6d || hexPair(v, start + 6) !== 0x01) return -1;
    const mode = hexPair(v, start + 8);
    if (mode !== 1 && mode !== 2) return -1;
    let id = 0;
    for (let k = 0; k < 4; k++) {
      const b = hexPair(v, start + 10 + 2 * k);
      if (b < 0) return -1;
      id = id * 256 + b;
    }
    return id;
  }
  if (v.compare(ESCAPE_PREFIX, 0, ESCAPE_PREFIX.length, start, start + ESCAPE_PREFIX.length) !== 0) return -1;
  // escape output: decode the value (rare: escape output of a value that starts like a cell)
  const cell = decodeText(v.subarray(start, start + len));
  return cell === null ? -1 : headerDomain(cell, 0, cell.length, true);
}

function decodeText(text: Buffer): Buffer | null {
  try {
    return decodeByteaText(trimSpaces(text), true);
  } catch (e) {
    if (e instanceof ByteaSyntaxError) return null;
    throw e;
  }
}

/** char(n) pads the text form with spaces; bytea text never ends in one. */
function trimSpaces(b: Buffer): Buffer {
  let end = b.length;
  while (end > 0 && b[end - 1] === 0x20) end--;
  return end === b.length ? b : b.subarray(0, end);
}

/** What the read policy gives this session for the cells of one key domain. */
export type DomainDecision =
  | { action: FieldAction; column: ProtectedColumn }
  /** Refused: the statement's result ends with this error (deny, an unknown domain, a setting that stops rendering). */
  | { refuse: (field: OriginField) => MamoriError };

/** Ends a result set: a value of unknown origin that this session may not receive. */
export class OriginRefusal extends Error {
  constructor(readonly error: MamoriError) {
    super(error.message);
    this.name = 'OriginRefusal';
  }
}

/** Stands for the field of a COPY TO row (its fields are not told apart). */
export const COPY_ORIGIN: OriginField = { index: -1, name: '', kind: 'bytea', binary: false, tableOid: 0, attnum: 0 };

/** How a refusal names where a cell came from (the column's name, never a value). */
export function describeOrigin(f: Pick<OriginField, 'name' | 'tableOid' | 'attnum'>): string {
  if (f === COPY_ORIGIN) return 'a row of COPY TO of unknown origin (a query, function or table that is not protected)';
  return f.tableOid === 0
    ? `result column "${f.name}" of unknown origin (a function or expression result)`
    : `result column "${f.name}" of a column that is not protected (table OID ${f.tableOid}, attnum ${f.attnum})`;
}

export interface OriginInspectorOptions {
  /** The session's bytea_output: how bytea fields in text format are rendered back. */
  byteaOutput?: 'hex' | 'escape';
  /** Called once per shredded cell read (the field is sent as NULL). */
  onShredded?(column: ProtectedColumn): void;
  /** Called with each cell released (any action but deny), e.g. to audit the read. */
  onRelease?(column: ProtectedColumn, action: FieldAction, field: OriginField): void;
  /** Called with each value released in plaintext (canonical bytes, to be hashed, never kept). */
  onPlaintext?(column: ProtectedColumn, canonical: Buffer): void;
  /** The session's client encoding for values released into text fields (bytea fields are not converted). */
  codec?(): ClientCodec | null;
}

/**
 * Inspects the DataRows of one result set whose fields include `fields` (of unknown origin). A row none of
 * whose candidate values carries a cell header is left as is (null); a row with cells is rewritten per the
 * domain's decision, or ends the result set (OriginRefusal). Throws RowError for a cell of a known domain
 * that cannot be opened (fail closed, as for protected columns).
 */
export class OriginInspector {
  private readonly decided = new Map<number, DomainDecision>();
  private readonly escape: boolean;
  private readonly codec: (() => ClientCodec | null) | undefined;
  private readonly fields: readonly OriginField[];
  /** Per field position up to the last candidate: 0 not looked at, 1 raw bytes (binary bytea), 2 bytea text. */
  private readonly look: Uint8Array;

  constructor(
    fields: readonly OriginField[],
    private readonly decide: (domainId: number) => DomainDecision,
    private readonly keys: CellKeys,
    private readonly opts: OriginInspectorOptions = {},
  ) {
    this.escape = opts.byteaOutput === 'escape';
    this.codec = opts.codec?.bind(opts);
    this.fields = [...fields].sort((a, b) => a.index - b.index);
    this.look = new Uint8Array((this.fields.at(-1)?.index ?? -1) + 1);
    for (const f of this.fields) this.look[f.index] = f.kind === 'bytea' && f.binary ? 1 : 2;
  }

  /**
   * DataRow body (no header) → a full 'D' message when a value was rewritten, else null. The common case —
   * no value starts like a cell — walks the field lengths once and allocates nothing.
   */
  inspect(body: Buffer): Buffer | null {
    const look = this.look;
    if (body.length < 2 || body.readUInt16BE(0) < look.length) throw new ProtocolError('DataRow: fewer fields than described');
    let pos = 2;
    let found = false;
    for (let i = 0; i < look.length; i++) {
      if (pos + 4 > body.length) throw new ProtocolError('DataRow: message is truncated');
      const len = body.readInt32BE(pos);
      pos += 4;
      if (len < -1 || len > body.length - pos) throw new ProtocolError('DataRow: invalid field length');
      if (len > 0) {
        if (look[i] !== 0 && headerDomain(body, pos, len, look[i] === 1) >= 0) {
          found = true;
          break;
        }
        pos += len;
      }
    }
    return found ? this.rewrite(body) : null;
  }

  /** A row with at least one cell: each cell decided by its domain (refused, or rendered per the decision). */
  private rewrite(body: Buffer): Buffer | null {
    const offsets = scanDataRow(body);
    let repl: Map<number, Buffer | null> | null = null;
    for (const f of this.fields) {
      if (2 * f.index >= offsets.length) throw new ProtocolError('DataRow: fewer fields than described');
      const start = offsets[2 * f.index]!;
      const len = offsets[2 * f.index + 1]!;
      if (len <= 0) continue;
      const domainId = headerDomain(body, start, len, f.kind === 'bytea' && f.binary);
      if (domainId < 0) continue;
      const d = this.decision(domainId);
      if ('refuse' in d) throw new OriginRefusal(d.refuse(f));
      this.opts.onRelease?.(d.column, d.action, f);
      if (d.action === 'ciphertext') continue; // the cell as stored, in the field's own form
      repl ??= new Map();
      repl.set(f.index, d.action === 'null' ? null : this.render(f, d, domainId, body.subarray(start, start + len)));
    }
    return repl === null ? null : rebuildRow(body, offsets, repl);
  }

  private decision(domainId: number): DomainDecision {
    let d = this.decided.get(domainId);
    if (d === undefined) {
      d = this.decide(domainId);
      this.decided.set(domainId, d);
    }
    return d;
  }

  /**
   * A cell → the value in the field's own type: a text field gets the logical value's text form; a bytea
   * field gets the bytes of that text (the raw plaintext for a bytea column), as bytea in the field's format.
   */
  private render(f: OriginField, d: { action: FieldAction; column: ProtectedColumn }, domainId: number, stored: Buffer): Buffer | null {
    const raw = f.kind === 'bytea' && f.binary;
    const cell = raw ? stored : decodeText(stored);
    const s: CellField = { name: columnName(d.column), column: d.column, domainId, type: toLogicalType(d.column.type) };
    if (cell === null) throw new RowError(s.name, 'not_a_cell');
    const canonical = openStoredCell(s, cell, true, false, this.keys, this.opts.onShredded);
    if (canonical === null) return null;
    const mask = d.action === 'mask';
    if (!mask) this.opts.onPlaintext?.(d.column, canonical);
    if (f.kind === 'text') return renderCanonical(s, canonical, mask, false, this.escape, this.codec);
    const bytes = !mask && s.type.type === 'bytea' ? canonical : renderCanonical(s, canonical, mask, false, this.escape);
    if (bytes === null || f.binary) return bytes;
    return this.escape ? encodeByteaEscape(bytes) : encodeByteaHex(bytes);
  }
}

/** A DataRow with some fields replaced (null: SQL NULL), as a full 'D' message in one allocation. */
function rebuildRow(body: Buffer, offsets: Int32Array, repl: ReadonlyMap<number, Buffer | null>): Buffer {
  const indices = [...repl.keys()].sort((x, y) => x - y);
  const values = indices.map((i) => repl.get(i) ?? null);
  let size = body.length;
  for (let k = 0; k < indices.length; k++) {
    const len = offsets[2 * indices[k]! + 1]!;
    size += (values[k] === null ? 0 : values[k]!.length) - (len > 0 ? len : 0);
  }
  return writeDataRow(body, offsets, indices, values, size);
}

// ---------------------------------------------------------------------------------------------------------
// COPY … TO STDOUT of rows that were not mapped to a protected column

const HEX_MARK = Buffer.from('xff6d01', 'latin1');
const BINARY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/**
 * The key-domain id of the first cell header in one CopyData message of a COPY TO, or -1. Text and CSV
 * rows are searched for the bytea hex form (`\x` then the header; COPY text doubles the backslash), which
 * also finds a cell's text form in a text column; binary rows are walked field by field, each field checked
 * as raw bytes and as bytea text. A match anywhere in a text row counts (fail closed: COPY rows are not
 * split into fields here).
 */
export function copyCellDomain(data: Buffer, binary: boolean): number {
  if (!binary) {
    for (let p = data.indexOf(HEX_MARK); p >= 0; p = data.indexOf(HEX_MARK, p + 1)) {
      if (p === 0 || data[p - 1] !== BACKSLASH) continue;
      const d = headerDomain(data, p - 1, data.length - p + 1, false);
      if (d >= 0) return d;
    }
    return -1;
  }
  let pos = 0;
  if (data.length >= 19 && data.compare(BINARY_SIGNATURE, 0, 11, 0, 11) === 0) pos = 19 + data.readUInt32BE(15);
  while (pos + 2 <= data.length) {
    const n = data.readInt16BE(pos);
    pos += 2;
    if (n < 0) break; // trailer
    for (let i = 0; i < n && pos + 4 <= data.length; i++) {
      const len = data.readInt32BE(pos);
      pos += 4;
      if (len <= 0) continue;
      const end = Math.min(pos + len, data.length);
      const d = headerDomain(data, pos, end - pos, true);
      if (d >= 0) return d;
      const t = headerDomain(data, pos, end - pos, false);
      if (t >= 0) return t;
      pos = end;
    }
  }
  return -1;
}
