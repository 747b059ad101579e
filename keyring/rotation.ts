// Moving rows between key versions: reencrypt a column online in keyset batches by primary key, with a
// compare-and-swap on the old value so concurrent writes are never overwritten; count rows still using a
// version before retiring it; rotate a deterministic domain as one job (writes frozen meanwhile).
// Rows are found by their cell header bytes (docs/ciphertext-format.md), never by decrypting everything.
import type pg from 'pg';
import { CELL_HEADER_BYTES, encodeCellHeader, encryptCell } from './cells/index.js';
import { Keyring, KeyringError } from './keyring.js';

export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.Client, 'query'>;

export interface ColumnRef {
  schema: string;
  table: string;
  column: string;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_$]*$/;

export function parseColumnPath(path: string): ColumnRef {
  const parts = path.split('.');
  if (parts.length !== 3 || parts.some((p) => !IDENT.test(p))) {
    throw new KeyringError('refused', `column must be schema.table.column with plain identifiers (got ${JSON.stringify(path)})`);
  }
  return { schema: parts[0]!, table: parts[1]!, column: parts[2]! };
}

const q = (s: string): string => '"' + s.replace(/"/g, '""') + '"';
const tableSql = (c: ColumnRef): string => `${q(c.schema)}.${q(c.table)}`;

interface PkColumn {
  name: string;
  type: string;
}

async function primaryKey(db: Queryable, c: ColumnRef): Promise<PkColumn[]> {
  const r = await db.query<{ name: string; type: string }>(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_index i
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      WHERE i.indrelid = $1::regclass AND i.indisprimary
      ORDER BY array_position(i.indkey::int2[], a.attnum)`,
    [tableSql(c)],
  );
  if (r.rows.length === 0) throw new KeyringError('refused', `${c.schema}.${c.table} has no primary key; reencrypt needs one`);
  return r.rows;
}

export interface ReencryptProgress {
  column: string;
  /** Rows not at the current version when the run started. */
  total: number;
  done: number;
  /** Rows whose value changed under us between read and update (left for a later pass). */
  conflicts: number;
  /** Rows of shredded versions (nothing to move; they read as NULL). */
  shredded: number;
}

export interface ReencryptOptions {
  batchSize?: number;
  /** Called (and awaited) once with the total, then after every batch. */
  onProgress?: (p: ReencryptProgress) => void | Promise<void>;
  /** Awaited between reading a batch and updating it: a place to throttle (tests use it to race a writer). */
  beforeBatchUpdate?: () => void | Promise<void>;
}

/**
 * Moves every row of `columnPath` whose cell is not at the domain's current version to it. Safe to stop
 * and re-run (rows already moved are not selected again) and safe beside live writes (UPDATE … WHERE
 * pk = … AND col = old value).
 */
export async function reencryptColumn(kr: Keyring, db: Queryable, domain: string, columnPath: string, opts: ReencryptOptions = {}): Promise<ReencryptProgress> {
  const c = parseColumnPath(columnPath);
  const info = kr.domain(domain);
  const current = encodeCellHeader({ mode: info.mode, domainId: info.id, version: info.current });
  const pk = await primaryKey(db, c);
  const col = q(c.column);
  const stale = `${col} IS NOT NULL AND substring(${col}::bytea from 1 for ${CELL_HEADER_BYTES}) <> $1::bytea`;
  const total = Number((await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${tableSql(c)} WHERE ${stale}`, [current])).rows[0]!.n);
  const progress: ReencryptProgress = { column: columnPath, total, done: 0, conflicts: 0, shredded: 0 };
  await opts.onProgress?.({ ...progress });
  const batch = opts.batchSize ?? 500;
  const pkList = pk.map((p) => q(p.name)).join(', ');
  const pkText = pk.map((p, i) => `${q(p.name)}::text AS k${i}`).join(', ');
  let last: string[] | null = null;
  for (;;) {
    const params: unknown[] = [current];
    let after = '';
    if (last) {
      const ph = last.map((v, i) => {
        params.push(v);
        return `$${i + 2}::${pk[i]!.type}`;
      });
      after = ` AND (${pkList}) > (${ph.join(', ')})`;
    }
    params.push(batch);
    const rows = await db.query<Record<string, string | Buffer>>(
      `SELECT ${pkText}, ${col}::bytea AS cell FROM ${tableSql(c)} WHERE ${stale}${after} ORDER BY ${pkList} LIMIT $${params.length}`,
      params,
    );
    if (rows.rows.length === 0) break;
    await opts.beforeBatchUpdate?.();
    for (const row of rows.rows) {
      const keys = pk.map((_, i) => row[`k${i}`] as string);
      last = keys;
      const old = row.cell as Buffer;
      const plain = await kr.decrypt(old, domain);
      if (plain === null) {
        progress.shredded += 1;
        continue;
      }
      const { header, key } = await kr.currentCellKey(domain);
      const fresh = encryptCell(header, key, plain);
      plain.fill(0);
      const where = pk.map((p, i) => `${q(p.name)} = $${i + 3}::${p.type}`).join(' AND ');
      const u = await db.query(
        `UPDATE ${tableSql(c)} SET ${col} = $1 WHERE ${col}::bytea = $2::bytea AND ${where}`,
        [fresh, old, ...keys],
      );
      if (u.rowCount === 1) progress.done += 1;
      else progress.conflicts += 1;
    }
    await opts.onProgress?.({ ...progress });
  }
  return progress;
}

/** Rows of the column whose cell is under `version` of the domain. */
export async function countVersionRows(kr: Keyring, db: Queryable, domain: string, version: number, columnPath: string): Promise<number> {
  const c = parseColumnPath(columnPath);
  const info = kr.domain(domain);
  const hdr = encodeCellHeader({ mode: info.mode, domainId: info.id, version });
  const col = q(c.column);
  const r = await db.query<{ n: string }>(
    `SELECT count(*) AS n FROM ${tableSql(c)} WHERE substring(${col}::bytea from 1 for ${CELL_HEADER_BYTES}) = $1::bytea`,
    [hdr],
  );
  return Number(r.rows[0]!.n);
}

/** Retires a version only when no row of the given columns uses it; otherwise refuses with the count. */
export async function retireVersion(kr: Keyring, db: Queryable, domain: string, version: number, columns: string[]): Promise<void> {
  if (columns.length === 0) throw new KeyringError('refused', `name the columns of ${domain} to check (--column schema.table.column)`);
  let inUse = 0;
  const where: string[] = [];
  for (const col of columns) {
    const n = await countVersionRows(kr, db, domain, version, col);
    if (n > 0) where.push(`${n} in ${col}`);
    inUse += n;
  }
  if (inUse > 0) {
    throw new KeyringError('refused', `${domain} version ${version} is still used by ${inUse} row${inUse === 1 ? '' : 's'} (${where.join(', ')}); run \`mamori keys reencrypt\` first`);
  }
  await kr.retire(domain, version);
}

export interface RotateJobResult {
  version: number;
  columns: ReencryptProgress[];
  finished: boolean;
}

/**
 * Rotates a domain and reencrypts its columns. Deterministic domains stay write-frozen (the keystore's
 * MACed `rotating` flag) from the new version until every row is moved, so one plaintext never has two
 * stored forms; an interrupted job is resumed by running it again. `settleMs` gives running proxies time
 * to reload and see the freeze before rows move.
 */
export async function rotateAndReencrypt(
  kr: Keyring,
  db: Queryable,
  domain: string,
  columns: string[],
  opts: ReencryptOptions & { settleMs?: number } = {},
): Promise<RotateJobResult> {
  const info = kr.domain(domain);
  const version = info.rotating ? info.rotating.to : await kr.rotate(domain);
  if (info.mode === 'deterministic' && opts.settleMs) await new Promise((r) => setTimeout(r, opts.settleMs));
  const results: ReencryptProgress[] = [];
  for (const col of columns) {
    // Passes until one meets no concurrent change (a stale writer may still add old-version rows).
    let r = await reencryptColumn(kr, db, domain, col, opts);
    for (let pass = 1; r.conflicts > 0 && pass < 5; pass++) r = await reencryptColumn(kr, db, domain, col, opts);
    results.push(r);
  }
  let finished = results.every((r) => r.conflicts === 0);
  if (kr.domain(domain).rotating) {
    const cur = kr.domain(domain).current;
    for (const col of columns) {
      const left = await reencryptColumn(kr, db, domain, col, { batchSize: opts.batchSize ?? 500 });
      if (left.total - left.shredded > 0 && left.done < left.total - left.shredded) finished = false;
    }
    if (finished && kr.domain(domain).current === cur) await kr.finishRotation(domain);
  }
  return { version, columns: results, finished };
}
