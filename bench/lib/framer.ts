// A minimal framer for the bench relay: splits a byte stream of typed protocol messages (type byte + int32
// length that counts itself) into whole messages, without copying when a message lies inside one chunk.
// It is the Node floor for "look at every message boundary", not mamori's framer (proxy/wire/).

export class FramingError extends Error {}

/** One whole message seen by the framer: its type byte and its original bytes (header included). */
export type MessageHook = (type: number, bytes: Buffer) => void;

export class TypedSplitter {
  /** Bytes of a message that started in an earlier chunk and is not complete yet. */
  private partial: Buffer[] = [];
  private partialLength = 0;
  /** Total length (header included) of the partial message, or -1 while its 5-byte header is incomplete. */
  private partialTotal = -1;
  messages = 0;

  constructor(
    private readonly maxMessageBytes = 1 << 30,
    private readonly onMessage?: MessageHook,
  ) {}

  /**
   * Takes the next chunk and returns the buffers to forward, in order. Each is one or more whole messages:
   * runs of messages inside this chunk come back as a single view of it; a message that spanned chunks comes
   * back as one assembled copy. Bytes of an incomplete trailing message are held until it completes.
   */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let pos = 0;
    if (this.partialLength > 0) {
      pos = this.continuePartial(chunk, out);
      if (pos < 0) return out; // the whole chunk went into the partial message
    }
    const runStart = pos;
    while (pos < chunk.length) {
      if (chunk.length - pos < 5) break;
      const total = this.checkedTotal(chunk.readInt32BE(pos + 1));
      if (chunk.length - pos < total) break;
      this.seen(chunk[pos]!, chunk.subarray(pos, pos + total));
      pos += total;
    }
    if (pos > runStart) out.push(chunk.subarray(runStart, pos));
    if (pos < chunk.length) {
      const rest = chunk.subarray(pos);
      this.partial = [rest];
      this.partialLength = rest.length;
      this.partialTotal = rest.length >= 5 ? this.checkedTotal(rest.readInt32BE(1)) : -1;
    }
    return out;
  }

  /** True when no partial message is held (the stream is at a message boundary). */
  get atBoundary(): boolean {
    return this.partialLength === 0;
  }

  /** Feeds a chunk into the held partial message; returns where whole-message scanning resumes, or -1. */
  private continuePartial(chunk: Buffer, out: Buffer[]): number {
    if (this.partialTotal < 0) {
      // complete the 5-byte header first
      const need = 5 - this.partialLength;
      if (chunk.length < need) {
        this.partial.push(chunk);
        this.partialLength += chunk.length;
        return -1;
      }
      const header = Buffer.concat([...this.partial, chunk.subarray(0, need)], 5);
      this.partialTotal = this.checkedTotal(header.readInt32BE(1));
    }
    const need = this.partialTotal - this.partialLength;
    if (chunk.length < need) {
      this.partial.push(chunk);
      this.partialLength += chunk.length;
      return -1;
    }
    const whole = Buffer.concat([...this.partial, chunk.subarray(0, need)], this.partialTotal);
    this.partial = [];
    this.partialLength = 0;
    this.partialTotal = -1;
    this.seen(whole[0]!, whole);
    out.push(whole);
    return need === chunk.length ? -1 : need;
  }

  private checkedTotal(length: number): number {
    if (length < 4 || length + 1 > this.maxMessageBytes) throw new FramingError(`bad message length ${length}`);
    return length + 1;
  }

  private seen(type: number, bytes: Buffer): void {
    this.messages++;
    this.onMessage?.(type, bytes);
  }
}

// Startup-phase request codes (the int32 after the length of an untyped message).
export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;

/**
 * Collects the client's first untyped message (int32 length, int32 code, body). Returns the message and any
 * bytes after it once complete, or null while more bytes are needed.
 */
export class UntypedReader {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly maxBytes = 10_000) {}

  push(chunk: Buffer): { message: Buffer; code: number; rest: Buffer } | null {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.buf.length < 8) return null;
    const length = this.buf.readInt32BE(0);
    if (length < 8 || length > this.maxBytes) throw new FramingError(`bad startup length ${length}`);
    if (this.buf.length < length) return null;
    const message = this.buf.subarray(0, length);
    const rest = this.buf.subarray(length);
    this.buf = Buffer.alloc(0);
    return { message, code: message.readInt32BE(4), rest };
  }
}
