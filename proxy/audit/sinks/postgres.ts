// The PostgreSQL sink: a table fed from the file sink, which stays the point of truth. A cursor (rotation index
// and byte offset, saved next to the trail) says how far the table has caught up; the feeder reads complete
// lines from there, inserts them in batches through its own `pg` connection (idempotent on (instance, seq)),
// and retries with exponential backoff while the database is down. Nothing is lost while it is down: the file
// holds everything, and the trail refuses appends (fail closed) once the lag passes `maxLagRecords`.
import pg from 'pg';
import { readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { readJsonFile, rotatedIndex, writeJsonAtomic, type SeriesPaths } from '../files.js';
import { readdir } from 'node:fs/promises';
import type { PostgresSinkConfig } from '../config.js';

/** node-postgres settings for a sink: its url, or its connection block plus the password from the environment. */
export function pgClientConfig(cfg: PostgresSinkConfig, password: string | undefined): pg.ClientConfig {
  const base: pg.ClientConfig = { application_name: 'mamori-audit', connectionTimeoutMillis: 5000 };
  if (cfg.url) return { ...base, connectionString: cfg.url };
  const c = cfg.connection ?? {};
  const tls = c.tls ?? { mode: 'disable' as const };
  let ssl: pg.ClientConfig['ssl'] = false;
  if (tls.mode === 'require') ssl = { rejectUnauthorized: false };
  else if (tls.mode === 'verify-ca' || tls.mode === 'verify-full') {
    ssl = {
      rejectUnauthorized: true,
      ...(tls.ca ? { ca: readFileSync(tls.ca, 'utf8') } : {}),
      ...(tls.servername ? { servername: tls.servername } : {}),
      // verify-ca: the chain, not the host name
      ...(tls.mode === 'verify-ca' ? { checkServerIdentity: () => undefined } : {}),
    };
  }
  return {
    ...base,
    ...(c.host !== undefined ? { host: c.host } : {}),
    ...(c.port !== undefined ? { port: c.port } : {}),
    ...(c.database !== undefined ? { database: c.database } : {}),
    ...(c.user !== undefined ? { user: c.user } : {}),
    ...(password !== undefined ? { password } : {}),
    ssl,
  };
}

/** The audit table (and its schema, when the name is qualified). Idempotent. */
export async function ensureAuditTable(client: pg.Client, table: string): Promise<void> {
  const dot = splitQualified(table);
  if (dot) await client.query(`CREATE SCHEMA IF NOT EXISTS ${dot}`);
  await client.query(
    `CREATE TABLE IF NOT EXISTS ${table} (
       instance text NOT NULL, seq bigint NOT NULL, time timestamptz NOT NULL, kind text NOT NULL,
       session text, "user" text, hash text NOT NULL, record jsonb NOT NULL, PRIMARY KEY (instance, seq))`,
  );
}

/** The schema part of `schema.table` (as written, quotes kept), or null for an unqualified name. */
function splitQualified(table: string): string | null {
  let inQuote = false;
  for (let i = 0; i < table.length; i++) {
    const c = table[i];
    if (c === '"') inQuote = !inQuote;
    else if (c === '.' && !inQuote) return table.slice(0, i);
  }
  return null;
}

/** A row of the audit table for one serialized record. */
function rowValues(line: string): unknown[] {
  const r = JSON.parse(line) as Record<string, unknown>;
  return [r.instance, r.seq, r.time, r.kind, r.session ?? null, r.user ?? null, r.hash, line];
}

export async function insertRecords(client: pg.Client, table: string, lines: string[]): Promise<void> {
  const values: unknown[] = [];
  const rows: string[] = [];
  for (const line of lines) {
    const b = values.length;
    rows.push(`($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}, $${b + 5}, $${b + 6}, $${b + 7}, $${b + 8}::jsonb)`);
    values.push(...rowValues(line));
  }
  await client.query(
    `INSERT INTO ${table} (instance, seq, time, kind, session, "user", hash, record) VALUES ${rows.join(', ')}
     ON CONFLICT (instance, seq) DO NOTHING`,
    values,
  );
}

export interface FeederCursor {
  /** Rotation index of the file being read (the active file has index `activeIndex`). */
  index: number;
  offset: number;
}

export interface FeederSource {
  paths: SeriesPaths;
  /** The rotation index the active file will get. */
  readonly activeIndex: number;
}

export interface PostgresFeederStatus {
  shipped: number;
  failures: number;
  lastError: string | null;
  connected: boolean;
}

const MIN_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 30_000;

export class PostgresFeeder {
  private client: pg.Client | null = null;
  private cursor: FeederCursor = { index: 1, offset: 0 };
  private running = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private backoff = MIN_BACKOFF_MS;
  private written = 0;
  private status: PostgresFeederStatus = { shipped: 0, failures: 0, lastError: null, connected: false };

  constructor(
    private readonly cfg: PostgresSinkConfig,
    private readonly source: FeederSource,
    private readonly password?: string,
  ) {}

  async start(): Promise<void> {
    // an unreadable cursor restarts from the beginning: inserts are idempotent, so that only costs time
    const saved = await readJsonFile<FeederCursor>(this.source.paths.pgCursor).catch(() => null);
    if (saved && Number.isInteger(saved.index) && Number.isInteger(saved.offset)) this.cursor = saved;
    this.running = true;
    this.loop = this.run();
  }

  /** Records written to the file since start that the table does not have yet. */
  lag(): number {
    return Math.max(0, this.written - this.status.shipped);
  }

  get state(): PostgresFeederStatus {
    return { ...this.status };
  }

  /** The trail wrote `n` records: look for them now rather than at the next poll. */
  notify(n: number): void {
    this.written += n;
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = null;
        resolve();
      };
    });
  }

  private async run(): Promise<void> {
    while (this.running) {
      try {
        const moved = await this.step();
        this.backoff = MIN_BACKOFF_MS;
        if (!moved) await this.sleep(this.cfg.flushIntervalMs);
      } catch (e) {
        this.status.failures++;
        this.status.lastError = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
        await this.dropClient();
        if (!this.running) break;
        await this.sleep(this.backoff);
        this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  private async connect(): Promise<pg.Client> {
    if (this.client) return this.client;
    const client = new pg.Client(pgClientConfig(this.cfg, this.password));
    client.on('error', () => undefined); // surfaced by the next query
    try {
      await client.connect();
      await ensureAuditTable(client, this.cfg.table);
    } catch (e) {
      await client.end().catch(() => undefined);
      throw e;
    }
    this.client = client;
    this.status.connected = true;
    return client;
  }

  private async dropClient(): Promise<void> {
    const c = this.client;
    this.client = null;
    this.status.connected = false;
    if (c) await c.end().catch(() => undefined);
  }

  /** Path of the file at the cursor's index, or null if that index is the active file and it is not there. */
  private async fileFor(index: number): Promise<{ path: string; rotated: boolean } | null> {
    if (index >= this.source.activeIndex) return { path: this.source.paths.active, rotated: false };
    const names = await readdir(this.source.paths.dir);
    const name = names.find((n) => rotatedIndex(this.source.paths.stem, n) === index);
    return name ? { path: join(this.source.paths.dir, name), rotated: true } : null;
  }

  /** Ships one batch if there is one; true if the cursor moved. */
  private async step(): Promise<boolean> {
    const { index, offset } = this.cursor;
    const file = await this.fileFor(index);
    if (!file) {
      // a rotated file the manifest knows is gone: verify reports it; skip rather than stall forever
      this.cursor = { index: index + 1, offset: 0 };
      return true;
    }
    let fh;
    try {
      fh = await open(file.path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false; // mid-rotation: try again
      throw e;
    }
    let lines: string[];
    let consumed: number;
    let size: number;
    try {
      // the active file may have been rotated between resolving and opening: re-resolve then
      if (!file.rotated && this.source.activeIndex !== index) return true;
      size = (await fh.stat()).size;
      ({ lines, consumed } = await readCompleteLines(fh, offset, size, this.cfg.batchSize));
    } finally {
      await fh.close();
    }
    if (lines.length === 0) {
      if (file.rotated && offset >= size) {
        this.cursor = { index: index + 1, offset: 0 };
        await writeJsonAtomic(this.source.paths.pgCursor, this.cursor, false);
        return true;
      }
      return false;
    }
    await this.insert(lines);
    this.cursor = { index, offset: offset + consumed };
    await writeJsonAtomic(this.source.paths.pgCursor, this.cursor, false);
    this.status.shipped += lines.length;
    return true;
  }

  private async insert(lines: string[]): Promise<void> {
    await insertRecords(await this.connect(), this.cfg.table, lines);
  }

  /** Stops the loop after one last attempt to catch up (bounded by `timeoutMs`). */
  async close(timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.lag() > 0 && this.status.connected && Date.now() < deadline) {
      this.wake?.();
      await new Promise((r) => setTimeout(r, 20));
    }
    this.running = false;
    this.wake?.();
    await this.loop;
    await this.dropClient();
  }
}

/** Up to `max` complete lines from `offset` (a trailing partial line is left for the next read). */
async function readCompleteLines(
  fh: import('node:fs/promises').FileHandle,
  offset: number,
  size: number,
  max: number,
): Promise<{ lines: string[]; consumed: number }> {
  let want = 256 * 1024;
  for (;;) {
    const len = Math.min(want, size - offset);
    if (len <= 0) return { lines: [], consumed: 0 };
    const buf = Buffer.allocUnsafe(len);
    const { bytesRead } = await fh.read(buf, 0, len, offset);
    const chunk = buf.subarray(0, bytesRead);
    const lines: string[] = [];
    let start = 0;
    while (lines.length < max) {
      const nl = chunk.indexOf(10, start);
      if (nl < 0) break;
      lines.push(chunk.toString('utf8', start, nl));
      start = nl + 1;
    }
    if (lines.length > 0 || offset + len >= size) return { lines, consumed: start };
    want *= 4; // one record longer than the window: widen it
  }
}
