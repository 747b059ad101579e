// `mamori policy lint FILE`: runs a file of statements (e.g. exported from pg_stat_statements) through the
// analyser against a database's catalog and prints the decision for each — so an application's SQL can be
// checked before its columns are protected, without running anything.
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { parseSync } from 'libpg-query';
import { formatConfigIssues, loadConfig } from '../../config/load.js';
import { analyse, loadParser } from '../sql/index.js';
import type { AnalysisContext, ProtectedColumn, RolePolicy } from '../sql/types.js';
import { loadCatalog, effectivePath } from './catalog.js';
import type { CliIo } from '../cli.js';

export interface LintResult {
  statement: string;
  decision: 'unprotected' | 'allowed' | 'refused';
  sqlstate?: string;
  message?: string;
  columns?: string[];
}

/**
 * Splits a file into statements: by the parser's statement boundaries when the whole file parses, else
 * one statement per non-empty line (pg_stat_statements exports put each query on one line).
 */
export function splitStatements(text: string): string[] {
  try {
    const tree = parseSync(text) as { stmts?: Array<{ stmt_location?: number; stmt_len?: number }> };
    const bytes = Buffer.from(text, 'utf8');
    const out: string[] = [];
    for (const s of tree.stmts ?? []) {
      const start = s.stmt_location ?? 0;
      const end = s.stmt_len ? start + s.stmt_len : bytes.length;
      const t = bytes.subarray(start, end).toString('utf8').trim();
      if (t) out.push(t);
    }
    return out;
  } catch {
    return text.split('\n').map((l) => l.trim().replace(/;$/, '')).filter((l) => l !== '' && !l.startsWith('--'));
  }
}

/** A role that holds every grant: lint then reports what the SQL does, not who may do it. */
const ALL_GRANTS: RolePolicy = { read: () => 'plaintext', canSearch: () => true, canWrite: () => true };

export function lintStatements(statements: readonly string[], ctx: AnalysisContext): LintResult[] {
  return statements.map((statement) => {
    const a = analyse(Buffer.from(statement, 'utf8'), ctx);
    if (a.kind === 'refuse') return { statement, decision: 'refused', sqlstate: a.sqlstate, message: a.message };
    if (a.kind === 'unprotected') return { statement, decision: 'unprotected' };
    const cols = new Set<string>();
    for (const st of a.statements) for (const t of st.touched) cols.add(`${name(t.column)} (${t.uses.join('+')})`);
    return { statement, decision: 'allowed', columns: [...cols] };
  });
}

function name(c: ProtectedColumn): string {
  return `${c.schema}.${c.table}.${c.column}`;
}

/** mamori policy lint FILE --config CONFIG [-d DB] [--search-path a,b] [--json] */
export async function runPolicyLint(args: string[], io: CliIo): Promise<number> {
  let file: string | undefined;
  let configPath: string | undefined;
  let database: string | undefined;
  let searchPath = '"$user", public';
  let json = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--config' || a === '-c') configPath = args[++i];
    else if (a === '-d' || a === '--database') database = args[++i];
    else if (a === '--search-path') searchPath = args[++i] ?? searchPath;
    else if (a === '--json') json = true;
    else if (!a.startsWith('-')) file = a;
  }
  if (!file || !configPath) {
    io.stderr.write('usage: mamori policy lint FILE --config FILE [-d DB] [--search-path PATH] [--json]\n');
    return 2;
  }
  const loaded = await loadConfig(configPath, process.env, { requireSecrets: false });
  if (!loaded.ok) {
    io.stderr.write(`mamori: the configuration was refused:\n${formatConfigIssues(loaded.errors)}\n`);
    return 1;
  }
  await loadParser();
  // The catalog comes from the database (libpq environment: PGHOST, PGUSER, PGPASSWORD …).
  const client = new pg.Client(database ? { database } : {});
  try {
    await client.connect();
    const catalog = await loadCatalog(client, loaded.config.columns, client.database ?? database ?? 'postgres');
    const path = effectivePath(searchPath.split(',').map((s) => s.trim().replace(/^"(.*)"$/, '$1')).map((s) => (s === '$user' ? client.user ?? '' : s)));
    const ctx: AnalysisContext = { catalog, searchPath: path, role: ALL_GRANTS, maxInListItems: loaded.config.search.maxInListItems };
    const results = lintStatements(splitStatements(readFileSync(file, 'utf8')), ctx);
    if (json) io.stdout.write(JSON.stringify(results, null, 2) + '\n');
    else {
      for (const r of results) {
        const head = r.decision === 'refused' ? `REFUSED ${r.sqlstate}: ${r.message}` : r.decision === 'allowed' ? `allowed: ${r.columns?.join(', ')}` : 'unprotected';
        io.stdout.write(`${head}\n    ${r.statement.replace(/\s+/g, ' ').slice(0, 200)}\n`);
      }
      const refused = results.filter((r) => r.decision === 'refused').length;
      io.stdout.write(`\n${results.length} statements: ${results.filter((r) => r.decision === 'allowed').length} allowed, ${refused} refused, ${results.filter((r) => r.decision === 'unprotected').length} unprotected\n`);
    }
    return results.some((r) => r.decision === 'refused') ? 1 : 0;
  } catch (err) {
    io.stderr.write(`mamori: policy lint failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await client.end().catch(() => undefined);
  }
}
