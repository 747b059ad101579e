// AuditTrail: the one object the proxy talks to. Appends are queued and written in order by a single writer, so
// the chain is linear; appends of one event-loop turn (and those that arrive while a write is in flight) are
// grouped into one write (group commit) settled through one shared promise, and each caller's promise settles
// only when its own record has reached the OS. With failMode
// `closed` a record that cannot be written rejects with AuditUnavailableError (the caller refuses the access);
// with `open` it resolves and the record is counted as lost.
import { hostname } from 'node:os';
import type { KeyObject } from 'node:crypto';
import type { Writable } from 'node:stream';
import { auditConfigSchema, type AuditConfig, type AuditConfigInput } from './config.js';
import { ChainState, newInstanceId, writeRegistry, type SealContext, type SealItem, type SealedBatch } from './chain.js';
import { CheckpointFileSink, CheckpointPostgresSink, CheckpointStreamSink, publicKeyId, signCheckpoint, type CheckpointSink } from './checkpoint.js';
import { AuditUnavailableError, ioReason } from './errors.js';
import { readRegistry } from './files.js';
import { canonicalJson, RecordTemplate, type AuditEvent, type AuditRecord, type ChainHead, type CheckpointBody, type RecordContext, type TemplateValues } from './record.js';
import { subjectHash } from './subject.js';
import { FileSink, type Batch, type OpenResult } from './sinks/file.js';
import { StdoutSink } from './sinks/stdout.js';
import { PostgresFeeder } from './sinks/postgres.js';

/** Where metrics hook in (metrics.ts provides one); every method optional. */
export interface AuditObserver {
  written?(records: number): void;
  lost?(records: number): void;
  /** Records refused (failMode closed): the caller was told to refuse the access. */
  refused?(records: number): void;
  /** Seconds from append() to the record reaching the OS. */
  writeLatency?(seconds: number): void;
}

/** The current subject key from the keyring (purpose `subject`, the current retention period). */
export interface SubjectKeySource {
  subjectKey(): { id: string; key: KeyObject };
}

export interface AuditTrailOptions {
  instanceId?: string;
  /** Ed25519 private key for checkpoints; without it checkpoints are written unsigned. */
  signingKey?: KeyObject;
  keyring?: SubjectKeySource;
  /** Recorded in genesis/instance_start: `proxy`, `cli` … */
  program?: string;
  version?: string;
  observer?: AuditObserver;
  /** Stream for the stdout sink (default process.stdout). */
  stdout?: Writable;
  /** Passwords of postgres sinks by index in `sinks` (config/load.ts's `secrets.auditSinkPasswords`). */
  sinkPasswords?: ReadonlyArray<string | undefined>;
  /** Password of a postgres checkpoint sink. */
  checkpointSinkPassword?: string;
  /** How long close() waits for the checkpoint sink and the postgres sink to catch up (default 5000 ms). */
  closeTimeoutMs?: number;
  now?: () => Date;
}

interface PrimarySink {
  readonly isOpen: boolean;
  open(): Promise<OpenResult>;
  append(batch: Batch): Promise<void>;
  close(): Promise<void>;
}

type Item = SealItem;
/**
 * Appends gathered in one event-loop turn: written together, and settled together through one shared promise
 * (a record's promise settles when its batch has reached the OS, or failed).
 */
interface PendingBatch {
  items: Item[];
  contexts: SealContext[];
  at: bigint;
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

// A batch's promise is made with one module-level executor (no closure per batch; under tsx each closure made
// costs a name definition, and a batch is made every few hundred microseconds under load).
let capturedResolve: () => void = () => undefined;
let capturedReject: (e: Error) => void = () => undefined;
function capture(res: () => void, rej: (e: Error) => void): void {
  capturedResolve = res;
  capturedReject = rej;
}

function newBatch(): PendingBatch {
  const promise = new Promise<void>(capture);
  return { items: [], contexts: [], at: 0n, promise, resolve: capturedResolve, reject: capturedReject };
}

function sinkBatch(sealed: SealedBatch): Batch {
  return { data: sealed.data, count: sealed.count, first: sealed.first!, last: sealed.last! };
}

let isoSecond = -1;
let isoPrefix = '';
/** Year 10000: from there toISOString writes six-digit years. */
const ISO_LIMIT_MS = 253402300800000;
/**
 * `new Date(ms).toISOString()`, with `YYYY-MM-DDTHH:mm:ss.` made once per second and the milliseconds written
 * in: a batch is written every few hundred microseconds, and a Date with its formatting per batch shows.
 */
export function isoTime(ms: number): string {
  if (!Number.isInteger(ms) || ms < 0 || ms >= ISO_LIMIT_MS) return new Date(ms).toISOString();
  const second = Math.floor(ms / 1000);
  if (second !== isoSecond) {
    isoSecond = second;
    isoPrefix = new Date(second * 1000).toISOString().slice(0, 20);
  }
  const frac = ms - second * 1000;
  return isoPrefix + (frac < 10 ? '00' : frac < 100 ? '0' : '') + frac + 'Z';
}

const MAX_BATCH = 1024;
/** Longest a record appended with appendLater waits for a write to share. */
export const LAZY_FLUSH_MS = 5;
/** After a failed open, appends fail fast for this long before the sink is tried again. */
const REOPEN_BACKOFF_MS = 1000;

export class AuditTrail {
  readonly instanceId: string;
  readonly config: AuditConfig;
  private readonly chain: ChainState;
  private readonly primary: PrimarySink;
  private readonly file: FileSink | null;
  private readonly mirror: StdoutSink | null;
  private readonly feeder: PostgresFeeder | null;
  private readonly checkpointSink: CheckpointSink | null;
  private readonly now: () => Date;
  private readonly startedAt: number;
  /** Batches not yet taken by the writer; appends join the last one. */
  private batches: PendingBatch[] = [];
  private pending = 0;
  private scheduled = false;
  private lazyTimer: NodeJS.Timeout | null = null;
  /** A lazy record waits for the timer (no flush is scheduled that would take it first). */
  private lazyArmed = false;
  private probing: Promise<boolean> | null = null;
  private flushing: Promise<void> | null = null;
  private started = false;
  private closed = false;
  private lastOpenFailure = 0;
  private openFailure: AuditUnavailableError | null = null;
  private lastError: string | null = null;
  private counts = { written: 0, lost: 0, checkpointSinkFailures: 0, mirrorDropped: 0 };
  /** Checkpoint-sink writes run behind the writer, in order, so a slow second sink never holds up appends. */
  private checkpointShipping: Promise<void> = Promise.resolve();
  private timers: NodeJS.Timeout[] = [];
  private readonly maxLag: number;

  private constructor(
    cfg: AuditConfig,
    private readonly opts: AuditTrailOptions,
  ) {
    this.config = cfg;
    this.now = opts.now ?? (() => new Date());
    this.startedAt = Date.now();
    this.instanceId = opts.instanceId ?? newInstanceId();
    this.chain = new ChainState(this.instanceId, this.now());
    const fileCfg = cfg.sinks.find((s) => s.type === 'file');
    const stdout = cfg.sinks.some((s) => s.type === 'stdout') ? new StdoutSink(opts.stdout) : null;
    this.file = fileCfg
      ? new FileSink({ ...fileCfg, fsync: cfg.fsync, fsyncIntervalMs: cfg.fsyncIntervalMs, writeMode: cfg.writeMode, now: this.now })
      : null;
    this.primary = this.file ?? stdout!;
    this.mirror = this.file ? stdout : null;
    const pgIndex = cfg.sinks.findIndex((s) => s.type === 'postgres');
    const pgCfg = cfg.sinks[pgIndex];
    this.feeder = pgCfg?.type === 'postgres' && this.file ? new PostgresFeeder(pgCfg, this.file, opts.sinkPasswords?.[pgIndex]) : null;
    this.maxLag = pgCfg?.type === 'postgres' ? pgCfg.maxLagRecords : Infinity;
    const cp = cfg.checkpointSink;
    this.checkpointSink =
      cp === null
        ? null
        : cp.type === 'file'
          ? new CheckpointFileSink(cp.path)
          : cp.type === 'stdout'
            ? new CheckpointStreamSink(opts.stdout ?? process.stdout)
            : new CheckpointPostgresSink(cp, opts.checkpointSinkPassword);
  }

  /**
   * Opens the trail. Never throws for an unavailable sink: the trail starts degraded and every append reports
   * it (closed mode) until the sink can be opened, so the proxy still serves statements that touch nothing
   * protected. Throws only for an invalid configuration.
   */
  static async open(cfg: AuditConfigInput | AuditConfig, opts: AuditTrailOptions = {}): Promise<AuditTrail> {
    const trail = new AuditTrail(auditConfigSchema.parse(cfg), opts);
    await trail.feeder?.start();
    // genesis and instance_start go out now if the sink is there; otherwise with the first append that succeeds
    await trail.writeBatch([], []).catch(() => undefined);
    const { heartbeatSeconds, checkpointEverySeconds } = trail.config;
    if (heartbeatSeconds > 0) trail.every(heartbeatSeconds, () => trail.heartbeat());
    if (checkpointEverySeconds > 0) trail.every(checkpointEverySeconds, () => trail.checkpoint());
    return trail;
  }

  private every(seconds: number, fn: () => Promise<void>): void {
    const t = setInterval(() => void fn().catch(() => undefined), seconds * 1000);
    t.unref();
    this.timers.push(t);
  }

  /**
   * Appends one record; see the class comment for what the promise means in each fail mode. `context` holds
   * session fields the event does not set itself (kept apart so no merged copy is built per record).
   */
  append(event: AuditEvent, context: RecordContext | null = null): Promise<void> {
    return this.enqueue(event, context, false);
  }

  /**
   * Appends a record nobody waits for before releasing data (completions, connects, `statements: all`): it goes
   * out with the next write, or after at most LAZY_FLUSH_MS, so it usually shares a write with an intent
   * record instead of costing a write of its own. Order in the chain is still the order of the calls.
   */
  appendLater(event: AuditEvent, context: RecordContext | null = null): Promise<void> {
    return this.enqueue(event, context, true);
  }

  /** append() of a record made from a template and its per-record values (record.ts RecordTemplate). */
  appendFrom(template: RecordTemplate, values: TemplateValues): Promise<void> {
    return this.enqueue(values, template, false);
  }

  /** appendLater() of a record made from a template and its per-record values. */
  appendLaterFrom(template: RecordTemplate, values: TemplateValues): Promise<void> {
    return this.enqueue(values, template, true);
  }

  /** Writes a heartbeat record (also done on a timer). */
  heartbeat(): Promise<void> {
    return this.enqueue({ kind: 'heartbeat', lost: this.counts.lost, uptimeS: Math.round((Date.now() - this.startedAt) / 1000) });
  }

  /** Writes a checkpoint over the current head, signed if a key was given, to the main and checkpoint sinks. */
  checkpoint(): Promise<void> {
    const key = this.opts.signingKey ?? null;
    const keyId = key ? publicKeyId(key) : null;
    return this.enqueue((head) => {
      const body: CheckpointBody = {
        instance: head?.instance ?? this.instanceId,
        seq: head?.seq ?? 0,
        head: head?.hash ?? '',
        time: this.now().toISOString(),
      };
      return {
        kind: 'checkpoint',
        checkpoint: body,
        keyId,
        sig: key ? signCheckpoint(body, key) : null,
        registry: this.chain.registry,
        // names the file series, so one checkpoint sink can serve several series
        ...(this.file ? { series: this.file.paths.stem } : {}),
      };
    });
  }

  /** Subject hashes for values of one logical type under the current subject key (deduplicated). */
  hashSubjects(logicalType: string, canonicals: Buffer[]): { subjects: string[]; subjectKeyId: string } {
    if (!this.opts.keyring) throw new Error('no subject key source configured');
    const { id, key } = this.opts.keyring.subjectKey();
    return { subjects: [...new Set(canonicals.map((c) => subjectHash(key, logicalType, c)))], subjectKeyId: id };
  }

  head(): ChainHead | null {
    return this.chain.current;
  }

  stats(): { written: number; lost: number; pending: number; checkpointSinkFailures: number; mirrorDropped: number; lastError: string | null } {
    return { ...this.counts, pending: this.pending, lastError: this.lastError };
  }

  /** For /readyz: the primary sink is open and the last write succeeded. */
  writable(): boolean {
    return !this.closed && this.primary.isOpen && this.lastError === null;
  }

  /**
   * For /readyz: writable() — and when it is not, one heartbeat record is tried first, so readiness comes back
   * as soon as the sink accepts writes again (the failure is remembered only until a write succeeds; without
   * traffic nothing else would write). One probe at a time.
   */
  probe(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (this.writable()) return Promise.resolve(true);
    this.probing ??= this.heartbeat()
      .catch(() => undefined)
      .then(() => {
        this.probing = null;
        return this.writable();
      });
    return this.probing;
  }

  private enqueue(item: Item, context: SealContext = null, lazy = false): Promise<void> {
    if (this.closed) return this.fail(new AuditUnavailableError('audit trail is closed', 'closed'), 1);
    if (this.pending >= this.config.maxBufferedRecords)
      return this.fail(new AuditUnavailableError('audit writer is behind: pending buffer full', 'buffer_full'), 1);
    if (this.feeder && this.feeder.lag() > this.maxLag)
      return this.fail(new AuditUnavailableError('audit database sink is down past its buffer', 'sink_lag'), 1);
    let b = this.batches[this.batches.length - 1];
    if (!b || b.items.length >= MAX_BATCH) {
      b = newBatch();
      if (this.opts.observer?.writeLatency) b.at = process.hrtime.bigint(); // only the latency metric reads it
      this.batches.push(b);
    }
    b.items.push(item);
    b.contexts.push(context);
    this.pending++;
    if (this.flushing || this.scheduled) return b.promise; // the running writer or the next flush takes it
    if (!lazy) {
      // one write per event-loop turn: the check phase runs after every socket read of this turn
      this.scheduled = true;
      setImmediate(this.flushNow);
    } else if (!this.lazyArmed) {
      // one timer for the trail's life, re-armed (refresh) rather than created and cleared per record: most
      // lazy records are written by the next intent's flush long before it fires, and then it fires idle
      this.lazyArmed = true;
      if (this.lazyTimer) this.lazyTimer.refresh();
      else this.lazyTimer = setTimeout(this.lazyFlush, LAZY_FLUSH_MS); // not unref'd: a waiting record keeps the process up
    }
    return b.promise;
  }

  /** The records' time: what `new Date().toISOString()` gives, without a Date and its formatting per batch. */
  private timeNow(): string {
    return this.opts.now ? this.opts.now().toISOString() : isoTime(Date.now());
  }

  /** Closed mode: reject. Open mode: count the loss and resolve. */
  private fail(err: AuditUnavailableError, n: number): Promise<void> {
    if (this.config.failMode === 'open') {
      this.counts.lost += n;
      this.opts.observer?.lost?.(n);
      return Promise.resolve();
    }
    this.opts.observer?.refused?.(n);
    return Promise.reject(err);
  }

  /** Writes the waiting batches: synchronously while the fast path allows, else through the async writer. */
  private readonly lazyFlush = (): void => {
    if (this.lazyArmed) this.flushNow();
  };

  private readonly flushNow = (): void => {
    this.scheduled = false;
    this.lazyArmed = false; // a lazy record waiting is written now; the timer, if running, fires idle
    if (this.flushing) return;
    while (this.batches.length > 0) {
      if (!this.writeFast(this.batches[0]!)) {
        this.flushing = this.flushLoop();
        return;
      }
    }
  };

  /**
   * Seals and writes one batch synchronously when nothing asynchronous has to happen first (the trail is
   * started, no side file, no registry refresh, the file sink can write now). False: nothing was done.
   */
  private writeFast(b: PendingBatch): boolean {
    const file = this.file;
    if (!this.started || !file || !file.isOpen) return false;
    const max = this.config.maxInlineSubjects;
    for (const it of b.items) {
      if (typeof it === 'function' || it.kind === 'heartbeat' || (it.subjects !== undefined && it.subjects.length > max)) return false;
    }
    let sealed: SealedBatch;
    try {
      // sealing can throw too (a non-finite number in an event): that batch fails, the writer goes on
      sealed = this.chain.seal(b.items, b.contexts, this.timeNow());
      if (!file.appendSync(sinkBatch(sealed))) return false;
    } catch (e) {
      this.batches.shift();
      this.settleFailed(b, e);
      return true;
    }
    this.batches.shift();
    this.committed(sealed);
    this.settleOk(b);
    return true;
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.batches.length > 0) {
        const b = this.batches.shift()!;
        try {
          await this.writeBatch(b.items, b.contexts);
          this.settleOk(b);
        } catch (e) {
          this.settleFailed(b, e);
        }
      }
    } finally {
      this.flushing = null;
    }
  }

  private settleOk(b: PendingBatch): void {
    this.pending -= b.items.length;
    this.lastError = null;
    const latency = this.opts.observer?.writeLatency;
    if (latency) {
      const s = Number(process.hrtime.bigint() - b.at) / 1e9;
      for (let i = 0; i < b.items.length; i++) latency.call(this.opts.observer, s);
    }
    b.resolve();
  }

  private settleFailed(b: PendingBatch, e: unknown): void {
    const n = b.items.length;
    this.pending -= n;
    const err =
      e instanceof AuditUnavailableError ? e : new AuditUnavailableError(`audit record could not be written (${ioReason(e)})`, 'io', { cause: e });
    this.lastError = err.message;
    if (this.config.failMode === 'open') {
      this.counts.lost += n;
      this.opts.observer?.lost?.(n);
      b.resolve();
    } else {
      this.opts.observer?.refused?.(n);
      b.reject(err);
    }
  }

  /** Opens the primary sink if needed, reading the previous head and registry for the genesis record. */
  private async ensureStarted(): Promise<Item[]> {
    if (this.started) return [];
    if (this.openFailure && Date.now() - this.lastOpenFailure < REOPEN_BACKOFF_MS) throw this.openFailure;
    let opened: OpenResult;
    let registry = {};
    try {
      opened = await this.primary.open();
      if (this.file) registry = (await readRegistry(this.file.paths))?.instances ?? {};
    } catch (e) {
      this.lastOpenFailure = Date.now();
      const locked = (e as NodeJS.ErrnoException).code === 'ELOCKED';
      const err = new AuditUnavailableError(
        locked ? 'audit file is in use by another mamori process' : `audit sink could not be opened (${ioReason(e)})`,
        locked ? 'locked' : 'io',
        { cause: e },
      );
      this.lastError = err.message;
      this.openFailure = err;
      throw err;
    }
    this.openFailure = null;
    this.chain.setPrevious(opened.previous, registry);
    const program = this.opts.program ?? 'proxy';
    const genesis: AuditEvent = {
      kind: 'genesis',
      previous: opened.previous,
      registry,
      program,
      ...(opened.repairedTailBytes > 0 ? { repairedTailBytes: opened.repairedTailBytes } : {}),
    };
    const start: AuditEvent = { kind: 'instance_start', program, version: this.opts.version ?? '0.1.0', pid: process.pid, host: hostname() };
    return [genesis, start];
  }

  private async writeBatch(items: Item[], contexts: SealContext[]): Promise<void> {
    const preamble = await this.ensureStarted();
    const max = this.config.maxInlineSubjects;
    const spill = this.file !== null && items.some((i) => typeof i !== 'function' && i.subjects !== undefined && i.subjects.length > max);
    const prepared = spill ? await Promise.all(items.map((i) => this.spillSubjects(i))) : items;
    // a record whose subjects moved to a side file has members its template has no hole for: it is sealed
    // through the generic path, with the template's shared members as its context
    const own = spill ? contexts.map((c, i) => (c instanceof RecordTemplate && prepared[i] !== items[i] ? c.members : c)) : contexts;
    const all = preamble.length > 0 ? [...preamble, ...prepared] : prepared;
    const ctxs = preamble.length > 0 ? [...preamble.map(() => null), ...own] : own;
    if (all.length === 0) return;
    const sealed = this.chain.seal(all, ctxs, this.timeNow());
    await this.primary.append(sinkBatch(sealed));
    this.committed(sealed);
    if (preamble.length > 0) this.started = true;
    await this.afterWrite(sealed.special);
  }

  /** The sealed batch reached the sink: advance the chain, count, and pass it on. */
  private committed(sealed: SealedBatch): void {
    this.chain.commit(sealed.last);
    this.counts.written += sealed.count;
    this.opts.observer?.written?.(sealed.count);
    this.feeder?.notify(sealed.count);
    if (this.mirror && !this.mirror.mirror(sealed.data)) this.counts.mirrorDropped += sealed.count;
  }

  /** Checkpoints go to the second sink too; checkpoints and heartbeats refresh the registry file. */
  private async afterWrite(records: AuditRecord[]): Promise<void> {
    let registryDue = false;
    for (const r of records) {
      if (r.kind === 'checkpoint' && this.checkpointSink) {
        const sink = this.checkpointSink;
        this.checkpointShipping = this.checkpointShipping.then(() =>
          sink.append(r).catch(() => {
            this.counts.checkpointSinkFailures++;
          }),
        );
      }
      if (r.kind === 'checkpoint' || r.kind === 'heartbeat' || r.kind === 'genesis') registryDue = true;
    }
    if (registryDue && this.file)
      await writeRegistry(this.file.paths, this.chain.registry, this.now(), this.config.fsync === 'always').catch(() => undefined);
  }

  /** Subject lists longer than `maxInlineSubjects` move to a side file the record names by SHA-256. */
  private async spillSubjects(item: Item): Promise<Item> {
    if (typeof item === 'function' || !item.subjects || item.subjects.length <= this.config.maxInlineSubjects || !this.file) return item;
    const content = canonicalJson({ subjectKeyId: item.subjectKeyId ?? null, subjects: item.subjects });
    const sha = await this.file.writeSideFile(content);
    const { subjects, ...rest } = item;
    return { ...rest, subjectsRef: sha, subjectCount: subjects.length } as Item;
  }

  /** Final checkpoint, drain, registry marked ended, sinks closed. Appends after this are refused. */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.started || this.pending > 0) await this.checkpoint().catch(() => undefined);
    this.closed = true;
    while (this.flushing) await this.flushing;
    if (this.lazyTimer) clearTimeout(this.lazyTimer);
    this.lazyArmed = false;
    if (this.started && this.file) {
      this.chain.end(this.now());
      await writeRegistry(this.file.paths, this.chain.registry, this.now(), this.config.fsync !== 'none').catch(() => undefined);
    }
    await this.primary.close();
    const timeout = this.opts.closeTimeoutMs ?? 5000;
    await this.feeder?.close(timeout);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.checkpointShipping, new Promise((r) => (timer = setTimeout(r, timeout)))]);
    clearTimeout(timer);
    await this.checkpointSink?.close();
  }
}
