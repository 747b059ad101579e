// The policy engine: one per mamori process. It owns what every session's decisions need — the catalog of
// each database (refreshed when the DDL epoch moves), role membership, the security officer's approvals, the
// unwrapped keys — and gives the listener the SessionHooks that apply the column policies to each session
// (proxy/policy/session-policy.ts).
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import type { MamoriConfig } from '../../config/schema.js';
import type { Keyring } from '../../keyring/index.js';
import { AnalysisCache, buildNameIndex, loadParser, type ProtectedNameIndex } from '../sql/index.js';
import type { ProtectedColumn } from '../sql/types.js';
import { EPOCH_CHANNEL, TEMP_CHANNEL, loadCatalog, type DatabaseCatalog } from './catalog.js';
import { MembershipCache } from './membership.js';
import { Approvals, approvalsMacKey, approvalsPath, watchApprovals } from './approvals.js';
import { EngineKeys } from './keys.js';
import type { SessionHooks } from '../session/session.js';
import { SessionPolicy } from './session-policy.js';
import type { AuditTrail, SubjectKeySource } from '../audit/trail.js';
import { membershipRecords } from '../audit/policy-records.js';
import { redactServerError } from '../results/errors.js';
import type { Metrics } from '../metrics.js';

export type ColumnsConfig = MamoriConfig['columns'];
export type ColumnConfig = ColumnsConfig[string];

export interface EngineOptions {
  config: MamoriConfig;
  keyring: Keyring;
  /** pg settings for mamori's control login (catalog, membership, LISTEN). */
  control: pg.ClientConfig;
  log: Logger;
  audit?: AuditTrail | null;
  /** The current subject key (audit subject hashes of values written, searched or returned in plaintext). */
  subjects?: SubjectKeySource | null;
  /** Counters the engine and its sessions move (searches, crypto operations, key cache, reloads, membership). */
  metrics?: Metrics | null;
}

export interface CatalogEntry {
  catalog: DatabaseCatalog;
  /**
   * The catalog without shadow-mode columns (`enforce: false` and still stored as plaintext): what the
   * decisions that are enforced are made against. Equal to `catalog` when there are none.
   */
  enforced: DatabaseCatalog;
  /** Shadow-mode columns exist: statements are also analysed against the full catalog, and that decision logged. */
  hasShadow: boolean;
  names: ProtectedNameIndex;
  stale: boolean;
  loading: Promise<void> | null;
}

/** The catalog less shadow-mode columns (`enforce: false` and not yet stored as cells). */
function enforcedCatalog(catalog: DatabaseCatalog, columns: ColumnsConfig): { enforced: DatabaseCatalog; hasShadow: boolean } {
  const shadow = (c: ProtectedColumn): boolean => {
    if (c.tableOid === undefined || c.attnum === undefined) return false;
    const key = catalog.byOrigin(c.tableOid, c.attnum)?.policyKey;
    const storage = catalog.storage.get(`${c.tableOid}:${c.attnum}`);
    return key !== undefined && columns[key]?.enforce === false && storage?.kind === 'plaintext';
  };
  const protectedColumns = catalog.protectedColumns.filter((c) => !shadow(c));
  if (protectedColumns.length === catalog.protectedColumns.length) return { enforced: catalog, hasShadow: false };
  return {
    enforced: {
      ...catalog,
      protectedColumns,
      protectedViews: (catalog.protectedViews ?? []).filter((v) => !shadow(v.source)),
      derivedViewColumns: catalog.derivedViewColumns.filter((v) => !shadow(v.source)),
      byOrigin: (oid, attnum) => {
        const f = catalog.byOrigin(oid, attnum);
        return f && !shadow(f.column) ? f : undefined;
      },
      derivedByOrigin: (oid, attnum) => {
        const f = catalog.derivedByOrigin(oid, attnum);
        return f && !shadow(f.column) ? f : undefined;
      },
    },
    hasShadow: true,
  };
}


export class PolicyEngine {
  readonly analysisCache = new AnalysisCache(2048);
  readonly keys: EngineKeys;
  readonly membership: MembershipCache;
  approvals: Approvals | null = null;
  private readonly catalogs = new Map<string, CatalogEntry>();
  private readonly pool: pg.Pool;
  private readonly listeners = new Map<string, pg.Client>();
  private readonly listening = new Set<string>();
  private readonly tempSchemas = new Map<number, string>();
  private closed = false;
  /** The keystore generation whose versions the engine's key cache has loaded (-1: load on next use). */
  private keysGeneration = -1;
  private refresher: NodeJS.Timeout | null = null;
  private stopApprovals: (() => void) | null = null;

  private constructor(readonly opts: EngineOptions) {
    this.keys = new EngineKeys(opts.keyring);
    this.pool = new pg.Pool({ ...opts.control, max: 4, idleTimeoutMillis: 30_000 });
    this.pool.on('error', (err) => opts.log.warn({ err: err.message }, 'policy control connection error'));
    this.membership = new MembershipCache({
      query: (sql, params) => this.pool.query(sql, params),
      lookupFunction: opts.config.auth.lookupFunction,
      onChange: (change) => {
        opts.log.warn({ change }, change.kind === 'membership' ? 'role membership changed' : 'role password changed');
        if (change.kind === 'password') opts.metrics?.membershipChange('password_change');
        else {
          for (let i = 0; i < change.added.length; i++) opts.metrics?.membershipChange('grant');
          for (let i = 0; i < change.removed.length; i++) opts.metrics?.membershipChange('revoke');
        }
        for (const r of membershipRecords(change)) void opts.audit?.append(r).catch(() => undefined);
      },
    });
  }

  static async start(opts: EngineOptions): Promise<PolicyEngine> {
    await loadParser();
    const engine = new PolicyEngine(opts);
    if (opts.metrics) engine.keys.metrics = opts.metrics;
    // Every protected column's key domain exists before the first statement (creates keys on first start).
    for (const [, col] of Object.entries(opts.config.columns)) {
      await engine.keys.ensureDomain(col.keyDomain, col.mode);
      await engine.keys.load(col.keyDomain);
    }
    const macKey = await approvalsMacKey(opts.keyring);
    const path = approvalsPath(opts.config);
    // `mamori policy approve` writes the file; a running proxy picks it up (a refused file withholds all).
    // Watched before the first read, so an approval saved in between is not missed.
    engine.stopApprovals = watchApprovals(path, macKey, (a, err) => {
      if (err) opts.log.error({ err: err.message }, 'approvals file refused; grants that need approval are withheld');
      else opts.log.info('approvals reloaded');
      engine.approvals = a;
      engine.analysisCache.clear(); // cached decisions were made under the old approvals
    }, 500);
    try {
      engine.approvals = Approvals.load(path, macKey);
    } catch (err) {
      // Fail closed: without verifiable approvals, nothing that needs approval is granted.
      opts.log.error({ err: (err as Error).message }, 'approvals could not be loaded; grants that need approval are withheld');
      engine.approvals = null;
    }
    opts.keyring.onPurge(() => engine.keys.forget());
    // `mamori keys rotate` / `reencrypt` in another process: the keystore is re-read on change (new writes
    // use the new version, rotation flags freeze or release writes). Keyring.close() stops the watch.
    await opts.keyring.watch();
    engine.keysGeneration = opts.keyring.generation;
    // Membership and password changes are diffed (and recorded) even for logins that stay connected.
    engine.refresher = setInterval(() => void engine.membership.refreshAll().catch(() => undefined), 10_000);
    engine.refresher.unref();
    return engine;
  }

  get config(): MamoriConfig {
    return this.opts.config;
  }

  /**
   * Checks a new policy against the catalog of every database served so far: each configured column must
   * exist. Returns the problems (empty: acceptable).
   */
  async validatePolicy(config: MamoriConfig): Promise<{ path: string; message: string }[]> {
    const issues: { path: string; message: string }[] = [];
    for (const database of this.catalogs.keys()) {
      const client = new pg.Client({ ...this.opts.control, database });
      await client.connect();
      try {
        const catalog = await loadCatalog(client, config.columns, database);
        for (const p of catalog.problems) {
          if (/does not exist|no such|missing/i.test(p.problem)) issues.push({ path: `columns["${p.column}"]`, message: `${p.problem} (database ${database})` });
        }
      } finally {
        await client.end().catch(() => undefined);
      }
    }
    return issues;
  }

  /**
   * Applies a new policy (columns, approvals, admin roles, search limits) to every session from its next
   * statement: new key domains are created, catalogs reloaded, cached decisions dropped.
   */
  async applyPolicy(config: MamoriConfig): Promise<void> {
    for (const col of Object.values(config.columns)) {
      await this.keys.ensureDomain(col.keyDomain, col.mode);
      await this.keys.load(col.keyDomain);
    }
    (this.opts as { config: MamoriConfig }).config = config;
    for (const e of this.catalogs.values()) e.stale = true;
    this.analysisCache.clear();
    void this.opts.audit?.append({ kind: 'policy_reload', ok: true, digest: policyDigest(config) } as never).catch(() => undefined);
    this.opts.metrics?.configReload(true);
    this.opts.log.info({ columns: Object.keys(config.columns).length }, 'policy reloaded');
  }

  get log(): Logger {
    return this.opts.log;
  }

  get metrics(): Metrics | null {
    return this.opts.metrics ?? null;
  }

  /** A reload the watcher refused (schema or catalog): counted, the old policy stays. */
  reloadRefused(): void {
    this.opts.metrics?.configReload(false);
    void this.opts.audit?.append({ kind: 'policy_reload', ok: false, error: 'refused' } as never).catch(() => undefined);
  }

  get audit(): AuditTrail | null {
    return this.opts.audit ?? null;
  }

  /** For /readyz: every loaded catalog can hear DDL (its epoch listener is up), so none is served stale. */
  catalogFresh(): boolean {
    for (const db of this.catalogs.keys()) if (!this.listeners.has(db)) return false;
    return true;
  }

  get subjects(): SubjectKeySource | null {
    return this.opts.audit ? (this.opts.subjects ?? null) : null;
  }

  /**
   * Loads key versions the keystore gained since the last call (a reload by watch() or SIGHUP): cheap when
   * nothing changed. Called before rows are rewritten for a statement prepared earlier.
   */
  async refreshKeys(): Promise<void> {
    const g = this.opts.keyring.generation;
    if (g === this.keysGeneration) return;
    for (const col of Object.values(this.opts.config.columns)) await this.keys.load(col.keyDomain);
    this.keysGeneration = g;
  }

  /** True when refreshKeys() has nothing to load (the query path may skip awaiting it). */
  keysCurrent(): boolean {
    return this.opts.keyring.generation === this.keysGeneration;
  }

  /** SIGHUP: re-reads the keystore, forgets every cached key and loads the current versions again. */
  async reload(): Promise<void> {
    await this.opts.keyring.reload();
    this.keys.forget();
    this.keysGeneration = -1;
    await this.refreshKeys();
  }

  /** The hooks the listener installs in every session. */
  hooks(): SessionHooks {
    const states = new WeakMap<object, SessionPolicy>();
    return {
      clientMessage: (session, frame) => {
        let st = states.get(session);
        if (!st) {
          st = new SessionPolicy(this, session);
          states.set(session, st);
        }
        return st.clientMessage(frame);
      },
      serverNotice: (session, frame) => this.redact(session.database, frame),
    };
  }

  /**
   * Server errors and notices: fields that can echo row values (DETAIL, WHERE, internal query, positions)
   * are dropped when the text names a protected table or view, and cells printed as hex are cut out.
   */
  private redact(database: string, frame: { type: number; body: Buffer; raw: Buffer }): Buffer | null {
    const entry = this.catalogs.get(database);
    const tables = entry?.catalog ? entry.catalog.names : [];
    // No catalog yet: redact unconditionally (an empty list means "always" to redactErrorFields).
    const out = redactServerError(frame.type, frame.body, tables.length > 0 ? tables : undefined);
    return out.equals(frame.raw) ? null : out;
  }

  /** The database's catalog, loading it on first use and again after DDL moved the epoch. */
  async catalog(database: string): Promise<CatalogEntry> {
    const entry = this.catalogs.get(database);
    if (entry && !entry.stale) return entry;
    if (entry?.loading) {
      await entry.loading;
      return this.catalogs.get(database)!;
    }
    const load = (async () => {
      const client = new pg.Client({ ...this.opts.control, database });
      await client.connect();
      try {
        await this.listen(database); // before loading, so no DDL between load and LISTEN goes unheard
        const catalog = await loadCatalog(client, this.opts.config.columns, database);
        for (const p of catalog.problems) this.opts.log.warn({ database, column: p.column, problem: p.problem }, 'catalog problem');
        const { enforced, hasShadow } = enforcedCatalog(catalog, this.opts.config.columns);
        this.catalogs.set(database, { catalog, enforced, hasShadow, names: buildNameIndex(catalog.names), stale: false, loading: null });
      } finally {
        await client.end().catch(() => undefined);
      }
    })();
    if (entry) entry.loading = load;
    else this.catalogs.set(database, { catalog: null as never, enforced: null as never, hasShadow: false, names: null as never, stale: true, loading: load });
    try {
      await load;
    } catch (err) {
      const e = this.catalogs.get(database);
      if (e) e.loading = null;
      throw err;
    }
    return this.catalogs.get(database)!;
  }

  /** The catalog when loaded and fresh: the synchronous fast path; null means "take the slow path". */
  catalogSync(database: string): CatalogEntry | null {
    const e = this.catalogs.get(database);
    return e && !e.stale && this.listeners.has(database) ? e : null;
  }

  /**
   * The temp schema (pg_temp_N) of a backend, as the DDL event trigger announced it when the backend made
   * its first temp object (exact on every version, unlike backend-id arithmetic on PostgreSQL 15); null
   * when it has none.
   */
  tempSchema(backendPid: number): string | null {
    return this.tempSchemas.get(backendPid) ?? null;
  }

  /** Waits (bounded) for a backend's temp-schema announcement after it created a temp object. */
  async waitTempSchema(backendPid: number, ms: number): Promise<string | null> {
    const deadline = Date.now() + ms;
    while (!this.tempSchemas.has(backendPid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.tempSchema(backendPid);
  }

  /**
   * LISTEN in each database served (NOTIFY does not cross databases) for the DDL epoch and temp-schema
   * announcements of mamori setup-db's event trigger. Until a listener is up, catalogs are loaded on every
   * use (slow, but never stale).
   */
  private async listen(database: string): Promise<void> {
    if (this.listeners.has(database) || this.listening.has(database) || this.closed) return;
    this.listening.add(database);
    const client = new pg.Client({ ...this.opts.control, database });
    client.on('error', (err) => this.opts.log.warn({ database, err: err.message }, 'catalog listener error'));
    client.on('notification', (n) => {
      if (n.channel === TEMP_CHANNEL && n.payload) {
        if (this.tempSchemas.size > 100_000) this.tempSchemas.clear();
        this.tempSchemas.set(n.processId, n.payload);
        return; // the epoch notification of the same DDL marks the catalog stale
      }
      // DDL: this database's catalog is stale until reloaded (loaded again on next use).
      const e = this.catalogs.get(database);
      if (e) e.stale = true;
      this.analysisCache.clear();
    });
    client.on('end', () => {
      this.listeners.delete(database);
      const e = this.catalogs.get(database);
      if (e) e.stale = true; // cannot hear DDL: reload before each use until listening again
      if (!this.closed) setTimeout(() => void this.listen(database).catch(() => undefined), 1000).unref();
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${EPOCH_CHANNEL}; LISTEN ${TEMP_CHANNEL}`);
      this.listeners.set(database, client);
    } catch (err) {
      this.opts.log.warn({ database, err: (err as Error).message }, 'cannot LISTEN for catalog changes; catalogs reload on every use');
      await client.end().catch(() => undefined);
    } finally {
      this.listening.delete(database);
    }
  }

  columnConfig(col: ProtectedColumn): ColumnConfig | undefined {
    return this.opts.config.columns[`${col.schema}.${col.table}.${col.column}`] ?? findByRef(this.opts.config.columns, col);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.refresher) clearInterval(this.refresher);
    this.stopApprovals?.();
    for (const l of this.listeners.values()) await l.end().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
  }
}

/** A short digest of the policy parts of a configuration, for the audit record of a reload. */
function policyDigest(config: MamoriConfig): string {
  const body = JSON.stringify({ columns: config.columns, approval: config.approval, adminRoles: config.adminRoles, search: config.search });
  return createHash('sha256').update(body).digest('hex').slice(0, 16);
}

function findByRef(columns: ColumnsConfig, col: ProtectedColumn): ColumnConfig | undefined {
  for (const c of Object.values(columns)) {
    if (c.ref.schema === col.schema && c.ref.table === col.table && c.ref.column === col.column) return c;
  }
  return undefined;
}
