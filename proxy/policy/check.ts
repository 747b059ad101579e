// `mamori policy check -d DB [--config FILE]`: what stands between the policy and the database as it is —
// columns missing or not yet protected, missing guards, plaintext rows, superusers or CREATEROLE holders among
// the members of plaintext roles, and server settings that would write values to the server log.
// Runs as a DBA through the libpq environment (it counts rows of protected tables). Prints counts and names only.
import { existsSync } from 'node:fs';
import pg from 'pg';
import { formatConfigIssues, loadConfig } from '../../config/load.js';
import { parseQualifiedName } from '../../config/identifiers.js';
import type { MamoriConfig } from '../../config/schema.js';
import { appliesTo, GUARD_CONSTRAINT, GUARD_TYPES, loadCatalog, type DatabaseCatalog } from './catalog.js';

export interface PolicyCheckIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); default process.env. */
  env?: NodeJS.ProcessEnv;
}

export type FindingArea = 'setup' | 'column' | 'rows' | 'role' | 'setting';
export interface Finding {
  area: FindingArea;
  subject: string; // column key, role, setting or object name
  problem: string;
}

const qi = (name: string): string => '"' + name.replace(/"/g, '""') + '"';

const SEVERITIES = ['debug5', 'debug4', 'debug3', 'debug2', 'debug1', 'info', 'notice', 'warning', 'error', 'log', 'fatal', 'panic'];

/** Settings that make the server log statement text or parameters (so protected values, once decrypted or in searches). */
export function settingProblem(name: string, value: string): string | null {
  switch (name) {
    case 'log_statement':
      return value === 'none' ? null : `is '${value}': statements (and their literals) are logged; set it to 'none'`;
    case 'log_min_error_statement': {
      const at = SEVERITIES.indexOf(value.toLowerCase());
      return at >= 0 && at <= SEVERITIES.indexOf('error')
        ? `is '${value}': the text of failing statements is logged; set it to 'panic'`
        : null;
    }
    case 'log_parameter_max_length_on_error':
      return value === '0' ? null : `is ${value}: bind parameters of failing statements are logged; set it to 0`;
    case 'log_min_duration_statement':
    case 'log_min_duration_sample':
      return value === '-1' ? null : `is ${value}: statements are logged with their duration; set it to -1`;
    case 'log_transaction_sample_rate':
      return Number(value) === 0 ? null : `is ${value}: sampled transactions have their statements logged; set it to 0`;
    case 'pg_stat_statements.track_utility':
      return value === 'on' ? `is on: utility statements (PREPARE/EXECUTE, DO …) are stored with their literals; set it to off` : null;
    case 'shared_preload_libraries':
    case 'session_preload_libraries':
    case 'local_preload_libraries':
      return /(^|[\s,/"])auto_explain("?\s*(,|$))/.test(value) ? `loads auto_explain, which logs statement text and plans` : null;
    default:
      return null;
  }
}

const WATCHED = [
  'log_statement',
  'log_min_error_statement',
  'log_parameter_max_length_on_error',
  'log_min_duration_statement',
  'log_min_duration_sample',
  'log_transaction_sample_rate',
  'shared_preload_libraries',
  'session_preload_libraries',
  'local_preload_libraries',
];

async function checkSettings(client: pg.ClientBase): Promise<Finding[]> {
  const out: Finding[] = [];
  const r = await client.query<{ name: string; setting: string }>(
    'SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY ($1::text[])',
    [WATCHED],
  );
  const settings = new Map(r.rows.map((x) => [x.name, x.setting]));
  for (const [name, value] of settings) {
    const p = settingProblem(name, value);
    if (p) out.push({ area: 'setting', subject: name, problem: p });
  }
  // auto_explain loaded into this very session (LOAD, or a preload set elsewhere) defines its settings.
  const ae = await client.query<{ v: string | null }>(`SELECT pg_catalog.current_setting('auto_explain.log_min_duration', true) AS v`);
  if (ae.rows[0]?.v != null && !out.some((f) => f.problem.includes('auto_explain'))) {
    out.push({ area: 'setting', subject: 'auto_explain', problem: 'is loaded: it logs statement text and plans' });
  }
  // pg_stat_statements stores statement text only when preloaded; its track_utility keeps utility literals.
  if (/(^|[\s,])pg_stat_statements([\s,]|$)/.test(settings.get('shared_preload_libraries') ?? '')) {
    const tu = await client.query<{ v: string | null }>(`SELECT pg_catalog.current_setting('pg_stat_statements.track_utility', true) AS v`);
    const p = tu.rows[0]?.v == null ? null : settingProblem('pg_stat_statements.track_utility', tu.rows[0].v);
    if (p) out.push({ area: 'setting', subject: 'pg_stat_statements.track_utility', problem: p });
  }
  // Per-role and per-database overrides (ALTER ROLE … SET / ALTER DATABASE … SET) apply to sessions the above misses.
  const ov = await client.query<{ who: string; item: string }>(
    `SELECT COALESCE('role ' || r.rolname, '') || CASE WHEN r.rolname IS NOT NULL AND d.datname IS NOT NULL THEN ' in ' ELSE '' END
              || COALESCE('database ' || d.datname, '') AS who, c.item
       FROM pg_catalog.pg_db_role_setting s
       LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
       LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
       CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS c(item)`,
  );
  for (const { who, item } of ov.rows) {
    const eq = item.indexOf('=');
    const name = item.slice(0, eq).toLowerCase();
    const p = settingProblem(name, item.slice(eq + 1));
    if (p) out.push({ area: 'setting', subject: `${name} (${who})`, problem: p });
  }
  return out;
}

async function checkSetup(client: pg.ClientBase): Promise<Finding[]> {
  const out: Finding[] = [];
  const r = await client.query<{ epoch: boolean; triggers: string[]; guards: string[] }>(
    `SELECT pg_catalog.to_regclass('mamori.catalog_epoch') IS NOT NULL AS epoch,
            COALESCE((SELECT pg_catalog.array_agg(evtname::text) FROM pg_catalog.pg_event_trigger
                       WHERE evtname IN ('mamori_ddl_end', 'mamori_sql_drop') AND evtenabled <> 'D'), '{}') AS triggers,
            COALESCE((SELECT pg_catalog.array_agg(t.typname::text) FROM pg_catalog.pg_type t
                        JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                       WHERE n.nspname = 'mamori' AND t.typtype = 'd'
                         AND pg_catalog.format_type(t.typbasetype, NULL) = 'bytea'
                         AND EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.contypid = t.oid
                                       AND k.conname = '${GUARD_CONSTRAINT}' AND k.convalidated)), '{}') AS guards`,
  );
  const row = r.rows[0]!;
  if (!row.epoch) out.push({ area: 'setup', subject: 'mamori.catalog_epoch', problem: 'missing: run mamori setup-db' });
  for (const t of ['mamori_ddl_end', 'mamori_sql_drop']) {
    if (!row.triggers.includes(t)) out.push({ area: 'setup', subject: `event trigger ${t}`, problem: 'missing or disabled: DDL does not bump the catalog epoch (run mamori setup-db)' });
  }
  for (const t of GUARD_TYPES) {
    if (!row.guards.includes(t)) out.push({ area: 'setup', subject: `mamori.${t}`, problem: `guard domain missing or without its CHECK ${GUARD_CONSTRAINT} (run mamori setup-db)` });
  }
  return out;
}

// Whether a protected column is the configured one itself rather than a partition's or child's copy.
const isSelf = (key: string, col: { schema: string; table: string }): boolean => {
  const parsed = parseQualifiedName(key);
  return parsed.ok && parsed.parts[0] === col.schema && parsed.parts[1] === col.table;
};

async function checkRows(client: pg.ClientBase, cat: DatabaseCatalog, keyOf: (oid: number, attnum: number) => string | undefined): Promise<Finding[]> {
  const out: Finding[] = [];
  for (const col of cat.protectedColumns) {
    if (col.tableOid === undefined || col.attnum === undefined) continue;
    const storage = cat.storage.get(`${col.tableOid}:${col.attnum}`);
    const rel = cat.resolveRelation({ schema: col.schema, name: col.table }, []);
    if (!storage || rel?.kind === 'partitioned' || rel?.kind === 'foreign') continue; // no rows of its own / not ours to scan
    const target = `ONLY ${qi(col.schema)}.${qi(col.table)}`;
    const c = qi(col.column);
    const where =
      storage.kind === 'plaintext'
        ? `${c} IS NOT NULL`
        : `pg_catalog.substring(${c}::pg_catalog.bytea, 1, 2) OPERATOR(pg_catalog.<>) '\\xff6d'::pg_catalog.bytea`;
    const r = await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${target} WHERE ${where}`);
    const n = Number(r.rows[0]?.n ?? 0);
    if (n > 0) {
      const key = keyOf(col.tableOid, col.attnum) ?? `${col.schema}.${col.table}.${col.column}`;
      const suffix = isSelf(key, col) ? '' : ` (in ${col.schema}.${col.table})`;
      out.push({ area: 'rows', subject: key + suffix, problem: `${n} row(s) hold plaintext, not mamori cells` });
    }
  }
  return out;
}

async function checkRoles(client: pg.ClientBase, config: MamoriConfig, database: string): Promise<Finding[]> {
  const out: Finding[] = [];
  const grants = new Map<string, string[]>(); // plaintext role → column keys
  for (const [key, col] of Object.entries(config.columns)) {
    if (!appliesTo(col, database)) continue;
    for (const role of col.read.plaintext) grants.set(role, [...(grants.get(role) ?? []), key]);
  }
  if (grants.size === 0) return out;
  const r = await client.query<{ grant: string; member: string | null; rolsuper: boolean; rolcreaterole: boolean }>(
    `WITH RECURSIVE m AS (
       SELECT g.name AS grant, r.oid FROM pg_catalog.unnest($1::text[]) AS g(name)
         LEFT JOIN pg_catalog.pg_roles r ON r.rolname = g.name
       UNION
       SELECT m.grant, am.member FROM m JOIN pg_catalog.pg_auth_members am ON am.roleid = m.oid
     )
     SELECT m.grant, r.rolname::text AS member, COALESCE(r.rolsuper, false) AS rolsuper,
            COALESCE(r.rolcreaterole, false) AS rolcreaterole
       FROM m LEFT JOIN pg_catalog.pg_roles r ON r.oid = m.oid`,
    [[...grants.keys()]],
  );
  for (const row of r.rows) {
    const cols = grants.get(row.grant)!.join(', ');
    if (row.member === null) {
      out.push({ area: 'role', subject: row.grant, problem: `plaintext role for ${cols} does not exist` });
      continue;
    }
    const via = row.member === row.grant ? `is a plaintext role for ${cols}` : `is a member of plaintext role ${row.grant} (${cols})`;
    if (row.rolsuper) out.push({ area: 'role', subject: row.member, problem: `superuser ${via}` });
    if (row.rolcreaterole) out.push({ area: 'role', subject: row.member, problem: `CREATEROLE holder ${via}: it can grant plaintext access to others` });
  }
  return out;
}

/** Every check against one database; `client` should be a DBA (it reads protected tables to count plaintext rows). */
export async function checkDatabase(client: pg.ClientBase, config: MamoriConfig, database: string): Promise<Finding[]> {
  const cat = await loadCatalog(client, config.columns, database);
  const keyOf = (oid: number, attnum: number) => cat.byOrigin(oid, attnum)?.policyKey;
  return [
    ...(await checkSetup(client)),
    ...cat.problems.map((p): Finding => ({ area: 'column', subject: p.column, problem: p.problem })),
    ...(await checkRows(client, cat, keyOf)),
    ...(await checkRoles(client, config, database)),
    ...(await checkSettings(client)),
  ];
}

function clientConfig(env: NodeJS.ProcessEnv, database: string | undefined): pg.ClientConfig {
  const cfg: pg.ClientConfig = {};
  if (env.PGHOST) cfg.host = env.PGHOST;
  if (env.PGPORT) cfg.port = Number(env.PGPORT);
  if (env.PGUSER) cfg.user = env.PGUSER;
  if (env.PGPASSWORD) cfg.password = env.PGPASSWORD;
  const db = database ?? env.PGDATABASE;
  if (db) cfg.database = db;
  return cfg;
}

/** The `mamori policy check` command. Exit codes: 0 no problem, 1 problems found or the check failed, 2 usage. */
export async function runPolicyCheck(args: string[], io: PolicyCheckIo): Promise<number> {
  let database: string | undefined;
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const eq = a.indexOf('=');
    const [name, inline] = a.startsWith('--') && eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    const value = () => inline ?? args[++i];
    if (name === '-d' || name === '--database') database = value();
    else if (name === '-c' || name === '--config') file = value();
    else {
      io.stderr.write(`usage: mamori policy check [-d DB] [--config FILE]\n`);
      return 2;
    }
  }
  const env = io.env ?? process.env;
  file ??= env.MAMORI_CONFIG ?? (existsSync('mamori.yaml') ? 'mamori.yaml' : undefined);
  if (!file) {
    io.stderr.write('mamori: policy check needs --config FILE (or MAMORI_CONFIG, or ./mamori.yaml)\n');
    return 2;
  }
  const loaded = await loadConfig(file, env, { requireSecrets: false });
  if (!loaded.ok) {
    io.stderr.write(`mamori: the configuration was refused:\n${formatConfigIssues(loaded.errors)}\n`);
    return 1;
  }
  const client = new pg.Client(clientConfig(env, database));
  try {
    await client.connect();
    const db = client.database ?? database ?? '';
    const findings = await checkDatabase(client, loaded.config, db);
    for (const f of findings) io.stdout.write(`${f.area}: ${f.subject}: ${f.problem}\n`);
    io.stdout.write(findings.length ? `${findings.length} problem(s) in database "${db}"\n` : `no problems in database "${db}"\n`);
    return findings.length ? 1 : 0;
  } catch (err) {
    io.stderr.write(`mamori: policy check failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await client.end().catch(() => undefined);
  }
}
