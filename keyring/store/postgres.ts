// The keystore as rows of a table upstream, shared by every mamori instance: one row per key version plus
// a header row. Saves are optimistic on the header's row_version (SELECT … FOR UPDATE, compare, write);
// a save NOTIFYs `mamori_keystore` so other instances can reload.
import pg from 'pg';
import type { KeystoreDoc, KeystoreHeader, VersionRecord } from '../keystore.js';
import { KeystoreConflictError, type KeystoreBackend, type Loaded } from './types.js';

export const NOTIFY_CHANNEL = 'mamori_keystore';

function quoteIdent(s: string): string {
  return '"' + s.replace(/"/g, '""') + '"';
}

/** `schema.table` or `table` → quoted name and schema. */
export function parseTableName(name: string): { schema: string | null; sql: string } {
  const parts = name.split('.');
  if (parts.length > 2 || parts.some((p) => !/^[A-Za-z_][A-Za-z0-9_$]*$/.test(p))) {
    throw new Error(`keyring.store.table must be schema.table with plain identifiers (got ${JSON.stringify(name)})`);
  }
  return parts.length === 2
    ? { schema: parts[0]!, sql: `${quoteIdent(parts[0]!)}.${quoteIdent(parts[1]!)}` }
    : { schema: null, sql: quoteIdent(parts[0]!) };
}

export class PostgresKeystore implements KeystoreBackend {
  readonly description: string;
  private readonly table: { schema: string | null; sql: string };
  private readonly ownsPool: boolean;
  readonly pool: pg.Pool;
  private ready: Promise<void> | null = null;
  private keystoreId: string | null;

  constructor(pool: pg.Pool | string, table: string, keystoreId?: string) {
    this.table = parseTableName(table);
    this.description = `keystore table ${table}`;
    this.ownsPool = typeof pool === 'string';
    this.pool = typeof pool === 'string' ? new pg.Pool({ connectionString: pool, max: 2 }) : pool;
    // An idle connection dropped by the server must not crash the process; the next query reconnects.
    if (this.ownsPool) this.pool.on('error', () => undefined);
    this.keystoreId = keystoreId ?? null;
  }

  private ensureTable(): Promise<void> {
    this.ready ??= (async () => {
      if (this.table.schema) await this.pool.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(this.table.schema)}`);
      await this.pool.query(
        `CREATE TABLE IF NOT EXISTS ${this.table.sql} (
           keystore_id text NOT NULL,
           entry text NOT NULL,
           body jsonb NOT NULL,
           row_version bigint NOT NULL DEFAULT 1,
           updated_at timestamptz NOT NULL DEFAULT now(),
           PRIMARY KEY (keystore_id, entry))`,
      );
    })().catch((err: unknown) => {
      this.ready = null;
      throw err;
    });
    return this.ready;
  }

  async load(): Promise<Loaded | null> {
    await this.ensureTable();
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      let id = this.keystoreId;
      if (!id) {
        const ids = await c.query<{ keystore_id: string }>(`SELECT keystore_id FROM ${this.table.sql} WHERE entry = 'header'`);
        if (ids.rowCount === 0) {
          await c.query('COMMIT');
          return null;
        }
        if (ids.rows.length > 1) throw new Error(`${this.description} holds several keystores: set keyring.keystoreId`);
        id = ids.rows[0]!.keystore_id;
      }
      const r = await c.query<{ entry: string; body: unknown; row_version: string }>(
        `SELECT entry, body, row_version FROM ${this.table.sql} WHERE keystore_id = $1`,
        [id],
      );
      await c.query('COMMIT');
      const head = r.rows.find((x) => x.entry === 'header');
      if (!head) return null;
      const versions: Record<string, VersionRecord> = {};
      for (const row of r.rows) if (row.entry !== 'header') versions[row.entry] = row.body as VersionRecord;
      return { doc: { header: head.body as KeystoreHeader, versions }, rev: String(head.row_version) };
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
  }

  async save(doc: KeystoreDoc, expectedRev: string | null): Promise<string> {
    await this.ensureTable();
    const id = doc.header.keystoreId;
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const cur = await c.query<{ row_version: string }>(
        `SELECT row_version FROM ${this.table.sql} WHERE keystore_id = $1 AND entry = 'header' FOR UPDATE`,
        [id],
      );
      const have = cur.rowCount ? String(cur.rows[0]!.row_version) : null;
      if (have !== expectedRev) throw new KeystoreConflictError();
      let rev: string;
      if (have === null) {
        await c.query(`INSERT INTO ${this.table.sql} (keystore_id, entry, body) VALUES ($1, 'header', $2)`, [id, doc.header]);
        rev = '1';
      } else {
        const u = await c.query<{ row_version: string }>(
          `UPDATE ${this.table.sql} SET body = $2, row_version = row_version + 1, updated_at = now()
             WHERE keystore_id = $1 AND entry = 'header' RETURNING row_version`,
          [id, doc.header],
        );
        rev = String(u.rows[0]!.row_version);
      }
      const keys = Object.keys(doc.versions);
      for (const k of keys) {
        await c.query(
          `INSERT INTO ${this.table.sql} AS t (keystore_id, entry, body) VALUES ($1, $2, $3)
             ON CONFLICT (keystore_id, entry) DO UPDATE SET body = EXCLUDED.body, row_version = t.row_version + 1, updated_at = now()
             WHERE t.body IS DISTINCT FROM EXCLUDED.body`,
          [id, k, doc.versions[k]],
        );
      }
      await c.query(`DELETE FROM ${this.table.sql} WHERE keystore_id = $1 AND entry <> 'header' AND NOT (entry = ANY($2))`, [id, keys]);
      await c.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, id]);
      await c.query('COMMIT');
      this.keystoreId = id;
      return rev;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      c.release();
    }
  }

  async close(): Promise<void> {
    if (this.ownsPool) await this.pool.end();
  }
}
