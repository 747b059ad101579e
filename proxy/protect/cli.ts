// `mamori protect schema.table.column -d DB` and `mamori unprotect … --yes-decrypt-to-plaintext`.
// Exit codes: 0 done (or nothing to do), 1 refused, declined, failed or left incomplete, 2 usage.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { formatConfigIssues, loadConfig } from '../../config/load.js';
import type { ColumnPolicy, MamoriConfig } from '../../config/schema.js';
import { canonicalName, parseQualifiedName } from '../../config/identifiers.js';
import { Keyring, keyringConfigFrom, type KeyringOptions } from '../../keyring/index.js';
import type { LogicalTypeSpec } from '../../keyring/logical-types.js';
import { auditConfigSchema } from '../audit/config.js';
import { AuditTrail } from '../audit/trail.js';
import { approvalsMacKey, approvalsPath, Approvals, grantView } from '../policy/approvals.js';
import { readDecision } from '../policy/decide.js';
import { inheritedRoles, readRoleGraph, type Identity } from '../policy/membership.js';
import type { BackfillProgress } from './migrate.js';
import { AFTERCARE, protectColumn, type MigratePhase, type MigrateResult, type ProtectTarget } from './protect.js';
import { unprotectColumn } from './unprotect.js';

export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  /** Where the confirmation is read (default process.stdin); a non-TTY input means no prompt. */
  stdin?: NodeJS.ReadableStream & { isTTY?: boolean };
}

const PROTECT_USAGE = `usage: mamori protect schema.table.column -d DB [--config FILE] [--yes] [--batch N] [--throttle-ms N] [--lock-timeout-ms N]
  converts a live plaintext column into cells of its guard domain, online (docs/protect.md)
`;
const UNPROTECT_USAGE = `usage: mamori unprotect schema.table.column -d DB --yes-decrypt-to-plaintext [--config FILE] [--batch N] [--throttle-ms N]
  decrypts a protected column back into plaintext of its original type; only a login with plaintext read may
`;

class UsageError extends Error {}

interface Parsed {
  path: string;
  configFile: string;
  database: string | undefined;
  yes: boolean;
  decrypt: boolean;
  batch: number;
  throttleMs: number;
  lockTimeoutMs: number;
}

function parse(args: string[]): Parsed {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      database: { type: 'string', short: 'd' },
      yes: { type: 'boolean' },
      'yes-decrypt-to-plaintext': { type: 'boolean' },
      batch: { type: 'string' },
      'throttle-ms': { type: 'string' },
      'lock-timeout-ms': { type: 'string' },
    },
  });
  const int = (s: string | undefined, what: string, dflt: number, min: number): number => {
    if (s === undefined) return dflt;
    if (!/^\d+$/.test(s) || Number(s) < min) throw new UsageError(`${what} must be an integer ≥ ${min}`);
    return Number(s);
  };
  if (positionals.length !== 1) throw new UsageError('name exactly one column, schema.table.column');
  return {
    path: positionals[0]!,
    configFile: v.config ?? 'mamori.yaml',
    database: v.database,
    yes: v.yes ?? false,
    decrypt: v['yes-decrypt-to-plaintext'] ?? false,
    batch: int(v.batch, '--batch', 500, 1),
    throttleMs: int(v['throttle-ms'], '--throttle-ms', 0, 0),
    lockTimeoutMs: int(v['lock-timeout-ms'], '--lock-timeout-ms', 5000, 1),
  };
}

/** The configured column the path names (same spelling rules as config keys: unquoted names fold to lower case). */
export function findColumn(config: MamoriConfig, path: string): { key: string; col: ColumnPolicy } | null {
  const p = parseQualifiedName(path);
  if (!p.ok || p.parts.length !== 3) return null;
  const want = canonicalName(p.parts);
  for (const [key, col] of Object.entries(config.columns)) {
    if (canonicalName([col.ref.schema, col.ref.table, col.ref.column]) === want) return { key, col };
  }
  return null;
}

export function targetOf(key: string, col: ColumnPolicy): ProtectTarget {
  const type: LogicalTypeSpec = col.logicalType.length === undefined ? { type: col.logicalType.name } : { type: col.logicalType.name, length: col.logicalType.length };
  return { path: key, table: { schema: col.ref.schema, table: col.ref.table }, column: col.ref.column, type, mode: col.mode, domain: col.keyDomain };
}

function pgConfig(database: string | undefined): pg.PoolConfig {
  if (!database) return {};
  return /^postgres(ql)?:\/\//.test(database) ? { connectionString: database } : { database };
}

/** A progress bar on a TTY (redrawn in place), otherwise one line per batch. */
function progressPrinter(io: CliIo, label: string): (p: BackfillProgress) => void {
  return (p) => {
    const pct = p.total === 0 ? 100 : Math.min(100, Math.floor((p.done / p.total) * 100));
    const extra = `${p.conflicts ? `, ${p.conflicts} changed meanwhile` : ''}${p.invalid.length ? `, ${p.invalid.length} invalid` : ''}`;
    if (io.stderr.isTTY) {
      const bar = '#'.repeat(Math.floor(pct / 5)).padEnd(20, '.');
      io.stderr.write(`\r${label} [${bar}] ${pct}% ${p.done}/${p.total}${extra}   `);
    } else {
      io.stderr.write(`${label}: ${p.done}/${p.total} rows (${pct}%)${extra}\n`);
    }
  };
}

async function confirmer(io: CliIo, parsed: Parsed, question: string): Promise<((plan: string) => Promise<boolean>) | 'refuse' | undefined> {
  if (parsed.yes) return undefined;
  const input = io.stdin ?? process.stdin;
  if (!input.isTTY) return 'refuse';
  return async (plan) => {
    io.stderr.write(plan);
    const rl = createInterface({ input, output: process.stderr });
    try {
      return /^y(es)?$/i.test((await rl.question(`${question} [y/N] `)).trim());
    } finally {
      rl.close();
    }
  };
}

function report(io: CliIo, r: MigrateResult, verb: string): number {
  if (io.stderr.isTTY) io.stderr.write('\n');
  switch (r.status) {
    case 'nothing-to-do':
      io.stdout.write(`${r.message}\n`);
      return 0;
    case 'refused':
      if (r.plan) io.stderr.write(r.plan);
      io.stderr.write(`mamori ${verb}: refused:\n${r.reasons.map((x) => `  - ${x}\n`).join('')}`);
      return 1;
    case 'declined':
      io.stderr.write(`mamori ${verb}: not confirmed; nothing changed\n`);
      return 1;
    case 'incomplete': {
      const inv = r.progress.invalid;
      io.stderr.write(
        `mamori ${verb}: ${r.remaining} row(s) still hold a value in the old column; the column stays in transition (${verb === 'protect' ? 'mamori serves it from both columns; values written to the old column bypassing mamori are refused' : 'statements touching it through mamori are refused'}).\n` +
          (inv.length
            ? `  rows whose value is not a valid value of the configured type (primary key: reason):\n${inv.slice(0, 20).map((x) => `    ${x.key}: ${x.reason}\n`).join('')}${inv.length > 20 ? `    … and ${inv.length - 20} more\n` : ''}  fix them (directly in the database) and run the same command again.\n`
            : `  run the same command again to finish.\n`),
      );
      return 1;
    }
    case 'done':
      io.stdout.write(`${r.plan}done: ${r.progress.done} row(s) moved in ${r.progress.passes} pass(es)\n`);
      if (r.note) io.stdout.write(`${r.note}\n`);
      return 0;
  }
}

async function withSetup(
  args: string[],
  io: CliIo,
  verb: 'protect' | 'unprotect',
  run: (ctx: { parsed: Parsed; config: MamoriConfig; key: string; col: ColumnPolicy; pool: pg.Pool; kr: Keyring }) => Promise<number>,
): Promise<number> {
  const usage = verb === 'protect' ? PROTECT_USAGE : UNPROTECT_USAGE;
  let parsed: Parsed;
  try {
    parsed = parse(args);
  } catch (err) {
    io.stderr.write(`mamori ${verb}: ${(err as Error).message}\n${usage}`);
    return 2;
  }
  const loaded = await loadConfig(parsed.configFile, process.env, { requireSecrets: false });
  if (!loaded.ok) {
    io.stderr.write(`mamori ${verb}: the configuration was refused:\n${formatConfigIssues(loaded.errors)}\n`);
    return 1;
  }
  const config = loaded.config;
  const found = findColumn(config, parsed.path);
  if (!found) {
    io.stderr.write(`mamori ${verb}: ${parsed.path} is not configured under \`columns\` in ${parsed.configFile} (its type, mode and key domain come from there)\n`);
    return 1;
  }
  const pool = new pg.Pool({ ...pgConfig(parsed.database), max: 2, application_name: `mamori ${verb}` });
  pool.on('error', () => undefined);
  let kr: Keyring | null = null;
  try {
    const cfg = keyringConfigFrom(config.keyring);
    const o: KeyringOptions = {};
    if (cfg.store.type === 'postgres') o.pg = pool;
    kr = await Keyring.open(cfg, o);
    return await run({ parsed, config, key: found.key, col: found.col, pool, kr });
  } catch (err) {
    if (io.stderr.isTTY) io.stderr.write('\n');
    io.stderr.write(`mamori ${verb} ${parsed.path}: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await kr?.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
  }
}

export function runProtectCommand(args: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  return withSetup(args, io, 'protect', async ({ parsed, config, key, col, pool, kr }) => {
    const confirm = await confirmer(io, parsed, `protect ${key} now?`);
    if (confirm === 'refuse') {
      // Show the plan, change nothing.
      const r = await protectColumn(pool, kr, targetOf(key, col), { confirm: async () => false });
      if (r.status === 'declined') {
        io.stderr.write(r.plan);
        io.stderr.write(`mamori protect: not a terminal, so no prompt: add --yes to go ahead\n`);
        return 1;
      }
      return report(io, r, 'protect');
    }
    // Recorded as a CLI instance of its own (like unprotect): the start, each step that changed the table, and
    // the outcome, with the login and the column; a step whose record cannot be written stops the run.
    const login = (await pool.query<{ u: string; d: string }>('SELECT session_user::text AS u, current_database()::text AS d')).rows[0]!;
    const trail = await openCliTrail(config, 'protect');
    const record = (detail: string): Promise<unknown> =>
      trail.append({ kind: 'key_event', event: 'protect', keyId: col.keyDomain, detail: `protect ${key}: ${detail}`, user: login.u, database: login.d });
    try {
      await record('started');
      let r: MigrateResult;
      try {
        r = await protectColumn(pool, kr, targetOf(key, col), {
          batchSize: parsed.batch,
          throttleMs: parsed.throttleMs,
          lockTimeoutMs: parsed.lockTimeoutMs,
          onProgress: progressPrinter(io, `protect ${key}`),
          onPhase: (phase) => record(PHASE_TEXT[phase]).then(() => undefined),
          ...(confirm ? { confirm } : {}),
        });
      } catch (err) {
        // The SQLSTATE only: a server message can quote a value (a unique violation's Key (…)=(…)).
        const code = (err as { code?: unknown }).code;
        await record(`failed${typeof code === 'string' ? ` (SQLSTATE ${code})` : ''}`).catch(() => undefined);
        throw err;
      }
      await record(outcomeText(r));
      const code = report(io, r, 'protect');
      if (r.status === 'done') io.stdout.write(AFTERCARE);
      return code;
    } finally {
      await trail.close();
    }
  });
}

const PHASE_TEXT: Record<MigratePhase, string> = {
  shadow_added: 'shadow column added (column in transition)',
  backfill_done: 'backfill done',
  swap: 'swap done, old plaintext column dropped',
  vacuum: 'vacuum done',
};

/** The outcome as recorded: status and counts, never reasons (they list primary keys) or values. */
function outcomeText(r: MigrateResult): string {
  switch (r.status) {
    case 'done':
      return `done, ${r.progress.done} row(s) encrypted`;
    case 'incomplete':
      return `incomplete, ${r.remaining} row(s) left in the old column`;
    case 'refused':
      return `refused (${r.reasons.length} reason(s), nothing changed)`;
    case 'declined':
      return 'not confirmed, nothing changed';
    case 'nothing-to-do':
      return 'nothing to do';
  }
}

/** The invoking login as the policy sees it: the -d connection's session_user and its inherited roles. */
async function identityOf(pool: pg.Pool): Promise<Identity> {
  const who = await pool.query<{ u: string }>('SELECT session_user::text AS u');
  const login = who.rows[0]!.u;
  const graph = await readRoleGraph((sql, params) => pool.query(sql, params));
  const r = graph.roles.get(login);
  return { login, roles: inheritedRoles(graph, login), superuser: r?.superuser ?? false, bypassRls: r?.bypassRls ?? false, clientCert: false };
}

/**
 * The CLI's own audit instance, as `policy approve` opens it: file sinks get a `-cli` sibling file (the proxy may be
 * appending to the main one), closed fail mode (an unrecorded protect or unprotect must not happen), no timers.
 */
async function openCliTrail(config: MamoriConfig, verb: 'protect' | 'unprotect'): Promise<AuditTrail> {
  const cfg = auditConfigSchema.parse(config.audit);
  const stem = (p: string): string => (p.split('/').pop() ?? p).replace(/\.jsonl$/, '');
  const sinks = cfg.sinks.filter((s) => s.type === 'file').map((s) => ({ ...s, path: join(dirname(s.path), `${stem(s.path)}-cli.jsonl`) }));
  if (sinks.length === 0) throw new Error(`no audit file sink to record the ${verb} in`);
  return AuditTrail.open(
    { ...cfg, sinks, checkpointSink: null, failMode: 'closed', heartbeatSeconds: 0, checkpointEverySeconds: 0 },
    { program: 'cli', version: version() },
  );
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function runUnprotectCommand(args: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  return withSetup(args, io, 'unprotect', async ({ parsed, config, key, col, pool, kr }) => {
    if (!parsed.decrypt) {
      io.stderr.write(`mamori unprotect: this writes ${key} back as plaintext; add --yes-decrypt-to-plaintext to confirm\n${UNPROTECT_USAGE}`);
      return 2;
    }
    const id = await identityOf(pool);
    // The approvals file needs its MAC key; without the domain nothing was ever approved.
    let approvals: Approvals | null = null;
    if (kr.hasDomain('mamori.approvals')) {
      try {
        approvals = Approvals.load(approvalsPath(config), await approvalsMacKey(kr));
      } catch {
        approvals = null; // a refused file approves nothing
      }
    }
    const decision = readDecision(col, id, grantView(approvals, config.approval.passwords, id), config.approval.members === 'required');
    const database = (await pool.query<{ d: string }>('SELECT current_database()::text AS d')).rows[0]!.d;
    const trail = await openCliTrail(config, 'unprotect');
    try {
      if (decision !== 'plaintext') {
        await trail.append({ kind: 'refusal', reason: `unprotect ${key}: ${id.login} has no plaintext read (${decision})`, user: id.login, database });
        io.stderr.write(`mamori unprotect: refused: ${id.login} does not read ${key} as plaintext (it gets ${decision}); only a plaintext reader may decrypt the column\n`);
        return 1;
      }
      // Recorded before any value is decrypted: an unrecorded unprotect must not happen.
      await trail.append({ kind: 'key_event', event: 'unwrap', keyId: col.keyDomain, detail: `unprotect ${key}: started, decrypting the column to plaintext`, user: id.login, database });
      const r = await unprotectColumn(pool, kr, targetOf(key, col), {
        batchSize: parsed.batch,
        throttleMs: parsed.throttleMs,
        lockTimeoutMs: parsed.lockTimeoutMs,
        onProgress: progressPrinter(io, `unprotect ${key}`),
      });
      await trail.append({
        kind: 'key_event',
        event: 'unwrap',
        keyId: col.keyDomain,
        detail: `unprotect ${key}: ${r.status}${r.status === 'done' || r.status === 'incomplete' ? `, ${r.progress.done} row(s) decrypted` : ''}`,
        user: id.login,
        database,
      });
      return report(io, r, 'unprotect');
    } finally {
      await trail.close();
    }
  });
}
