// COPY text/CSV streams through protected columns (docs/copy.md). COPY FROM STDIN: the protected fields of
// each row are validated, normalized and replaced by their cells (bytea input); COPY TO STDOUT: the stored
// cells are decrypted, masked, nulled or passed as ciphertext per field. Rows straddle CopyData messages
// arbitrarily, so both directions run a resumable record scanner that holds at most one partial row plus
// the chunk being read. Field splitting mirrors PostgreSQL's copyfromparse.c, so mamori and the server
// always agree on where a field starts and ends (the guard domain is the backstop if they ever did not).
import { canonicalFromText, type LogicalTypeSpec as KeyringTypeSpec } from '../../keyring/logical-types.js';
import type { CopyOptions, ProtectedColumn } from '../sql/types.js';
import type { CellKeys } from './keys.js';
import { columnName, toLogicalType } from './logical.js';
import { RowError, checkedCiphertext, openStoredCell, renderCanonical, type FieldAction } from './rows.js';
import { clientCodec, type ClientCodec } from './client-encoding.js';

export type { CopyOptions };

/** The options resolved to bytes and per-column flags (index = position in the COPY's column list). */
export interface CopyFormat {
  csv: boolean;
  delimiter: number;
  null: Buffer;
  quote: number;
  escape: number;
  header: boolean;
  default: Buffer | null;
  forceQuote: readonly boolean[];
  forceNotNull: readonly boolean[];
  forceNull: readonly boolean[];
  /** The encoding of the COPY data: its ENCODING option, else the session's client_encoding. */
  codec: ClientCodec;
}

/** Options mamori cannot honour (or the server would reject); the message names the option. */
export class CopyOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CopyOptionError';
  }
}

/** An invalid row or value in a COPY FROM stream. Names the line and column, never the value. */
export class CopyError extends Error {
  readonly line: number;
  readonly column: string | null;
  readonly sqlstate: string;
  constructor(line: number, column: string | null, reason: string, sqlstate = '22P02') {
    super(`COPY line ${line}${column ? `, column ${column}` : ''}: ${reason}`);
    this.name = 'CopyError';
    this.line = line;
    this.column = column;
    this.sqlstate = sqlstate;
  }
}

function oneByte(name: string, s: string): number {
  const b = Buffer.from(s, 'utf8');
  if (b.length !== 1) throw new CopyOptionError(`COPY ${name} must be a single one-byte character`);
  return b[0]!;
}

function flags(list: readonly string[] | '*' | undefined, names: readonly string[], option: string): boolean[] {
  if (list === undefined) return names.map(() => false);
  if (list === '*') return names.map(() => true);
  for (const n of list) if (!names.includes(n)) throw new CopyOptionError(`${option} column "${n}" is not in the COPY column list`);
  return names.map((n) => list.includes(n));
}

/**
 * Resolves the statement's options against the COPY column list; the checks follow PostgreSQL's.
 * `codecFor` gives the codec of an encoding name (undefined: the session's client_encoding), or null when
 * mamori cannot convert it.
 */
export function copyFormat(opts: CopyOptions, columnNames: readonly string[],
  codecFor: (encoding: string | undefined) => ClientCodec | null = (e) => clientCodec(e)): CopyFormat {
  if (opts.format === 'binary') throw new CopyOptionError('binary COPY is not supported on protected tables');
  const codec = codecFor(opts.encoding);
  const encName = opts.encoding === undefined ? 'the session\'s client_encoding' : `ENCODING ${opts.encoding}`;
  if (codec === null) throw new CopyOptionError(`COPY of protected columns in ${encName} is not supported: mamori has no converter for it (docs/results.md lists the encodings it converts)`);
  // The record scanner reads bytes: an SJIS, BIG5, GBK, UHC or GB18030 trail byte can be a backslash,
  // quote or delimiter, so mamori and the server could split a row differently.
  if (!codec.asciiSafe) throw new CopyOptionError(`COPY of protected columns in ${encName} (${codec.name}) is not supported: its multibyte characters can contain ASCII bytes; use ENCODING 'UTF8' (or an EUC encoding)`);
  const csv = opts.format === 'csv';
  const delimiter = oneByte('delimiter', opts.delimiter ?? (csv ? ',' : '\t'));
  const nul = inEncoding(codec, 'null', opts.null ?? (csv ? '' : '\\N'));
  if (delimiter === 0x0a || delimiter === 0x0d) throw new CopyOptionError('COPY delimiter cannot be newline or carriage return');
  if (nul.includes(0x0a) || nul.includes(0x0d)) throw new CopyOptionError('COPY null representation cannot use newline or carriage return');
  if (!csv && (delimiter === 0x5c || 'abcdefghijklmnopqrstuvwxyz0123456789.'.includes(String.fromCharCode(delimiter)))) {
    throw new CopyOptionError('COPY delimiter cannot be a backslash, a period, a lower-case letter or a digit in text format');
  }
  if (!csv && (opts.quote !== undefined || opts.escape !== undefined || opts.forceQuote !== undefined || opts.forceNotNull !== undefined || opts.forceNull !== undefined)) {
    throw new CopyOptionError('COPY QUOTE, ESCAPE and FORCE_* are available only in CSV mode');
  }
  const quote = csv ? oneByte('quote', opts.quote ?? '"') : 0x22;
  const escape = csv ? oneByte('escape', opts.escape ?? opts.quote ?? '"') : 0x5c;
  if (csv && delimiter === quote) throw new CopyOptionError('COPY delimiter and quote must be different');
  const def = opts.default === undefined ? null : inEncoding(codec, 'default', opts.default);
  if (def !== null && def.equals(nul)) throw new CopyOptionError('NULL specification and DEFAULT specification cannot be the same');
  return {
    csv,
    delimiter,
    null: nul,
    quote,
    escape,
    header: opts.header === true || opts.header === 'match',
    default: def,
    forceQuote: flags(opts.forceQuote, columnNames, 'FORCE_QUOTE'),
    forceNotNull: flags(opts.forceNotNull, columnNames, 'FORCE_NOT_NULL'),
    forceNull: flags(opts.forceNull, columnNames, 'FORCE_NULL'),
    codec,
  };
}

/** An option string as it appears in the data (the client encoding's bytes). */
function inEncoding(codec: ClientCodec, name: string, s: string): Buffer {
  const b = codec.encode(s);
  if (b === null) throw new CopyOptionError(`COPY ${name} string has no equivalent in encoding "${codec.name}"`);
  return b;
}

// ---------------------------------------------------------------------------------------------------------
// Record scanning (one logical line, as CopyReadLine delimits it) and field splitting.

const LF = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;
const DOT = 0x2e;

/** A complete record in the scanner's buffer: [start, end) without its terminator, [end, next) the terminator. */
interface RecordSpan {
  start: number;
  end: number;
  next: number;
  line: number;
  header: boolean;
  /** Text mode `abc\.`: the record is followed by the end-of-data marker. */
  last: boolean;
}

/** Resumable splitter of a byte stream into COPY records; keeps one partial record between pushes. */
class RecordScanner {
  buf: Buffer = Buffer.allocUnsafe(0);
  private len = 0;
  private recStart = 0;
  private scanPos = 0;
  private inQuote = false;
  private lastWasEsc = false;
  private line = 0;
  private headerLeft: boolean;
  /** The end-of-data marker was seen: everything after it is dropped (the server ignores it too). */
  ended = false;
  private readonly csv: boolean;
  private readonly quote: number;
  private readonly lineEscape: number;

  constructor(fmt: CopyFormat) {
    this.csv = fmt.csv;
    this.quote = fmt.quote;
    // CopyReadLineText ignores the escape character when it is the quote character.
    this.lineEscape = fmt.escape === fmt.quote ? -1 : fmt.escape;
    this.headerLeft = fmt.header;
  }

  /** Bytes held for a partial record. */
  get pending(): number {
    return this.len - this.recStart;
  }

  /** Appends a chunk (compacting the consumed prefix first) and returns the records it completes. */
  push(chunk: Buffer, final: boolean): RecordSpan[] {
    if (this.recStart > 0) {
      this.buf.copyWithin(0, this.recStart, this.len);
      this.len -= this.recStart;
      this.scanPos -= this.recStart;
      this.recStart = 0;
    }
    if (this.ended) return [];
    if (this.len + chunk.length > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.len + chunk.length, this.buf.length * 2, 1024));
      this.buf.copy(grown, 0, 0, this.len);
      this.buf = grown;
    }
    chunk.copy(this.buf, this.len);
    this.len += chunk.length;
    return this.scan(final);
  }

  private scan(final: boolean): RecordSpan[] {
    const out: RecordSpan[] = [];
    const b = this.buf;
    const len = this.len;
    let i = this.scanPos;
    const emit = (end: number, next: number, last = false): void => {
      this.line++;
      const header = this.headerLeft;
      this.headerLeft = false;
      out.push({ start: this.recStart, end, next, line: this.line, header, last });
      this.recStart = next;
    };
    while (i < len && !this.ended) {
      const c = b[i]!;
      if (this.csv) {
        // End-of-data marker: `\.` alone at the start of a line, outside quotes.
        if (c === BACKSLASH && i === this.recStart && !this.inQuote) {
          if (len - i < 3 && !final) break; // need `\.` and the byte after it to decide
          if (b[i + 1] === DOT && (i + 2 >= len || b[i + 2] === LF || b[i + 2] === CR)) {
            this.ended = true;
            this.recStart = len;
            break;
          }
        }
        if (this.inQuote && c === this.lineEscape) this.lastWasEsc = !this.lastWasEsc;
        if (c === this.quote && !this.lastWasEsc) this.inQuote = !this.inQuote;
        if (c !== this.lineEscape) this.lastWasEsc = false;
        if (!this.inQuote && (c === LF || c === CR)) {
          if (c === CR) {
            if (i + 1 >= len && !final) break;
            const next = b[i + 1] === LF ? i + 2 : i + 1;
            emit(i, next);
            i = next;
          } else {
            emit(i, i + 1);
            i++;
          }
          continue;
        }
        i++;
        continue;
      }
      // Text format: a backslash escapes the next byte (newlines included); `\.` ends the data.
      if (c === BACKSLASH) {
        if (i + 1 >= len) {
          if (!final) break;
          i++;
          continue;
        }
        if (b[i + 1] === DOT) {
          const after = i + 2;
          if (after >= len && !final) break;
          if (after < len && b[after] === CR && after + 1 >= len && !final) break;
          if (after < len && b[after] !== LF && b[after] !== CR) {
            throw new CopyError(this.line + 1, null, 'end-of-copy marker corrupt', '22P04');
          }
          if (i > this.recStart) emit(i, i, true);
          this.ended = true;
          this.recStart = len;
          break;
        }
        i += 2;
        continue;
      }
      if (c === LF) {
        emit(i, i + 1);
        i++;
        continue;
      }
      if (c === CR) {
        if (i + 1 >= len && !final) break;
        const next = b[i + 1] === LF ? i + 2 : i + 1;
        emit(i, next);
        i = next;
        continue;
      }
      i++;
    }
    this.scanPos = Math.max(i, this.recStart);
    if (this.ended) {
      this.len = 0;
      this.recStart = 0;
      this.scanPos = 0;
      return out;
    }
    if (final && this.recStart < len) {
      // The last line may lack its terminator (PostgreSQL accepts that).
      if (this.csv && this.inQuote) throw new CopyError(this.line + 1, null, 'unterminated CSV quoted field', '22P04');
      emit(len, len);
      this.scanPos = len;
    }
    return out;
  }
}

/** One field of a record: raw span, whether it is NULL, and (when asked for) its de-escaped value. */
interface FieldSpan {
  start: number;
  end: number;
  /** The raw text matched the NULL (or DEFAULT) marker, as the server decides it. */
  isNull: boolean;
  isDefault: boolean;
  sawQuote: boolean;
}

/** Splits a record into raw field spans (offsets into `b`). */
function splitFields(b: Buffer, start: number, end: number, fmt: CopyFormat, out: FieldSpan[]): number {
  let n = 0;
  let p = start;
  for (;;) {
    const fs = p;
    let sawQuote = false;
    let foundDelim = false;
    if (fmt.csv) {
      let inQ = false;
      while (p < end) {
        const c = b[p]!;
        if (inQ) {
          if (c === fmt.escape && p + 1 < end && (b[p + 1] === fmt.escape || b[p + 1] === fmt.quote)) {
            p += 2;
            continue;
          }
          if (c === fmt.quote) inQ = false;
          p++;
          continue;
        }
        if (c === fmt.delimiter) {
          foundDelim = true;
          break;
        }
        if (c === fmt.quote) {
          sawQuote = true;
          inQ = true;
        }
        p++;
      }
      if (inQ) throw new RangeError('unterminated CSV quoted field');
    } else {
      while (p < end) {
        const c = b[p]!;
        if (c === fmt.delimiter) {
          foundDelim = true;
          break;
        }
        p += c === BACKSLASH ? 2 : 1;
      }
      if (p > end) p = end;
    }
    const fe = p;
    const len = fe - fs;
    const isNull = !sawQuote && len === fmt.null.length && b.compare(fmt.null, 0, fmt.null.length, fs, fe) === 0;
    const isDefault = !isNull && !sawQuote && fmt.default !== null && len === fmt.default.length && b.compare(fmt.default, 0, fmt.default.length, fs, fe) === 0;
    if (n < out.length) {
      const f = out[n]!;
      f.start = fs;
      f.end = fe;
      f.isNull = isNull;
      f.isDefault = isDefault;
      f.sawQuote = sawQuote;
    } else out.push({ start: fs, end: fe, isNull, isDefault, sawQuote });
    n++;
    if (!foundDelim) return n;
    p++; // past the delimiter
  }
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** A text-format field's value as CopyReadAttributesText de-escapes it. */
export function decodeTextField(b: Uint8Array, start: number, end: number): Buffer {
  const out = Buffer.allocUnsafe(end - start);
  let o = 0;
  let p = start;
  while (p < end) {
    let c = b[p++]!;
    if (c === BACKSLASH) {
      if (p >= end) break;
      c = b[p++]!;
      if (c >= 0x30 && c <= 0x37) {
        let v = c - 0x30;
        if (p < end && b[p]! >= 0x30 && b[p]! <= 0x37) {
          v = v * 8 + (b[p++]! - 0x30);
          if (p < end && b[p]! >= 0x30 && b[p]! <= 0x37) v = v * 8 + (b[p++]! - 0x30);
        }
        c = v & 0xff;
      } else if (c === 0x78 && p < end && hexValue(b[p]!) >= 0) {
        let v = hexValue(b[p++]!);
        if (p < end && hexValue(b[p]!) >= 0) v = v * 16 + hexValue(b[p++]!);
        c = v;
      } else {
        switch (c) {
          case 0x62: c = 0x08; break; // \b
          case 0x66: c = 0x0c; break; // \f
          case 0x6e: c = 0x0a; break; // \n
          case 0x72: c = 0x0d; break; // \r
          case 0x74: c = 0x09; break; // \t
          case 0x76: c = 0x0b; break; // \v
          default: break;
        }
      }
    }
    out[o++] = c;
  }
  return out.subarray(0, o);
}

/** A CSV field's value as CopyReadAttributesCSV de-quotes it. */
export function decodeCsvField(b: Uint8Array, start: number, end: number, fmt: Pick<CopyFormat, 'quote' | 'escape'>): Buffer {
  const out = Buffer.allocUnsafe(end - start);
  let o = 0;
  let p = start;
  let inQ = false;
  while (p < end) {
    const c = b[p++]!;
    if (inQ) {
      if (c === fmt.escape && p < end && (b[p] === fmt.escape || b[p] === fmt.quote)) {
        out[o++] = b[p++]!;
        continue;
      }
      if (c === fmt.quote) {
        inQ = false;
        continue;
      }
      out[o++] = c;
      continue;
    }
    if (c === fmt.quote) {
      inQ = true;
      continue;
    }
    out[o++] = c;
  }
  return out.subarray(0, o);
}

/** A value as CopyAttributeOutText writes it. */
export function encodeTextField(v: Uint8Array, delimiter: number): Buffer {
  let extra = 0;
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    if (c === BACKSLASH || c === delimiter || (c >= 0x08 && c <= 0x0d)) extra++;
  }
  const out = Buffer.allocUnsafe(v.length + extra);
  let o = 0;
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    let e = -1;
    switch (c) {
      case 0x08: e = 0x62; break;
      case 0x09: e = 0x74; break;
      case 0x0a: e = 0x6e; break;
      case 0x0b: e = 0x76; break;
      case 0x0c: e = 0x66; break;
      case 0x0d: e = 0x72; break;
      case BACKSLASH: e = BACKSLASH; break;
      default: if (c === delimiter) e = c;
    }
    if (e >= 0) {
      out[o++] = BACKSLASH;
      out[o++] = e;
    } else out[o++] = c;
  }
  return out;
}

/** A value as CopyAttributeOutCSV writes it (quoted when it must be, or when forced). */
export function encodeCsvField(v: Uint8Array, fmt: Pick<CopyFormat, 'delimiter' | 'quote' | 'escape' | 'null'>, forceQuote: boolean, singleColumn: boolean): Buffer {
  let quote = forceQuote || Buffer.from(v.buffer, v.byteOffset, v.length).equals(fmt.null);
  let extra = 0;
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    if (c === fmt.delimiter || c === fmt.quote || c === LF || c === CR) quote = true;
    if (c === fmt.quote || c === fmt.escape) extra++;
  }
  if (!quote && singleColumn && v.length === 2 && v[0] === BACKSLASH && v[1] === DOT) quote = true;
  if (!quote) return Buffer.from(v);
  const out = Buffer.allocUnsafe(v.length + extra + 2);
  let o = 0;
  out[o++] = fmt.quote;
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    if (c === fmt.quote || c === fmt.escape) out[o++] = fmt.escape;
    out[o++] = c;
  }
  out[o++] = fmt.quote;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// COPY FROM STDIN

/** A value to encrypt for one protected field. */
export interface CopyValue {
  column: ProtectedColumn;
  canonical: Buffer;
}

/** The rows one push completed: encrypt `values` (in order), then render() with the cells before the next push. */
export interface CopyInBatch {
  readonly values: readonly CopyValue[];
  readonly rows: number;
  /** The rewritten bytes; `framed`: as one CopyData message (type byte and length first), built in place. */
  render(cells: readonly Buffer[], framed?: boolean): Buffer;
}

interface InSlot {
  column: ProtectedColumn;
  type: KeyringTypeSpec;
  name: string;
}

/**
 * Rewrites a COPY FROM STDIN stream (text or CSV). `columns` gives, per position in the COPY's column list,
 * the protected column fed by that position (null for others). push() takes each CopyData payload; end()
 * the rest at CopyDone. Both throw CopyError on an invalid row (the caller aborts the COPY).
 */
export class CopyInRewriter {
  private readonly scanner: RecordScanner;
  private readonly slots: (InSlot | null)[];
  private readonly fields: FieldSpan[] = [];
  private readonly hexPrefix: Buffer;
  private readonly quoteCells: boolean;
  private generation = 0;
  /** Rows rewritten so far (header excluded). */
  rows = 0;

  constructor(
    private readonly fmt: CopyFormat,
    columns: readonly (ProtectedColumn | null)[],
  ) {
    this.scanner = new RecordScanner(fmt);
    this.slots = columns.map((c) => (c ? { column: c, type: toLogicalType(c.type), name: c.column } : null));
    // bytea input: `\x<hex>`; in text format the backslash itself is escaped.
    this.hexPrefix = Buffer.from(fmt.csv ? '\\x' : '\\\\x', 'latin1');
    const special = (c: number): boolean => c === BACKSLASH || c === 0x78 || hexValue(c) >= 0;
    this.quoteCells = fmt.csv && (special(fmt.delimiter) || special(fmt.quote));
  }

  /** Bytes held for a partial row. */
  get pending(): number {
    return this.scanner.pending;
  }

  push(chunk: Buffer): CopyInBatch {
    return this.batch(this.scanner.push(chunk, false));
  }

  /** At CopyDone: the last row, which may lack its line terminator. */
  end(): CopyInBatch {
    return this.batch(this.scanner.push(Buffer.alloc(0), true));
  }

  private batch(records: RecordSpan[]): CopyInBatch {
    const gen = ++this.generation;
    const b = this.scanner.buf;
    const fmt = this.fmt;
    const values: CopyValue[] = [];
    // Pieces: verbatim spans of b and, in between, the index of the cell that replaces a field.
    const spans: number[] = [];
    const cellAt: number[] = [];
    let rows = 0;
    for (const r of records) {
      if (r.header) {
        spans.push(r.start, r.next);
        cellAt.push(-1);
        continue;
      }
      let n: number;
      try {
        n = splitFields(b, r.start, r.end, fmt, this.fields);
      } catch {
        throw new CopyError(r.line, null, 'unterminated CSV quoted field', '22P04');
      }
      if (n !== this.slots.length) {
        throw new CopyError(r.line, null, n < this.slots.length ? 'missing data for a column' : 'extra data after last expected column', '22P04');
      }
      rows++;
      let from = r.start;
      for (let k = 0; k < n; k++) {
        const slot = this.slots[k];
        if (!slot) continue;
        const f = this.fields[k]!;
        if (f.isDefault) continue; // the column default applies (server side)
        let isNull = f.isNull;
        if (fmt.csv && isNull && fmt.forceNotNull[k]) isNull = false;
        if (isNull) continue; // NULL: sent as is
        let text: string | null;
        if (!(fmt.csv && (f.sawQuote || fmt.forceNull[k])) && plainAscii(b, f.start, f.end, fmt.csv)) {
          // No escape, quote or non-ASCII byte: de-escaping is the identity and every codec reads ASCII
          // bytes as the same characters (the usual case, without copying the field twice).
          text = b.toString('latin1', f.start, f.end);
        } else {
          const raw = fmt.csv ? decodeCsvField(b, f.start, f.end, fmt) : decodeTextField(b, f.start, f.end);
          // FORCE_NULL: the server applies it to the quoted marker itself; sent as is.
          if (fmt.csv && fmt.forceNull[k] && raw.equals(fmt.null)) continue;
          text = fmt.codec.decode(raw);
        }
        if (text === null) {
          throw new CopyError(r.line, slot.name, `invalid value for protected column ${columnName(slot.column)}: invalid byte sequence for encoding "${fmt.codec.name}"`, '22021');
        }
        if (text.includes('\0')) throw new CopyError(r.line, slot.name, `invalid value for protected column ${columnName(slot.column)}: value contains a NUL byte`, '22021');
        const canon = canonicalFromText(slot.type, text);
        if (!canon.ok) throw new CopyError(r.line, slot.name, `invalid value for protected column ${columnName(slot.column)}: ${canon.reason}`);
        spans.push(from, f.start);
        cellAt.push(values.length);
        values.push({ column: slot.column, canonical: canon.value });
        from = f.end;
      }
      spans.push(from, r.next);
      cellAt.push(-1);
      if (r.last) {
        // Text `abc\.`: the row is the last one; end it like any other line.
        spans.push(0, 0);
        cellAt.push(-3);
      }
    }
    this.rows += rows;
    return {
      values,
      rows,
      render: (cells: readonly Buffer[], framed = false): Buffer => {
        if (gen !== this.generation) throw new Error('CopyInBatch.render() called after the next push');
        if (cells.length !== values.length) throw new RangeError('one cell per value is required');
        return this.render(b, spans, cellAt, cells, framed);
      },
    };
  }

  /** The pieces written once into one buffer (sized first): no per-row buffers or hex strings. */
  private render(b: Buffer, spans: readonly number[], cellAt: readonly number[], cells: readonly Buffer[], framed: boolean): Buffer {
    const quoted = this.quoteCells ? cells.map((c) => this.cellField(c)) : null;
    const prefix = this.hexPrefix;
    let size = framed ? 5 : 0;
    for (let j = 0; j < cellAt.length; j++) {
      size += spans[2 * j + 1]! - spans[2 * j]!;
      const at = cellAt[j]!;
      if (at >= 0) size += quoted ? quoted[at]!.length : prefix.length + 2 * cells[at]!.length;
      else if (at === -3) size += 1;
    }
    const out = Buffer.allocUnsafe(size);
    let o = 0;
    if (framed) {
      out[0] = 0x64; // CopyData
      out.writeInt32BE(size - 1, 1);
      o = 5;
    }
    for (let j = 0; j < cellAt.length; j++) {
      o = copyBytes(b, spans[2 * j]!, spans[2 * j + 1]!, out, o);
      const at = cellAt[j]!;
      if (at >= 0) {
        if (quoted) o = copyBytes(quoted[at]!, 0, quoted[at]!.length, out, o);
        else o = writeHex(cells[at]!, out, copyBytes(prefix, 0, prefix.length, out, o));
      } else if (at === -3) out[o++] = LF;
    }
    return out;
  }

  private cellField(cell: Buffer): Buffer {
    const hex = Buffer.concat([this.hexPrefix, Buffer.from(cell.toString('hex'), 'latin1')]);
    return this.quoteCells ? encodeCsvField(hex, this.fmt, true, false) : hex;
  }
}

/** True when [start, end) holds only ASCII bytes and, in text format, no backslash (nothing to de-escape). */
function plainAscii(b: Buffer, start: number, end: number, csv: boolean): boolean {
  for (let p = start; p < end; p++) {
    const c = b[p]!;
    if (c >= 0x80 || (!csv && c === BACKSLASH)) return false;
  }
  return true;
}

/** Copies b[s, e) to out at o; returns the new offset. Short spans (most row pieces) without a native call. */
function copyBytes(b: Uint8Array, s: number, e: number, out: Buffer, o: number): number {
  if (e - s > 64) {
    out.set(b.subarray(s, e), o);
    return o + e - s;
  }
  for (let p = s; p < e; p++) out[o++] = b[p]!;
  return o;
}

const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');

/** Lower-case hex of `v` written at o (as bytea's hex input reads it); returns the new offset. */
function writeHex(v: Uint8Array, out: Buffer, o: number): number {
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!;
    out[o++] = HEX_DIGITS[c >> 4]!;
    out[o++] = HEX_DIGITS[c & 15]!;
  }
  return o;
}

/** Synchronous helper for tests and callers with sync keys: push, encrypt each value, render. */
export function rewriteCopyIn(r: CopyInRewriter, chunk: Buffer | null, encrypt: (v: CopyValue) => Buffer): Buffer {
  const batch = chunk === null ? r.end() : r.push(chunk);
  return batch.render(batch.values.map(encrypt));
}

// ---------------------------------------------------------------------------------------------------------
// COPY TO STDOUT

export interface CopyOutField {
  /** 0-based position in the COPY output. */
  index: number;
  column: ProtectedColumn;
  action: FieldAction;
  domainId: number;
}

export interface CopyOutOptions {
  byteaOutput?: 'hex' | 'escape';
  onShredded?(column: ProtectedColumn): void;
  /** Each protected value sent in plaintext (its canonical bytes), for the subject trail; not for masked ones. */
  onPlaintext?(column: ProtectedColumn, canonical: Buffer): void;
}

interface OutSlot extends CopyOutField {
  type: KeyringTypeSpec;
  name: string;
}

/**
 * Rewrites the CopyData stream of a COPY TO STDOUT: each protected field's stored cell becomes the value the
 * read policy gives. push() returns the bytes to send for a payload (possibly empty while a row is partial).
 * Throws RowError for a cell that cannot be read (fail closed: the stream must be ended).
 */
export class CopyOutRewriter {
  private readonly scanner: RecordScanner;
  private readonly slots: (OutSlot | null)[];
  private readonly fields: FieldSpan[] = [];
  private readonly escape: boolean;
  rows = 0;

  constructor(
    private readonly fmt: CopyFormat,
    private readonly ncolumns: number,
    fields: readonly CopyOutField[],
    private readonly keys: CellKeys,
    private readonly opts: CopyOutOptions = {},
  ) {
    // Output never carries an end marker or a header we must interpret; the header line passes as is.
    this.scanner = new RecordScanner(fmt);
    this.slots = new Array<OutSlot | null>(ncolumns).fill(null);
    for (const f of fields) {
      if (f.index < 0 || f.index >= ncolumns) throw new RangeError('COPY field plan out of range');
      this.slots[f.index] = { ...f, type: toLogicalType(f.column.type), name: columnName(f.column) };
    }
    this.escape = opts.byteaOutput === 'escape';
  }

  push(chunk: Buffer): Buffer {
    return this.render(this.scanner.push(chunk, false));
  }

  /** At CopyDone: anything left (the server always ends rows with a newline, so normally nothing). */
  end(): Buffer {
    return this.render(this.scanner.push(Buffer.alloc(0), true));
  }

  private render(records: RecordSpan[]): Buffer {
    const b = this.scanner.buf;
    const fmt = this.fmt;
    const parts: Buffer[] = [];
    for (const r of records) {
      if (r.header) {
        parts.push(b.subarray(r.start, r.next));
        continue;
      }
      const n = splitFields(b, r.start, r.end, fmt, this.fields);
      if (n !== this.ncolumns) throw new RowError('COPY output', 'not_a_cell');
      this.rows++;
      let from = r.start;
      for (let k = 0; k < n; k++) {
        const s = this.slots[k];
        if (!s) continue;
        const f = this.fields[k]!;
        if (f.isNull) continue;
        const stored = fmt.csv ? decodeCsvField(b, f.start, f.end, fmt) : decodeTextField(b, f.start, f.end);
        if (s.action === 'ciphertext') {
          checkedCiphertext(s, stored, false, this.escape); // handed out as it is, once seen to be a cell
          continue;
        }
        const v = s.action === 'null' ? null : this.value(s, stored);
        parts.push(b.subarray(from, f.start));
        if (v === null) parts.push(fmt.null); // written raw, as CopyOneRowTo does
        else parts.push(fmt.csv ? encodeCsvField(v, fmt, fmt.forceQuote[k] === true, this.ncolumns === 1) : encodeTextField(v, fmt.delimiter));
        from = f.end;
      }
      parts.push(b.subarray(from, r.next));
    }
    return parts.length === 1 ? Buffer.from(parts[0]!) : Buffer.concat(parts);
  }

  /** The stored bytea text → the rendered value (null: send NULL). */
  private value(s: OutSlot, stored: Buffer): Buffer | null {
    const canonical = openStoredCell(s, stored, false, this.escape, this.keys, this.opts.onShredded);
    if (canonical === null) return null;
    if (s.action === 'plaintext') this.opts.onPlaintext?.(s.column, canonical);
    return renderCanonical(s, canonical, s.action === 'mask', false, this.escape, () => this.fmt.codec);
  }
}
