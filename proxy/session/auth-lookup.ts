// The verifier lookup function (PgBouncer's auth_query, as a SECURITY DEFINER function): the SQL that
// `mamori setup-db` installs, and the query mamori runs over its control connection. The control role
// needs no superuser and no access to pg_authid: only USAGE on the schema and EXECUTE on this function.
import type pg from 'pg';
import { parseQualifiedName } from '../../config/identifiers.js';
import { parseScramVerifier, type ScramVerifier } from './scram.js';

export const DEFAULT_LOOKUP_FUNCTION = 'mamori.get_auth';

export interface QualifiedName {
  schema: string;
  name: string;
}

/**
 * Validates `schema.function` with the config's identifier rules (unquoted parts fold to lower case,
 * "quoted" parts are verbatim). The schema is required: an unqualified name would resolve through the
 * caller's search_path.
 */
export function parseLookupFunctionName(text: string): QualifiedName {
  const parsed = parseQualifiedName(text);
  if (!parsed.ok) throw new Error(`lookup function name must be schema.function: ${parsed.reason}`);
  if (parsed.parts.length !== 2) throw new Error(`lookup function name must be schema.function, got ${parsed.parts.length} part(s)`);
  return { schema: parsed.parts[0]!, name: parsed.parts[1]! };
}

/** A double-quoted SQL identifier. */
export function quoteIdent(name: string): string {
  if (name.length === 0 || name.includes('\0')) throw new Error('invalid SQL identifier');
  return '"' + name.replace(/"/g, '""') + '"';
}

function qualified(fn: QualifiedName): string {
  return `${quoteIdent(fn.schema)}.${quoteIdent(fn.name)}`;
}

/**
 * The statements that install the lookup function, as one script to run in a transaction as a superuser.
 * The function returns the stored secret (rolpassword) of a role that may log in and whose VALID UNTIL has
 * not passed, and NULL for every other case, so callers cannot tell "no such role" from "cannot log in".
 * search_path is pinned (pg_temp last) so a caller's objects cannot be substituted into the definer's query.
 */
export function lookupFunctionSql(name: string, controlRole: string): string {
  const fn = parseLookupFunctionName(name);
  const f = qualified(fn);
  const role = quoteIdent(controlRole);
  return [
    `CREATE SCHEMA IF NOT EXISTS ${quoteIdent(fn.schema)};`,
    `CREATE OR REPLACE FUNCTION ${f}(p_user text)`,
    `  RETURNS text`,
    `  LANGUAGE sql STABLE STRICT SECURITY DEFINER`,
    `  SET search_path = pg_catalog, pg_temp`,
    `AS $mamori$`,
    `  SELECT a.rolpassword`,
    `    FROM pg_catalog.pg_authid AS a`,
    `   WHERE a.rolname OPERATOR(pg_catalog.=) p_user`,
    `     AND a.rolcanlogin`,
    `     AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil OPERATOR(pg_catalog.>) pg_catalog.now())`,
    `$mamori$;`,
    `COMMENT ON FUNCTION ${f}(text) IS 'mamori: SCRAM verifier lookup for the control role (installed by mamori setup-db)';`,
    `REVOKE ALL ON FUNCTION ${f}(text) FROM PUBLIC;`,
    `GRANT USAGE ON SCHEMA ${quoteIdent(fn.schema)} TO ${role};`,
    `GRANT EXECUTE ON FUNCTION ${f}(text) TO ${role};`,
    '',
  ].join('\n');
}

/** Installs (or replaces) the lookup function in one transaction; the client must be a superuser. */
export async function installLookupFunction(client: pg.ClientBase, name: string, controlRole: string): Promise<void> {
  const sql = lookupFunctionSql(name, controlRole);
  await client.query('BEGIN');
  try {
    await client.query(sql);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  }
}

/** The SELECT mamori runs over its control connection; $1 is the login name. */
export function lookupQuery(name: string): string {
  return `SELECT ${qualified(parseLookupFunctionName(name))}($1::text) AS secret`;
}

/**
 * The stored secret for `user` through the lookup function: the raw rolpassword text (SCRAM verifier,
 * md5 hash, or null). Callers needing md5 handle that form; everything else should use fetchVerifier.
 */
export async function fetchStoredSecret(client: pg.ClientBase, fnName: string, user: string): Promise<string | null> {
  const r = await client.query<{ secret: string | null }>(lookupQuery(fnName), [user]);
  return r.rows[0]?.secret ?? null;
}

/** The user's SCRAM verifier, or null (unknown role, NOLOGIN, expired, or a non-SCRAM secret). */
export async function fetchVerifier(client: pg.ClientBase, fnName: string, user: string): Promise<ScramVerifier | null> {
  const secret = await fetchStoredSecret(client, fnName, user);
  return secret === null ? null : parseScramVerifier(secret);
}
