// Inputs and outputs of the SQL analysis (see docs/sql-support.md).

export interface LogicalTypeSpec {
  type: string; // text | varchar | char | mynumber | corporate_number | int2 | int4 | int8 | date | bytea
  length?: number;
}

export interface ProtectedColumn {
  schema: string;
  table: string;
  column: string;
  type: LogicalTypeSpec;
  mode: 'deterministic' | 'randomized';
  domain: string; // key domain; columns that may be joined share one
  attnum?: number;
  tableOid?: number;
  // The type clients see for it (RowDescription, ParameterDescription): the type recorded by `mamori protect`
  // when compatible with the logical type (e.g. char(12) for a mynumber); absent: the logical type's default.
  display?: { oid: number; typlen: number; typmod: number };
}

export type RelationKind = 'table' | 'view' | 'matview' | 'partitioned' | 'foreign' | 'other';

export interface ResolvedRelation {
  schema: string;
  name: string;
  kind: RelationKind;
  columns: string[]; // in attnum order, dropped columns left out
  generated?: readonly string[]; // generated columns (COPY without a column list skips them)
}

// A view column that is a plain reference to a protected column (the closure the catalog computes).
export interface ProtectedViewColumn {
  schema: string;
  view: string;
  column: string;
  source: ProtectedColumn;
}

export interface CatalogSnapshot {
  // Partitions and inheritance children of a protected table are listed here as protected columns of their own.
  protectedColumns: readonly ProtectedColumn[];
  protectedViews?: readonly ProtectedViewColumn[];
  // Relation lookup as the server does it. `searchPath` is the session's effective path (pg_temp first,
  // $user expanded); an unqualified name is looked up through it, a qualified one directly.
  resolveRelation(name: { schema?: string; name: string }, searchPath: readonly string[]): ResolvedRelation | null;
  epoch?: number;
}

export type ReadDecision = 'plaintext' | 'mask' | 'null' | 'ciphertext' | 'deny';

export interface RolePolicy {
  canSearch(col: ProtectedColumn): boolean;
  canWrite(col: ProtectedColumn): boolean;
  read(col: ProtectedColumn): ReadDecision;
  // Plaintext COPY TO needs the export grant (absent: no export).
  canExport?(col: ProtectedColumn): boolean;
}

export interface AnalysisContext {
  catalog: CatalogSnapshot;
  searchPath: readonly string[];
  role: RolePolicy;
  maxInListItems: number;
  // What the server lexes with: protected access is refused unless these are 'on' / UTF8.
  standardConformingStrings?: boolean; // default true
  clientEncoding?: string; // default 'UTF8'
  allowDdl?: boolean; // the caller sets it for a configured admin role
}

export type ColumnUse = 'read' | 'write' | 'search' | 'group' | 'returning';

export interface LiteralSite {
  start: number; // byte offsets of the whole literal expression, quotes and casts included
  end: number;
  column: ProtectedColumn;
  purpose: 'write' | 'search';
  value: string | null; // the constant as the server reads it (null for a cast NULL)
}

export interface ParamSite {
  index: number; // $n, 1-based
  column: ProtectedColumn;
  purpose: 'write' | 'search';
  array?: boolean; // = ANY($n): an array of values for the column
  // Byte span of `$n::type` / CAST($n AS type) when the parameter carries a cast; it must be replaced by
  // `$n::bytea` (`$n::bytea[]` for arrays) since the column stores bytea.
  cast?: { start: number; end: number };
}

export interface Setting {
  name: string; // lower case; '*' for RESET ALL / DISCARD ALL; '?' when set_config's name is not a constant
  value: string | null; // null: reset to default, or not a constant
  local: boolean;
  action: 'set' | 'reset';
}

// One argument of `EXECUTE name(args)`: a constant (optionally cast; value null for NULL), a parameter of
// the enclosing statement ($n, extended protocol), or any other expression.
export interface ExecuteArg {
  start: number;
  end: number;
  value: string | null;
  kind: 'literal' | 'param' | 'other';
  index?: number; // param: its $n
  cast?: boolean; // param: written with a cast ($n::type)
}

export interface StatementPlan {
  command: string; // SELECT, INSERT, UPDATE, DELETE, TRUNCATE, EXPLAIN, DECLARE CURSOR, PREPARE, EXECUTE, DDL …
  start: number; // byte span of the statement inside the query string
  end: number;
  touched: { column: ProtectedColumn; uses: ColumnUse[] }[];
  literals: LiteralSite[];
  params: ParamSite[];
  deleteOfProtected?: boolean; // DELETE / UPDATE … = NULL / TRUNCATE of a protected table → deletion record
  // PREPARE: the declared types of protected params to replace by bytea, and the prepared statement's command.
  prepare?: { name: string; typeSpans: { index: number; start: number; end: number }[]; command: string };
  execute?: { name: string; args: ExecuteArg[] };
  ddl?: boolean; // DDL on a protected table, allowed because ctx.allowDdl
  copy?: CopyPlan; // COPY … FROM STDIN / TO STDOUT touching protected columns (docs/copy.md)
}

// COPY options as written in the statement (PostgreSQL's names; values not yet checked).
export interface CopyOptions {
  format: 'text' | 'csv' | 'binary';
  delimiter?: string;
  null?: string;
  quote?: string;
  escape?: string;
  header?: boolean | 'match';
  forceQuote?: readonly string[] | '*';
  forceNotNull?: readonly string[] | '*';
  forceNull?: readonly string[] | '*';
  default?: string;
  encoding?: string;
}

export interface CopyPlan {
  direction: 'from' | 'to';
  table: { schema: string; name: string } | null; // null for COPY (query) TO
  columnNames: string[]; // in COPY column order
  columns: (ProtectedColumn | null)[]; // the protected column at each position, else null
  options: CopyOptions;
}

export type Analysis =
  | { kind: 'unprotected'; settings: Setting[]; roleChange: boolean }
  | { kind: 'refuse'; sqlstate: string; message: string }
  | { kind: 'protected'; statements: StatementPlan[]; settings: Setting[]; roleChange: boolean };
