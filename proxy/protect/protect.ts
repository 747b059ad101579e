// `mamori protect`: a live plaintext column becomes cells in its guard domain, online (docs/protect.md).
// The keyring encrypts; the database never sees a key. While the column is in transition mamori serves it from
// both columns (transition-rewrite.ts) and a trigger refuses values written to the old column by anything else.
import type pg from 'pg';
import type { Keyring } from '../../keyring/index.js';
import { canonicalFromText, type LogicalTypeSpec } from '../../keyring/logical-types.js';
import type { CellMode } from '../../keyring/cells/index.js';
import { backfill, buildShadowIndexes, countRemaining, scanInvalid, prepare, swap, vacuum, type BackfillOptions, type BackfillProgress, type MigrationSpec } from './migrate.js';
import { inspectColumn, formatPlan, PLAIN_OLD_SUFFIX, SHADOW_SUFFIX, suffixed, type ColumnInspection, type TableRef } from './plan.js';
import { ensureStateTable, readState, writeState, type ProtectedColumnRow } from './state.js';

export interface ProtectTarget {
  /** The config key, schema.table.column. */
  path: string;
  table: TableRef;
  column: string;
  type: LogicalTypeSpec;
  mode: CellMode;
  domain: string;
}

export interface MigrateOptions extends BackfillOptions {
  lockTimeoutMs?: number;
  /** Shown the plan; resolves true to go ahead. Absent: go ahead. */
  confirm?: (plan: string) => Promise<boolean>;
  /**
   * Called (and awaited) after each step that changed the table, before the next one starts: the CLI records
   * each in the audit trail, so a step whose record cannot be written is not followed by another.
   */
  onPhase?: (phase: MigratePhase) => Promise<void>;
}

/** The steps of a migration, in order (docs/protect.md). `swap` includes dropping the old column (one transaction). */
export type MigratePhase = 'shadow_added' | 'backfill_done' | 'swap' | 'vacuum';

export type MigrateResult =
  | { status: 'done'; plan: string; progress: BackfillProgress; note?: string }
  | { status: 'nothing-to-do'; message: string }
  | { status: 'refused'; plan?: string; reasons: string[] }
  | { status: 'declined'; plan: string }
  | { status: 'incomplete'; plan: string; progress: BackfillProgress; remaining: number };

/** The guard domain of a logical type: mamori.<type> (installed by `mamori setup-db`). */
export const guardDomain = (t: LogicalTypeSpec): string => `mamori.${t.type}`;

export function stateRow(target: ProtectTarget, ins: ColumnInspection, notNull: boolean, state: ProtectedColumnRow['state'], attnum = ins.attnum): ProtectedColumnRow {
  return {
    tableOid: ins.tableOid,
    schemaName: target.table.schema,
    tableName: target.table.table,
    columnName: target.column,
    attnum,
    originalType: ins.type,
    originalTypeOid: ins.typeOid,
    typmod: ins.typmod,
    notNull,
    logicalType: target.type.length === undefined ? target.type.type : `${target.type.type}(${target.type.length})`,
    mode: target.mode,
    keyDomain: target.domain,
    state,
  };
}

export async function protectColumn(pool: pg.Pool, kr: Keyring, target: ProtectTarget, opts: MigrateOptions = {}): Promise<MigrateResult> {
  const shadow = suffixed(target.column, SHADOW_SUFFIX);
  const guardType = guardDomain(target.type);
  const guard = await pool.query<{ ok: boolean }>(
    `SELECT EXISTS (SELECT FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'mamori' AND t.typname = $1) AS ok`,
    [target.type.type],
  );
  if (!guard.rows[0]?.ok) return { status: 'refused', reasons: [`the guard domain ${guardType} is not installed in this database: run mamori setup-db first`] };
  const ins = await inspectColumn(pool, target.table, target.column, shadow, target.mode === 'deterministic');
  const state = await readState(pool, ins.tableOid, target.column);
  if (ins.isGuard) {
    if (ins.shadowAttnum === null) return { status: 'nothing-to-do', message: `${target.path} is already stored as ${ins.type}` };
    return { status: 'refused', reasons: [`${target.path} is already ${ins.type} but ${shadow} exists too: a previous run was interrupted in an unexpected state; inspect the table`] };
  }
  if (state && state.state === 'unprotecting') return { status: 'refused', reasons: [`${target.path} is being unprotected: finish that first (mamori unprotect)`] };
  if (/^bytea$|\[\]$/.test(ins.type)) return { status: 'refused', reasons: [`${target.path} is ${ins.type}: only a plaintext column of the configured type can be protected`] };
  if (ins.blockers.length > 0) return { status: 'refused', reasons: ins.blockers };

  // On resume NOT NULL was already dropped by us; the state row remembers it.
  const notNull = state?.notNull ?? ins.notNull;
  const spec: MigrationSpec = {
    verb: 'protect',
    path: target.path,
    table: target.table,
    column: target.column,
    shadow,
    shadowType: guardType,
    oldName: suffixed(target.column, PLAIN_OLD_SUFFIX),
    readAs: 'text',
    sendAs: 'bytea',
    pk: ins.pk,
    notNull,
    rebuilds: ins.rebuilds,
    convert: async (old) => {
      const c = canonicalFromText(target.type, typeof old === 'string' ? old : old.toString('utf8'));
      if (!c.ok) return c;
      const cell = await kr.encrypt(target.domain, c.value);
      c.value.fill(0);
      return { ok: true, value: cell };
    },
  };
  const bad = await scanInvalid(pool, spec, (old) => {
    const c = canonicalFromText(target.type, typeof old === 'string' ? old : old.toString('utf8'));
    if (!c.ok) return c.reason;
    c.value.fill(0);
    return null;
  });
  if (bad.count > 0) {
    return {
      status: 'refused',
      reasons: [
        `${bad.count} row(s) hold a value that is not a valid ${target.type.type}; nothing was changed. Fix them and run again (primary key: reason):`,
        ...bad.first.map((b) => `  ${b.key}: ${b.reason}`),
        ...(bad.count > bad.first.length ? [`  … and ${bad.count - bad.first.length} more`] : []),
      ],
    };
  }
  const rows = await countRemaining(pool, spec);
  const plan = formatPlan({ verb: 'protect', column: target.path, inspection: { ...ins, notNull }, shadow, shadowType: guardType, rows });
  if (opts.confirm && !(await opts.confirm(plan))) return { status: 'declined', plan };

  if (!kr.hasDomain(target.domain)) await kr.ensureDomain(target.domain, target.mode);
  const d = kr.domain(target.domain);
  if (d.mode !== target.mode) return { status: 'refused', plan, reasons: [`key domain ${target.domain} is ${d.mode} but the column is configured ${target.mode}`] };

  const lockTimeoutMs = opts.lockTimeoutMs ?? 5000;
  await ensureStateTable(pool); // only now: a declined or refused run changes nothing
  await prepare(pool, spec, lockTimeoutMs, (c) => writeState(c, stateRow(target, ins, notNull, 'protecting', state?.attnum ?? ins.attnum)));
  await buildShadowIndexes(pool, spec);
  await opts.onPhase?.('shadow_added');
  const progress = await backfill(pool, spec, opts);
  if (progress.invalid.length > 0) return { status: 'incomplete', plan, progress, remaining: progress.invalid.length };
  await opts.onPhase?.('backfill_done');
  const sw = await swap(pool, spec, lockTimeoutMs, (c, attnum) => writeState(c, stateRow(target, ins, notNull, 'protected', attnum)));
  if (!sw.swapped) return { status: 'incomplete', plan, progress, remaining: sw.remaining };
  await opts.onPhase?.('swap');
  await vacuum(pool, spec);
  await opts.onPhase?.('vacuum');
  return { status: 'done', plan, progress };
}

/** What stays behind after protect, and what to do about each (printed at the end; docs/protect.md). */
export const AFTERCARE = `The live table now holds cells only. Old plaintext still exists outside it:
  - dead tuples and freed pages of the table and its indexes: VACUUM has run, which marks the space reusable but
    does not overwrite it; VACUUM FULL (exclusive lock) or pg_repack rewrites the table into new files.
  - WAL (pg_wal and any WAL archive) holds the old rows and the backfill's updates: it ages out with
    checkpoints and your archive retention; shorten or purge archives you no longer need.
  - backups and snapshots taken before now: they keep the plaintext for as long as you keep them; re-take a
    base backup and expire the old ones per your retention policy.
  - physical replicas received the same WAL and have the same dead tuples (VACUUM FULL replicates); logical
    replicas and CDC consumers (Debezium, pglogical, …) received the plaintext values: protect or purge there too.
  - pg_statistic: VACUUM (ANALYZE) has replaced the column's sampled values; extended statistics and any
    copies (pg_dump with --statistics, monitoring snapshots) may hold old samples.
  - server logs, pg_stat_statements and auto_explain output may contain literal values from before.
`;
