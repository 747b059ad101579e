// Unwrapped data keys for the query path. The keyring is asynchronous (unwrapping may call KMS); result and
// parameter transforms are synchronous. So every key a statement may need is loaded before the statement is
// forwarded, and the transforms look keys up here; a miss fails closed (RowError key_unavailable).
import type { Keyring } from '../../keyring/index.js';
import { encryptCell, type CellKey, type CellMode } from '../../keyring/cells/index.js';
import type { CellKeys } from '../results/keys.js';

/** What the keys report to the metrics (mamori_crypto_operations_total, mamori_key_cache_*). */
export interface KeyMetrics {
  crypto(mode: 'gcm' | 'siv', op: 'encrypt' | 'decrypt', n?: number): void;
  keyCache(hit: boolean): void;
}

export class EngineKeys implements CellKeys {
  private readonly keys = new Map<number, Map<number, CellKey | 'shredded'>>();
  /**
   * Per domain: the keystore generation its versions were last loaded at, and how many were readable. Every
   * keystore change (a version added, shredded, retired; a reload) moves the generation, so a load at the
   * same generation finds nothing new and is skipped.
   */
  private readonly loadedAt = new Map<string, { generation: number; versions: number }>();
  metrics: KeyMetrics | null = null;

  constructor(private readonly keyring: Keyring) {}

  get(domainId: number, version: number): CellKey | 'shredded' | undefined {
    return this.keys.get(domainId)?.get(version);
  }

  /** Loads every readable version of the domain (active ones unwrapped, shredded ones marked). */
  async load(domainName: string): Promise<void> {
    const generation = this.keyring.generation;
    const done = this.loadedAt.get(domainName);
    if (done && done.generation === generation) {
      for (let i = 0; i < done.versions; i++) this.metrics?.keyCache(true);
      return;
    }
    const info = this.keyring.domain(domainName);
    let versions = this.keys.get(info.id);
    if (!versions) {
      versions = new Map();
      this.keys.set(info.id, versions);
    }
    for (const v of info.versions) {
      if (v.status === 'retired') continue;
      const cached = versions.has(v.version);
      this.metrics?.keyCache(cached);
      if (cached) continue;
      versions.set(v.version, await this.keyring.cellKeyFor({ mode: info.mode, domainId: info.id, version: v.version }));
    }
    if (this.keys.get(info.id) === versions) {
      this.loadedAt.set(domainName, { generation, versions: info.versions.filter((v) => v.status !== 'retired').length });
    }
  }

  /** Forgets cached keys (purge on retire/shred, keyring reload): they are loaded again on next use. */
  forget(domainId?: number): void {
    this.loadedAt.clear();
    if (domainId === undefined) this.keys.clear();
    else this.keys.delete(domainId);
  }

  /**
   * Encrypts values for one statement: each value counts one encryption in the keystore (so automatic
   * rotation sees every cell) and refuses while the domain's writes are frozen (deterministic rotation).
   */
  async encryptAll(items: readonly { domain: string; canonical: Buffer }[]): Promise<Buffer[]> {
    const out: Buffer[] = [];
    while (out.length < items.length) {
      // As many as are reserved without waiting, then one through the keystore (which reserves the next block).
      if (this.encryptReserved(items, out, true) && out.length === items.length) break;
      const it = items[out.length]!;
      out.push(await this.keyring.encrypt(it.domain, it.canonical));
    }
    this.count(items);
    return out;
  }

  /**
   * encryptAll() without waiting when every value can be encrypted now (see Keyring.encryptNow); null: call
   * encryptAll(). Throws as encryptAll() does while a domain's writes are frozen.
   */
  encryptAllNow(items: readonly { domain: string; canonical: Buffer }[]): Buffer[] | null {
    const out: Buffer[] = [];
    if (!this.encryptReserved(items, out, false) || out.length < items.length) return null;
    this.count(items);
    return out;
  }

  /**
   * Appends to `out` the cells of items[out.length…], a run of one domain at a time (Keyring.encryptManyNow).
   * Without `partial`, a run that cannot be done whole stops it (nothing counted for that run). False when a
   * key is not at hand.
   */
  private encryptReserved(items: readonly { domain: string; canonical: Buffer }[], out: Buffer[], partial: boolean): boolean {
    while (out.length < items.length) {
      const domain = items[out.length]!.domain;
      let end = out.length + 1;
      while (end < items.length && items[end]!.domain === domain) end++;
      const run: Buffer[] = [];
      for (let i = out.length; i < end; i++) run.push(items[i]!.canonical);
      const cells = this.keyring.encryptManyNow(domain, run, partial);
      if (cells === null) return false;
      for (const c of cells) out.push(c);
      if (cells.length < run.length) return true;
    }
    return true;
  }

  private count(items: readonly { domain: string }[]): void {
    if (this.metrics) for (const it of items) this.metrics.crypto(this.keyring.domain(it.domain).mode === 'deterministic' ? 'siv' : 'gcm', 'encrypt');
  }

  domainId(name: string): number {
    return this.keyring.domainId(name);
  }

  /**
   * Cells of a deterministic domain's current version made on the read path (a column in transition read as
   * ciphertext: a row still in plaintext gets the cell a write of its value stores), synchronously from the loaded
   * key. Not counted in the keystore: SIV has no nonce to wear out and deterministic domains never rotate by count.
   * Null for a randomized domain, while the domain rotates, or when its current key is not loaded.
   */
  deterministicCells(domain: string): ((canonical: Buffer) => Buffer) | null {
    const info = this.keyring.domain(domain);
    if (info.mode !== 'deterministic' || info.rotating !== null) return null;
    const key = this.get(info.id, info.current);
    if (key === undefined || key === 'shredded') return null;
    const header = { mode: 'deterministic' as const, domainId: info.id, version: info.current };
    return (canonical) => {
      this.metrics?.crypto('siv', 'encrypt');
      return encryptCell(header, key, canonical);
    };
  }

  async ensureDomain(name: string, mode: CellMode): Promise<number> {
    if (!this.keyring.hasDomain(name)) await this.keyring.ensureDomain(name, mode);
    return this.keyring.domainId(name);
  }
}

