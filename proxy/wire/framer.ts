// Splits a byte stream into PostgreSQL protocol messages without copying: each frame's `raw` and `body`
// are subarrays of the chunk they arrived in, unless the message straddled chunks (then the pieces are
// joined once). Large messages that mamori does not need to look at can be streamed through in pieces so
// a 1 GiB DataRow or CopyData never has to be held whole.

export interface Frame {
  /** Message type byte; 0 for the untyped startup-phase messages. */
  type: number;
  /** Payload after the header (5 bytes typed, 4 bytes untyped). */
  body: Buffer;
  /** The whole message, header included: what is forwarded when nothing changes. */
  raw: Buffer;
}

export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FramingError';
  }
}

export interface FrameSink {
  frame(frame: Frame): void;
  /** A message streamed in pieces: header first (type byte + length), then body chunks, then end. */
  streamStart?(type: number, header: Buffer, bodyLength: number): void;
  streamChunk?(chunk: Buffer): void;
  streamEnd?(): void;
}

export interface FramerOptions {
  /** Largest message accepted whole (buffered). */
  maxBufferedBytes: number;
  /** Largest message accepted at all (streamed when larger than streamThresholdBytes). */
  maxMessageBytes: number;
  /** Messages of streamable types above this size are streamed instead of buffered. */
  streamThresholdBytes?: number;
  /** Which message types may stream (never ones mamori must inspect or rewrite). */
  streamable?: (type: number) => boolean;
  /** Start in the untyped startup phase (frontend side of a new connection). */
  startup?: boolean;
}

const NO_STREAM = (): boolean => false;

export class Framer {
  /** True while the next message is untyped (StartupMessage, SSLRequest, CancelRequest …). */
  untyped: boolean;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private streamLeft = 0;
  private readonly maxBuffered: number;
  private readonly maxMessage: number;
  private readonly streamThreshold: number;
  private readonly streamable: (type: number) => boolean;

  constructor(private readonly sink: FrameSink, opts: FramerOptions) {
    this.untyped = opts.startup ?? false;
    this.maxBuffered = opts.maxBufferedBytes;
    this.maxMessage = Math.max(opts.maxMessageBytes, opts.maxBufferedBytes);
    this.streamThreshold = opts.streamThresholdBytes ?? 256 * 1024;
    this.streamable = opts.streamable ?? NO_STREAM;
  }

  /** Bytes held waiting for the rest of a message (for limits and tests). */
  get buffered(): number {
    return this.pendingBytes;
  }

  push(chunk: Buffer): void {
    if (this.streamLeft > 0) {
      chunk = this.continueStream(chunk);
      if (chunk.length === 0) return;
    }
    let buf: Buffer;
    if (this.pendingBytes > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      const need = this.neededBytes();
      // Still waiting: join only when complete — unless the header already decides (too large, or to be
      // streamed), which must not wait for the whole message when its header straddled two reads.
      if (need !== null && this.pendingBytes < need && !this.decidesNow(need)) return;
      buf = Buffer.concat(this.pending, this.pendingBytes);
      this.pending = [];
      this.pendingBytes = 0;
    } else {
      buf = chunk;
    }
    let off = 0;
    const len = buf.length;
    while (off < len) {
      const headerLen = this.untyped ? 4 : 5;
      if (len - off < headerLen) break;
      const type = this.untyped ? 0 : buf[off]!;
      const msgLen = buf.readInt32BE(this.untyped ? off : off + 1);
      const minLen = this.untyped ? 8 : 4;
      if (msgLen < minLen) throw new FramingError(`invalid message length ${msgLen}`);
      const total = msgLen + (this.untyped ? 0 : 1);
      if (total > this.maxMessage) throw new FramingError(`message of ${total} bytes exceeds the limit`);
      if (len - off < total) {
        if (!this.untyped && total > this.streamThreshold && this.streamable(type) && this.sink.streamStart) {
          this.startStream(type, buf.subarray(off, off + 5), msgLen - 4);
          const rest = buf.subarray(off + 5);
          this.continueStream(rest);
          return;
        }
        if (total > this.maxBuffered) {
          throw new FramingError(`message of ${total} bytes exceeds the limit for messages mamori must inspect`);
        }
        break;
      }
      const raw = buf.subarray(off, off + total);
      off += total;
      const frame: Frame = { type, body: raw.subarray(headerLen), raw };
      if (this.untyped) this.untyped = false; // one untyped message at a time; the session re-arms it
      this.sink.frame(frame);
    }
    if (off < len) {
      const tail = buf.subarray(off);
      this.pending.push(tail);
      this.pendingBytes = tail.length;
    }
  }

  /** Total length of the message at the head of `pending`, once its header is known. */
  private neededBytes(): number | null {
    const headerLen = this.untyped ? 4 : 5;
    if (this.pendingBytes < headerLen) return null;
    const head = this.pending[0]!.length >= headerLen ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    const msgLen = head.readInt32BE(this.untyped ? 0 : 1);
    if (msgLen < (this.untyped ? 8 : 4)) return null; // let push() raise the error
    return msgLen + (this.untyped ? 0 : 1);
  }

  /** True when a message of `total` bytes at the head of `pending` is refused or streamed, not buffered. */
  private decidesNow(total: number): boolean {
    if (total > this.maxBuffered) return true;
    if (this.untyped || total <= this.streamThreshold || !this.sink.streamStart) return false;
    return this.streamable(this.pending[0]![0]!);
  }

  private startStream(type: number, header: Buffer, bodyLength: number): void {
    this.streamLeft = bodyLength;
    this.sink.streamStart!(type, header, bodyLength);
  }

  /** Feeds stream bytes; returns what is left of the chunk after the streamed message ends. */
  private continueStream(chunk: Buffer): Buffer {
    const take = Math.min(this.streamLeft, chunk.length);
    if (take > 0) this.sink.streamChunk!(chunk.subarray(0, take));
    this.streamLeft -= take;
    if (this.streamLeft === 0) this.sink.streamEnd!();
    return chunk.subarray(take);
  }
}
