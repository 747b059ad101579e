// The per-database catalog: where the configured protected columns live (table OID + attnum, partitions and
// inheritance children, the closure of views that expose them), how they are stored (guard domain or not),
// every relation for name resolution, and the DDL epoch. Loaded over the control connection in one
// REPEATABLE READ snapshot, so the epoch read agrees with the catalog read.
import type pg from 'pg';
import type { MamoriConfig } from '../../config/schema.js';
import { LOGICAL_TYPE_NAMES, type LogicalTypeName } from '../../config/column-type.js';
import { canonicalName, quoteIdentifierIfNeeded } from '../../config/identifiers.js';
import type {
  CatalogSnapshot,
  ProtectedColumn,
  ProtectedViewColumn,
  RelationKind,
  ResolvedRelation,
} from '../sql/types.js';
import { recordedDisplayType } from '../results/logical.js';

export interface ProtectedField {
  column: ProtectedColumn;
  policyKey: string; // the config key "schema.table.column"
}

/** How a protected column (or a child's copy of it) is stored upstream. */
export interface ColumnStorage {
  /** guard: the expected mamori.<type> domain; bytea: plain bytea or another bytea domain (cells, no guard); plaintext: anything else. */
  kind: 'guard' | 'bytea' | 'plaintext';
  type: string; // format_type of the column, e.g. mamori.mynumber, bytea, text
}

let catalogLoads = 0;

export interface DatabaseCatalog extends CatalogSnapshot {
  database: string;
  epoch: number; // from mamori.catalog_epoch (0 when not installed)
  /** Unique to this load in the process: caches keyed by it never mix two loads (or two databases). */
  loadId: number;
  /** Protected column by RowDescription origin: table OID + attnum (partitions/children included), and view/matview OID + attnum for the view closure. */
  byOrigin(tableOid: number, attnum: number): ProtectedField | undefined;
  /** Protected relation names and dependent view names, for the fast path (buildNameIndex input). */
  names: string[];
  /** Problems found (missing column, wrong storage type, missing guard domain …). */
  problems: { column: string; problem: string }[];
  /** Storage of each protected column, keyed like byOrigin ("oid:attnum"). */
  storage: ReadonlyMap<string, ColumnStorage>;
  /** View columns that are expressions over protected columns (not plain references): reads of them must be refused. */
  derivedViewColumns: readonly ProtectedViewColumn[];
  /** The same, by view OID + attnum. */
  derivedByOrigin(viewOid: number, attnum: number): ProtectedField | undefined;
  /**
   * Columns in transition (keyed like storage): still plaintext, with the shadow column of cells being filled by
   * `mamori protect`, or cells with the plaintext shadow being filled by `mamori unprotect` (docs/protect.md
   * "While a column is in transition").
   */
  transitions: ReadonlyMap<string, ColumnTransition>;
}

/**
 * A column being converted: `protect` — rows hold plaintext in the column or a cell in the shadow; `unprotect` —
 * a cell in the column or plaintext in the shadow.
 */
export interface ColumnTransition {
  shadow: string;
  shadowAttnum: number;
  direction: 'protect' | 'unprotect';
}

export const EPOCH_CHANNEL = 'mamori_catalog';
/**
 * Sent by the epoch trigger, from the backend that ran the DDL, when that backend has a temp schema: the payload
 * is its pg_temp_N and the notification's process id is the backend's pid. Exact on every server version,
 * unlike tempSchemaOf on PostgreSQL 15 (see there).
 */
export const TEMP_CHANNEL = 'mamori_temp';

/** Guard domain per logical type: `mamori.<logical type name>`. */
export const GUARD_TYPES: readonly LogicalTypeName[] = LOGICAL_TYPE_NAMES;
export const GUARD_CONSTRAINT = 'mamori_cell';

const qi = (name: string): string => '"' + name.replace(/"/g, '""') + '"';

// The CHECK of every guard domain (docs/ciphertext-format.md): header magic + format version, a known mode,
// and the minimum length of that mode (28 deterministic, 40 randomized). The length test comes first so
// get_byte never runs past the end of a short value. Everything is schema-qualified: the expression is
// stored resolved, but it is resolved under the installer's search_path.
export const GUARD_CHECK =
  'CHECK (VALUE IS NULL OR (pg_catalog.octet_length(VALUE) OPERATOR(pg_catalog.>=) 28' +
  " AND pg_catalog.substring(VALUE, 1, 3) OPERATOR(pg_catalog.=) '\\xff6d01'::pg_catalog.bytea" +
  ' AND pg_catalog.get_byte(VALUE, 3) OPERATOR(pg_catalog.=) ANY (ARRAY[1, 2])' +
  ' AND (pg_catalog.get_byte(VALUE, 3) OPERATOR(pg_catalog.=) 2 OR pg_catalog.octet_length(VALUE) OPERATOR(pg_catalog.>=) 40)))';

/**
 * Guard domains, the epoch table, the DDL event trigger and the control role's grants. Idempotent; run as a
 * superuser (event triggers need one), best inside a transaction (installCatalogSetup does that).
 */
export const SETUP_SQL = (opts: { controlRole: string }): string => {
  const role = qi(opts.controlRole);
  const domains = GUARD_TYPES.map(
    (t) => `  IF NOT EXISTS (SELECT FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = 'mamori' AND t.typname = '${t}') THEN
    CREATE DOMAIN mamori.${qi(t)} AS pg_catalog.bytea;
    COMMENT ON DOMAIN mamori.${qi(t)} IS 'mamori: guard for protected ${t} columns (cells only)';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_type t ON t.oid = c.contypid
                   JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
             WHERE n.nspname = 'mamori' AND t.typname = '${t}' AND c.conname = '${GUARD_CONSTRAINT}') THEN
    ALTER DOMAIN mamori.${qi(t)} ADD CONSTRAINT ${GUARD_CONSTRAINT} ${GUARD_CHECK};
  END IF;`,
  ).join('\n');
  return `CREATE SCHEMA IF NOT EXISTS mamori;
DO $mamori$
BEGIN
${domains}
END
$mamori$;
-- One row; "one" keeps it one. Updated inside the DDL's own transaction, so the epoch a reader sees always
-- matches the catalog it sees in the same snapshot.
CREATE TABLE IF NOT EXISTS mamori.catalog_epoch (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  epoch bigint NOT NULL DEFAULT 1
);
INSERT INTO mamori.catalog_epoch (one, epoch) VALUES (true, 1) ON CONFLICT (one) DO NOTHING;
CREATE OR REPLACE FUNCTION mamori.bump_epoch() RETURNS event_trigger
  LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp
AS $mamori$
DECLARE e bigint;
BEGIN
  -- Dropping the epoch table (or the schema) must not make every later DDL fail.
  IF pg_catalog.to_regclass('mamori.catalog_epoch') IS NULL THEN
    RETURN;
  END IF;
  UPDATE mamori.catalog_epoch SET epoch = epoch + 1 WHERE one RETURNING epoch INTO e;
  IF e IS NOT NULL THEN
    PERFORM pg_catalog.pg_notify('${EPOCH_CHANNEL}', e::text);
  END IF;
  IF pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0 THEN
    PERFORM pg_catalog.pg_notify('${TEMP_CHANNEL}', pg_catalog.pg_my_temp_schema()::pg_catalog.regnamespace::text);
  END IF;
END
$mamori$;
REVOKE ALL ON FUNCTION mamori.bump_epoch() FROM PUBLIC;
DO $mamori$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'mamori_ddl_end') THEN
    CREATE EVENT TRIGGER mamori_ddl_end ON ddl_command_end EXECUTE FUNCTION mamori.bump_epoch();
  END IF;
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'mamori_sql_drop') THEN
    CREATE EVENT TRIGGER mamori_sql_drop ON sql_drop EXECUTE FUNCTION mamori.bump_epoch();
  END IF;
END
$mamori$;
ALTER EVENT TRIGGER mamori_ddl_end ENABLE ALWAYS;
ALTER EVENT TRIGGER mamori_sql_drop ENABLE ALWAYS;
REVOKE ALL ON mamori.catalog_epoch FROM PUBLIC;
GRANT USAGE ON SCHEMA mamori TO ${role};
GRANT SELECT ON mamori.catalog_epoch TO ${role};
`;
};

/** Runs SETUP_SQL in one transaction (the client must be a superuser). */
export async function installCatalogSetup(client: pg.ClientBase, controlRole: string): Promise<void> {
  await client.query('BEGIN');
  try {
    await client.query(SETUP_SQL({ controlRole }));
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** The current epoch; 0 when setup-db has not installed the table. */
export async function readEpoch(client: pg.ClientBase): Promise<number> {
  const r = await client.query<{ present: boolean }>(
    "SELECT pg_catalog.to_regclass('mamori.catalog_epoch') IS NOT NULL AS present",
  );
  if (!r.rows[0]?.present) return 0;
  const e = await client.query<{ epoch: string }>('SELECT epoch::text AS epoch FROM mamori.catalog_epoch WHERE one');
  return e.rows[0] ? Number(e.rows[0].epoch) : 0;
}

/**
 * The temp schema (pg_temp_N) of the backend with this pid, or null when it has none (yet). N is the
 * backend's id. A virtualxid lock names it exactly while the backend is inside a transaction; otherwise
 * pg_stat_get_backend_idset() gives it, which is exact on PostgreSQL ≥ 16 but on 15 numbers the live backends
 * densely, so it is off when a lower backend slot is free. On 15, prefer TEMP_CHANNEL notifications.
 */
export async function tempSchemaOf(client: pg.ClientBase, backendPid: number): Promise<string | null> {
  const r = await client.query<{ nspname: string | null }>(
    `WITH ids AS (
       SELECT pg_catalog.split_part(l.virtualxid, '/', 1)::int AS id, 1 AS pri
         FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'virtualxid' AND l.pid = $1 AND l.granted
          AND l.virtualxid = l.virtualtransaction
       UNION ALL
       SELECT b.id, 2 FROM pg_catalog.pg_stat_get_backend_idset() AS b(id)
        WHERE pg_catalog.pg_stat_get_backend_pid(b.id) = $1
     )
     SELECT n.nspname::text AS nspname
       FROM ids JOIN pg_catalog.pg_namespace n ON n.nspname = 'pg_temp_' || ids.id
      ORDER BY ids.pri LIMIT 1`,
    [backendPid],
  );
  return r.rows[0]?.nspname ?? null;
}

// ---- pg_node_tree (pg_rewrite.ev_action) --------------------------------------------------------------------

/** A node of PostgreSQL's node-tree text: {NAME :field value …}, lists ( … ), or a scalar token. */
export type NodeValue = { node: string; fields: Map<string, NodeValue> } | NodeValue[] | string | null;

/**
 * Parses the text form of a pg_node_tree (outfuncs.c): tokens are separated by whitespace, `{ } ( )` stand
 * alone, a backslash escapes the next character, `<>` is NULL. Field labels are `:name`; a field's value is
 * always at least one token, so a string value that starts with ':' (a column alias) is not taken for a label.
 */
export function parseNodeTree(text: string): NodeValue {
  let i = 0;
  const n = text.length;
  const next = (): { raw: string; tok: string } | null => {
    while (i < n && /\s/.test(text[i]!)) i++;
    if (i >= n) return null;
    const c = text[i]!;
    if (c === '{' || c === '}' || c === '(' || c === ')') {
      i++;
      return { raw: c, tok: c };
    }
    let raw = '';
    let tok = '';
    while (i < n) {
      const ch = text[i]!;
      if (/\s/.test(ch) || ch === '{' || ch === '}' || ch === '(' || ch === ')') break;
      if (ch === '\\' && i + 1 < n) {
        raw += ch + text[i + 1]!;
        tok += text[i + 1]!;
        i += 2;
        continue;
      }
      raw += ch;
      tok += ch;
      i++;
    }
    return { raw, tok };
  };
  let peeked: { raw: string; tok: string } | null | undefined;
  const peek = () => (peeked === undefined ? (peeked = next()) : peeked);
  const take = () => {
    const t = peek();
    peeked = undefined;
    return t;
  };
  const isLabel = (t: { raw: string } | null) => t !== null && t.raw.startsWith(':') && t.raw.length > 1;
  const value = (): NodeValue => {
    const t = take();
    if (t === null) throw new Error('node tree: unexpected end');
    if (t.raw === '{') {
      const name = take();
      if (!name) throw new Error('node tree: unexpected end');
      const fields = new Map<string, NodeValue>();
      for (;;) {
        const p = peek();
        if (p === null) throw new Error('node tree: unterminated node');
        if (p.raw === '}') {
          take();
          break;
        }
        const label = take()!;
        if (!isLabel(label)) continue; // stray token (e.g. extra words of a value): skip
        const v = value();
        // Multi-token values (Const's "4 [ 1 0 0 0 ]"): keep the first token, skip the rest.
        while (peek() !== null && peek()!.raw !== '}' && !isLabel(peek())) value();
        fields.set(label.raw.slice(1), v);
      }
      return { node: name.tok, fields };
    }
    if (t.raw === '(') {
      const items: NodeValue[] = [];
      while (peek() !== null && peek()!.raw !== ')') items.push(value());
      take();
      return items;
    }
    if (t.raw === '<>') return null;
    return t.tok;
  };
  return value();
}

const field = (v: NodeValue | undefined, name: string): NodeValue | undefined =>
  v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) ? v.fields.get(name) : undefined;
const num = (v: NodeValue | undefined): number => (typeof v === 'string' ? Number(v) : NaN);
const isNode = (v: NodeValue | undefined, name: string): boolean =>
  v !== null && v !== undefined && typeof v === 'object' && !Array.isArray(v) && v.node === name;

function walk(v: NodeValue | undefined, visit: (node: { node: string; fields: Map<string, NodeValue> }) => void): void {
  if (v === null || v === undefined || typeof v === 'string') return;
  if (Array.isArray(v)) {
    for (const x of v) walk(x, visit);
    return;
  }
  visit(v);
  for (const x of v.fields.values()) walk(x, visit);
}

/** One output column of a view's stored query, as the server recorded it. */
export interface ViewTarget {
  resno: number;
  /** Set when the entry is a bare Var and the server traced it to a relation column (what RowDescription reports). */
  origin: { oid: number; attnum: number } | null;
  /** Relation columns the expression reads directly (Vars on relation range entries; attnum 0 = whole row). */
  reads: { oid: number; attnum: number }[];
  /** The expression reads something that cannot be traced here (subquery, join, CTE, function range entries, sublinks). */
  opaque: boolean;
}

/** The non-junk output columns of the first Query of a rule action (a view's or matview's _RETURN rule). */
export function viewTargets(evAction: string): ViewTarget[] {
  const tree = parseNodeTree(evAction);
  const query = Array.isArray(tree) ? tree[0] : tree;
  if (!isNode(query, 'QUERY')) throw new Error('rule action is not a query');
  const rtableV = field(query, 'rtable');
  const rtable = Array.isArray(rtableV) ? rtableV : [];
  const tl = field(query, 'targetList');
  const out: ViewTarget[] = [];
  for (const tle of Array.isArray(tl) ? tl : []) {
    if (!isNode(tle, 'TARGETENTRY') || field(tle, 'resjunk') === 'true') continue;
    const expr = field(tle, 'expr');
    const origTbl = num(field(tle, 'resorigtbl'));
    const origCol = num(field(tle, 'resorigcol'));
    const origin = isNode(expr, 'VAR') && origTbl > 0 && origCol > 0 ? { oid: origTbl, attnum: origCol } : null;
    const reads: { oid: number; attnum: number }[] = [];
    let opaque = false;
    walk(expr, (node) => {
      if (node.node === 'SUBLINK') opaque = true;
      if (node.node !== 'VAR') return;
      if (num(node.fields.get('varlevelsup')) !== 0) {
        opaque = true;
        return;
      }
      const rte = rtable[num(node.fields.get('varno')) - 1];
      const relid = num(field(rte, 'relid'));
      if (isNode(rte, 'RANGETBLENTRY') && num(field(rte, 'rtekind')) === 0 && relid > 0) {
        reads.push({ oid: relid, attnum: num(node.fields.get('varattno')) });
      } else opaque = true;
    });
    out.push({ resno: num(field(tle, 'resno')), origin, reads, opaque });
  }
  return out;
}

// ---- the catalog ------------------------------------------------------------------------------------------------

type ColumnsConfig = MamoriConfig['columns'];
type ColumnConfig = ColumnsConfig[string];

const KIND: Record<string, RelationKind> = { r: 'table', v: 'view', m: 'matview', p: 'partitioned', f: 'foreign' };
const key = (oid: number, attnum: number): string => `${oid}:${attnum}`;

/** Whether a configured column applies in this database. */
export function appliesTo(col: Pick<ColumnConfig, 'databases'>, database: string): boolean {
  return col.databases === undefined || col.databases.includes(database);
}

interface RelRow {
  oid: number;
  nspname: string;
  relname: string;
  relkind: string;
  columns: string[];
  generated?: string[]; // COPY without a column list skips these
}
interface ColRow {
  idx: number;
  oid: number;
  nspname: string;
  relname: string;
  attnum: number;
  fmt: string;
  typnsp: string;
  typname: string;
  typtype: string;
  basetype: string | null;
  guard_ok: boolean;
}
interface ViewRow {
  oid: number;
  nspname: string;
  relname: string;
  relkind: string;
  columns: string[];
  ev_action: string;
  dep_oids: number[]; // what pg_depend says the rule reads: relation OIDs and column numbers (0 = whole relation)
  dep_cols: number[];
}

// Every relation a statement could name (toast excluded), columns in attnum order without dropped ones.
const RELATIONS_SQL = `
SELECT c.oid::int AS oid, n.nspname::text AS nspname, c.relname::text AS relname, c.relkind::text AS relkind,
       COALESCE((SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}') AS columns,
       COALESCE((SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''), '{}') AS generated
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname <> 'pg_toast'`;

// Configured columns ($1..$3 parallel arrays) and the pg_inherits closure below each table, with the
// column's storage type and whether its guard domain carries mamori's CHECK.
const COLUMNS_SQL = `
WITH RECURSIVE want AS (
  SELECT w.idx::int AS idx, w.s, w.t, w.col
    FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]))
         WITH ORDINALITY AS w(s, t, col, idx)
), rels AS (
  SELECT want.idx, c.oid, want.col FROM want
    JOIN pg_catalog.pg_namespace n ON n.nspname = want.s
    JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = want.t AND c.relkind IN ('r', 'p', 'f')
  UNION
  SELECT rels.idx, i.inhrelid, rels.col FROM rels JOIN pg_catalog.pg_inherits i ON i.inhparent = rels.oid
)
SELECT rels.idx, c.oid::int AS oid, n.nspname::text AS nspname, c.relname::text AS relname, a.attnum::int AS attnum,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS fmt, tn.nspname::text AS typnsp, t.typname::text AS typname,
       t.typtype::text AS typtype,
       CASE WHEN t.typtype = 'd' THEN pg_catalog.format_type(t.typbasetype, NULL) END AS basetype,
       EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid AND k.conname = '${GUARD_CONSTRAINT}'
                 AND k.contype = 'c' AND k.convalidated
                 AND pg_catalog.strpos(pg_catalog.pg_get_constraintdef(k.oid), 'xff6d01') > 0) AS guard_ok
  FROM rels
  JOIN pg_catalog.pg_class c ON c.oid = rels.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = rels.col AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace`;

// What `mamori protect` recorded for the tables of configured columns ($1), with the shadow column it adds
// (name + '__mamori', proxy/protect/plan.ts SHADOW_SUFFIX) and the one unprotect adds (name + '__mamori_plain',
// PLAIN_SHADOW_SUFFIX) when present. Read only when the table exists.
const STATE_SQL = `
SELECT p.table_oid::int AS oid, p.column_name::text AS col, p.state, p.original_type_oid::int AS type_oid, p.typmod,
       a.attnum::int AS shadow_attnum, tn.nspname::text || '.' || t.typname::text AS shadow_type, pa.attnum::int AS plain_attnum
  FROM mamori.protected_columns p
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = p.table_oid AND a.attname = p.column_name::text || '__mamori'
   AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_attribute pa ON pa.attrelid = p.table_oid AND pa.attname = p.column_name::text || '__mamori_plain'
   AND pa.attnum > 0 AND NOT pa.attisdropped
  LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
 WHERE p.table_oid = ANY ($1::oid[])`;

interface StateRow {
  oid: number;
  col: string;
  state: string;
  type_oid: number;
  typmod: number;
  shadow_attnum: number | null;
  shadow_type: string | null;
  plain_attnum?: number | null;
}

// Views and matviews that depend, directly or through other views, on the given tables ($1); their rule
// action is classified in JS (which output columns are plain references).
const VIEWS_SQL = `
WITH RECURSIVE deps AS (
  SELECT DISTINCT r.ev_class AS oid FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
   WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
     AND d.refobjid = ANY ($1::oid[]) AND r.ev_class <> d.refobjid
  UNION
  SELECT r.ev_class FROM deps
    JOIN pg_catalog.pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
     AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
    JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND r.ev_class <> deps.oid
)
SELECT c.oid::int AS oid, n.nspname::text AS nspname, c.relname::text AS relname, c.relkind::text AS relkind,
       COALESCE((SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}') AS columns,
       r.ev_action::text AS ev_action,
       COALESCE(pg_catalog.array_agg(d.refobjid::int ORDER BY d.refobjid, d.refobjsubid), '{}') AS dep_oids,
       COALESCE(pg_catalog.array_agg(d.refobjsubid::int ORDER BY d.refobjid, d.refobjsubid), '{}') AS dep_cols
  FROM deps JOIN pg_catalog.pg_class c ON c.oid = deps.oid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid AND r.rulename = '_RETURN'
  LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid
   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> c.oid
 WHERE c.relkind IN ('v', 'm')
 GROUP BY c.oid, n.nspname, c.relname, c.relkind, r.ev_action`;

/**
 * Loads the catalog of one database for the configured columns that apply to it. Runs four catalog queries
 * in one read-only REPEATABLE READ transaction on `client` (the control connection, no superuser needed).
 */
export async function loadCatalog(client: pg.ClientBase, columns: ColumnsConfig, database: string): Promise<DatabaseCatalog> {
  const configured = Object.entries(columns).filter(([, c]) => appliesTo(c, database));
  await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  let epoch: number;
  let rels: RelRow[];
  let cols: ColRow[];
  let views: ViewRow[];
  let states: StateRow[];
  try {
    epoch = await readEpoch(client);
    rels = (await client.query<RelRow>(RELATIONS_SQL)).rows;
    cols = (
      await client.query<ColRow>(COLUMNS_SQL, [
        configured.map(([, c]) => c.ref.schema),
        configured.map(([, c]) => c.ref.table),
        configured.map(([, c]) => c.ref.column),
      ])
    ).rows;
    const tableOids = [...new Set(cols.map((c) => c.oid))];
    views = tableOids.length ? (await client.query<ViewRow>(VIEWS_SQL, [tableOids])).rows : [];
    const hasState = (await client.query<{ ok: boolean }>(`SELECT pg_catalog.to_regclass('mamori.protected_columns') IS NOT NULL AS ok`)).rows[0]?.ok;
    states = hasState && tableOids.length ? (await client.query<StateRow>(STATE_SQL, [tableOids])).rows : [];
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
  return buildCatalog({ database, epoch, configured, rels, cols, views, states });
}

function buildCatalog(input: {
  database: string;
  epoch: number;
  configured: [string, ColumnConfig][];
  rels: RelRow[];
  cols: ColRow[];
  views: ViewRow[];
  states?: StateRow[];
}): DatabaseCatalog {
  const { configured, rels, cols, views } = input;
  const stateOf = new Map((input.states ?? []).map((x) => [`${x.oid}\0${x.col}`, x]));
  const transitions = new Map<string, ColumnTransition>();
  const problems: { column: string; problem: string }[] = [];
  const origins = new Map<string, ProtectedField>();
  const derived = new Map<string, ProtectedField>();
  const storage = new Map<string, ColumnStorage>();
  const protectedColumns: ProtectedColumn[] = [];
  const names = new Set<string>();

  const rowsByIdx = new Map<number, ColRow[]>();
  for (const r of cols) {
    const list = rowsByIdx.get(r.idx) ?? [];
    list.push(r);
    rowsByIdx.set(r.idx, list);
  }
  const direct = new Set<string>();
  for (const r of cols) {
    const ref = configured[r.idx - 1]?.[1].ref;
    if (ref && ref.schema === r.nspname && ref.table === r.relname) direct.add(key(r.oid, r.attnum));
  }
  configured.forEach(([policyKey, cfg], i) => {
    const found = rowsByIdx.get(i + 1) ?? [];
    const { schema, table, column } = cfg.ref;
    if (!found.some((r) => r.nspname === schema && r.relname === table)) {
      problems.push({ column: policyKey, problem: `column ${policyKey} does not exist in database "${input.database}"` });
    }
    const guard = cfg.logicalType.name;
    for (const r of found) {
      const self = r.nspname === schema && r.relname === table;
      // A child configured in its own right is described by its own entry; one reached twice (multiple
      // inheritance) keeps the first.
      if (!self && (direct.has(key(r.oid, r.attnum)) || origins.has(key(r.oid, r.attnum)))) continue;
      const col: ProtectedColumn = {
        schema: r.nspname,
        table: r.relname,
        column,
        type: cfg.logicalType.length === undefined ? { type: guard } : { type: guard, length: cfg.logicalType.length },
        mode: cfg.mode,
        domain: cfg.keyDomain,
        attnum: r.attnum,
        tableOid: r.oid,
      };
      const isGuard = r.typtype === 'd' && r.typnsp === 'mamori' && r.typname === guard && r.basetype === 'bytea';
      const overBytea = r.fmt === 'bytea' || (r.typtype === 'd' && r.basetype === 'bytea');
      const st = stateOf.get(`${r.oid}\0${column}`);
      const display = st ? recordedDisplayType(col.type, { oid: st.type_oid, typmod: st.typmod }) : null;
      if (display) col.display = display;
      protectedColumns.push(col);
      origins.set(key(r.oid, r.attnum), { column: col, policyKey });
      // In protect's transition: the shadow's cells are the column's (a result field from it is decrypted per policy).
      if (st?.state === 'protecting' && !overBytea && st.shadow_attnum !== null && st.shadow_type === `mamori.${guard}`) {
        transitions.set(key(r.oid, r.attnum), { shadow: column + '__mamori', shadowAttnum: st.shadow_attnum, direction: 'protect' });
        origins.set(key(r.oid, st.shadow_attnum), { column: col, policyKey });
      }
      // In unprotect's: the column still holds the cells, the plaintext shadow the decrypted values. The shadow
      // is mapped to the column too, so a read of it in any spelling the name check misses (U&"…") is decided by
      // the column's policy and fails closed (its values are not cells) instead of passing as an ordinary column.
      if (st?.state === 'unprotecting' && isGuard && typeof st.plain_attnum === 'number') {
        transitions.set(key(r.oid, r.attnum), { shadow: column + '__mamori_plain', shadowAttnum: st.plain_attnum, direction: 'unprotect' });
        origins.set(key(r.oid, st.plain_attnum), { column: col, policyKey });
      }
      names.add(r.relname);
      const where = self ? policyKey : `${policyKey} (in ${r.nspname}.${r.relname})`;
      storage.set(key(r.oid, r.attnum), { kind: isGuard ? 'guard' : overBytea ? 'bytea' : 'plaintext', type: r.fmt });
      if (isGuard && !r.guard_ok) {
        problems.push({ column: where, problem: `guard domain mamori.${guard} has lost its CHECK ${GUARD_CONSTRAINT}: writes that bypass mamori are not refused (run mamori setup-db)` });
      } else if (!isGuard && overBytea) {
        problems.push({ column: where, problem: `stored as ${r.fmt} without the guard domain mamori.${guard}: writes that bypass mamori are not refused` });
      } else if (!overBytea) {
        problems.push({ column: where, problem: `stored as ${r.fmt}: not protected yet (run mamori protect)` });
      }
    }
  });

  // The view closure: a view column whose stored target is a bare Var the server traced to a protected
  // origin is a plain reference (the origin RowDescription will report for it is the view's own OID+attnum);
  // any other column that reads a protected column, or reads something untraceable in a view that depends
  // on protected data, is derived. Repeated until nothing changes, so views of views settle in any order.
  const protectedViews: ProtectedViewColumn[] = [];
  const derivedViewColumns: ProtectedViewColumn[] = [];
  const parsed = new Map<number, ViewTarget[] | null>();
  for (const v of views) {
    try {
      parsed.set(v.oid, viewTargets(v.ev_action));
    } catch {
      parsed.set(v.oid, null);
    }
  }
  const hit = (ref: { oid: number; attnum: number }): ProtectedField | undefined => {
    if (ref.attnum === 0) {
      for (const [k, f] of [...origins, ...derived]) if (k.startsWith(`${ref.oid}:`)) return f;
      return undefined;
    }
    return origins.get(key(ref.oid, ref.attnum)) ?? derived.get(key(ref.oid, ref.attnum));
  };
  // Phase 1: plain references, to a fixpoint (views of views settle in any order).
  for (let changed = true; changed; ) {
    changed = false;
    for (const v of views) {
      for (const t of parsed.get(v.oid) ?? []) {
        const k = key(v.oid, t.resno);
        const plain = t.origin ? origins.get(key(t.origin.oid, t.origin.attnum)) : undefined;
        if (plain && !origins.has(k)) {
          origins.set(k, plain);
          changed = true;
        }
      }
    }
  }
  // Phase 2: everything else that reads a protected (or derived) column is derived.
  for (let changed = true; changed; ) {
    changed = false;
    const mark = (k: string, f: ProtectedField): void => {
      if (origins.has(k) || derived.has(k)) return;
      derived.set(k, f);
      changed = true;
    };
    for (const v of views) {
      const targets = parsed.get(v.oid);
      const depHit = v.dep_oids.map((oid, i) => hit({ oid, attnum: v.dep_cols[i]! })).find((f) => f !== undefined);
      if (targets === null || targets === undefined) {
        // Unreadable rule action: every column of a view over protected data is treated as derived.
        if (depHit) v.columns.forEach((_, i) => mark(key(v.oid, i + 1), depHit));
        continue;
      }
      for (const t of targets) {
        const k = key(v.oid, t.resno);
        if (t.origin) {
          // A bare Var the server traced: derived only when its origin is (a plain Var of a derived column).
          const f = hit(t.origin);
          if (f) mark(k, f);
          continue;
        }
        const src = t.reads.map(hit).find((f) => f !== undefined);
        if (src) mark(k, src);
        // What it reads cannot be traced (set operation, subquery, join, sublink) in a view that reads a
        // protected column: treated as derived from that column.
        else if (t.opaque && depHit) mark(k, depHit);
      }
    }
  }
  for (const v of views) {
    let any = false;
    v.columns.forEach((name, i) => {
      const k = key(v.oid, i + 1);
      const p = origins.get(k);
      const d = derived.get(k);
      if (p) protectedViews.push({ schema: v.nspname, view: v.relname, column: name, source: p.column });
      if (d) {
        derivedViewColumns.push({ schema: v.nspname, view: v.relname, column: name, source: d.column });
        problems.push({
          column: d.policyKey,
          problem: `${v.relkind === 'm' ? 'materialized view' : 'view'} ${canonicalName([v.nspname, v.relname])} column ${quoteIdentifierIfNeeded(name)} is an expression over ${d.policyKey}, not a plain reference: reads of it are refused`,
        });
      }
      any ||= p !== undefined || d !== undefined;
    });
    if (any) names.add(v.relname);
  }

  // Name resolution as the server does it.
  const byName = new Map<string, ResolvedRelation>();
  for (const r of rels) {
    byName.set(`${r.nspname}\0${r.relname}`, { schema: r.nspname, name: r.relname, kind: KIND[r.relkind] ?? 'other', columns: r.columns, ...(r.generated?.length ? { generated: r.generated } : {}) });
  }
  const resolveRelation = (name: { schema?: string; name: string }, searchPath: readonly string[]): ResolvedRelation | null => {
    if (name.schema !== undefined) {
      let schema = name.schema;
      if (schema === 'pg_temp') schema = searchPath.find((s) => s.startsWith('pg_temp_')) ?? schema;
      return byName.get(`${schema}\0${name.name}`) ?? null;
    }
    for (const s of effectivePath(searchPath)) {
      const r = byName.get(`${s}\0${name.name}`);
      if (r) return r;
    }
    return null;
  };

  return {
    database: input.database,
    epoch: input.epoch,
    loadId: ++catalogLoads,
    protectedColumns,
    protectedViews,
    derivedViewColumns,
    resolveRelation,
    byOrigin: (oid, attnum) => origins.get(key(oid, attnum)),
    derivedByOrigin: (oid, attnum) => derived.get(key(oid, attnum)),
    names: [...names],
    problems,
    storage,
    transitions,
  };
}

/**
 * The schemas an unqualified relation name is looked up in: the caller's path (pg_temp_N first when it is
 * implicit, `$user` expanded), with pg_catalog added when absent — after a leading temp schema, since
 * PostgreSQL puts an implicit temp schema before an implicit pg_catalog.
 */
export function effectivePath(searchPath: readonly string[]): string[] {
  const path = searchPath.filter((s) => s !== 'pg_temp' && s !== '$user');
  if (path.includes('pg_catalog')) return path;
  const at = path.length > 0 && path[0]!.startsWith('pg_temp_') ? 1 : 0;
  return [...path.slice(0, at), 'pg_catalog', ...path.slice(at)];
}
