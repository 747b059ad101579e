// The online column migration both protect and unprotect run: add a shadow column and a write guard, rebuild
// indexes on the shadow, backfill in keyset batches with compare-and-swap, then swap names under a short lock.
// Every step can be re-run: a killed run resumes where the rows say it stopped.
import type pg from 'pg';
import {
  GUARD_TRIGGER,
  NOT_NULL_CHECK,
  NOT_NULL_SHADOW_CHECK,
  qi,
  tableSql,
  type IndexRebuild,
  type PkColumn,
  type TableRef,
} from './plan.js';

/** A converted value; null for a cell of a shredded key version (it reads as NULL, so it moves as NULL). */
export type Converted = { ok: true; value: Buffer | string | null } | { ok: false; reason: string };

export interface MigrationSpec {
  verb: 'protect' | 'unprotect';
  /** schema.table.column, for messages. */
  path: string;
  table: TableRef;
  column: string;
  shadow: string;
  /** Type of the shadow column, e.g. `mamori.mynumber` or `character varying(20)`. */
  shadowType: string;
  /** Name the old column gets for the moment between the renames and its drop. */
  oldName: string;
  /** How old values are read for conversion and compared in the compare-and-swap. */
  readAs: 'text' | 'bytea';
  /** The array type new values are sent in. */
  sendAs: 'text' | 'bytea';
  pk: PkColumn[];
  /** The column was NOT NULL: kept so by CHECKs while it is nullable in transition, restored at the swap. */
  notNull: boolean;
  rebuilds: IndexRebuild[];
  convert(old: Buffer | string): Promise<Converted>;
}

export interface BackfillProgress {
  total: number;
  done: number;
  /** Rows whose value changed between read and update (picked up by the next pass). */
  conflicts: number;
  /** Primary keys (as text) of rows whose value could not be converted; the reasons never hold the value. */
  invalid: { key: string; reason: string }[];
  passes: number;
}

export interface BackfillOptions {
  batchSize?: number;
  throttleMs?: number;
  onProgress?: (p: BackfillProgress) => void;
  /** Awaited after reading a batch, before updating it (tests race writers here). */
  beforeBatchUpdate?: () => Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function inTransaction<T>(pool: pg.Pool, lockTimeoutMs: number, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(lockTimeoutMs))}`);
    const out = await fn(c);
    await c.query('COMMIT');
    return out;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}

/**
 * Step 1 (one short transaction): the shadow column, the guard trigger refusing new values in the old column,
 * and for a NOT NULL column a CHECK that every row keeps a value in one of the two (NOT VALID: checks new rows
 * only, no scan) before NOT NULL is dropped so the backfill can empty the old column. `record` runs in the same
 * transaction (the state row).
 */
export async function prepare(pool: pg.Pool, s: MigrationSpec, lockTimeoutMs: number, record: (c: pg.PoolClient) => Promise<void>): Promise<void> {
  const t = tableSql(s.table);
  await inTransaction(pool, lockTimeoutMs, async (c) => {
    await c.query(`ALTER TABLE ${t} ADD COLUMN IF NOT EXISTS ${qi(s.shadow)} ${s.shadowType}`);
    await c.query(`DROP TRIGGER IF EXISTS ${GUARD_TRIGGER} ON ${t}`);
    await c.query(
      `CREATE TRIGGER ${GUARD_TRIGGER} BEFORE INSERT OR UPDATE ON ${t} FOR EACH ROW EXECUTE FUNCTION mamori.protect_guard(${lit(s.column)}, ${lit(s.path)}, ${lit(s.verb)})`,
    );
    if (s.notNull) {
      await c.query(`ALTER TABLE ${t} DROP CONSTRAINT IF EXISTS ${NOT_NULL_CHECK}`);
      await c.query(`ALTER TABLE ${t} ADD CONSTRAINT ${NOT_NULL_CHECK} CHECK (${qi(s.column)} IS NOT NULL OR ${qi(s.shadow)} IS NOT NULL) NOT VALID`);
      await c.query(`ALTER TABLE ${t} ALTER COLUMN ${qi(s.column)} DROP NOT NULL`);
    }
    await record(c);
  });
}

const lit = (s: string): string => "'" + s.replace(/'/g, "''") + "'";

/** Step 2: the planned indexes on the shadow column, CONCURRENTLY (an invalid one left by a kill is rebuilt). */
export async function buildShadowIndexes(pool: pg.Pool, s: MigrationSpec): Promise<void> {
  for (const r of s.rebuilds) {
    const ex = await pool.query<{ valid: boolean }>(
      `SELECT i.indisvalid AS valid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
      [s.table.schema, r.shadowName],
    );
    if (ex.rows[0]?.valid) continue;
    if (ex.rows[0]) await pool.query(`DROP INDEX CONCURRENTLY IF EXISTS ${qi(s.table.schema)}.${qi(r.shadowName)}`);
    const unique = r.kind === 'index' ? '' : 'UNIQUE ';
    await pool.query(`CREATE ${unique}INDEX CONCURRENTLY ${qi(r.shadowName)} ON ${tableSql(s.table)} (${qi(s.shadow)})`);
  }
}

export async function countRemaining(db: Pick<pg.Pool, 'query'>, s: MigrationSpec): Promise<number> {
  const r = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${tableSql(s.table)} WHERE ${qi(s.column)} IS NOT NULL`);
  return Number(r.rows[0]!.n);
}

/**
 * Step 3: moves every value from the old column to the shadow, a batch at a time in primary-key order, with
 * `UPDATE … SET shadow = new, col = NULL WHERE pk = k AND col = old`: a row changed meanwhile is left for the
 * next pass, and only these two columns are written, so concurrent updates of other columns are never lost.
 * Rows already moved have col NULL and are not selected again (resumable, idempotent). Passes repeat until
 * a pass moves nothing.
 */
export async function backfill(pool: pg.Pool, s: MigrationSpec, opts: BackfillOptions = {}): Promise<BackfillProgress> {
  const t = tableSql(s.table);
  const col = qi(s.column);
  const batch = opts.batchSize ?? 500;
  const pkList = s.pk.map((p) => qi(p.name)).join(', ');
  const pkText = s.pk.map((p, i) => `${qi(p.name)}::text AS k${i}`).join(', ');
  const n = s.pk.length;
  const unnestArgs = [...s.pk.map((_, i) => `$${i + 1}::text[]`), `$${n + 1}::${s.sendAs}[]`, `$${n + 2}::${s.readAs}[]`].join(', ');
  const vCols = [...s.pk.map((_, i) => `k${i}`), 'nv', 'ov'].join(', ');
  const match = s.pk.map((p, i) => `${t}.${qi(p.name)} = v.k${i}::${p.type}`).join(' AND ');
  const update =
    `UPDATE ${t} SET ${qi(s.shadow)} = v.nv::${s.shadowType}, ${col} = NULL FROM unnest(${unnestArgs}) AS v(${vCols})` +
    ` WHERE ${match} AND ${t}.${col}::${s.readAs} = v.ov`;

  const progress: BackfillProgress = { total: await countRemaining(pool, s), done: 0, conflicts: 0, invalid: [], passes: 0 };
  opts.onProgress?.({ ...progress });
  for (;;) {
    progress.passes += 1;
    progress.invalid = [];
    const movedBefore = progress.done;
    let last: string[] | null = null;
    for (;;) {
      const params: unknown[] = [];
      let after = '';
      if (last) {
        const ph = last.map((v, i) => {
          params.push(v);
          return `$${i + 1}::${s.pk[i]!.type}`;
        });
        after = ` AND (${pkList}) > (${ph.join(', ')})`;
      }
      params.push(batch);
      const rows = await pool.query<Record<string, string | Buffer>>(
        `SELECT ${pkText}, ${col}::${s.readAs} AS old FROM ${t} WHERE ${col} IS NOT NULL${after} ORDER BY ${pkList} LIMIT $${params.length}`,
        params,
      );
      if (rows.rows.length === 0) break;
      const keys: string[][] = s.pk.map(() => []);
      const news: (Buffer | string | null)[] = [];
      const olds: (Buffer | string)[] = [];
      for (const row of rows.rows) {
        const k = s.pk.map((_, i) => row[`k${i}`] as string);
        last = k;
        const old = row.old!;
        const c = await s.convert(old);
        if (!c.ok) {
          progress.invalid.push({ key: k.join(','), reason: c.reason });
          continue;
        }
        k.forEach((v, i) => keys[i]!.push(v));
        news.push(c.value);
        olds.push(old);
      }
      await opts.beforeBatchUpdate?.();
      if (news.length > 0) {
        const u = await pool.query(update, [...keys, news, olds]);
        progress.done += u.rowCount ?? 0;
        progress.conflicts += news.length - (u.rowCount ?? 0);
      }
      opts.onProgress?.({ ...progress, invalid: [...progress.invalid] });
      if (opts.throttleMs) await sleep(opts.throttleMs);
    }
    if (progress.done === movedBefore) break;
  }
  return progress;
}

/**
 * Reads every value still in the old column (keyset order, no locks beyond a plain SELECT) and checks it
 * with `check`, before anything is changed: invalid values are found while the operator can still fix them
 * (once the guard trigger is in place, writing a value to the column is refused). Keeps the first `keep`.
 */
export async function scanInvalid(
  db: Pick<pg.Pool, 'query'>,
  s: Pick<MigrationSpec, 'table' | 'column' | 'pk' | 'readAs'>,
  check: (old: Buffer | string) => string | null,
  opts: { batchSize?: number; keep?: number } = {},
): Promise<{ count: number; first: { key: string; reason: string }[] }> {
  const t = tableSql(s.table);
  const col = qi(s.column);
  const batch = opts.batchSize ?? 5000;
  const keep = opts.keep ?? 20;
  const pkList = s.pk.map((p) => qi(p.name)).join(', ');
  const pkText = s.pk.map((p, i) => `${qi(p.name)}::text AS k${i}`).join(', ');
  const out = { count: 0, first: [] as { key: string; reason: string }[] };
  let last: string[] | null = null;
  for (;;) {
    const params: unknown[] = [];
    let after = '';
    if (last) {
      after = ` AND (${pkList}) > (${last.map((v, i) => (params.push(v), `$${i + 1}::${s.pk[i]!.type}`)).join(', ')})`;
    }
    params.push(batch);
    const rows = await db.query<Record<string, string | Buffer>>(
      `SELECT ${pkText}, ${col}::${s.readAs} AS old FROM ${t} WHERE ${col} IS NOT NULL${after} ORDER BY ${pkList} LIMIT $${params.length}`,
      params,
    );
    if (rows.rows.length === 0) return out;
    for (const row of rows.rows) {
      last = s.pk.map((_, i) => row[`k${i}`] as string);
      const why = check(row.old!);
      if (why === null) continue;
      out.count += 1;
      if (out.first.length < keep) out.first.push({ key: last.join(','), reason: why });
    }
  }
}

export interface SwapResult {
  swapped: boolean;
  /** Rows still holding a value in the old column (the swap is not done while there are any). */
  remaining: number;
  /** attnum of the column after the swap. */
  attnum: number | null;
}

/**
 * Step 4: checks under a SHARE lock (reads go on, writes wait) that the old column is empty, then renames old
 * → `oldName` and shadow → column, drops the trigger and the old column, moves the rebuilt indexes and
 * constraints to their old names, and restores NOT NULL (through a validated CHECK, so without a scan under the
 * exclusive lock). `record` runs in the same transaction. VACUUM (ANALYZE) follows outside it.
 */
export async function swap(pool: pg.Pool, s: MigrationSpec, lockTimeoutMs: number, record: (c: pg.PoolClient, attnum: number) => Promise<void>): Promise<SwapResult> {
  const t = tableSql(s.table);
  if (s.notNull) {
    // Validating scans the table without blocking writes (SHARE UPDATE EXCLUSIVE).
    await pool.query(`ALTER TABLE ${t} DROP CONSTRAINT IF EXISTS ${NOT_NULL_SHADOW_CHECK}`);
    await pool.query(`ALTER TABLE ${t} ADD CONSTRAINT ${NOT_NULL_SHADOW_CHECK} CHECK (${qi(s.shadow)} IS NOT NULL) NOT VALID`);
    await pool.query(`ALTER TABLE ${t} VALIDATE CONSTRAINT ${NOT_NULL_SHADOW_CHECK}`);
  }
  return inTransaction(pool, lockTimeoutMs, async (c) => {
    await c.query(`LOCK TABLE ${t} IN SHARE MODE`);
    const remaining = await countRemaining(c, s);
    if (remaining > 0) {
      await c.query('ROLLBACK');
      await c.query('BEGIN'); // inTransaction commits an empty transaction
      return { swapped: false, remaining, attnum: null };
    }
    await c.query(`ALTER TABLE ${t} RENAME COLUMN ${qi(s.column)} TO ${qi(s.oldName)}`);
    await c.query(`ALTER TABLE ${t} RENAME COLUMN ${qi(s.shadow)} TO ${qi(s.column)}`);
    await c.query(`DROP TRIGGER IF EXISTS ${GUARD_TRIGGER} ON ${t}`);
    await c.query(`ALTER TABLE ${t} DROP COLUMN ${qi(s.oldName)}`);
    for (const r of s.rebuilds) {
      if (r.kind === 'unique-constraint') await c.query(`ALTER TABLE ${t} ADD CONSTRAINT ${qi(r.name)} UNIQUE USING INDEX ${qi(r.shadowName)}`);
      else await c.query(`ALTER INDEX ${qi(s.table.schema)}.${qi(r.shadowName)} RENAME TO ${qi(r.name)}`);
    }
    if (s.notNull) {
      await c.query(`ALTER TABLE ${t} ALTER COLUMN ${qi(s.column)} SET NOT NULL`);
      await c.query(`ALTER TABLE ${t} DROP CONSTRAINT IF EXISTS ${NOT_NULL_SHADOW_CHECK}`);
    }
    const a = await c.query<{ attnum: number }>(
      `SELECT attnum::int AS attnum FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`,
      [t, s.column],
    );
    const attnum = a.rows[0]!.attnum;
    await record(c, attnum);
    return { swapped: true, remaining: 0, attnum };
  });
}

/** VACUUM (ANALYZE): frees the dead tuples' space for reuse and replaces pg_statistic's samples of the old column. */
export async function vacuum(pool: pg.Pool, s: MigrationSpec): Promise<void> {
  await pool.query(`VACUUM (ANALYZE) ${tableSql(s.table)}`);
}
