// Bounds-checked reading and single-allocation writing of protocol bodies. Every read checks the remaining
// length first, so a decoder built on Reader can only throw ProtocolError on bad input: it never reads out of
// bounds and never loops past the end. Error texts name the message and the problem, never payload bytes.
import { ProtocolError, type Field } from './types.js';

const MAX_INT32 = 0x7fffffff;

/**
 * Reads a NUL-terminated UTF-8 string starting at `offset`.
 * Returns the string and the offset just past the terminator.
 */
export function readCString(buf: Buffer, offset: number): { value: string; end: number } {
  if (!Number.isInteger(offset) || offset < 0 || offset > buf.length) {
    throw new ProtocolError('string offset out of range');
  }
  const nul = buf.indexOf(0, offset);
  if (nul < 0) throw new ProtocolError('string is missing its NUL terminator');
  return { value: buf.toString('utf8', offset, nul), end: nul + 1 };
}

/** A cursor over one message body. `what` names the message in error texts. */
export class Reader {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    readonly what: string,
  ) {}

  remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): void {
    if (this.buf.length - this.pos < n) throw new ProtocolError(`${this.what}: message is truncated`);
  }

  uint8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  int16(): number {
    this.need(2);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  /** Counts are Int16 on the wire but PostgreSQL reads them unsigned (up to 65535 parameters). */
  uint16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  int32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  /** OIDs are unsigned 32-bit. */
  uint32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  cstring(): string {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul < 0) throw new ProtocolError(`${this.what}: string is missing its NUL terminator`);
    const v = this.buf.toString('utf8', this.pos, nul);
    this.pos = nul + 1;
    return v;
  }
  /** `n` bytes as a subarray (no copy). */
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  /** Everything left, as a subarray. */
  rest(): Buffer {
    const v = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return v;
  }
  /** An Int32 length (-1 = NULL) followed by that many bytes. */
  field(): Field {
    const len = this.int32();
    if (len === -1) return null;
    if (len < 0) throw new ProtocolError(`${this.what}: negative field length`);
    return this.bytes(len);
  }
  /**
   * Checks that `count` items of at least `minBytes` each can still fit, before allocating arrays for them:
   * a forged count then fails fast instead of allocating.
   */
  expectItems(count: number, minBytes: number): void {
    if (count * minBytes > this.remaining()) throw new ProtocolError(`${this.what}: message is truncated`);
  }
  /** The body must be fully consumed. */
  end(): void {
    if (this.pos !== this.buf.length) throw new ProtocolError(`${this.what}: unexpected trailing bytes`);
  }
}

/**
 * Builds one message. The header (type byte if any, then Int32 length) is reserved up front and filled in
 * by finish(). Encoders pass an exact or close size so the buffer is allocated once; if a hint is short the
 * buffer grows geometrically.
 */
export class Writer {
  private buf: Buffer;
  private pos: number;
  private readonly headerLen: number;

  /** `type` null builds an untyped startup-phase message (length only). */
  constructor(
    private readonly type: number | null,
    bodySizeHint = 64,
  ) {
    this.headerLen = type === null ? 4 : 5;
    this.buf = Buffer.allocUnsafe(this.headerLen + Math.max(0, bodySizeHint));
    this.pos = this.headerLen;
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
    this.buf.copy(grown, 0, 0, this.pos);
    this.buf = grown;
  }

  uint8(v: number): this {
    checkRange(v, 0, 0xff, 'byte');
    this.ensure(1);
    this.buf[this.pos++] = v;
    return this;
  }
  int16(v: number): this {
    checkRange(v, -0x8000, 0x7fff, 'int16');
    this.ensure(2);
    this.buf.writeInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }
  uint16(v: number): this {
    checkRange(v, 0, 0xffff, 'count');
    this.ensure(2);
    this.buf.writeUInt16BE(v, this.pos);
    this.pos += 2;
    return this;
  }
  int32(v: number): this {
    checkRange(v, -0x80000000, MAX_INT32, 'int32');
    this.ensure(4);
    this.buf.writeInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }
  uint32(v: number): this {
    checkRange(v, 0, 0xffffffff, 'uint32');
    this.ensure(4);
    this.buf.writeUInt32BE(v, this.pos);
    this.pos += 4;
    return this;
  }
  cstring(s: string): this {
    if (s.includes('\0')) throw new ProtocolError('cannot encode a string containing NUL');
    const n = Buffer.byteLength(s, 'utf8');
    this.ensure(n + 1);
    this.buf.write(s, this.pos, n, 'utf8');
    this.pos += n;
    this.buf[this.pos++] = 0;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }
  /** Int32 length (-1 for NULL) then the bytes. */
  field(f: Field): this {
    if (f === null) return this.int32(-1);
    this.int32(f.length);
    return this.bytes(f);
  }
  /** Fills in the header and returns the message (a view of exactly the written bytes). */
  finish(): Buffer {
    const len = this.pos - (this.headerLen - 4);
    if (len > MAX_INT32) throw new ProtocolError('message too large to encode');
    if (this.type !== null) this.buf[0] = this.type;
    this.buf.writeInt32BE(len, this.headerLen - 4);
    return this.pos === this.buf.length ? this.buf : this.buf.subarray(0, this.pos);
  }
}

function checkRange(v: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(v) || v < min || v > max) throw new ProtocolError(`${what} value out of range`);
}

/** Size on the wire of a C string. */
export function cstringSize(s: string): number {
  return Buffer.byteLength(s, 'utf8') + 1;
}

/** Size on the wire of an Int32-length-prefixed field. */
export function fieldSize(f: Field): number {
  return f === null ? 4 : 4 + f.length;
}

/** A complete message with an empty body, e.g. Sync or ParseComplete. Fresh buffer each call (callers may mutate). */
export function emptyMessage(type: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = type;
  b.writeInt32BE(4, 1);
  return b;
}
