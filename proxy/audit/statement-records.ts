// The extra records of a protected statement: `search` (a protected column used in a search condition),
// `deletion` (削除記録: DELETE / UPDATE … = NULL / TRUNCATE of a table with protected columns, written at
// completion with the row count), and the subject hashes of the values it wrote, searched or returned in
// plaintext — gathered in a bounded per-statement collector and attached to its records.
import type { StatementPlan, ProtectedColumn } from '../sql/types.js';
import type { ColumnDecision } from './record.js';
import type { SessionAudit, StatementHandle } from './session.js';
import type { SubjectKeySource } from './trail.js';
import { subjectHash } from './subject.js';
import type { KeyObject } from 'node:crypto';

export interface Deletion {
  table: string;
  how: 'delete' | 'update_null' | 'truncate';
}

export interface StatementExtras {
  searches: ColumnDecision[];
  deletions: Deletion[];
}

/** Subject hashes attached to a record. */
export interface Subjects {
  subjects?: string[];
  subjectKeyId?: string;
}

/** Most distinct subjects one statement records (a large export beyond this is noted by `subjectCount`). */
export const MAX_SUBJECTS_PER_STATEMENT = 100_000;

function howOf(command: string): Deletion['how'] | null {
  const c = command.toUpperCase();
  if (c.startsWith('DELETE')) return 'delete';
  if (c.startsWith('UPDATE') || c.startsWith('INSERT') || c.startsWith('MERGE')) return 'update_null';
  if (c.startsWith('TRUNCATE')) return 'truncate';
  return null;
}

export function statementExtras(statements: readonly StatementPlan[]): StatementExtras {
  const searches: ColumnDecision[] = [];
  const deletions: Deletion[] = [];
  for (const st of statements) {
    for (const t of st.touched) {
      const col = `${t.column.schema}.${t.column.table}.${t.column.column}`;
      if (t.uses.includes('search') && !searches.some((s) => s.column === col)) searches.push({ column: col, decision: 'search' });
    }
    if (st.deleteOfProtected) {
      const how = howOf(st.command);
      const tables = new Set(st.touched.filter((t) => t.uses.includes('write')).map((t) => `${t.column.schema}.${t.column.table}`));
      if (how) for (const table of tables) deletions.push({ table, how });
    }
  }
  return { searches, deletions };
}

/** A handle whose completion also writes the deletion records, with the statement's row count. */
export function withDeletions(handle: StatementHandle, audit: SessionAudit, deletions: readonly Deletion[], fingerprint: string, command: string): StatementHandle {
  if (deletions.length === 0) return handle;
  let completed = false; // deletion records once, for the first (deciding) completion
  return {
    id: handle.id,
    async complete(outcome) {
      const done = handle.complete(outcome);
      if (outcome.sqlstate === null && !completed) {
        for (const d of deletions) {
          void audit
            .record({ kind: 'deletion', table: d.table, how: d.how, rows: outcome.rows, fingerprint, command, columns: [], statement: handle.id } as never)
            .catch(() => undefined);
        }
      }
      completed = true;
      await done;
    },
  };
}

/** Hashes of values of protected columns (written or searched), under the trail's current subject key. */
const NO_SUBJECTS: Subjects = Object.freeze({});
export function hashValues(keys: SubjectKeySource | null, items: readonly { col: ProtectedColumn; canonical: Buffer }[]): Subjects {
  if (!keys || items.length === 0) return NO_SUBJECTS;
  try {
    const c = new SubjectCollector(keys);
    for (const it of items) c.add(it.col, it.canonical);
    return c.take();
  } catch {
    return {};
  }
}

/** Distinct subject hashes seen by one statement, bounded; hashing happens as values pass (nothing kept). */
/**
 * Subject hashes of cells read back, per subject key, by logical type and the cell as stored (never the value):
 * a lookup returning the same rows again costs a map lookup instead of an HMAC. Bounded (oldest dropped first);
 * process-wide.
 */
const hashByCell = new WeakMap<KeyObject, Map<string, Map<string, string>>>();
/** Cells kept per subject key and logical type. */
const HASH_BY_CELL_MAX = 8192;

export class SubjectCollector {
  /** Made at the first value: most statements' collectors see none (a lookup by key, a write without values). */
  private seen: Set<string> | null = null;
  private keyId: string | undefined;
  /** The subject key of this collector's hashes (null: none configured), taken at the first value. */
  private key: { id: string; key: KeyObject } | null | undefined;
  private dropped = 0;
  /** The cell map of the last value's type under this collector's key. */
  private lastType: string | undefined;
  private lastFormat: string | undefined;
  private lastByCell: Map<string, string> | undefined;
  constructor(
    private readonly keys: SubjectKeySource,
    private readonly max = MAX_SUBJECTS_PER_STATEMENT,
  ) {}

  /**
   * `stored`: the value's stored cell as sent, when known, and `format` the form it was sent in (text hex,
   * text escape, binary) — a cell decrypts to one value, so its subject hash is looked up by it (under the same
   * subject key, per logical type and format) instead of recomputed.
   */
  add(col: ProtectedColumn, canonical: Buffer, stored?: string, format = ''): void {
    // the subject key is taken once per collector: one statement's hashes all under one key, the one its
    // record names (subjectKeyId), even if the retention period turns mid-statement
    let src = this.key;
    if (src === undefined) {
      try {
        src = this.key = this.keys.subjectKey();
      } catch {
        src = this.key = null;
      }
      if (src !== null) this.keyId = src.id;
    }
    if (src === null) return; // no subject key configured: nothing to hash with
    let h: string;
    if (stored === undefined) h = subjectHash(src.key, col.type.type, canonical);
    else {
      // by key, then type and format, then the cell as sent: no key string built per value; the map of the key,
      // type and format is kept from the collector's previous value (one statement's values share them)
      const type = col.type.type;
      let byCell = this.lastType === type && this.lastFormat === format ? this.lastByCell : undefined;
      if (byCell === undefined) {
        let byType = hashByCell.get(src.key);
        if (!byType) hashByCell.set(src.key, (byType = new Map()));
        const k = `${type}\u0000${format}`;
        byCell = byType.get(k);
        if (!byCell) byType.set(k, (byCell = new Map()));
        this.lastType = type;
        this.lastFormat = format;
        this.lastByCell = byCell;
      }
      const known = byCell.get(stored);
      if (known !== undefined) h = known;
      else {
        h = subjectHash(src.key, type, canonical);
        if (byCell.size >= HASH_BY_CELL_MAX) byCell.delete(byCell.keys().next().value as string); // oldest first
        byCell.set(stored, h);
      }
    }
    const seen = (this.seen ??= new Set());
    if (seen.size < this.max || seen.has(h)) seen.add(h);
    else this.dropped++;
  }

  get size(): number {
    return this.seen?.size ?? 0;
  }

  take(): Subjects & { subjectsDropped?: number } {
    const seen = this.seen;
    if (seen === null || seen.size === 0) {
      this.forgetKey();
      return {};
    }
    const out: Subjects & { subjectsDropped?: number } = { subjects: [...seen] };
    if (this.keyId) out.subjectKeyId = this.keyId;
    if (this.dropped > 0) out.subjectsDropped = this.dropped;
    this.seen = null;
    this.dropped = 0;
    this.forgetKey();
    return out;
  }

  /** The next statement's values take the key current then (and the cell map that goes with it). */
  private forgetKey(): void {
    this.key = undefined;
    this.lastType = this.lastFormat = this.lastByCell = undefined;
  }
}

/** One metrics label for a statement's column decisions: the single decision, `mixed`, or `none`. */
export function decisionLabel(columns: readonly { decision: string }[]): string {
  let d: string | null = null;
  for (const c of columns) {
    const one = c.decision.includes('+') ? 'mixed' : c.decision;
    if (d === null) d = one;
    else if (d !== one) return 'mixed';
  }
  return d ?? 'none';
}
