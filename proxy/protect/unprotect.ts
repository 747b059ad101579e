// `mamori unprotect`: cells decrypted back into a plaintext column of the original type, online, by the same
// migration as protect in reverse. Authorisation (plaintext read for the invoking login) and the audit record
// are the CLI's (cli.ts); this module only moves the data.
import type pg from 'pg';
import type { Keyring } from '../../keyring/index.js';
import { textFromCanonical, type LogicalTypeSpec } from '../../keyring/logical-types.js';
import { backfill, buildShadowIndexes, countRemaining, prepare, swap, vacuum, type MigrationSpec } from './migrate.js';
import { CELLS_OLD_SUFFIX, formatPlan, inspectColumn, PLAIN_SHADOW_SUFFIX, suffixed } from './plan.js';
import type { MigrateOptions, MigrateResult, ProtectTarget } from './protect.js';
import { deleteState, ensureStateTable, readState, writeState } from './state.js';

/** The plaintext type a logical type is restored to when no original type was recorded. */
export function plaintextTypeOf(t: LogicalTypeSpec): string {
  switch (t.type) {
    case 'varchar':
      return t.length === undefined ? 'character varying' : `character varying(${t.length})`;
    case 'char':
      return t.length === undefined ? 'bpchar' : `character(${t.length})`;
    case 'mynumber':
    case 'corporate_number':
      return 'text';
    case 'int2':
      return 'smallint';
    case 'int4':
      return 'integer';
    case 'int8':
      return 'bigint';
    default:
      return t.type;
  }
}

export async function unprotectColumn(pool: pg.Pool, kr: Keyring, target: ProtectTarget, opts: MigrateOptions = {}): Promise<MigrateResult> {
  const shadow = suffixed(target.column, PLAIN_SHADOW_SUFFIX);
  const ins = await inspectColumn(pool, target.table, target.column, shadow, true);
  const state = await readState(pool, ins.tableOid, target.column);
  if (!ins.isGuard) return { status: 'nothing-to-do', message: `${target.path} is stored as ${ins.type}, not in a guard domain: nothing to decrypt` };
  if (ins.blockers.length > 0) return { status: 'refused', reasons: ins.blockers };
  const plainType = state?.originalType ?? plaintextTypeOf(target.type);
  const notNull = state?.state === 'unprotecting' ? state.notNull : ins.notNull;
  const spec: MigrationSpec = {
    verb: 'unprotect',
    path: target.path,
    table: target.table,
    column: target.column,
    shadow,
    shadowType: plainType,
    oldName: suffixed(target.column, CELLS_OLD_SUFFIX),
    readAs: 'bytea',
    sendAs: 'text',
    pk: ins.pk,
    notNull,
    rebuilds: ins.rebuilds,
    convert: async (old) => {
      let plain: Buffer | null;
      try {
        plain = await kr.decrypt(typeof old === 'string' ? Buffer.from(old, 'utf8') : old, target.domain);
      } catch (err) {
        return { ok: false, reason: `cannot decrypt: ${(err as Error).message}` };
      }
      if (plain === null) return { ok: true, value: null }; // shredded: it reads as NULL
      const text = textFromCanonical(target.type, plain);
      plain.fill(0);
      return { ok: true, value: text };
    },
  };
  const rows = await countRemaining(pool, spec);
  const plan = formatPlan({ verb: 'unprotect', column: target.path, inspection: { ...ins, notNull }, shadow, shadowType: plainType, rows });
  if (opts.confirm && !(await opts.confirm(plan))) return { status: 'declined', plan };
  const lockTimeoutMs = opts.lockTimeoutMs ?? 5000;
  const row = {
    tableOid: ins.tableOid,
    schemaName: target.table.schema,
    tableName: target.table.table,
    columnName: target.column,
    attnum: ins.attnum,
    originalType: plainType,
    originalTypeOid: state?.originalTypeOid ?? 0,
    typmod: state?.typmod ?? -1,
    notNull,
    logicalType: state?.logicalType ?? target.type.type,
    mode: target.mode,
    keyDomain: target.domain,
    state: 'unprotecting' as const,
  };
  await ensureStateTable(pool); // only now: a declined or refused run changes nothing
  await prepare(pool, spec, lockTimeoutMs, (c) => writeState(c, row));
  await buildShadowIndexes(pool, spec);
  const progress = await backfill(pool, spec, opts);
  if (progress.invalid.length > 0) return { status: 'incomplete', plan, progress, remaining: progress.invalid.length };
  const sw = await swap(pool, spec, lockTimeoutMs, (c) => deleteState(c, ins.tableOid, target.column));
  if (!sw.swapped) return { status: 'incomplete', plan, progress, remaining: sw.remaining };
  await vacuum(pool, spec);
  return {
    status: 'done',
    plan,
    progress,
    note: `${target.path} is plaintext ${plainType} again. Remove it from \`columns\` in the config (mamori reports a configured column stored as plaintext as a problem and cannot serve it).`,
  };
}
