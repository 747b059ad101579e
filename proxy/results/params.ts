// Parameter and literal transforms for protected columns (extended and simple protocol): each value bound
// for a protected column is validated and normalized for its logical type, encrypted to a cell and sent as
// bytea. Synchronous: the caller's `encrypt` holds the already-unwrapped key.
import {
  canonicalFromBinary,
  canonicalFromText,
  type LogicalTypeSpec as KeyringTypeSpec,
} from '../../keyring/logical-types.js';
import { decodeBind, encodeBind, expandFormats } from '../wire/frontend.js';
import { FE, ProtocolError, type Field } from '../wire/types.js';
import type { ProtectedColumn } from '../sql/types.js';
import { ByteaSyntaxError, parseByteaInput } from './bytea.js';
import { OID, columnName, toLogicalType } from './logical.js';
import type { ClientCodec } from './client-encoding.js';

export interface ParamPlan {
  /** 1-based $n. */
  index: number;
  column: ProtectedColumn;
  purpose: 'write' | 'search';
  /** `= ANY($n)`: an array of values for the column. */
  array?: boolean;
}

export type Encrypt = (col: ProtectedColumn, canonical: Buffer) => Buffer;

/** A value for a protected column that cannot be stored or searched; names the column and the problem, never the value. */
export class ParamError extends Error {
  readonly sqlstate: '22P02' | '22P03' | '22021';
  readonly column: string;
  constructor(sqlstate: '22P02' | '22P03' | '22021', column: string, reason: string) {
    super(`invalid value for protected column ${column}: ${reason}`);
    this.name = 'ParamError';
    this.sqlstate = sqlstate;
    this.column = column;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(b: Uint8Array): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

const INT_WIDTHS: Record<number, number> = { [OID.int2]: 2, [OID.int4]: 4, [OID.int8]: 8 };
const TEXTLIKE = new Set(['text', 'varchar', 'char', 'mynumber', 'corporate_number']);

/** The column's logical type and name, resolved once per call, and the session's client encoding. */
interface Target {
  col: ProtectedColumn;
  type: KeyringTypeSpec;
  name: string;
  codec: ClientCodec | null;
}

function target(col: ProtectedColumn, codec: ClientCodec | null): Target {
  return { col, type: toLogicalType(col.type), name: columnName(col), codec };
}

function fromText(t: Target, text: string): Buffer {
  const r = canonicalFromText(t.type, text);
  if (!r.ok) throw new ParamError('22P02', t.name, r.reason);
  return r.value;
}

function textOf(t: Target, bytes: Uint8Array, sqlstate: '22P02' | '22P03'): string {
  const s = decodeUtf8(bytes);
  if (s === null) throw new ParamError(sqlstate, t.name, 'value is not valid UTF-8');
  return s;
}

/**
 * A value as the client sent it (text format, or binary text-family, which PostgreSQL's textrecv converts
 * too) → its text, read in the session's client encoding as the server would convert it.
 */
function clientText(t: Target, bytes: Uint8Array): string {
  if (t.codec === null) {
    // No converter: only ASCII means the same in every client encoding.
    for (const b of bytes) if (b >= 0x80) throw new ParamError('22021', t.name, 'the value cannot be converted from the session\'s client_encoding (use UTF8 or an encoding listed in docs/results.md)');
  }
  const s = (t.codec ?? UTF8_ONLY).decode(bytes);
  if (s === null) throw new ParamError('22021', t.name, `invalid byte sequence for encoding "${t.codec?.name ?? 'UTF8'}"`);
  return s;
}

const UTF8_ONLY = { decode: decodeUtf8 };

/** bytea input text (`\x…` or escape format) → bytes, as the server would read a bytea parameter. */
function byteaInput(t: Target, bytes: Uint8Array): Buffer {
  try {
    return parseByteaInput(bytes);
  } catch (e) {
    if (e instanceof ByteaSyntaxError) throw new ParamError('22P02', t.name, e.message);
    throw e;
  }
}

/**
 * One value → canonical plaintext. `declared` is the type the client gave (Parse or the array's element
 * type; 0 = none): a value declared bytea holds the bytes of the value's text (catalog-reading ORMs).
 */
function canonicalOf(t: Target, v: Buffer, binary: boolean, declared: number): Buffer {
  const lt = t.type.type;
  if (declared === OID.bytea && lt !== 'bytea') {
    // bytea input text is converted from the client encoding like any text parameter; the bytes it
    // stands for (and binary bytea) are the value's UTF-8 text, unconverted.
    const bytes = binary ? v : byteaInput(t, Buffer.from(clientText(t, v), 'utf8'));
    return fromText(t, textOf(t, bytes, '22P02'));
  }
  if (!binary) return fromText(t, clientText(t, v));
  // Binary format: the declared type (when it is an integer) says the width on the wire.
  const width = INT_WIDTHS[declared];
  if (width !== undefined && lt !== 'bytea' && lt !== 'date') {
    if (v.length !== width) throw new ParamError('22P03', t.name, `binary integer must be ${width} bytes`);
    const n = width === 2 ? v.readInt16BE(0) : width === 4 ? v.readInt32BE(0) : v.readBigInt64BE(0);
    return fromText(t, String(n)); // range-checked against the logical type (or validated as its text)
  }
  if (TEXTLIKE.has(lt)) return fromText(t, clientText(t, v));
  if (lt === 'int2' || lt === 'int4' || lt === 'int8' || lt === 'date') {
    const want = lt === 'int2' ? 2 : lt === 'int8' ? 8 : 4;
    if (v.length !== want) throw new ParamError('22P03', t.name, `binary ${lt} must be ${want} bytes`);
  }
  const r = canonicalFromBinary(t.type, v);
  if (!r.ok) throw new ParamError('22P02', t.name, r.reason);
  return r.value;
}

// ---- arrays ----------------------------------------------------------------------------------------------

const malformed = (t: Target, why: string): ParamError => new ParamError('22P02', t.name, `malformed array literal: ${why}`);

function isArraySpace(c: string): boolean {
  return c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\v' || c === '\f';
}

/** PostgreSQL array text (one dimension, ',' delimiter) → element texts, null for NULL. */
export function parseArrayText(s: string): { ok: true; items: (string | null)[] } | { ok: false; reason: string } {
  let i = 0;
  const n = s.length;
  const skip = (): void => {
    while (i < n && isArraySpace(s[i]!)) i++;
  };
  skip();
  if (s[i] === '[') return { ok: false, reason: 'array dimension decorations are not supported' };
  if (s[i] !== '{') return { ok: false, reason: 'array value must start with "{"' };
  i++;
  const items: (string | null)[] = [];
  skip();
  if (s[i] === '}') {
    i++;
    skip();
    return i === n ? { ok: true, items } : { ok: false, reason: 'junk after closing right brace' };
  }
  for (;;) {
    skip();
    if (i >= n) return { ok: false, reason: 'unexpected end of input' };
    if (s[i] === '{') return { ok: false, reason: 'multidimensional arrays are not supported' };
    let value = '';
    let quotedOrEscaped = false;
    if (s[i] === '"') {
      quotedOrEscaped = true;
      i++;
      for (;;) {
        if (i >= n) return { ok: false, reason: 'unterminated quoted element' };
        const c = s[i]!;
        if (c === '\\') {
          if (i + 1 >= n) return { ok: false, reason: 'unexpected end of input' };
          value += s[i + 1]!;
          i += 2;
        } else if (c === '"') {
          i++;
          break;
        } else {
          value += c;
          i++;
        }
      }
      skip();
    } else {
      let trailing = 0; // unescaped whitespace at the end is not part of the value
      for (;;) {
        if (i >= n) return { ok: false, reason: 'unexpected end of input' };
        const c = s[i]!;
        if (c === ',' || c === '}') break;
        if (c === '"' || c === '{') return { ok: false, reason: 'unexpected character in element' };
        if (c === '\\') {
          if (i + 1 >= n) return { ok: false, reason: 'unexpected end of input' };
          quotedOrEscaped = true;
          value += s[i + 1]!;
          trailing = 0;
          i += 2;
          continue;
        }
        value += c;
        trailing = isArraySpace(c) ? trailing + 1 : 0;
        i++;
      }
      value = value.slice(0, value.length - trailing);
      if (value === '' && !quotedOrEscaped) return { ok: false, reason: 'empty unquoted element' };
    }
    items.push(!quotedOrEscaped && value.toUpperCase() === 'NULL' ? null : value);
    const c = s[i];
    if (c === ',') {
      i++;
      continue;
    }
    if (c === '}') {
      i++;
      skip();
      return i === n ? { ok: true, items } : { ok: false, reason: 'junk after closing right brace' };
    }
    return { ok: false, reason: 'expected "," or "}"' };
  }
}

/** The array's elements in binary form plus the element type the client declared. */
function parseArrayBinary(t: Target, v: Buffer): { elemType: number; items: Field[] } {
  const bad = (why: string): ParamError => new ParamError('22P03', t.name, `malformed binary array: ${why}`);
  if (v.length < 12) throw bad('header is truncated');
  const ndim = v.readInt32BE(0);
  const flags = v.readInt32BE(4);
  const elemType = v.readUInt32BE(8);
  if (flags !== 0 && flags !== 1) throw bad('invalid flags');
  if (ndim === 0) {
    if (v.length !== 12) throw bad('unexpected trailing bytes');
    return { elemType, items: [] };
  }
  if (ndim !== 1) throw bad(ndim > 1 ? 'multidimensional arrays are not supported' : 'invalid number of dimensions');
  if (v.length < 20) throw bad('header is truncated');
  const count = v.readInt32BE(12);
  if (count < 0 || count * 4 > v.length - 20) throw bad('invalid element count');
  const items = new Array<Field>(count);
  let pos = 20;
  for (let k = 0; k < count; k++) {
    if (v.length - pos < 4) throw bad('element is truncated');
    const len = v.readInt32BE(pos);
    pos += 4;
    if (len === -1) {
      items[k] = null;
      continue;
    }
    if (len < 0 || len > v.length - pos) throw bad('element is truncated');
    items[k] = v.subarray(pos, pos + len);
    pos += len;
  }
  if (pos !== v.length) throw bad('unexpected trailing bytes');
  return { elemType, items };
}

/** bytea[] in binary array format: one dimension, lower bound 1, element type bytea. */
export function encodeByteaArray(items: readonly Field[]): Buffer {
  if (items.length === 0) {
    const empty = Buffer.alloc(12);
    empty.writeUInt32BE(OID.bytea, 8);
    return empty;
  }
  let size = 20;
  let hasNull = 0;
  for (const it of items) {
    size += 4 + (it === null ? 0 : it.length);
    if (it === null) hasNull = 1;
  }
  const out = Buffer.allocUnsafe(size);
  out.writeInt32BE(1, 0);
  out.writeInt32BE(hasNull, 4);
  out.writeUInt32BE(OID.bytea, 8);
  out.writeInt32BE(items.length, 12);
  out.writeInt32BE(1, 16);
  let o = 20;
  for (const it of items) {
    if (it === null) {
      out.writeInt32BE(-1, o);
      o += 4;
    } else {
      out.writeInt32BE(it.length, o);
      o += 4;
      o += it.copy(out, o);
    }
  }
  return out;
}

function encryptArray(t: Target, v: Buffer, binary: boolean, declared: number, encrypt: Encrypt): Buffer {
  const cells: Field[] = [];
  if (binary) {
    const { elemType, items } = parseArrayBinary(t, v);
    for (const it of items) cells.push(it === null ? null : encrypt(t.col, canonicalOf(t, it, true, elemType)));
  } else {
    const parsed = parseArrayText(clientText(t, v));
    if (!parsed.ok) throw malformed(t, parsed.reason);
    // Elements of a declared bytea[] are bytea input text; of anything else, the logical type's text.
    const elemDeclared = declared === OID.byteaArray ? OID.bytea : 0;
    for (const it of parsed.items) {
      cells.push(it === null ? null : encrypt(t.col, canonicalOf(utf8Target(t), Buffer.from(it, 'utf8'), false, elemDeclared)));
    }
  }
  return encodeByteaArray(cells);
}

/** The same target for text that is already UTF-8 (array elements after the array text was converted). */
function utf8Target(t: Target): Target {
  return t.codec?.utf8 === true ? t : { ...t, codec: UTF8_CODEC };
}

const UTF8_CODEC: ClientCodec = { name: 'UTF8', utf8: true, asciiSafe: true, decode: decodeUtf8, encode: (s) => Buffer.from(s, 'utf8') };

function sameTarget(a: ParamPlan, b: ParamPlan): boolean {
  return (
    a.column.domain === b.column.domain &&
    a.column.mode === b.column.mode &&
    a.column.type.type === b.column.type.type &&
    a.column.type.length === b.column.type.length &&
    (a.array === true) === (b.array === true)
  );
}

// ---- messages --------------------------------------------------------------------------------------------

/**
 * Bind body → full 'B' message: every planned parameter validated, normalized, encrypted and sent in binary
 * format as the raw cell (a bytea[] for arrays); the format codes are expanded to one per parameter so the
 * others keep their format and bytes. NULL stays NULL. `declaredTypes` are the parameter types from Parse;
 * `codec` is the session's client encoding (null: one mamori cannot convert, so only ASCII text is accepted).
 * Throws ParamError (22P02 / 22P03) on an invalid value, ProtocolError on a malformed message.
 */
export function encryptBindParams(
  body: Buffer,
  plans: readonly ParamPlan[],
  encrypt: Encrypt,
  declaredTypes?: readonly number[],
  codec: ClientCodec | null = UTF8_CODEC,
): Buffer {
  const bind = decodeBind(body);
  const n = bind.params.length;
  const formats = expandFormats(bind.paramFormats, n);
  const params = bind.params.slice();
  const done = new Map<number, ParamPlan>();
  for (const p of plans) {
    const i = p.index - 1;
    if (i < 0 || i >= n) continue; // the server refuses a Bind with too few values; nothing to encrypt
    // One $n in two positions of the same column and shape is encrypted once; anything else is an analyser bug.
    const seen = done.get(i);
    if (seen !== undefined) {
      if (sameTarget(seen, p)) continue;
      throw new TypeError(`parameter $${p.index} is planned for two different protected columns`);
    }
    done.set(i, p);
    const v = params[i]!;
    const binary = formats[i] === 1;
    if (formats[i] !== 0 && formats[i] !== 1) throw new ProtocolError('Bind: invalid parameter format code');
    formats[i] = 1;
    if (v === null) continue;
    const t = target(p.column, codec);
    const declared = declaredTypes?.[i] ?? 0;
    params[i] = p.array === true ? encryptArray(t, v, binary, declared, encrypt) : encrypt(t.col, canonicalOf(t, v, binary, declared));
  }
  return encodeBind({ ...bind, paramFormats: formats, params });
}

/**
 * Parse body → full 'P' message with each planned parameter declared bytea (bytea[] for arrays), the list
 * extended with 0 (unspecified) where the client declared fewer. Name and query text are copied as bytes.
 */
export function rewriteParseTypes(body: Buffer, plans: readonly ParamPlan[]): Buffer {
  const nameEnd = body.indexOf(0);
  const sqlEnd = nameEnd < 0 ? -1 : body.indexOf(0, nameEnd + 1);
  if (sqlEnd < 0 || body.length < sqlEnd + 3) throw new ProtocolError('Parse: message is truncated');
  const head = sqlEnd + 1;
  const n = body.readUInt16BE(head);
  if (body.length !== head + 2 + 4 * n) throw new ProtocolError('Parse: invalid length');
  let count = n;
  for (const p of plans) {
    if (!Number.isInteger(p.index) || p.index < 1 || p.index > 65535) throw new RangeError('parameter index out of range');
    if (p.index > count) count = p.index;
  }
  const size = head + 2 + 4 * count;
  const out = Buffer.alloc(5 + size); // zero-filled: added types are 0 (unspecified)
  out[0] = FE.Parse;
  out.writeInt32BE(4 + size, 1);
  body.copy(out, 5, 0, head + 2 + 4 * n);
  out.writeUInt16BE(count, 5 + head);
  for (const p of plans) out.writeUInt32BE(p.array === true ? OID.byteaArray : OID.bytea, 5 + head + 2 + 4 * (p.index - 1));
  return out;
}

/**
 * A literal for a protected column, as the server reads it → the replacement to splice in its place:
 * `E'\\x<hex>'::bytea`, which means the same under either standard_conforming_strings setting.
 */
export function encryptLiteral(
  col: ProtectedColumn,
  value: string,
  encrypt: Encrypt,
): { ok: true; replacement: Buffer } | { ok: false; reason: string } {
  const r = canonicalFromText(toLogicalType(col.type), value);
  if (!r.ok) return r;
  const cell = encrypt(col, r.value);
  return { ok: true, replacement: Buffer.from(`E'\\\\x${cell.toString('hex')}'::bytea`, 'latin1') };
}
