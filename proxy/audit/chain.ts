// The SHA-256 hash chain and the instance registry. Every record carries `prev` (the hash of the record written
// before it in this trail, whatever instance wrote it) and its own `hash`; each instance numbers its records from
// 1 and opens with a genesis record naming the previous run's head, so deleting a whole run also breaks the chain.
// The registry lists every instance with its last seq and head; it is kept in a small file next to the trail and
// copied into genesis and checkpoint records.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { ZERO_HASH, RecordTemplate, sealLine, sealRecordLine, type AuditEvent, type AuditRecord, type ChainHead, type InstanceRegistry, type RecordContext, type RegistryEntry, type TemplateValues } from './record.js';
import { writeJsonAtomic, type RegistryFile, type SeriesPaths } from './files.js';

/** Registry entries kept (most recent first); older instances stay provable through the chain itself. */
export const REGISTRY_LIMIT = 64;

/** A fresh instance id: host, pid and randomness, so two runs never share one. */
export function newInstanceId(): string {
  const host = hostname().replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 32) || 'host';
  return `${host}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

export interface SealedBatch {
  data: string;
  count: number;
  first: ChainHead | null;
  last: ChainHead | null;
  /** Full records of the kinds the trail acts on after the write (genesis, heartbeat, checkpoint). */
  special: AuditRecord[];
}

/**
 * An item to seal: an event (with the session context kept apart), the per-record values of a RecordTemplate
 * (the template in the item's context slot), or a checkpoint built from the head before it.
 */
export type SealItem = AuditEvent | TemplateValues | ((head: ChainHead | null) => AuditEvent);
/** What `seal` takes beside each item: its context, its template, or null. */
export type SealContext = RecordContext | RecordTemplate | null;

const SPECIAL_KINDS = new Set(['genesis', 'heartbeat', 'checkpoint']);

/** Chain state of one instance writing one trail. Sealing is tentative until `commit` (the write succeeded). */
export class ChainState {
  /** Last record committed to the trail (this instance's, or the previous run's before our genesis). */
  private head: ChainHead | null = null;
  private lastSeq = 0;
  private readonly started: string;
  /** The registry as read at start (the other instances); this instance's entry is added when asked for. */
  private previousRegistry: InstanceRegistry = {};
  /** This instance has committed a record (it then has a registry entry). */
  private committed = false;
  private endedAt: string | null = null;

  constructor(
    readonly instance: string,
    now: Date,
  ) {
    this.started = now.toISOString();
  }

  /** Called once the previous head is known (before the genesis record is sealed). */
  setPrevious(previous: ChainHead | null, registry: InstanceRegistry): void {
    this.head = previous;
    this.previousRegistry = { ...registry };
  }

  /**
   * The instance registry: the other instances as read at start, and this one with its last committed seq and
   * head. Built when asked for (checkpoints, heartbeats, the registry file), not on every commit: copying a full
   * registry (REGISTRY_LIMIT entries) on every write cost ~2 µs per write, for a value read every few seconds.
   */
  get registry(): InstanceRegistry {
    if (!this.committed || !this.head) return this.previousRegistry;
    const entry: RegistryEntry = { started: this.started, lastSeq: this.lastSeq, head: this.head.hash };
    if (this.endedAt !== null) entry.ended = this.endedAt;
    return pruneRegistry({ ...this.previousRegistry, [this.instance]: entry });
  }

  get current(): ChainHead | null {
    return this.head;
  }

  get seq(): number {
    return this.lastSeq;
  }

  /**
   * Seals items in order from the committed head. A function item (a checkpoint) computes its event from the
   * head just before it (it sees the tentative head of the records sealed earlier in the same batch).
   * `contexts[i]` holds the session fields of `items[i]` (or null).
   */
  seal(items: readonly SealItem[], contexts: ReadonlyArray<SealContext>, time: string): SealedBatch {
    let prevHash = this.head?.hash ?? ZERO_HASH;
    let seq = this.lastSeq;
    let data = '';
    let first: ChainHead | null = null;
    const special: AuditRecord[] = [];
    const chain = { time, instance: this.instance, seq, prev: prevHash };
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      seq += 1;
      chain.seq = seq;
      chain.prev = prevHash;
      let hash: string;
      const context = contexts[i] ?? null;
      if (context instanceof RecordTemplate && typeof item !== 'function') {
        const sealed = context.seal(item as TemplateValues, chain);
        hash = sealed.hash;
        data += sealed.line + '\n';
      } else if (typeof item === 'function' || (item.kind !== undefined && SPECIAL_KINDS.has(item.kind))) {
        const event = typeof item === 'function' ? item(i === 0 ? this.head : { instance: this.instance, seq: seq - 1, hash: prevHash }) : item;
        const sealed = sealRecordLine(event, chain);
        special.push(sealed.record);
        hash = sealed.record.hash;
        data += sealed.line + '\n';
      } else {
        const sealed = sealLine(item as AuditEvent, context as RecordContext | null, chain);
        hash = sealed.hash;
        data += sealed.line + '\n';
      }
      if (first === null) first = { instance: this.instance, seq, hash };
      prevHash = hash;
    }
    return { data, count: items.length, first, last: items.length > 0 ? { instance: this.instance, seq, hash: prevHash } : null, special };
  }

  /** The sealed records reached the sink: advance the head and the registry. */
  commit(last: ChainHead | null): void {
    if (!last) return;
    this.head = last;
    this.lastSeq = last.seq;
    this.committed = true;
  }

  /** Marks this instance ended in the registry (close). */
  end(now: Date): void {
    if (this.committed) this.endedAt = now.toISOString();
  }
}

export function pruneRegistry(registry: InstanceRegistry): InstanceRegistry {
  const ids = Object.keys(registry);
  if (ids.length <= REGISTRY_LIMIT) return registry;
  const keep = ids.sort((a, b) => (registry[b]!.started < registry[a]!.started ? -1 : 1)).slice(0, REGISTRY_LIMIT);
  return Object.fromEntries(keep.map((id) => [id, registry[id]!]));
}

export async function writeRegistry(paths: SeriesPaths, registry: InstanceRegistry, now: Date, sync: boolean): Promise<void> {
  const file: RegistryFile = { version: 1, series: paths.stem, updated: now.toISOString(), instances: registry };
  await writeJsonAtomic(paths.registry, file, sync);
}
