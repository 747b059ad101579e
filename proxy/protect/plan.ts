// What `mamori protect` / `unprotect` must know about a column before touching it: its table, type, primary
// key, and every object that depends on it (pg_depend), sorted into what can be rebuilt on the shadow column
// (a plain single-column index or UNIQUE, when equal values keep equal bytes) and what must be refused.
import type pg from 'pg';

export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.Client, 'query'>;

export const qi = (s: string): string => '"' + s.replace(/"/g, '""') + '"';

export interface TableRef {
  schema: string;
  table: string;
}

export const tableSql = (t: TableRef): string => `${qi(t.schema)}.${qi(t.table)}`;

/** Shadow column names; PostgreSQL truncates identifiers at 63 bytes, so refuse names that would be cut. */
export const SHADOW_SUFFIX = '__mamori';
export const PLAIN_OLD_SUFFIX = '__mamori_plain_old';
/** unprotect's shadow (plaintext of the original type) and the name the cell column gets before its drop. */
export const PLAIN_SHADOW_SUFFIX = '__mamori_plain';
export const CELLS_OLD_SUFFIX = '__mamori_cells_old';
export const GUARD_TRIGGER = 'mamori_protect_guard';
export const NOT_NULL_CHECK = 'mamori_protect_not_null';
export const NOT_NULL_SHADOW_CHECK = 'mamori_protect_shadow_not_null';

/** A plain btree index or UNIQUE constraint on just the column: recreated on the shadow before the backfill. */
export interface IndexRebuild {
  kind: 'unique-constraint' | 'unique-index' | 'index';
  /** The existing index or constraint name (the rebuilt one takes it over at the swap). */
  name: string;
  /** The index built on the shadow column meanwhile. */
  shadowName: string;
}

export interface PkColumn {
  name: string;
  type: string;
}

export interface ColumnInspection {
  tableOid: number;
  attnum: number;
  /** format_type of the column, e.g. `text`, `character varying(20)`, `mamori.mynumber`. */
  type: string;
  typeOid: number;
  typmod: number;
  /** typtype 'd' in schema mamori over bytea: a guard domain. */
  isGuard: boolean;
  notNull: boolean;
  pk: PkColumn[];
  /** Why the migration cannot run (each a full sentence naming the object). */
  blockers: string[];
  rebuilds: IndexRebuild[];
  /** User triggers on the table: they fire for every backfilled row. */
  userTriggers: string[];
  /** attnum of `<col>__mamori` (or the unprotect shadow) when a previous run left it. */
  shadowAttnum: number | null;
}

interface DepRow {
  cls: string;
  objid: number;
  objsubid: number;
  what: string;
  deptype: string;
}

/** `<name><suffix>`, refused when longer than PostgreSQL's 63-byte identifier limit. */
export function suffixed(name: string, suffix: string): string {
  const out = name + suffix;
  if (Buffer.byteLength(out, 'utf8') > 63) throw new Error(`"${out}" would exceed PostgreSQL's 63-byte identifier limit; rename the column or index first`);
  return out;
}

/**
 * Reads the column and its dependents. `shadow` is the shadow column's name; `allowRebuild` says whether
 * indexes can move to the shadow (false for randomized cells, where equal values differ).
 */
export async function inspectColumn(db: Queryable, t: TableRef, column: string, shadow: string, allowRebuild: boolean): Promise<ColumnInspection> {
  const rel = await db.query<{ oid: number; relkind: string; inh: boolean; children: boolean }>(
    `SELECT c.oid::int AS oid, c.relkind::text AS relkind,
            EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) AS inh,
            EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid) AS children
       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2`,
    [t.schema, t.table],
  );
  const r = rel.rows[0];
  if (!r) throw new Error(`table ${t.schema}.${t.table} does not exist`);
  const att = await db.query<{ attnum: number; fmt: string; typoid: number; typmod: number; notnull: boolean; guard: boolean }>(
    `SELECT a.attnum::int AS attnum, pg_catalog.format_type(a.atttypid, a.atttypmod) AS fmt, a.atttypid::int AS typoid,
            a.atttypmod AS typmod, a.attnotnull AS notnull,
            (ty.typtype = 'd' AND tn.nspname = 'mamori' AND ty.typbasetype = 'pg_catalog.bytea'::pg_catalog.regtype) AS guard
       FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
       JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace
      WHERE a.attrelid = $1 AND a.attname = $2 AND NOT a.attisdropped AND a.attnum > 0`,
    [r.oid, column],
  );
  const a = att.rows[0];
  if (!a) throw new Error(`column ${t.schema}.${t.table}.${column} does not exist`);
  const shadowRow = await db.query<{ attnum: number }>(
    `SELECT attnum::int AS attnum FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped`,
    [r.oid, shadow],
  );
  const pk = await db.query<PkColumn & { attnum: number }>(
    `SELECT a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnum::int AS attnum
       FROM pg_catalog.pg_index i
       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = $1 AND i.indisprimary
      ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)`,
    [r.oid],
  );
  const deps = await db.query<DepRow>(
    `SELECT d.classid::regclass::text AS cls, d.objid::int AS objid, d.objsubid AS objsubid, d.deptype::text AS deptype,
            pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS what
       FROM pg_catalog.pg_depend d
      WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1 AND d.refobjsubid = $2
        AND d.deptype IN ('n', 'a')`,
    [r.oid, a.attnum],
  );
  const triggers = await db.query<{ tgname: string }>(
    `SELECT tgname FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal AND tgname <> $2 ORDER BY tgname`,
    [r.oid, GUARD_TRIGGER],
  );

  const blockers: string[] = [];
  const rebuilds: IndexRebuild[] = [];
  const name = `${t.schema}.${t.table}`;
  if (r.relkind !== 'r') blockers.push(`${name} is not a plain table (relkind ${r.relkind}): partitioned tables, views and foreign tables are not migrated`);
  if (r.inh || r.children) blockers.push(`${name} takes part in table inheritance or partitioning: migrate each table on its own is not supported`);
  if (pk.rows.length === 0) blockers.push(`${name} has no primary key: the keyset backfill needs one`);
  if (pk.rows.some((p) => p.attnum === a.attnum)) blockers.push(`${column} is part of the primary key of ${name}`);

  for (const d of deps.rows) {
    if (d.cls === 'pg_class') {
      const ix = await describeIndex(db, d.objid, a.attnum);
      if (ix && ix.plain && !ix.unique && allowRebuild) rebuilds.push({ kind: 'index', name: ix.name, shadowName: suffixed(ix.name, SHADOW_SUFFIX) });
      else if (ix && ix.plain && ix.unique && allowRebuild) rebuilds.push({ kind: 'unique-index', name: ix.name, shadowName: suffixed(ix.name, SHADOW_SUFFIX) });
      else blockers.push(`${d.what} depends on the column${ix && !allowRebuild ? ' (an index on randomized cells is useless and a UNIQUE cannot hold)' : ' (only plain single-column indexes are rebuilt)'}`);
      continue;
    }
    if (d.cls === 'pg_constraint') {
      const c = await db.query<{ conname: string; contype: string; conkey: number[] | null; conindid: number }>(
        `SELECT conname, contype::text AS contype, conkey::int[] AS conkey, conindid::int AS conindid FROM pg_catalog.pg_constraint WHERE oid = $1`,
        [d.objid],
      );
      const con = c.rows[0]!;
      if (con.conname === NOT_NULL_CHECK || con.conname === NOT_NULL_SHADOW_CHECK) continue; // ours, from a previous run
      const ix = con.contype === 'u' ? await describeIndex(db, con.conindid, a.attnum) : null;
      if (con.contype === 'u' && ix?.plain && allowRebuild) {
        rebuilds.push({ kind: 'unique-constraint', name: con.conname, shadowName: suffixed(ix.name, SHADOW_SUFFIX) });
      } else {
        const kinds: Record<string, string> = { c: 'CHECK', f: 'FOREIGN KEY', u: 'UNIQUE', p: 'PRIMARY KEY', x: 'EXCLUDE', t: 'constraint trigger' };
        const why = con.contype === 'u' && !allowRebuild ? ': a UNIQUE cannot hold on randomized cells (use mode deterministic)' : con.contype === 'u' ? ': only single-column UNIQUE is rebuilt' : '';
        blockers.push(`${kinds[con.contype] ?? 'constraint'} ${con.conname} on ${name} depends on the column${why}`);
      }
      continue;
    }
    if (d.cls === 'pg_rewrite') {
      const v = await db.query<{ view: string }>(`SELECT ev_class::regclass::text AS view FROM pg_catalog.pg_rewrite WHERE oid = $1`, [d.objid]);
      const view = v.rows[0]?.view ?? d.what;
      if (!blockers.some((b) => b.includes(`view ${view} `))) blockers.push(`view ${view} reads the column (drop it first and recreate it afterwards)`);
      continue;
    }
    if (d.cls === 'pg_attrdef') {
      const ad = await db.query<{ adnum: number; gen: string }>(
        `SELECT ad.adnum::int AS adnum, att.attgenerated::text AS gen FROM pg_catalog.pg_attrdef ad
           JOIN pg_catalog.pg_attribute att ON att.attrelid = ad.adrelid AND att.attnum = ad.adnum WHERE ad.oid = $1`,
        [d.objid],
      );
      const row = ad.rows[0];
      if (row?.adnum === a.attnum) blockers.push(`the column has a DEFAULT: it would store a plaintext value mamori never sees (drop the default first)`);
      else blockers.push(`${d.what} reads the column${row?.gen === 's' ? ' (a generated column)' : ''}`);
      continue;
    }
    // triggers (UPDATE OF / WHEN), RLS policies, statistics objects, publications …
    blockers.push(`${d.what} depends on the column`);
  }
  return {
    tableOid: r.oid,
    attnum: a.attnum,
    type: a.fmt,
    typeOid: a.typoid,
    typmod: a.typmod,
    isGuard: a.guard,
    notNull: a.notnull,
    pk: pk.rows.map((p) => ({ name: p.name, type: p.type })),
    blockers,
    rebuilds,
    userTriggers: triggers.rows.map((x) => x.tgname),
    shadowAttnum: shadowRow.rows[0]?.attnum ?? null,
  };
}

/** Whether an index is a plain, valid btree on exactly this one column (no expression, no predicate). */
async function describeIndex(db: Queryable, indexOid: number, attnum: number): Promise<{ name: string; unique: boolean; plain: boolean } | null> {
  const r = await db.query<{ name: string; unique: boolean; plain: boolean }>(
    `SELECT c.relname AS name, i.indisunique AS unique,
            (i.indnatts = 1 AND i.indkey[0] = $2 AND i.indexprs IS NULL AND i.indpred IS NULL AND am.amname = 'btree'
             AND NOT i.indisprimary AND NOT i.indisexclusion AND i.indisvalid) AS plain
       FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid JOIN pg_catalog.pg_am am ON am.oid = c.relam
      WHERE i.indexrelid = $1`,
    [indexOid, attnum],
  );
  return r.rows[0] ?? null;
}

/** The plan as the operator reads it before confirming. Pure. */
export function formatPlan(opts: {
  verb: 'protect' | 'unprotect';
  column: string;
  inspection: ColumnInspection;
  shadow: string;
  shadowType: string;
  rows: number;
}): string {
  const { inspection: ins } = opts;
  const lines = [
    `mamori ${opts.verb} ${opts.column}`,
    `  column type now: ${ins.type}${ins.notNull ? ' NOT NULL' : ''}; after: ${opts.shadowType}${ins.notNull ? ' NOT NULL' : ''}`,
    `  rows holding a value: ${opts.rows}`,
    `  1. add column ${opts.shadow} ${opts.shadowType}${ins.shadowAttnum !== null ? ' (already there: resuming)' : ''} and a trigger refusing new values in ${opts.column} while it runs`,
  ];
  for (const r of ins.rebuilds) {
    lines.push(`  2. build ${r.kind === 'index' ? 'index' : 'unique index'} ${r.shadowName} on ${opts.shadow} (CONCURRENTLY); at the swap it replaces ${r.kind === 'unique-constraint' ? 'UNIQUE constraint' : 'index'} ${r.name}`);
  }
  lines.push(
    `  3. backfill in keyset batches by primary key (${ins.pk.map((p) => p.name).join(', ')}): each row's value moves to ${opts.shadow}, compare-and-swap on the old value`,
    `  4. swap names under a short lock, drop the old column, VACUUM`,
  );
  if (ins.userTriggers.length > 0) {
    lines.push(`  note: these triggers fire for every backfilled row (UPDATE): ${ins.userTriggers.join(', ')}; updated_at-style columns they maintain will change`);
  }
  return lines.join('\n') + '\n';
}
