// A bounded LRU of analyses keyed by (query bytes, search_path, catalog epoch, role set, lexing settings).
// An analysis depends on nothing else, so a hit can be reused as is (plans are treated as immutable). A second
// LRU, by statement shape, serves texts that differ from an analysed one only in free constants (shape.ts).
import type { Analysis, AnalysisContext } from './types.js';
import { instantiate, shapeEntry, shapeOf, type ShapeEntry } from './shape.js';

export class LruCache<K, V> {
  private readonly map = new Map<K, V>();
  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError('capacity must be at least 1');
  }
  get(k: K): V | undefined {
    const v = this.map.get(k);
    if (v === undefined) return undefined;
    this.map.delete(k); // move to most recent
    this.map.set(k, v);
    return v;
  }
  set(k: K, v: V): void {
    if (this.map.has(k)) this.map.delete(k);
    else if (this.map.size >= this.capacity) this.map.delete(this.map.keys().next().value as K);
    this.map.set(k, v);
  }
  get size(): number {
    return this.map.size;
  }
  clear(): void {
    this.map.clear();
  }
}

export interface AnalysisKeyParts {
  searchPath: readonly string[];
  catalogEpoch: number | string;
  roleSet: string; // e.g. the sorted effective role names, or an id of the policy decision set
  standardConformingStrings?: boolean;
  clientEncoding?: string;
  maxInListItems?: number;
  allowDdl?: boolean;
}

// \u0000 cannot occur in a query string the server accepts, so it separates the parts unambiguously.
export function analysisKey(sql: Buffer, p: AnalysisKeyParts): string {
  return keyOf(sql.toString('latin1'), p);
}

function keyOf(text: string, p: AnalysisKeyParts): string {
  return [
    text,
    p.searchPath.join('\u0001'),
    String(p.catalogEpoch),
    p.roleSet,
    p.standardConformingStrings === false ? 'scs=off' : 'scs=on',
    p.clientEncoding ?? 'UTF8',
    String(p.maxInListItems ?? ''),
    p.allowDdl ? 'ddl' : '',
  ].join('\u0000');
}

export class AnalysisCache {
  private readonly lru: LruCache<string, Analysis>;
  // Analyses reusable for texts that differ only in free constants (proxy/sql/shape.ts), by shape key.
  private readonly shapes: LruCache<string, ShapeEntry>;
  hits = 0;
  shapeHits = 0;
  misses = 0;
  // Statements longer than maxSqlBytes (bulk inserts, generated SQL) are analysed every time rather than pinned
  // in memory as keys.
  constructor(
    capacity = 1024,
    readonly maxSqlBytes = 16 * 1024,
  ) {
    this.lru = new LruCache(capacity);
    this.shapes = new LruCache(capacity);
  }
  // Returns the cached analysis or computes, stores and returns it.
  getOrAnalyse(sql: Buffer, parts: AnalysisKeyParts, ctx: AnalysisContext, run: (sql: Buffer, ctx: AnalysisContext) => Analysis): Analysis {
    if (sql.length > this.maxSqlBytes) {
      this.misses++;
      return run(sql, ctx);
    }
    const key = analysisKey(sql, parts);
    const hit = this.lru.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    // Shapes are matched under what the shape lexer assumes: UTF-8 text, standard_conforming_strings on.
    const shaped = sql.length <= MAX_SHAPE_BYTES && parts.standardConformingStrings !== false && (parts.clientEncoding ?? 'UTF8') === 'UTF8';
    const shape = shaped ? shapeOf(sql) : null;
    const shapeKey = shape ? keyOf('shape\u0003' + shape.key, parts) : '';
    if (shape) {
      const entry = this.shapes.get(shapeKey);
      const reused = entry ? instantiate(entry, shape, sql) : null;
      if (reused) {
        this.shapeHits++;
        this.origins.set(reused, entry!);
        return reused;
      }
    }
    this.misses++;
    const a = run(sql, ctx);
    this.lru.set(key, a);
    if (shape) {
      const entry = shapeEntry(a, shape, sql);
      if (entry) {
        this.shapes.set(shapeKey, entry);
        this.origins.set(a, entry);
      }
    }
    return a;
  }
  get size(): number {
    return this.lru.size;
  }

  /** The shape an analysis was made for or reused from (proxy/sql/shape.ts), if any. */
  shapeEntryOf(a: Analysis): ShapeEntry | undefined {
    return this.origins.get(a);
  }
  private readonly origins = new WeakMap<Analysis, ShapeEntry>();
  clear(): void {
    this.lru.clear();
    this.shapes.clear();
  }
}

// Shape keys are built for short statements only (the ones sent once per value).
const MAX_SHAPE_BYTES = 2048;
