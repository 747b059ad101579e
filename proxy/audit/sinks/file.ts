// The JSON Lines file sink: the point of truth. Appends whole batches to the active file, rotates by size and
// age into names that sort, keeps a manifest of rotated files, and syncs per the fsync policy. `append()` resolves
// only when the bytes have been handed to the OS (and, with fsync `always`, synced), which is what "the intent
// record reached the OS" means. All operations run one at a time.
import { mkdir, open, readFile, rename, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { ftruncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import {
  readManifest,
  rotatedName,
  seriesPaths,
  writeJsonAtomic,
  type Manifest,
  type ManifestEntry,
  type SeriesPaths,
} from '../files.js';
import { parseRecord, type ChainHead } from '../record.js';

export type FsyncPolicy = 'none' | 'interval' | 'always';

export interface FileSinkOptions {
  path: string;
  rotateBytes: number;
  rotateSeconds: number;
  fsync: FsyncPolicy;
  fsyncIntervalMs: number;
  /**
   * `sync` (default): write(2) on the event loop — a page-cache write takes microseconds, far less than a trip
   * through libuv's thread pool, and it is exactly "the bytes reached the OS". `async`: through the thread pool,
   * for file systems whose writes can block (network mounts). Syncing to disk is always off the event loop.
   */
  writeMode?: 'sync' | 'async';
  now?: () => Date;
}

/** A batch of consecutive records, already serialized (each line ends with \n). */
export interface Batch {
  data: string;
  count: number;
  first: ChainHead;
  last: ChainHead;
}

export interface OpenResult {
  /** The last record already in the series (the previous run's head), or null for a new trail. */
  previous: ChainHead | null;
  /** Bytes of a torn final line that were cut off (a crash mid-write; that record was never acknowledged). */
  repairedTailBytes: number;
}

interface ActiveStats {
  records: number;
  bytes: number;
  firstSeq: number | null;
  firstInstance: string | null;
  last: ChainHead | null;
}

export class FileSink {
  readonly paths: SeriesPaths;
  private fh: FileHandle | null = null;
  private manifest: Manifest | null = null;
  private active: ActiveStats = { records: 0, bytes: 0, firstSeq: null, firstInstance: null, last: null };
  private queue: Promise<unknown> = Promise.resolve();
  private dirty = false;
  /** Serialized operations queued or running (appendSync stays out of their way). */
  private inFlight = 0;
  private timer: NodeJS.Timeout | null = null;
  private activeFirstTime: string | null = null;
  private activeSinceText = '';
  private activeSinceMs = 0;
  private readonly now: () => Date;

  constructor(private readonly opts: FileSinkOptions) {
    this.paths = seriesPaths(opts.path);
    this.now = opts.now ?? (() => new Date());
  }

  get isOpen(): boolean {
    return this.fh !== null;
  }

  /** Runs `fn` after every earlier operation, so writes, syncs and rotations never interleave. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    this.inFlight++;
    const done = (): void => {
      this.inFlight--;
    };
    const run = this.queue.then(fn, fn);
    run.then(done, done);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Takes the series lock, opens the active file, repairs a torn tail and reports the previous head. */
  open(): Promise<OpenResult> {
    return this.serial(async () => {
      if (this.fh) return { previous: this.active.last ?? this.lastRotatedHead(), repairedTailBytes: 0 };
      await mkdir(this.paths.dir, { recursive: true, mode: 0o750 });
      await this.lock();
      try {
        const existing = await readManifest(this.paths);
        const fh = await open(this.paths.active, 'a+', 0o640);
        let repaired = 0;
        try {
          repaired = await this.scanActive(fh);
          if (!existing) {
            // a new series (or one written before manifests): the active file's age starts at its first record
            this.manifest = { version: 1, series: this.paths.stem, next: 1, activeSince: this.activeFirstTime ?? this.now().toISOString(), files: [] };
            await writeJsonAtomic(this.paths.manifest, this.manifest, this.opts.fsync !== 'none');
          } else this.manifest = existing;
        } catch (e) {
          await fh.close();
          throw e;
        }
        this.fh = fh;
        if (this.opts.fsync === 'interval') {
          this.timer = setInterval(() => void this.sync().catch(() => undefined), this.opts.fsyncIntervalMs);
          this.timer.unref();
        }
        return { previous: this.active.last ?? this.lastRotatedHead(), repairedTailBytes: repaired };
      } catch (e) {
        await this.unlock();
        throw e;
      }
    });
  }

  private lastRotatedHead(): ChainHead | null {
    const last = this.manifest?.files.at(-1);
    return last && last.lastHash && last.lastInstance && last.lastSeq !== null
      ? { instance: last.lastInstance, seq: last.lastSeq, hash: last.lastHash }
      : null;
  }

  /** Counts the active file's records and finds its last one; cuts a torn final line (never acknowledged). */
  private async scanActive(fh: FileHandle): Promise<number> {
    const { size } = await fh.stat();
    this.active = { records: 0, bytes: size, firstSeq: null, firstInstance: null, last: null };
    if (size === 0) return 0;
    const text = await readFile(this.paths.active, 'utf8');
    let end = text.length;
    let repaired = 0;
    if (!text.endsWith('\n')) {
      end = text.lastIndexOf('\n') + 1;
      repaired = Buffer.byteLength(text.slice(end));
      await fh.truncate(Buffer.byteLength(text.slice(0, end)));
      this.active.bytes -= repaired;
    }
    const lines = text.slice(0, end).split('\n');
    lines.pop();
    this.active.records = lines.length;
    if (lines.length > 0) {
      const first = tryParse(lines[0]!);
      const lastLine = lines[lines.length - 1]!;
      const last = tryParse(lastLine);
      this.active.firstSeq = first?.seq ?? null;
      this.active.firstInstance = first?.instance ?? null;
      this.activeFirstTime = first?.time ?? null;
      // an unreadable last line (tampering) must not stop the trail: chain on from its bytes and let verify report it
      this.active.last = last
        ? { instance: last.instance, seq: last.seq, hash: last.hash }
        : { instance: 'unparseable', seq: 0, hash: createHash('sha256').update(lastLine).digest('hex') };
    }
    return repaired;
  }

  private async lock(): Promise<void> {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await writeFile(this.paths.lock, `${process.pid} ${PROCESS_STARTED}\n`, { flag: 'wx', mode: 0o640 });
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        const [pidText, startedText] = (await readFile(this.paths.lock, 'utf8').catch(() => '')).trim().split(' ');
        const pid = Number(pidText);
        // our own pid in a lock we did not write (a container restarted with the same pid) is stale too
        const ours = pid === process.pid && Number(startedText) === PROCESS_STARTED;
        if (Number.isInteger(pid) && pid > 0 && (pid === process.pid ? ours : processAlive(pid))) {
          throw Object.assign(new Error(`audit series ${this.paths.stem} is locked by process ${pid}`), { code: 'ELOCKED' });
        }
        await unlink(this.paths.lock).catch(() => undefined); // stale lock of a dead process
      }
    }
    throw Object.assign(new Error('could not take the audit series lock'), { code: 'ELOCKED' });
  }

  private async unlock(): Promise<void> {
    await unlink(this.paths.lock).catch(() => undefined);
  }

  /** Appends one batch. On failure the file is cut back to where it was, so no partial record stays behind. */
  append(batch: Batch): Promise<void> {
    return this.serial(async () => {
      if (!this.fh) throw Object.assign(new Error('audit file is not open'), { code: 'ENOTOPEN' });
      const bytes = Buffer.from(batch.data, 'utf8');
      if (this.shouldRotate(bytes.length)) await this.rotate();
      const fh = this.fh;
      let off = 0;
      try {
        const sync = this.opts.writeMode !== 'async';
        while (off < bytes.length) {
          const written = sync ? writeSync(fh.fd, bytes, off, bytes.length - off) : (await fh.write(bytes, off, bytes.length - off)).bytesWritten;
          if (written <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
          off += written;
        }
        if (this.opts.fsync === 'always') await fh.datasync();
        else this.dirty = true;
      } catch (e) {
        if (off > 0) await fh.truncate(this.active.bytes).catch(() => undefined);
        throw e;
      }
      this.recordAppended(bytes.length, batch);
    });
  }

  /**
   * The fast path of `append`: writes the batch synchronously when nothing else has to happen first (no
   * rotation due, no fsync per write, `sync` write mode, no other operation in flight). Returns false without
   * writing when it cannot; throws (after cutting the file back) when the write fails.
   */
  appendSync(batch: Batch): boolean {
    const fh = this.fh;
    if (!fh || this.inFlight > 0 || this.opts.writeMode === 'async' || this.opts.fsync === 'always') return false;
    // encoded once into a buffer kept for the purpose (it fits: UTF-8 takes at most 3 bytes per UTF-16 unit),
    // which also gives the byte count; a larger batch gets a buffer of its own
    const data = batch.data;
    let bytes: Buffer;
    let size: number;
    if (data.length * 3 <= SCRATCH.length) {
      bytes = SCRATCH;
      size = SCRATCH.write(data, 0, 'utf8');
    } else {
      bytes = Buffer.from(data, 'utf8');
      size = bytes.length;
    }
    if (this.shouldRotate(size)) return false;
    let off = 0;
    try {
      while (off < size) {
        const written = writeSync(fh.fd, bytes, off, size - off);
        if (written <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
        off += written;
      }
    } catch (e) {
      if (off > 0) {
        try {
          ftruncateSync(fh.fd, this.active.bytes);
        } catch {
          // the record stays torn; open() cuts a torn tail, and it was never acknowledged
        }
      }
      throw e;
    }
    this.dirty = true;
    this.recordAppended(size, batch);
    return true;
  }

  private recordAppended(n: number, batch: Batch): void {
    const a = this.active;
    a.bytes += n;
    a.records += batch.count;
    if (a.firstSeq === null) {
      a.firstSeq = batch.first.seq;
      a.firstInstance = batch.first.instance;
    }
    a.last = batch.last;
  }

  private shouldRotate(incoming: number): boolean {
    if (this.active.records === 0) return false;
    if (this.opts.rotateBytes > 0 && this.active.bytes + incoming > this.opts.rotateBytes) return true;
    if (this.opts.rotateSeconds > 0 && this.manifest) {
      // the manifest's activeSince parsed once per value, not on every write
      if (this.activeSinceText !== this.manifest.activeSince) {
        this.activeSinceText = this.manifest.activeSince;
        this.activeSinceMs = Date.parse(this.activeSinceText);
      }
      if (this.now().getTime() - this.activeSinceMs >= this.opts.rotateSeconds * 1000) return true;
    }
    return false;
  }

  /** Closes the active file under its rotated name, lists it in the manifest, and starts a new active file. */
  private async rotate(): Promise<void> {
    const fh = this.fh!;
    const m = this.manifest!;
    if (this.opts.fsync !== 'none') await fh.datasync();
    await fh.close();
    this.fh = null;
    const closed = this.now();
    const name = rotatedName(this.paths.stem, m.next, closed);
    const rotated = join(this.paths.dir, name);
    try {
      await rename(this.paths.active, rotated);
    } catch (e) {
      // the directory refuses new names (read-only, immutable): keep appending to the active file as it was,
      // so the trail recovers once the directory is writable again instead of staying closed
      this.fh = await open(this.paths.active, 'a+', 0o640);
      throw e;
    }
    const a = this.active;
    const entry: ManifestEntry = {
      index: m.next,
      name,
      records: a.records,
      bytes: a.bytes,
      firstSeq: a.firstSeq,
      firstInstance: a.firstInstance,
      lastSeq: a.last?.seq ?? null,
      lastInstance: a.last?.instance ?? null,
      lastHash: a.last?.hash ?? null,
      closed: closed.toISOString(),
    };
    const manifest: Manifest = { ...m, next: m.next + 1, activeSince: closed.toISOString(), files: [...m.files, entry] };
    try {
      await writeJsonAtomic(this.paths.manifest, manifest, this.opts.fsync !== 'none');
    } catch (e) {
      // not listed, so not rotated: put the file back and carry on with it
      await rename(rotated, this.paths.active).catch(() => undefined);
      this.fh = await open(this.paths.active, 'a+', 0o640);
      throw e;
    }
    this.manifest = manifest;
    this.fh = await open(this.paths.active, 'a+', 0o640);
    this.active = { records: 0, bytes: 0, firstSeq: null, firstInstance: null, last: a.last };
  }

  /** Flushes written data to stable storage (the `interval` policy's timer, and close). */
  sync(): Promise<void> {
    return this.serial(async () => {
      if (this.fh && this.dirty) {
        this.dirty = false;
        await this.fh.datasync();
      }
    });
  }

  /**
   * Writes a subject side file (a list too long to inline) and returns its SHA-256, which the record carries so
   * the chain covers the file's contents. Content-addressed: writing the same list twice is harmless.
   */
  writeSideFile(content: string): Promise<string> {
    return this.serial(async () => {
      const sha = createHash('sha256').update(content).digest('hex');
      await mkdir(this.paths.subjects, { recursive: true, mode: 0o750 });
      const path = join(this.paths.subjects, `${sha}.json`);
      const fh = await open(path, 'w', 0o640);
      try {
        await fh.writeFile(content);
        if (this.opts.fsync === 'always') await fh.datasync();
      } finally {
        await fh.close();
      }
      return sha;
    });
  }

  /** Rotation index the active file will get: the postgres feeder's cursor uses it to follow renames. */
  get activeIndex(): number {
    return this.manifest?.next ?? 1;
  }

  close(): Promise<void> {
    return this.serial(async () => {
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      if (!this.fh) return;
      const fh = this.fh;
      this.fh = null;
      try {
        if (this.opts.fsync !== 'none' && this.dirty) await fh.datasync();
      } finally {
        await fh.close();
        await this.unlock();
      }
    });
  }
}

/** appendSync's encoding buffer (sealing and writing are synchronous: one serves every sink). */
const SCRATCH = Buffer.allocUnsafe(256 * 1024);

/** When this process started (ms since the epoch, rounded): tells our locks from a previous holder of our pid. */
const PROCESS_STARTED = Math.round(Date.now() - process.uptime() * 1000);

function tryParse(line: string): ReturnType<typeof parseRecord> | null {
  try {
    return parseRecord(line);
  } catch {
    return null;
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
