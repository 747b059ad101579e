// The key lookup the result and parameter transforms use. Keys are unwrapped before a statement runs (the
// keyring is asynchronous), so every transform here stays synchronous and fails closed on a miss.
import type { CellKey } from '../../keyring/cells/index.js';

export interface CellKeys {
  /** Sync lookup of an unwrapped key; undefined = not loaded (caller fails closed), 'shredded' = tombstoned. */
  get(domainId: number, version: number): CellKey | 'shredded' | undefined;
}

/** A fixed set of keys (tests, benches, and sessions that pin the keys of one statement). */
export class StaticCellKeys implements CellKeys {
  private readonly domains = new Map<number, Map<number, CellKey | 'shredded'>>();

  set(domainId: number, version: number, key: CellKey | 'shredded'): this {
    let versions = this.domains.get(domainId);
    if (versions === undefined) {
      versions = new Map();
      this.domains.set(domainId, versions);
    }
    versions.set(version, key);
    return this;
  }

  get(domainId: number, version: number): CellKey | 'shredded' | undefined {
    return this.domains.get(domainId)?.get(version);
  }
}
