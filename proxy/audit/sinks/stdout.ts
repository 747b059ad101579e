// The stdout sink: records as JSON Lines on a stream (for container log collectors). As the only sink it is the
// primary one and `append` resolves when the stream has accepted the bytes; next to a file sink it is a mirror.
import type { Writable } from 'node:stream';
import type { Batch, OpenResult } from './file.js';

export class StdoutSink {
  private opened = false;
  constructor(private readonly stream: Writable = process.stdout) {}

  get isOpen(): boolean {
    return this.opened;
  }

  /** A stream has no memory of earlier runs: every run starts a new chain. */
  async open(): Promise<OpenResult> {
    this.opened = true;
    return { previous: null, repairedTailBytes: 0 };
  }

  append(batch: Batch): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stream.write(batch.data, (err) => (err ? reject(err) : resolve()));
    });
  }

  /**
   * As a mirror next to the file sink: write without waiting, so a slow reader never holds up the trail; past
   * `maxQueuedBytes` unflushed bytes the batch is dropped (the file has it). Returns false when dropped.
   */
  mirror(data: string, maxQueuedBytes = 8 * 1024 * 1024): boolean {
    if (this.stream.writableLength > maxQueuedBytes) return false;
    this.stream.write(data, () => undefined);
    return true;
  }

  async close(): Promise<void> {
    this.opened = false;
  }
}
