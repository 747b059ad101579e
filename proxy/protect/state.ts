// mamori.protected_columns: what a protected column was before (type, typmod, NOT NULL) and whether it is in
// transition. Created idempotently by protect; read by unprotect (to restore the type) and by operators.
import type { Queryable } from './plan.js';

export const STATE_TABLE = 'mamori.protected_columns';

export type ProtectState = 'protecting' | 'protected' | 'unprotecting';

export interface ProtectedColumnRow {
  tableOid: number;
  schemaName: string;
  tableName: string;
  columnName: string;
  attnum: number;
  originalType: string;
  originalTypeOid: number;
  typmod: number;
  notNull: boolean;
  logicalType: string;
  mode: string;
  keyDomain: string;
  state: ProtectState;
}

export const STATE_DDL = `CREATE SCHEMA IF NOT EXISTS mamori;
CREATE TABLE IF NOT EXISTS ${STATE_TABLE} (
  table_oid oid NOT NULL,
  column_name name NOT NULL,
  schema_name name NOT NULL,
  table_name name NOT NULL,
  attnum int2 NOT NULL,
  original_type text NOT NULL,
  original_type_oid oid NOT NULL,
  typmod int4 NOT NULL,
  not_null boolean NOT NULL,
  logical_type text NOT NULL,
  mode text NOT NULL,
  key_domain text NOT NULL,
  state text NOT NULL CHECK (state IN ('protecting', 'protected', 'unprotecting')),
  started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  finished_at timestamptz,
  PRIMARY KEY (table_oid, column_name)
);
GRANT SELECT ON ${STATE_TABLE} TO PUBLIC;`;

// Refuses a value written to the column being migrated (by anyone: through mamori or directly), so no new
// value lands in the column the backfill is emptying. Setting it to NULL, or leaving it unchanged, passes:
// the backfill does the first, writes to other columns the second. Arguments: column, path, verb.
export const GUARD_FUNCTION_DDL = `CREATE OR REPLACE FUNCTION mamori.protect_guard() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $mamori$
DECLARE n jsonb := pg_catalog.to_jsonb(NEW) -> TG_ARGV[0];
BEGIN
  IF n IS NOT NULL AND n OPERATOR(pg_catalog.<>) 'null'::jsonb
     AND (TG_OP = 'INSERT' OR n IS DISTINCT FROM (pg_catalog.to_jsonb(OLD) -> TG_ARGV[0])) THEN
    RAISE EXCEPTION USING ERRCODE = '55000',
      MESSAGE = pg_catalog.format('column %s is being migrated by mamori %s: writing a value to it is paused until that finishes', TG_ARGV[1], TG_ARGV[2]);
  END IF;
  RETURN NEW;
END
$mamori$;`;

export async function ensureStateTable(db: Queryable): Promise<void> {
  await db.query(STATE_DDL);
  await db.query(GUARD_FUNCTION_DDL);
}

interface RawRow {
  table_oid: number;
  schema_name: string;
  table_name: string;
  column_name: string;
  attnum: number;
  original_type: string;
  original_type_oid: number;
  typmod: number;
  not_null: boolean;
  logical_type: string;
  mode: string;
  key_domain: string;
  state: ProtectState;
}

export async function readState(db: Queryable, tableOid: number, column: string): Promise<ProtectedColumnRow | null> {
  const exists = await db.query<{ t: string | null }>(`SELECT pg_catalog.to_regclass('${STATE_TABLE}')::text AS t`);
  if (!exists.rows[0]?.t) return null;
  const r = await db.query<RawRow>(
    `SELECT table_oid::int AS table_oid, schema_name::text, table_name::text, column_name::text, attnum::int AS attnum, original_type,
            original_type_oid::int AS original_type_oid, typmod, not_null, logical_type, mode, key_domain, state
       FROM ${STATE_TABLE} WHERE table_oid = $1 AND column_name = $2`,
    [tableOid, column],
  );
  const x = r.rows[0];
  if (!x) return null;
  return {
    tableOid: x.table_oid,
    schemaName: x.schema_name,
    tableName: x.table_name,
    columnName: x.column_name,
    attnum: x.attnum,
    originalType: x.original_type,
    originalTypeOid: x.original_type_oid,
    typmod: x.typmod,
    notNull: x.not_null,
    logicalType: x.logical_type,
    mode: x.mode,
    keyDomain: x.key_domain,
    state: x.state,
  };
}

export async function writeState(db: Queryable, s: ProtectedColumnRow): Promise<void> {
  await db.query(
    `INSERT INTO ${STATE_TABLE} (table_oid, column_name, schema_name, table_name, attnum, original_type, original_type_oid, typmod,
                                 not_null, logical_type, mode, key_domain, state, finished_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, CASE WHEN $13 = 'protected' THEN pg_catalog.now() END)
     ON CONFLICT (table_oid, column_name) DO UPDATE SET attnum = EXCLUDED.attnum, state = EXCLUDED.state, finished_at = EXCLUDED.finished_at`,
    [s.tableOid, s.columnName, s.schemaName, s.tableName, s.attnum, s.originalType, s.originalTypeOid, s.typmod, s.notNull, s.logicalType, s.mode, s.keyDomain, s.state],
  );
}

export async function deleteState(db: Queryable, tableOid: number, column: string): Promise<void> {
  await db.query(`DELETE FROM ${STATE_TABLE} WHERE table_oid = $1 AND column_name = $2`, [tableOid, column]);
}
