// Column policies applied to one session's messages (the SessionHooks of proxy/policy/engine.ts).
// Every statement that may reach a protected object is analysed before it runs; a refusal never lets it run.
// Writes have their protected literals and parameters validated, normalized and encrypted; reads have their
// protected result fields decrypted, masked, nulled or passed as ciphertext per the session user's roles.
// Statements that cannot reach a protected object are forwarded untouched (the fast path).
import type { Frame } from '../wire/framer.js';
import { BE, FE } from '../wire/types.js';
import { decodeBind, decodeDescribe, decodeExecute, decodeParse, expandFormats, encodeDescribe } from '../wire/frontend.js';
import { decodeRowDescription, decodeCopyResponse, commandRows, errorSqlstate } from '../wire/backend.js';
import { MamoriError, errorResponse, type MamoriErrorCode } from '../errors.js';
import { FORWARD, type Decision, type Session } from '../session/session.js';
import type { ResultTransform } from '../session/pipeline.js';
import { analyse, mayTouchProtected, rewrite, rewriteInShape, byteaEdit, paramCastEdit, type Analysis, type ExpectedEdit, type ShapeEntry, type StatementPlan } from '../sql/index.js';
import type { AnalysisContext, LiteralSite, ProtectedColumn, RolePolicy } from '../sql/types.js';
import { fingerprint } from '../sql/fingerprint.js';
import { canonicalFromText } from '../../keyring/logical-types.js';
import { toLogicalType } from '../results/logical.js';
import { RowRewriter, rewriteRowDescription, rewriteParameterDescription, type FieldPlan, type FieldAction } from '../results/rows.js';
import { COPY_ORIGIN, OriginInspector, OriginRefusal, copyCellDomain, describeOrigin, mayCarryCells, originFields, someField, carrierKind, type DomainDecision } from '../results/origin.js';
import type { FieldDescription } from '../wire/types.js';
import { encryptBindParams, rewriteParseTypes, ParamError, type ParamPlan } from '../results/params.js';
import { readDecision, canSearch, canWrite, canExport, type ReadDecision } from './decide.js';
import { copyTransform, type CopyInStream } from './copy-stream.js';
import type { CopyPlan } from '../sql/types.js';
import { grantView } from './approvals.js';
import { effectivePath, type DatabaseCatalog } from './catalog.js';
import type { Identity } from './membership.js';
import type { PolicyEngine, ColumnConfig, CatalogEntry } from './engine.js';
import type { ColumnDecision } from '../audit/record.js';
import { SessionAudit, type StatementHandle } from '../audit/session.js';
import { decisionLabel, hashValues, statementExtras, withDeletions, SubjectCollector, type Deletion, type StatementExtras, type Subjects } from '../audit/statement-records.js';
import { SearchLimiter, searchedColumn } from './search-limit.js';
import { executeBinding, preparedParams, unknownStatementRefusal } from './sql-prepare.js';
import { plaintextStorageRefusal } from '../protect/transition.js';
import { clientCodec, maskMultibyte, type ClientCodec } from '../results/client-encoding.js';

/**
 * A statement's text as mamori reads it: UTF-8 (`encoding` UTF8: converted from the client encoding, or
 * ASCII) or the raw bytes under the session's encoding name; `codec` converts a rewrite back (null: none
 * needed or possible); `lexable` is what the fast path may lex when it is not `text` (raw bytes with
 * multibyte characters masked; null: nothing is known, analyse).
 */
interface Readable {
  text: Buffer;
  encoding: string;
  codec: ClientCodec | null;
  lexable?: Buffer | null;
}

import {
  appendTransitionParams, applyTransition, hideTransitionParams, mentionsShadow, planTransition, TransitionRefusal, type TransitionField, type TransitionPlan,
} from '../protect/transition-rewrite.js';

/** Encrypted search/write constants: the splice edits, and per site its cell (transition rewrites place some). */
interface LiteralCells {
  edits: ReturnType<typeof byteaEdit>[];
  values: { domain: string; canonical: Buffer; col: ProtectedColumn }[];
  sites: LiteralSite[];
  cells: Buffer[];
}

/** A portal as bound through mamori: its statement's plan (null on the fast path), the result formats asked for. */
/** An Execute's result fields, their formats and the plans of its protected fields. */
interface ExecuteFields {
  fields: FieldDescription[];
  formats: number[];
  plans: FieldPlan[];
}

interface BoundPortal {
  plan: StatementPlanInfo | null;
  formats: readonly number[];
  subjects?: Subjects;
  /** The statement it was bound from. */
  stmt?: string;
}

/** What mamori keeps with a prepared statement once the server confirms it. */
interface StatementPlanInfo {
  params: ParamPlan[];
  /** True when any result column may come from a protected column (rows need rewriting). */
  reads: boolean;
  columns: ColumnDecision[];
  command: string;
  fingerprint: string;
  declaredTypes: number[];
  /** Search and deletion records it makes. */
  extras: StatementExtras;
  /** The protected column it searches (each Bind takes a search-rate token), or null. */
  search?: ProtectedColumn | null;
  /** Result fields served from a column in protect's transition, by position (proxy/protect/transition-rewrite.ts). */
  transition?: TransitionField[];
  /** Parameters mamori adds to each Bind for the plaintext side of parameter searches during the transition. */
  transitionParams?: Pick<TransitionPlan, 'extraParams' | 'clientParams'>;
  /** A COPY of a protected table (its data is rewritten by proxy/policy/copy-stream.ts). */
  copy?: CopyPlan;
  /**
   * The statement's result shape (RowDescription) as last described, with the catalog it was mapped under:
   * later Executes of its portals reuse it instead of a Describe round trip (origins do not change while
   * the catalog epoch stays; a DDL moves it).
   */
  shape?: { rowDescription: Buffer | null; catalogLoadId: number; searchPath: string };
  /**
   * SQL prepared statements an `EXECUTE name(…)` parsed through the extended protocol runs, with the plan
   * each had then: a Bind is refused if one has changed since (its parameters were planned for that plan).
   */
  executes?: { name: string; plan: StatementPlanInfo | null }[];
}

/** The SQL PREPAREs and EXECUTEs of one statement string, as this session's prepared statements make them. */
interface SqlPrepared {
  /** Plans of the PREPAREs, in statement order (null: nothing protected in it). */
  preparePlans: (StatementPlanInfo | null)[];
  /** Declared types and casts of protected PREPARE parameters → bytea. */
  edits: ExpectedEdit[];
  /** Constants EXECUTE passes for protected parameters. */
  sites: LiteralSite[];
  /** Plans of the statements the EXECUTEs run. */
  targets: StatementPlanInfo[];
  /** Each statement's command, with EXECUTE as the command of what it runs. */
  commands: string[];
  executes: { name: string; plan: StatementPlanInfo | null }[];
}

const TEMP_CREATE = /\bcreate\s+(?:(?:global|local)\s+)?temp(?:orary)?\b/i;

const TEXT_TYPES = new Set(['text', 'varchar', 'char']);

/** The catalog and role policy that decide cells of unknown origin. */
interface OriginContext {
  catalog: DatabaseCatalog;
  role: RolePolicy;
}

/** What a session gets from a catalog when its identity cannot be resolved: nothing (cells of unknown origin are refused). */
const DENY_ALL: RolePolicy = { read: () => 'deny', canSearch: () => false, canWrite: () => false, canExport: () => false };

const SQLSTATE_CODES: Record<string, MamoriErrorCode> = {
  '0A000': 'feature_not_supported',
  '42501': 'insufficient_privilege',
  '22P02': 'invalid_text_representation',
  '22P03': 'invalid_binary_representation',
  '42601': 'syntax_error',
  '54000': 'program_limit_exceeded',
  '55000': 'object_not_in_prerequisite_state',
  '22021': 'character_not_in_repertoire',
  'XX000': 'internal_error',
};

function refusal(sqlstate: string, message: string): Decision {
  return { action: 'refuse', error: new MamoriError(SQLSTATE_CODES[sqlstate] ?? 'feature_not_supported', message) };
}

/** A statement text's analysis that passed the refusals every text shares (see SessionPolicy.analysedText). */
interface AnalysedText {
  analysis: Exclude<Analysis, { kind: 'refuse' }>;
  catalog: DatabaseCatalog;
  role: RolePolicy;
  identity: Identity;
  path: string[];
}

const targetExtras = (t: { extras: StatementExtras }): StatementExtras => t.extras;

/** A completion record's failure is counted by the trail (lost/refused); nothing waits on it. */
const ignore = (): void => undefined;

/** Search and deletion records by statement shape (ownExtras). */
const extrasByShape = new WeakMap<ShapeEntry, StatementExtras>();

/** The refusal when an audit intent cannot be written and failMode is closed. */
const AUDIT_UNAVAILABLE = new MamoriError('system_error', 'the audit trail cannot be written, so protected columns are not available (audit failMode: closed)');

export class SessionPolicy {
  private identity: Identity | null = null;
  private identityAt = 0;
  /** The session's search_path as set so far; null when it is not known (then protected access is refused). */
  private searchPath: string[] | null;
  private byteaOutput: 'hex' | 'escape' = 'hex';
  /** Set once the session has touched protected data: role changes and FunctionCall are refused from then on. */
  private touched = false;
  /** Parse messages in flight, by statement name: their plan, until the server confirms or rejects them. */
  private readonly pendingParse = new Map<string, { plan: StatementPlanInfo | null; synced: boolean; settled: Promise<boolean> }>();
  /** RowDescriptions seen for portals (Describe P), by portal name: used to rewrite the Execute's rows. */
  private readonly portalShapes = new Map<string, Buffer | null>();
  /**
   * Portals as bound through mamori, before the server confirms them (a failed Bind makes the server skip
   * the Execute that follows it in the batch): the statement's plan and the result formats asked for.
   */
  private readonly portals = new Map<string, BoundPortal>();
  /**
   * Result shapes of statements on the fast path (from the client's Describe, or mamori's own before an
   * Execute), by statement name: their rows are inspected for cells of unknown origin (DESIGN.md §5).
   */
  private readonly statementShapes = new Map<string, { rowDescription: Buffer | null; searchPath: string }>();
  /** Fast-path Describes sent but not yet answered: an Execute behind one reads its shape when rows come. */
  private readonly describingStatements = new Set<string>();
  private readonly describingPortals = new Set<string>();
  private roleCache: { identity: Identity; catalog: DatabaseCatalog; approvals: unknown; role: RolePolicy } | null = null;

  private tempSchema: string | null | undefined;
  /** The session ran CREATE TEMP …: its temp schema is announced asynchronously. */
  private tempPending = false;
  private audit: SessionAudit | null = null;
  /** The COPY FROM STDIN in progress whose client data mamori rewrites. */
  private copyIn: CopyInStream | null = null;
  private readonly searchLimit: SearchLimiter;
  /** Settles when the last analysed simple Query has finished: the SQL PREPAREs in it are known by then. */
  private lastQuery: Promise<void> | null = null;

  constructor(
    private readonly engine: PolicyEngine,
    private readonly session: Session,
  ) {
    const sp = session.startupGucs.get('search_path');
    this.searchPath = sp === undefined ? ['$user', 'public'] : parseSearchPath(sp);
    const bo = session.startupGucs.get('bytea_output');
    if (bo === 'escape') this.byteaOutput = 'escape';
    this.searchLimit = new SearchLimiter(engine.config.search, {
      onRefused: (column) => engine.log.warn({ session: session.id, column }, 'search rate limit reached'),
      onSearch: (limitHit) => engine.metrics?.search(limitHit),
    });
    if (session.startupGucs.has('role') || session.startupGucs.has('session_authorization')) this.roleChangedAtStartup = true;
    if (engine.audit) {
      this.audit = new SessionAudit(engine.audit, {
        session: session.id, user: session.user, client: session.clientAddress, tlsSubject: session.tlsSubject,
        applicationName: session.applicationName, database: session.database,
      });
    }
  }

  private roleChangedAtStartup = false;
  /**
   * A statement that changes client_encoding (SET, set_config, RESET/DISCARD ALL) was sent and the server may
   * not have run it yet: a pipelined statement after it is converted by the server in the new encoding,
   * which mamori learns only from the ParameterStatus. Until the pipeline drains, text that is not ASCII is
   * not read in either (protected statements with such text are refused).
   */
  private encodingInFlight = false;

  private pathKeyOf: string[] | null | undefined;
  private pathKeyText = '';

  /** The search_path as a cache key (PostgreSQL re-plans a prepared statement when it changes). */
  private get pathKey(): string {
    if (this.pathKeyOf !== this.searchPath) {
      this.pathKeyOf = this.searchPath;
      this.pathKeyText = (this.searchPath ?? []).join(',');
    }
    return this.pathKeyText;
  }

  clientMessage(frame: Frame): Decision | Promise<Decision> {
    switch (frame.type) {
      case FE.Query:
        return this.sql(frame.body.subarray(0, frame.body.length - 1));
      case FE.Parse:
        return this.parse(frame);
      case FE.Bind:
        return this.bind(frame);
      case FE.Describe:
        return this.describe(frame);
      case FE.Execute:
        return this.execute(frame);
      case FE.Sync:
        for (const p of this.pendingParse.values()) p.synced = true;
        return FORWARD;
      case FE.Close: {
        if (frame.body[0] === 0x53) this.statementShapes.delete(frame.body.toString('utf8', 1, frame.body.length - 1)); // 'S'
        return FORWARD;
      }
      case FE.CopyData:
      case FE.CopyDone:
      case FE.CopyFail:
        return this.copyIn?.active ? this.copyIn.clientMessage(frame) : FORWARD;
      case FE.FunctionCall:
        if (this.touched) {
          return refusal('0A000', 'FunctionCall messages are not allowed in a session that has touched protected columns');
        }
        return FORWARD;
      default:
        return FORWARD;
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Analysis

  private async ensureIdentity(): Promise<Identity> {
    const now = Date.now();
    if (!this.identity || now - this.identityAt > 1000) {
      this.identity = await this.engine.membership.identity(this.session.user, { clientCert: this.session.tlsSubject !== null });
      this.identityAt = now;
    }
    return this.identity;
  }

  private rolePolicy(id: Identity, catalog: DatabaseCatalog): RolePolicy {
    const cfg = this.engine.config;
    const required = cfg.approval.members === 'required';
    const grants = grantView(this.engine.approvals, cfg.approval.passwords, id);
    const colOf = (c: ProtectedColumn): ColumnConfig | undefined => this.columnConfig(c, catalog);
    return {
      read: (c) => {
        const cc = colOf(c);
        return cc ? readDecision(cc, id, grants, required) : 'deny';
      },
      canSearch: (c) => {
        const cc = colOf(c);
        return cc ? canSearch(cc, id, grants, required) : false;
      },
      canWrite: (c) => {
        const cc = colOf(c);
        // A rotating (write-frozen) domain is refused at encryption time with 55000, not here: analyses are cached.
        return cc ? canWrite(cc, id, grants, required) : false;
      },
      canExport: (c) => {
        const cc = colOf(c);
        return cc ? canExport(cc, id, grants, required) : false;
      },
    };
  }

  columnConfig(c: ProtectedColumn, catalog: DatabaseCatalog): ColumnConfig | undefined {
    if (c.tableOid !== undefined && c.attnum !== undefined) {
      const f = catalog.byOrigin(c.tableOid, c.attnum);
      if (f) return this.engine.config.columns[f.policyKey];
    }
    return this.engine.columnConfig(c);
  }

  private async searchPathFor(catalog: DatabaseCatalog): Promise<string[] | null> {
    if (this.searchPath === null) return null;
    if (!this.tempSchema) {
      // Right after this session created its first temp object the announcement may still be on its way.
      this.tempSchema = this.tempPending
        ? await this.engine.waitTempSchema(this.session.backendPid, 2000)
        : this.engine.tempSchema(this.session.backendPid);
      this.tempPending = false;
    }
    // The same search_path (applySettings() replaces the array) and temp schema give the same path.
    const memo = this.pathMemo;
    if (memo && memo.searchPath === this.searchPath && memo.tempSchema === this.tempSchema) return memo.path;
    const path = this.searchPath.flatMap((s) => (s === '$user' ? [this.session.user] : s === 'pg_temp' ? [] : [s]));
    const explicitTemp = this.searchPath.includes('pg_temp');
    const temp = this.tempSchema ? [this.tempSchema] : [];
    void catalog;
    const effective = explicitTemp ? effectivePath([...path, ...temp]) : effectivePath([...temp, ...path]);
    this.pathMemo = { searchPath: this.searchPath, tempSchema: this.tempSchema, path: effective };
    return effective;
  }

  private pathMemo: { searchPath: string[]; tempSchema: string | null | undefined; path: string[] } | null = null;

  /**
   * Fast path, then full analysis. Returns null when the statement cannot reach a protected object (and
   * changes no setting mamori tracks); else the analysis and what it needs.
   */
  private async analyse(sql: Buffer, encoding: string): Promise<{ analysis: Analysis; catalog: DatabaseCatalog; role: RolePolicy; identity: Identity; path: string[] } | MamoriError> {
    const entry = await this.engine.catalog(this.session.database);
    // Enforced decisions leave out shadow-mode columns (enforce: false, still plaintext): their decision is
    // computed against the full catalog below and logged, never enforced.
    const catalog = entry.enforced;
    const identity = await this.ensureIdentity();
    const role = this.cachedRole(identity, catalog);
    const path = await this.searchPathFor(catalog);
    if (path === null) {
      return new MamoriError('object_not_in_prerequisite_state',
        'the session\'s search_path is not known to mamori (set by a non-constant expression); protected columns cannot be used until it is SET to a constant');
    }
    const params = this.session.params;
    const ctx: AnalysisContext = {
      catalog,
      searchPath: path,
      role,
      maxInListItems: this.engine.config.search.maxInListItems,
      standardConformingStrings: (params.get('standard_conforming_strings') ?? 'on') === 'on',
      clientEncoding: encoding,
      allowDdl: this.engine.config.adminRoles.some((r) => identity.roles.has(r)),
    };
    const analysis = this.engine.analysisCache.getOrAnalyse(sql, {
      searchPath: path, catalogEpoch: catalog.epoch + ':' + catalog.loadId, roleSet: [...identity.roles].sort().join(',') + (identity.clientCert ? '+cert' : '') + (identity.superuser ? '+su' : '') + (identity.bypassRls ? '+bypassrls' : '') + '#' + (identity.verifierHash ?? ''),
      standardConformingStrings: ctx.standardConformingStrings, clientEncoding: ctx.clientEncoding,
      maxInListItems: ctx.maxInListItems, allowDdl: ctx.allowDdl,
    }, ctx, analyse);
    if (entry.hasShadow) this.shadowDecision(sql, { ...ctx, catalog: entry.catalog, role: this.rolePolicy(identity, entry.catalog) }, analysis);
    return { analysis, catalog, role, identity, path };
  }

  /**
   * Shadow mode: what the full policy would decide for columns with `enforce: false`, logged and written to the
   * audit trail as a `shadow_decision` record (never values) when it touches a column or differs from what is
   * enforced, so an application's statements can be checked before `protect`.
   */
  private shadowDecision(sql: Buffer, ctx: AnalysisContext, enforced: Analysis): void {
    const full = analyse(sql, ctx);
    const decisions: ColumnDecision[] = full.kind === 'protected'
      ? full.statements.flatMap((st) => st.touched.map((t) => ({
        column: qualified(t.column),
        decision: (t.uses.includes('read') || t.uses.includes('returning') ? ctx.role.read(t.column) : t.uses.join('+')) as ColumnDecision['decision'],
      })))
      : [];
    if (full.kind === enforced.kind && decisions.length === 0) return;
    const fp = fingerprint(sql);
    const refused = full.kind === 'refuse';
    this.engine.log.info({
      session: this.session.id, user: this.session.user, fingerprint: fp, shadow: true,
      decision: refused ? 'would refuse' : 'would allow',
      ...(refused ? { sqlstate: full.sqlstate, reason: full.message } : { columns: decisions.map((d) => `${d.column}:${d.decision}`) }),
    }, 'shadow-mode decision');
    void this.audit?.record({
      kind: 'shadow_decision', shadow: true, outcome: refused ? 'would_refuse' : 'would_allow', fingerprint: fp, columns: decisions,
      ...(refused ? { sqlstate: full.sqlstate, reason: full.message } : {}),
    }).catch(() => undefined);
  }

  /** The session's client encoding, or null when mamori has no faithful converter for it. */
  codec(): ClientCodec | null {
    const client = this.session.params.get('client_encoding');
    const server = this.session.params.get('server_encoding');
    if (client !== this.codecKey.client || server !== this.codecKey.server) {
      this.codecKey = { client, server, codec: clientCodec(client, server) };
    }
    return this.codecKey.codec;
  }

  /** The last codec looked up, by the parameters it came from (looked up per statement and per value). */
  private codecKey: { client: string | undefined; server: string | undefined; codec: ClientCodec | null } = { client: '', server: '', codec: null };

  /**
   * Statement text as the server's parser reads it. PostgreSQL converts a query string from the client
   * encoding to the database's before parsing, so mamori does the same: the analysis sees UTF-8 and the
   * encoding it names is UTF8. Without a converter (or for bytes invalid in the encoding) the raw bytes
   * are analysed under the session's encoding name, and the analyser refuses any that are not ASCII.
   */
  private readable(sql: Buffer): Readable {
    if (this.encodingInFlight && this.session.pipeline.idle) this.encodingInFlight = false;
    const codec = this.codec();
    if (codec?.utf8 === true && !this.encodingInFlight) return { text: sql, encoding: 'UTF8', codec };
    let name = this.session.params.get('client_encoding') ?? 'UTF8';
    // ASCII reads the same in every client encoding, even one mamori has no converter for.
    if (isAscii(sql)) return { text: sql, encoding: 'UTF8', codec };
    if (this.encodingInFlight) {
      name += ' (a change of client_encoding is still running)';
      return { text: sql, encoding: name, codec: null, lexable: null };
    }
    if (codec?.utf8 === true) return { text: sql, encoding: 'UTF8', codec };
    const decoded = codec?.decode(sql) ?? null;
    if (decoded === null) return { text: sql, encoding: name, codec: null, lexable: maskMultibyte(sql, name) };
    return { text: Buffer.from(decoded, 'utf8'), encoding: 'UTF8', codec };
  }

  /** Fast path on what the server's lexer reads; null (not known) takes the slow path. */
  private mayTouchReadable(r: Readable): boolean | null {
    const lexable = r.lexable === undefined ? r.text : r.lexable;
    return lexable === null ? null : this.mayTouch(lexable);
  }

  private mayTouch(sql: Buffer): boolean | null {
    const entry = this.engine.catalogSync(this.session.database);
    if (!entry) return null; // not loaded (or stale): take the slow path
    return mayTouchProtected(sql, entry.names, { standardConformingStrings: (this.session.params.get('standard_conforming_strings') ?? 'on') === 'on' });
  }

  /** Applies SET / RESET effects the analysis found; an unknown search_path makes protected access refused. */
  private applySettings(a: Analysis): void {
    if (a.kind === 'refuse') return;
    for (const s of a.settings) {
      if (s.name === 'search_path' || s.name === '*' || s.name === '?') {
        if (s.action === 'reset' || s.name === '*') this.searchPath = ['$user', 'public'];
        else this.searchPath = s.value === null ? null : parseSearchPath(s.value);
        if (s.name === '?') this.searchPath = null;
      }
      if (s.name === 'bytea_output') this.byteaOutput = s.value === 'escape' ? 'escape' : 'hex';
      if (s.name === 'client_encoding' || s.name === '*' || s.name === '?') this.encodingInFlight = true;
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Simple Query (and the SQL of Parse)

  private sql(raw: Buffer): Decision | Promise<Decision> {
    const readable = this.readable(raw);
    const may = this.mayTouchReadable(readable);
    if (may === false && !this.roleChangedAtStartup) return this.watchedQuery();
    return this.sqlSlow(readable);
  }

  /**
   * The analysis of a statement text (simple Query or Parse) with the refusals both share: what the analyser
   * refuses, naming the hidden shadow column of a column in transition, and role changes in a session that
   * touches protected data. Session settings the text changes are applied.
   */
  private async analysedText(sql: Buffer, encoding: string): Promise<Decision | AnalysedText> {
    const r = await this.analyse(sql, encoding);
    if (r instanceof MamoriError) return { action: 'refuse', error: r };
    const { analysis, catalog, role, identity, path } = r;
    this.applySettings(analysis);
    if (analysis.kind === 'refuse') return this.refused(analysis.sqlstate, analysis.message, sql);
    const shadowNamed = mentionsShadow(sql, catalog);
    if (shadowNamed) return refusal('55000', shadowNamed);
    if (analysis.roleChange && (this.touched || analysis.kind === 'protected')) {
      return refusal('42501', 'role changes (SET ROLE, SET SESSION AUTHORIZATION, set_config(\'role\')) are not allowed in a session that touches protected columns; identity stays the session user');
    }
    return { analysis, catalog, role, identity, path };
  }

  private async sqlSlow(readable: Readable): Promise<Decision> {
    const sql = readable.text;
    if (!this.tempSchema && TEMP_CREATE.test(sql.toString('latin1'))) this.tempPending = true;
    const r = await this.analysedText(sql, readable.encoding);
    if ('action' in r) return r;
    const { analysis, catalog, role, path } = r;
    if (analysis.kind === 'unprotected') {
      // FETCH from a cursor, EXECUTE of a prepared statement, a function returning rows: nothing in the text
      // names a protected column, but the rows can still come from one (by origin, or as cells of unknown
      // origin), so they are mapped like any other.
      return this.tracked(catalog.protectedColumns.length > 0 ? { action: 'forward', transform: new QueryResults(this, catalog, role, null) } : FORWARD);
    }
    if (this.roleChangedAtStartup) {
      return refusal('42501', 'this session changed its role at startup (-c role=…); protected columns are not available to it');
    }
    const notEncrypted = plaintextStorageRefusal(analysis.statements, catalog, (c) => this.columnConfig(c, catalog)?.enforce !== false);
    if (notEncrypted) return refusal('55000', notEncrypted);
    const tplan = this.transitionPlan(sql, analysis.statements, catalog, path);
    if (tplan && 'action' in tplan) return tplan;
    this.touched = true;
    const sp = await this.sqlPrepared(analysis.statements, role, sql);
    if (sp instanceof MamoriError) return { action: 'refuse', error: sp };
    // A PREPARE searches nothing yet: each EXECUTE of it is a search.
    let limited = this.searchLimit.admit(searchedColumn(analysis.statements.filter((st) => !st.prepare)));
    for (const t of sp.targets) limited ??= this.searchLimit.admit(t.search ?? null);
    if (limited) return { action: 'refuse', error: limited };
    // Literals bound for protected columns are validated, normalized and encrypted, then spliced in.
    const lits = await this.encryptLiterals(analysis.statements, catalog, sp.sites);
    if ('action' in lits) return lits;
    const toEncrypt = lits.values;
    let raw: Buffer | null = null;
    const edits = [...sp.edits, ...lits.edits];
    if (tplan) {
      const rewritten = this.transitionSpliced(sql, tplan, lits, sp.edits);
      if (!Buffer.isBuffer(rewritten)) return rewritten;
      const back = this.backToClient(rewritten, readable.codec);
      if (!Buffer.isBuffer(back)) return back;
      raw = encodeQueryRaw(back);
    } else if (edits.length > 0) {
      // By shape only when every edit is a cell at one of the analysis's own literal sites (no PREPARE type edits,
      // no EXECUTE arguments): those are the anchors a shape's verified rewrite stands for.
      const byShape = sp.edits.length === 0 && sp.sites.length === 0;
      const rewritten = this.spliced(sql, edits, byShape ? this.engine.analysisCache.shapeEntryOf(analysis) : undefined);
      if (!Buffer.isBuffer(rewritten)) return rewritten;
      const back = this.backToClient(rewritten, readable.codec);
      if (!Buffer.isBuffer(back)) return back;
      raw = encodeQueryRaw(back);
    }
    await this.loadKeysFor(analysis.statements, catalog);
    const columns = [...this.columnDecisions(analysis.statements, role), ...sp.targets.flatMap((t) => t.columns)];
    // Without an audit trail there is no intent to write (nor a fingerprint, extras or subject hashes to compute).
    let handle: StatementHandle | null = null;
    const started = this.audit
      ? this.beginIntent(this.fingerprintOf(sql, analysis), sp.commands.length === 1 ? sp.commands[0]! : sp.commands.join(';'), columns,
        this.extrasOf(analysis, sp), hashValues(this.engine.subjects, toEncrypt))
      : null;
    if (started) {
      // awaits the write the record shares (no promise of its own per statement: this runs for each one)
      try {
        await started.written;
        handle = started.handle;
      } catch (err) {
        const refused = this.intentFailed(err);
        if (refused) return { action: 'refuse', error: refused };
      }
    }
    // (During protect's transition a COPY FROM is rewritten to write the column's shadow: its own plan.)
    const copy = tplan?.copy ?? analysis.statements[0]?.copy;
    if (copy) {
      const t = this.copyTransform(copy, catalog, role, handle);
      if (t instanceof MamoriError) return { action: 'refuse', error: t };
      return raw ? { action: 'replace', raw, transform: t } : { action: 'forward', transform: t };
    }
    const transform = new QueryResults(this, catalog, role, handle, tplan?.fields);
    transform.decision = decisionLabel(columns);
    const preparePlans = sp.preparePlans.length > 0 ? { preparePlans: sp.preparePlans } : {};
    return this.tracked(raw ? { action: 'replace', raw, transform, ...preparePlans } : { action: 'forward', transform, ...preparePlans });
  }

  /**
   * The audit fingerprint of a statement text; texts of one statement shape (proxy/sql/shape.ts) differ only in
   * constants, which the fingerprint removes, so it is computed once per shape.
   */
  private fingerprintOf(sql: Buffer, analysis: Analysis): string {
    const shape = this.engine.analysisCache.shapeEntryOf(analysis);
    if (!shape) return fingerprint(sql);
    return (shape.fingerprint ??= fingerprint(sql));
  }

  /**
   * The search and deletion records of a statement text's own statements (PREPAREs aside: each EXECUTE of one
   * is its own), computed once per statement shape like the fingerprint.
   */
  private ownExtras(analysis: Extract<Analysis, { kind: 'protected' }>): StatementExtras {
    const shape = this.engine.analysisCache.shapeEntryOf(analysis);
    const kept = shape && extrasByShape.get(shape);
    if (kept) return kept;
    const x = statementExtras(analysis.statements.filter((st) => !st.prepare));
    const frozen: StatementExtras = Object.freeze({ searches: Object.freeze(x.searches) as ColumnDecision[], deletions: Object.freeze(x.deletions) as Deletion[] });
    if (shape) extrasByShape.set(shape, frozen);
    return frozen;
  }

  /** The search and deletion records of a statement text: its own statements' and those of the EXECUTEs in it. */
  private extrasOf(analysis: Extract<Analysis, { kind: 'protected' }>, sp: SqlPrepared): StatementExtras {
    const own = this.ownExtras(analysis);
    return sp.targets.length === 0 ? own : mergeExtras([own, ...sp.targets.map(targetExtras)]);
  }

  /** A simple Query forwarded after analysis: `lastQuery` settles when it has finished. */
  private tracked(d: Decision): Decision {
    if (d.action === 'refuse') return d;
    let done!: () => void;
    this.lastQuery = new Promise<void>((r) => (done = r));
    return { ...d, onOutcome: () => done() };
  }

  /**
   * SQL PREPARE / EXECUTE in a statement string: the plan of each PREPARE (its protected parameters made
   * bytea), and what each EXECUTE passes for the protected parameters of the statement it runs.
   */
  private async sqlPrepared(statements: readonly StatementPlan[], role: RolePolicy, sql: Buffer): Promise<SqlPrepared | MamoriError> {
    const out: SqlPrepared = { preparePlans: [], edits: [], sites: [], targets: [], commands: [], executes: [] };
    const local = new Map<string, StatementPlanInfo | null>(); // prepared earlier in this string
    for (const st of statements) {
      let command = st.command;
      if (st.prepare) {
        const pp = preparedParams({ ...st, prepare: st.prepare });
        if (pp instanceof MamoriError) return pp;
        const inner = { ...st, command: st.prepare.command };
        const plan: StatementPlanInfo | null = st.touched.length === 0 && st.params.length === 0 && st.literals.length === 0 ? null : {
          params: pp.params,
          reads: st.touched.some((t) => t.uses.includes('read') || t.uses.includes('returning')),
          columns: this.columnDecisions([inner], role),
          command: st.prepare.command,
          fingerprint: fingerprint(sql.subarray(st.start, st.end)),
          declaredTypes: [],
          extras: statementExtras([inner]),
          search: searchedColumn([inner]),
        };
        out.preparePlans.push(plan);
        out.edits.push(...pp.edits);
        local.set(st.prepare.name, plan);
      } else if (st.execute) {
        const { name, args } = st.execute;
        const target = await this.executeTarget(name, local);
        if (!target.known) {
          if (args.length > 0) return unknownStatementRefusal(name);
        } else if (target.plan) {
          const b = executeBinding(name, args, target.plan.params);
          if (b instanceof MamoriError) return b;
          out.sites.push(...b.sites);
          out.targets.push(target.plan);
          command = target.plan.command;
        }
        if (args.length > 0) out.executes.push({ name, plan: target.plan });
      }
      out.commands.push(command);
    }
    return out;
  }

  /** The statement `EXECUTE name` runs: prepared earlier in the same string, else as this session knows it. */
  private async executeTarget(name: string, local: ReadonlyMap<string, StatementPlanInfo | null>): Promise<{ known: boolean; plan: StatementPlanInfo | null }> {
    if (local.has(name)) return { known: true, plan: local.get(name)! };
    // A Query sent before this one (pipelined) may still be preparing or deallocating it.
    if (this.lastQuery) await this.lastQuery;
    if (this.pendingParse.has(name)) {
      const plan = await this.statementPlan(name);
      return { known: plan !== null || this.session.pipeline.statements.has(name), plan };
    }
    const info = this.session.pipeline.statements.get(name);
    return { known: info !== undefined, plan: (info?.plan as StatementPlanInfo | undefined) ?? null };
  }

  /**
   * The fast path of a simple Query: forwarded as is, with a transform that maps its result fields by origin
   * and looks at the fields that can carry a cell (DESIGN.md §5); rows of results without such fields pass
   * untouched. Waits only when the catalog or the session's identity must be (re)loaded.
   */
  private watchedQuery(): Decision | Promise<Decision> {
    const withContext = (ctx: { catalog: DatabaseCatalog; role: RolePolicy }): Decision =>
      ctx.catalog.protectedColumns.length === 0 ? FORWARD : { action: 'forward', transform: new QueryResults(this, ctx.catalog, ctx.role, null) };
    const ctx = this.originContextSync();
    return ctx ? withContext(ctx) : this.originContext().then(withContext);
  }

  /** Catalog and role policy without waiting; null when either must be (re)loaded first. */
  private originContextSync(): { catalog: DatabaseCatalog; role: RolePolicy } | null {
    const entry = this.engine.catalogSync(this.session.database);
    if (!entry || !this.identity || Date.now() - this.identityAt > 1000) return null;
    return { catalog: entry.enforced, role: this.cachedRole(this.identity, entry.enforced) };
  }

  /**
   * Catalog and role policy, loaded as needed. When the identity cannot be resolved (control connection
   * down) statements on the fast path still run, but any cell of unknown origin in their results is refused.
   */
  private async originContext(): Promise<{ catalog: DatabaseCatalog; role: RolePolicy }> {
    const entry = await this.engine.catalog(this.session.database);
    try {
      return { catalog: entry.enforced, role: this.cachedRole(await this.ensureIdentity(), entry.enforced) };
    } catch (err) {
      this.engine.log.warn({ session: this.session.id, err: (err as Error).message }, 'identity not resolved; cells of unknown origin are refused');
      return { catalog: entry.enforced, role: DENY_ALL };
    }
  }

  /**
   * The identity when it was read less than a second ago (ensureIdentity() would return it without a
   * query); null: await ensureIdentity().
   */
  private identityNow(): Identity | null {
    return this.identity && Date.now() - this.identityAt <= 1000 ? this.identity : null;
  }

  /**
   * What an extended-protocol decision reads, when all of it is loaded and current (keys, catalog, identity):
   * the decision can then be made without awaiting anything. Null: take the asynchronous path.
   */
  private readyNow(): { entry: CatalogEntry; role: RolePolicy } | null {
    if (!this.engine.keysCurrent()) return null;
    const entry = this.engine.catalogSync(this.session.database);
    const identity = entry ? this.identityNow() : null;
    return entry && identity ? { entry, role: this.cachedRole(identity, entry.enforced) } : null;
  }

  /** The role policy, kept while identity, catalog (replaced by every policy reload) and approvals are the same. */
  private cachedRole(identity: Identity, catalog: DatabaseCatalog): RolePolicy {
    const c = this.roleCache;
    const approvals = this.engine.approvals;
    if (c && c.identity === identity && c.catalog === catalog && c.approvals === approvals) return c.role;
    const role = this.rolePolicy(identity, catalog);
    this.roleCache = { identity, catalog, approvals, role };
    return role;
  }

  /**
   * What this session gets for the cells of one key domain reaching it through a field of unknown origin:
   * the read decision of the protected columns that use the domain (one policy per domain; should they
   * differ, deny if any denies, else NULL), refused for a domain no protected column of this database uses.
   */
  originDecision(domainId: number, catalog: DatabaseCatalog, role: RolePolicy): DomainDecision {
    const cols = catalog.protectedColumns.filter((c) => this.domainIdOf(c.domain) === domainId);
    if (cols.length === 0) {
      return { refuse: (f) => new MamoriError('insufficient_privilege', `${describeOrigin(f)} carries a mamori cell of key domain id ${domainId}, which no protected column of this database uses; refused`) };
    }
    const names = cols.map(qualified).join('", "');
    const decisions = cols.map((c) => role.read(c));
    const decision = decisions.every((d) => d === decisions[0]) ? decisions[0]! : decisions.includes('deny') ? 'deny' : 'null';
    if (decision === 'deny') {
      return { refuse: (f) => new MamoriError('insufficient_privilege', `permission denied to read column "${names}": its cell arrived through ${describeOrigin(f)}`) };
    }
    const column = cols[0]!;
    const refuseRender = this.renderRefusal(column, decision);
    if (refuseRender) return { refuse: (f) => new MamoriError('object_not_in_prerequisite_state', `${refuseRender} (a cell that arrived through ${describeOrigin(f)})`) };
    return { action: decision, column };
  }

  private domainIdOf(domain: string): number {
    try {
      return this.engine.keys.domainId(domain);
    } catch {
      return -1; // a domain the keystore does not know: its cells cannot be told apart, so none match it
    }
  }

  /** Why a decision cannot be rendered in this session's settings (DateStyle, client_encoding), or null. */
  private renderRefusal(c: ProtectedColumn, decision: ReadDecision): string | null {
    if (decision !== 'plaintext') return null;
    if (c.type.type === 'date' && !(this.session.params.get('DateStyle') ?? 'ISO').startsWith('ISO')) {
      return `protected date column ${qualified(c)} is rendered only with DateStyle ISO (the session uses ${this.session.params.get('DateStyle')})`;
    }
    // Text columns are rendered in the session's client encoding; where mamori has no faithful converter
    // for it they are refused rather than sent in the wrong encoding (as fieldPlans does).
    if (TEXT_TYPES.has(c.type.type) && this.codec() === null) return noConverter(c, this.session.params.get('client_encoding') ?? 'UTF8');
    return null;
  }

  /**
   * The inspector of a result set's fields that can carry a cell and are not planned as protected columns
   * (null when there are none: its rows then pass untouched). Released cells are audited per result set.
   */
  originInspector(fields: readonly FieldDescription[], plans: readonly FieldPlan[], formats: readonly number[],
    catalog: DatabaseCatalog, role: RolePolicy, subjects: SubjectCollector | null, reads: OriginReads): OriginInspector | null {
    const candidates = originFields(fields, new Set(plans.map((p) => p.index)), formats);
    if (candidates.length === 0) return null;
    return new OriginInspector(candidates, (id) => this.originDecision(id, catalog, role), this.engine.keys, {
      byteaOutput: this.byteaOutput,
      codec: () => this.codec(),
      onShredded: (col) => void this.audit?.record({ kind: 'shredded_read', columns: [{ column: qualified(col), decision: 'null' }] } as never).catch(() => undefined),
      ...(subjects ? { onPlaintext: (col: ProtectedColumn, canonical: Buffer, stored?: string) => subjects.add(col, canonical, stored) } : {}),
      onRelease: (col, action) => reads.release(col, action),
    });
  }

  /**
   * A COPY TO row carrying a cell of unknown origin: COPY rows are not rewritten here, so only a role that
   * reads the domain as ciphertext gets it as is (null); any other decision ends the COPY with an error.
   */
  copyOriginRefusal(domainId: number, catalog: DatabaseCatalog, role: RolePolicy): MamoriError | null {
    const d = this.originDecision(domainId, catalog, role);
    if ('refuse' in d) return d.refuse(COPY_ORIGIN);
    if (d.action === 'ciphertext') return null;
    return new MamoriError('feature_not_supported', `COPY TO carries a cell of column "${qualified(d.column)}" through ${describeOrigin(COPY_ORIGIN)}; only a role that reads it as ciphertext may copy it (use SELECT)`);
  }

  /** Whether a result set needs a look: a field mapped to a protected column by origin, or one that can carry a cell. */
  needsLook(rowDescription: Buffer, catalog: DatabaseCatalog): boolean {
    return someField(rowDescription, (tableOid, attnum, typeOid) => carrierKind(typeOid) !== null
      || (tableOid !== 0 && (catalog.byOrigin(tableOid, attnum) !== undefined || catalog.derivedByOrigin(tableOid, attnum) !== undefined)));
  }

  /** Audit of the cells of unknown origin one result set releases (see OriginReads). */
  originReadsAudit(): OriginReads {
    const audit = this.audit;
    if (!audit) return new OriginReads(null);
    // one per result set: the functions it calls are made once per session
    this.readIntent ??= (columns) => audit.intent({ fingerprint: 'unknown-origin', command: 'unknown-origin', columns, mode: 'protected' });
    this.readHold ??= (gate) => this.session.holdOutput(gate, AUDIT_UNAVAILABLE);
    return new OriginReads(this.readIntent, this.readHold, this.engine.config.audit.failMode === 'open');
  }
  private readIntent: ((columns: ColumnDecision[]) => Promise<StatementHandle>) | undefined;
  private readHold: ((gate: Promise<boolean>) => void) | undefined;

  /**
   * A result ended by a cell this session may not receive: the refusal is logged and audited (never the
   * value), the session drops the server's further answers up to ReadyForQuery; returns the ErrorResponse
   * that replaces the row.
   */
  endResult(err: MamoriError): Buffer {
    this.engine.log.info({ session: this.session.id, sqlstate: err.sqlstate, reason: err.message }, 'result ended: cell of unknown origin refused');
    void this.audit?.record({ kind: 'refusal', reason: err.code, sqlstate: err.sqlstate, command: 'unknown-origin' }).catch(() => undefined);
    this.session.endResultWithError();
    return errorResponse(err);
  }

  /**
   * Literals bound for protected columns: validated and normalized per logical type, encrypted (counted,
   * refused while the domain rotates), and turned into splice edits. A refusal Decision when one is invalid.
   */
  private async encryptLiterals(statements: readonly StatementPlan[], catalog: DatabaseCatalog, extra: readonly LiteralSite[] = []): Promise<
    LiteralCells | Decision> {
    const values: { domain: string; canonical: Buffer; col: ProtectedColumn }[] = [];
    const sites: LiteralSite[] = [];
    for (const literals of [...statements.map((st) => st.literals), extra]) {
      for (const lit of literals) {
        if (lit.value === null) continue;
        const cc = this.columnConfig(lit.column, catalog);
        if (!cc) return refusal('0A000', `column ${qualified(lit.column)} has no policy`);
        const canon = canonicalFromText(toLogicalType(lit.column.type), lit.value);
        if (!canon.ok) return refusal('22P02', `invalid value for protected column ${qualified(lit.column)}: ${canon.reason}`);
        values.push({ domain: cc.keyDomain, canonical: canon.value, col: lit.column });
        sites.push(lit);
      }
    }
    if (values.length === 0) return { edits: [], values, sites, cells: [] };
    let cells: Buffer[];
    try {
      cells = this.engine.keys.encryptAllNow(values) ?? await this.engine.keys.encryptAll(values);
    } catch (err) {
      return refusal('55000', `protected column ${qualified(values[0]!.col)} cannot be encrypted now (for a write or a search): ${(err as Error).message}`);
    }
    return { edits: sites.map((site, i) => byteaEdit(site, cells[i]!)), values, sites, cells };
  }

  /** The transition rewrite of a statement touching a column `mamori protect` is converting; null when none. */
  private transitionPlan(sql: Buffer, statements: readonly StatementPlan[], catalog: DatabaseCatalog, path: readonly string[], declaredParams = 0): TransitionPlan | null | Decision {
    if (catalog.transitions.size === 0) return null;
    try {
      return planTransition(sql, statements, catalog, path, declaredParams);
    } catch (err) {
      if (err instanceof TransitionRefusal) return refusal(err.sqlstate, err.message);
      throw err;
    }
  }

  /** Transition edits with the constant edits (cells of consumed search constants go into the former). */
  private transitionSpliced(sql: Buffer, plan: TransitionPlan, lits: LiteralCells, extra: ReturnType<typeof paramCastEdit>[] = []): Buffer | Decision {
    const cellOf = new Map<LiteralSite, Buffer>(lits.sites.map((s, i) => [s, lits.cells[i]!]));
    const byteEdits = [...lits.edits.filter((_, i) => !plan.consumed.has(lits.sites[i]!)), ...extra];
    try {
      return applyTransition(sql, plan, byteEdits, (site) => {
        const c = cellOf.get(site);
        if (!c) throw new TransitionRefusal('XX000', 'internal error: a search constant was not encrypted');
        return c;
      });
    } catch (err) {
      this.engine.log.error({ err: (err as Error).message }, 'transition rewrite failed');
      if (err instanceof TransitionRefusal) return refusal(err.sqlstate, err.message);
      return refusal('0A000', 'mamori could not rewrite this statement safely; it was not run');
    }
  }

  /** Splices and verifies by re-parse; a refusal when verification fails (never a half-rewritten statement). */
  private spliced(sql: Buffer, edits: Parameters<typeof rewrite>[1], shape?: ShapeEntry): Buffer | Decision {
    try {
      return shape ? rewriteInShape(shape, sql, edits) : rewrite(sql, edits);
    } catch (err) {
      this.engine.log.error({ err: (err as Error).message }, 'rewrite verification failed');
      return refusal('0A000', 'mamori could not rewrite this statement safely; it was not run');
    }
  }

  /**
   * A rewritten statement (UTF-8) → the client encoding it came in, which the server converts from. The
   * splices are ASCII and the rest was checked to convert back byte for byte when it was read, so this is
   * the client's own text with the literals replaced; checked again here all the same.
   */
  private backToClient(utf8: Buffer, codec: ClientCodec | null): Buffer | Decision {
    if (codec === null || codec.utf8) return utf8;
    const text = utf8.toString('utf8');
    const out = codec.encode(text);
    if (out === null || codec.decode(out) !== text) return refusal('0A000', 'mamori could not rewrite this statement safely in the session\'s client_encoding; it was not run');
    return out;
  }

  private refused(sqlstate: string, message: string, sql: Buffer): Decision {
    void sql; // the refusal record is written by the session's observer (proxy/observe.ts), for every refusal
    return refusal(sqlstate, message);
  }

  private columnDecisions(statements: readonly StatementPlan[], role: RolePolicy): ColumnDecision[] {
    const out: ColumnDecision[] = [];
    for (const st of statements) {
      for (const t of st.touched) {
        const reads = t.uses.includes('read') || t.uses.includes('returning');
        out.push({ column: qualified(t.column), decision: reads ? role.read(t.column) : t.uses.join('+') } as ColumnDecision);
      }
    }
    return out;
  }

  /**
   * The intent record appended (with its search record), and the handle that completes it once `written` has
   * resolved; when `written` rejects, intentFailed() says what to answer.
   */
  private beginIntent(fp: string, command: string, columns: ColumnDecision[], extras: StatementExtras, subjects: Subjects): { handle: StatementHandle; written: Promise<void> } | null {
    const audit = this.audit;
    if (!audit) return null;
    // search records are not awaited: they share the intent's write
    if (extras.searches.length > 0) {
      void audit.record({ kind: 'search', fingerprint: fp, command, columns: extras.searches, ...subjects }).catch(() => undefined);
    }
    const started = audit.begin({ fingerprint: fp, command, columns, mode: 'protected', subjects: subjects.subjects, subjectKeyId: subjects.subjectKeyId });
    // deletions are written at completion by a wrapped handle
    if (extras.deletions.length === 0) return started;
    return { handle: withDeletions(started.handle, audit, extras.deletions, fp, command), written: started.written };
  }

  /** An intent record that could not be written: refused (failMode closed), or carried on without it (open). */
  private intentFailed(err: unknown): MamoriError | null {
    if (this.engine.config.audit.failMode === 'open') return null;
    this.engine.log.error({ err: (err as Error).message }, 'audit intent record could not be written; protected access refused');
    return AUDIT_UNAVAILABLE;
  }

  /** A per-statement collector of plaintext subjects, when the trail hashes subjects. */
  subjectCollector(): SubjectCollector | null {
    const s = this.engine.subjects;
    return s ? new SubjectCollector(s) : null;
  }

  private async loadKeysFor(statements: readonly StatementPlan[], catalog: DatabaseCatalog): Promise<void> {
    const domains = new Set<string>();
    for (const st of statements) for (const t of st.touched) {
      const cc = this.columnConfig(t.column, catalog);
      if (cc) domains.add(cc.keyDomain);
    }
    for (const d of domains) await this.engine.keys.load(d);
  }

  /**
   * Field plans for a RowDescription: protected fields by origin (table or view OID + attnum), and the fields a
   * transition rewrite serves from a column `mamori protect` is converting, by position.
   */
  fieldPlans(rowDescription: Buffer, catalog: DatabaseCatalog, role: RolePolicy, transition?: readonly TransitionField[]): FieldPlan[] {
    return this.fieldPlansOf(decodeRowDescription(rowDescription).fields, catalog, role, transition);
  }

  fieldPlansOf(fields: readonly FieldDescription[], catalog: DatabaseCatalog, role: RolePolicy, transition?: readonly TransitionField[]): FieldPlan[] {
    const plans: FieldPlan[] = [];
    fields.forEach((f, index) => {
      const tf = transition?.find((t) => t.index === index);
      if (f.tableOid === 0 && !tf) return;
      const derived = tf ? undefined : catalog.derivedByOrigin(f.tableOid, f.attnum);
      if (derived) throw new MamoriError('feature_not_supported', `result column "${f.name}" is an expression over protected column ${qualified(derived.column)}`);
      const pf = tf ? catalog.byOrigin(tf.column.tableOid!, tf.column.attnum!) : catalog.byOrigin(f.tableOid, f.attnum);
      if (!pf) {
        if (tf) throw new MamoriError('object_not_in_prerequisite_state', `protected column ${qualified(tf.column)} changed while the statement ran; run it again`);
        return;
      }
      const decision: ReadDecision = role.read(pf.column);
      if (decision === 'deny') throw new MamoriError('insufficient_privilege', `permission denied to read column "${qualified(pf.column)}"`);
      const cc = this.engine.config.columns[pf.policyKey];
      if (decision === 'plaintext' && pf.column.type.type === 'date' && !(this.session.params.get('DateStyle') ?? 'ISO').startsWith('ISO')) {
        throw new MamoriError('object_not_in_prerequisite_state', `protected date column ${qualified(pf.column)} is rendered only with DateStyle ISO (the session uses ${this.session.params.get('DateStyle')})`);
      }
      // Text columns (which may hold any characters) are rendered in the session's client encoding; where
      // mamori has no faithful converter for it they are refused rather than sent in the wrong encoding.
      // My Numbers, integers and dates are ASCII and need no conversion.
      if (decision === 'plaintext' && TEXT_TYPES.has(pf.column.type.type) && this.codec() === null) {
        throw new MamoriError('object_not_in_prerequisite_state', noConverter(pf.column, this.session.params.get('client_encoding') ?? 'UTF8'));
      }
      // A row not yet moved has no cell: read as ciphertext, it gets the deterministic cell a write would store
      // (made as the row is sent). A randomized column would need a new, counted encryption per read: refused.
      if (tf && decision === 'ciphertext' && pf.column.mode !== 'deterministic') {
        throw new MamoriError('object_not_in_prerequisite_state', `protected column ${qualified(pf.column)} is being converted: ciphertext reads of a randomized column are refused until that has finished`);
      }
      plans.push({ index, column: pf.column, action: decision as FieldAction, domainId: this.engine.keys.domainId(cc!.keyDomain), ...(tf ? { transition: true, keyDomain: cc!.keyDomain } : {}) });
    });
    return plans;
  }

  /** COPY FROM / TO of a protected table: the stream rewriters (proxy/policy/copy-stream.ts). */
  private copyTransform(copy: CopyPlan, catalog: DatabaseCatalog, role: RolePolicy, handle: StatementHandle | null): ResultTransform | MamoriError {
    return copyTransform(copy, {
      read: (c) => role.read(c),
      canExport: (c) => role.canExport?.(c) === true,
      keyDomain: (c) => this.columnConfig(c, catalog)?.keyDomain,
      domainId: (d) => this.engine.keys.domainId(d),
      keys: this.engine.keys,
      encryptAll: (items) => this.engine.keys.encryptAll(items),
      encryptAllNow: (items) => this.engine.keys.encryptAllNow(items),
      byteaOutput: this.byteaOutput,
      // COPY … (ENCODING 'x') converts the data from/to x instead of the client_encoding.
      codecFor: (e) => (e === undefined ? this.codec() : clientCodec(e, this.session.params.get('server_encoding'))),
      handle,
      subjects: handle ? this.subjectCollector() : null,
      onShredded: (col) => void this.audit?.record({ kind: 'shredded_read', columns: [{ column: qualified(col), decision: 'null' }] } as never).catch(() => undefined),
      startIn: (stream) => {
        this.copyIn = stream;
        this.session.inspectCopyIn = true;
      },
      endIn: (stream) => {
        if (this.copyIn !== stream) return;
        this.copyIn = null;
        this.session.inspectCopyIn = false;
      },
    });
  }

  rewriter(plans: FieldPlan[], formats: readonly number[], subjects: SubjectCollector | null = null): RowRewriter {
    const r = new RowRewriter(plans, formats, this.engine.keys, {
      byteaOutput: this.byteaOutput,
      codec: () => this.codec(),
      ...(subjects ? { onPlaintext: (col: ProtectedColumn, canonical: Buffer, stored?: string, format?: string) => subjects.add(col, canonical, stored, format) } : {}),
      onShredded: (col) => void this.audit?.record({ kind: 'shredded_read', columns: [{ column: qualified(col), decision: 'null' }] } as never).catch(() => undefined),
      cellMaker: (domain) => this.engine.keys.deterministicCells(domain),
    });
    // mamori_crypto_operations_total: the cells each row decrypts (plaintext and mask fields), by mode.
    const metrics = this.engine.metrics;
    const siv = plans.filter((p) => (p.action === 'plaintext' || p.action === 'mask') && p.column.mode === 'deterministic').length;
    const gcm = plans.filter((p) => (p.action === 'plaintext' || p.action === 'mask') && p.column.mode !== 'deterministic').length;
    if (metrics && siv + gcm > 0) {
      const rewrite = r.rewrite.bind(r);
      r.rewrite = (body: Buffer): Buffer => {
        const out = rewrite(body);
        if (siv) metrics.crypto('siv', 'decrypt', siv);
        if (gcm) metrics.crypto('gcm', 'decrypt', gcm);
        return out;
      };
    }
    return r;
  }

  // ---------------------------------------------------------------------------------------------------
  // Extended protocol

  private parse(frame: Frame): Decision | Promise<Decision> {
    const p = decodeParse(frame.body);
    // The query text as bytes (decodeParse's string would mangle any other client encoding).
    const nameEnd = frame.body.indexOf(0);
    const sqlEnd = frame.body.indexOf(0, nameEnd + 1);
    const readable = this.readable(frame.body.subarray(nameEnd + 1, sqlEnd));
    const may = this.mayTouchReadable(readable);
    this.statementShapes.delete(p.name);
    if (may === false && !this.roleChangedAtStartup) {
      // The outcome must settle the pending entry: a Bind after a Sync (libpq's PQprepare, then
      // PQexecPrepared) waits for it in statementPlan(); dropping onOutcome made it wait forever.
      return this.trackParse(p.name, null);
    }
    return this.parseSlow(frame.body.subarray(0, nameEnd), p.name, readable, p.paramTypes);
  }

  private trackParse(name: string, plan: StatementPlanInfo | null): Decision {
    let settle!: (ok: boolean) => void;
    const settled = new Promise<boolean>((r) => (settle = r));
    const entry = { plan, synced: false, settled };
    this.pendingParse.set(name, entry);
    const onOutcome = (ok: boolean): void => {
      if (this.pendingParse.get(name) === entry) this.pendingParse.delete(name);
      settle(ok);
    };
    return { action: 'forward', plan: plan ?? undefined, onOutcome };
  }

  private async parseSlow(nameBytes: Buffer, name: string, readable: Readable, paramTypes: number[]): Promise<Decision> {
    const sql = readable.text;
    const r = await this.analysedText(sql, readable.encoding);
    if ('action' in r) return r;
    const { analysis, catalog, role, path } = r;
    if (analysis.kind === 'unprotected') return this.trackParse(name, null);
    if (this.roleChangedAtStartup) return refusal('42501', 'this session changed its role at startup (-c role=…); protected columns are not available to it');
    const notEncrypted = plaintextStorageRefusal(analysis.statements, catalog, (c) => this.columnConfig(c, catalog)?.enforce !== false);
    if (notEncrypted) return refusal('55000', notEncrypted);
    const tplan = this.transitionPlan(sql, analysis.statements, catalog, path, paramTypes.length);
    if (tplan && 'action' in tplan) return tplan;
    this.touched = true;
    const sp = await this.sqlPrepared(analysis.statements, role, sql);
    if (sp instanceof MamoriError) return { action: 'refuse', error: sp };
    const params: ParamPlan[] = [];
    const edits = [...sp.edits];
    const direct = analysis.statements.filter((st) => !st.prepare); // a PREPARE's $n are its statement's, not this Parse's
    for (const st of direct) {
      for (const ps of st.params) {
        const prev = params.find((x) => x.index === ps.index);
        if (prev && (prev.column !== ps.column || Boolean(prev.array) !== Boolean(ps.array))) {
          return refusal('0A000', `parameter $${ps.index} is used for two different protected positions`);
        }
        if (!prev) params.push({ index: ps.index, column: ps.column, purpose: ps.purpose, ...(ps.array ? { array: true } : {}) });
        // (A search parameter of a column in transition is rewritten with its whole comparison.)
        if (ps.cast && !tplan?.consumedParams.has(ps)) edits.push(paramCastEdit(ps.cast, ps.index, ps.array === true));
      }
    }
    const lits = await this.encryptLiterals(analysis.statements, catalog, sp.sites);
    if ('action' in lits) return lits;
    let newSql = sql;
    if (tplan) {
      const rewritten = this.transitionSpliced(sql, tplan, lits, edits);
      if (!Buffer.isBuffer(rewritten)) return rewritten;
      const back = this.backToClient(rewritten, readable.codec);
      if (!Buffer.isBuffer(back)) return back;
      newSql = back;
      edits.length = 0;
    }
    edits.push(...lits.edits);
    if (!tplan && edits.length > 0) {
      const rewritten = this.spliced(sql, edits);
      if (!Buffer.isBuffer(rewritten)) return rewritten;
      const back = this.backToClient(rewritten, readable.codec);
      if (!Buffer.isBuffer(back)) return back;
      newSql = back;
    }
    await this.loadKeysFor(analysis.statements, catalog);
    const reads = analysis.statements.some((s) => s.touched.some((t) => t.uses.includes('read') || t.uses.includes('returning')))
      || sp.targets.some((t) => t.reads);
    const copyPlan = tplan?.copy ?? analysis.statements[0]?.copy; // a COPY FROM in protect's transition: its own
    const plan: StatementPlanInfo = {
      params, reads, columns: [...this.columnDecisions(analysis.statements, role), ...sp.targets.flatMap((t) => t.columns)],
      command: sp.commands.join(';'), fingerprint: this.fingerprintOf(sql, analysis), declaredTypes: paramTypes,
      extras: this.extrasOf(analysis, sp),
      search: searchedColumn(direct) ?? sp.targets.find((t) => t.search)?.search ?? null,
      ...(copyPlan ? { copy: copyPlan } : {}),
      ...(sp.executes.length > 0 ? { executes: sp.executes } : {}),
      ...(tplan ? { transition: tplan.fields } : {}),
      ...(tplan && tplan.extraParams.length > 0 ? { transitionParams: { extraParams: tplan.extraParams, clientParams: tplan.clientParams } } : {}),
    };
    const decision = this.trackParse(name, plan);
    let body = encodeParseBody(nameBytes, newSql, tplan ? transitionParamTypes(paramTypes, tplan) : paramTypes);
    const rewritten = params.length > 0 ? rewriteParseTypes(body, params) : encodeParseFromBody(body);
    body = rewritten;
    // A PREPARE run by this statement's Execute: its plan is kept once the server says PREPARE.
    return { ...decision, action: 'replace', raw: rewritten, ...(sp.preparePlans.length > 0 ? { preparePlans: sp.preparePlans } : {}) };
  }

  /** The plan of a statement as the server will use it at this point of the pipeline. */
  private async statementPlan(name: string): Promise<StatementPlanInfo | null> {
    const pending = this.pendingParse.get(name);
    if (pending) {
      // Not yet confirmed. Without a Sync since, a failed Parse makes the server skip this message too, so
      // the pending plan is the one that counts; after a Sync the answer is on its way: wait for it.
      if (!pending.synced) return pending.plan;
      const ok = await pending.settled;
      if (ok) return pending.plan;
    }
    const info = this.session.pipeline.statements.get(name);
    return (info?.plan as StatementPlanInfo | undefined) ?? null;
  }

  private bind(frame: Frame): Decision | Promise<Decision> {
    // Portal and statement names are the first two C strings of the body.
    const portalEnd = frame.body.indexOf(0);
    const stmtEnd = frame.body.indexOf(0, portalEnd + 1);
    const portal = frame.body.toString('utf8', 0, portalEnd);
    const stmt = frame.body.toString('utf8', portalEnd + 1, stmtEnd);
    this.portalShapes.delete(portal);
    this.describingPortals.delete(portal);
    if (!this.pendingParse.has(stmt) && !this.session.pipeline.statements.get(stmt)?.plan) {
      this.portals.set(portal, { plan: null, formats: bindResultFormats(frame.body, stmtEnd + 1), stmt });
      return FORWARD;
    }
    if (this.pendingParse.has(stmt)) return this.statementPlan(stmt).then((plan) => this.bindPlan(frame, portal, stmt, plan));
    return this.bindPlan(frame, portal, stmt, (this.session.pipeline.statements.get(stmt)?.plan as StatementPlanInfo | undefined) ?? null);
  }

  /** A Bind of a statement with this plan: synchronous unless something must be awaited (SQL EXECUTE checks, keys). */
  private bindPlan(frame: Frame, portal: string, stmt: string, plan: StatementPlanInfo | null): Decision | Promise<Decision> {
    const bind = decodeBind(frame.body);
    this.portals.set(portal, { plan, formats: bind.resultFormats, stmt });
    if (!plan) return FORWARD;
    if (plan.executes && plan.executes.length > 0) return this.bindExecutes(frame, portal, plan, plan.executes);
    return this.bindChecked(frame, portal, plan);
  }

  /** A Bind of a statement that runs SQL EXECUTEs: refused if one of their prepared statements changed since. */
  private async bindExecutes(frame: Frame, portal: string, plan: StatementPlanInfo, executes: { name: string; plan: StatementPlanInfo | null }[]): Promise<Decision> {
    for (const x of executes) {
      if ((await this.statementPlan(x.name)) !== x.plan) {
        return refusal('0A000', `EXECUTE ${x.name}: prepared statement "${x.name}" changed since the statement that executes it was parsed; parse it again`);
      }
    }
    return this.bindChecked(frame, portal, plan);
  }

  private bindChecked(frame: Frame, portal: string, plan: StatementPlanInfo): Decision | Promise<Decision> {
    const limited = this.searchLimit.checkArrays(frame.body, plan.params) ?? this.searchLimit.admit(plan.search ?? null);
    if (limited) return { action: 'refuse', error: limited };
    if (plan.params.length === 0) return { action: 'forward', plan };
    // Two passes: collect the normalized values (validating them), encrypt them (async: counted, refused
    // while the domain rotates), then build the Bind with the cells.
    const collected: { domain: string; canonical: Buffer; col: ProtectedColumn }[] = [];
    const placeholder = Buffer.alloc(0);
    try {
      encryptBindParams(frame.body, plan.params, (col, canonical) => {
        collected.push({ domain: '', canonical, col });
        return placeholder;
      }, plan.declaredTypes, this.codec());
    } catch (err) {
      if (err instanceof ParamError) return refusal(err.sqlstate, err.message);
      throw err;
    }
    const now = this.encryptParamsNow(collected);
    if (now) return Array.isArray(now) ? this.boundWithCells(frame, portal, plan, collected, now) : now;
    return this.bindEncrypt(frame, portal, plan, collected);
  }

  /** Cells for a Bind's protected parameters when keys and catalog are at hand; null: await them. */
  private encryptParamsNow(collected: { domain: string; canonical: Buffer; col: ProtectedColumn }[]): Buffer[] | Decision | null {
    const entry = this.engine.catalogSync(this.session.database);
    if (!entry) return null;
    try {
      for (const c of collected) {
        const cc = this.columnConfig(c.col, entry.enforced);
        if (!cc) return refusal('0A000', `column ${qualified(c.col)} has no policy`);
        c.domain = cc.keyDomain;
      }
      return this.engine.keys.encryptAllNow(collected);
    } catch (err) {
      return refusal('55000', `a protected column cannot be encrypted now (for a write or a search): ${(err as Error).message}`);
    }
  }

  private async bindEncrypt(frame: Frame, portal: string, plan: StatementPlanInfo, collected: { domain: string; canonical: Buffer; col: ProtectedColumn }[]): Promise<Decision> {
    let cells: Buffer[];
    try {
      const entry = await this.engine.catalog(this.session.database);
      for (const c of collected) {
        const cc = this.columnConfig(c.col, entry.enforced);
        if (!cc) return refusal('0A000', `column ${qualified(c.col)} has no policy`);
        c.domain = cc.keyDomain;
      }
      cells = await this.engine.keys.encryptAll(collected);
    } catch (err) {
      return refusal('55000', `a protected column cannot be encrypted now (for a write or a search): ${(err as Error).message}`);
    }
    return this.boundWithCells(frame, portal, plan, collected, cells);
  }

  /** The Bind with its protected parameters replaced by their cells (and the transition's parameters added). */
  private boundWithCells(frame: Frame, portal: string, plan: StatementPlanInfo, collected: { domain: string; canonical: Buffer; col: ProtectedColumn }[], cells: Buffer[]): Decision {
    const bound = this.portals.get(portal);
    if (bound) bound.subjects = hashValues(this.engine.subjects, collected);
    let i = 0;
    let raw = encryptBindParams(frame.body, plan.params, () => cells[i++]!, plan.declaredTypes, this.codec());
    if (plan.transitionParams) {
      try {
        raw = appendTransitionParams(frame.body, raw, plan.transitionParams);
      } catch (err) {
        if (err instanceof TransitionRefusal) return refusal(err.sqlstate, err.message);
        throw err;
      }
    }
    return { action: 'replace', raw, plan };
  }

  private describe(frame: Frame): Decision | Promise<Decision> {
    const d = decodeDescribe(frame.body);
    if (d.target === 'S') {
      if (!this.pendingParse.has(d.name) && !this.session.pipeline.statements.get(d.name)?.plan) return this.captureShape('S', d.name);
      return this.describeStatement(d.name);
    }
    const bound = this.portals.get(d.name);
    if (bound && !bound.plan) return this.captureShape('P', d.name);
    return this.describePortal(d.name, bound?.formats ?? []);
  }

  /**
   * The client's Describe of a statement or portal on the fast path: its result shape is kept (copied) so
   * that an Execute of it knows which fields can carry cells without asking the server itself.
   */
  private captureShape(target: 'S' | 'P', name: string): Decision {
    const searchPath = this.pathKey;
    if (target === 'P') {
      // A statement's rows have its shape whatever portal runs it: known already, nothing to capture.
      const stmt = this.portals.get(name)?.stmt;
      if (stmt !== undefined && this.statementShapes.get(stmt)?.searchPath === searchPath) return FORWARD;
    }
    const inFlight = target === 'S' ? this.describingStatements : this.describingPortals;
    inFlight.add(name);
    const keep = (rd: Buffer | null): void => {
      inFlight.delete(name);
      const stmt = target === 'S' ? name : this.portals.get(name)?.stmt;
      if (stmt !== undefined) this.statementShapes.set(stmt, { rowDescription: rd, searchPath });
      if (target === 'P') this.portalShapes.set(name, rd);
    };
    const transform: ResultTransform = {
      message: (f) => {
        // Kept (copied) only when some field can carry a cell: null means its rows need no look.
        if (f.type === BE.RowDescription) keep(mayCarryCells(f.body) ? Buffer.from(f.body) : null);
        else if (f.type === BE.NoData) keep(null);
        return null;
      },
    };
    return { action: 'forward', transform };
  }

  private async describeStatement(name: string): Promise<Decision> {
    const plan = await this.statementPlan(name);
    if (!plan) return this.captureShape('S', name);
    const entry = await this.engine.catalog(this.session.database);
    const identity = await this.ensureIdentity();
    const role = this.cachedRole(identity, entry.enforced);
    const transform: ResultTransform = {
      message: (f) => {
        if (f.type === BE.ParameterDescription && plan.params.length > 0) {
          const full = rewriteParameterDescription(f.body, plan.params.map((p) => ({ index: p.index - 1, column: p.column, ...(p.array ? { array: true } : {}) })));
          return plan.transitionParams ? hideTransitionParams(full, plan.transitionParams.clientParams) : full;
        }
        if (f.type === BE.RowDescription) {
          const plans = this.fieldPlans(f.body, entry.enforced, role, plan.transition);
          return plans.length > 0 ? rewriteRowDescription(f.body, plans) : null;
        }
        return null;
      },
    };
    return { action: 'forward', transform };
  }

  private describePortal(name: string, formats: readonly number[]): Decision | Promise<Decision> {
    const ready = this.readyNow();
    return ready ? this.describePortalWith(name, ready.entry, ready.role) : this.describePortalSlow(name, formats);
  }

  private async describePortalSlow(name: string, formats: readonly number[]): Promise<Decision> {
    void formats;
    const entry = await this.engine.catalog(this.session.database);
    const identity = await this.ensureIdentity();
    return this.describePortalWith(name, entry, this.cachedRole(identity, entry.enforced));
  }

  private describePortalWith(name: string, entry: CatalogEntry, role: RolePolicy): Decision {
    const transition = this.portals.get(name)?.plan?.transition;
    const transform: ResultTransform = {
      message: (f) => {
        if (f.type !== BE.RowDescription) return null;
        this.portalShapes.set(name, Buffer.from(f.body));
        const plans = this.fieldPlans(f.body, entry.enforced, role, transition);
        return plans.length > 0 ? rewriteRowDescription(f.body, plans) : null;
      },
    };
    return { action: 'forward', transform };
  }

  private execute(frame: Frame): Decision | Promise<Decision> {
    const x = decodeExecute(frame.body);
    const bound = this.portals.get(x.portal);
    if (bound && !bound.plan) return this.watchedExecute(x.portal, bound);
    // A portal mamori did not bind (a SQL cursor, say) is looked at too: its rows may be protected.
    return this.executeNow(x.portal, bound) ?? this.executeSlow(x.portal, bound ?? null);
  }

  /**
   * An Execute decided without waiting: its statement's plan and result shape are known, keys, catalog and
   * identity are current, and no audit intent must be written first. Null: take executeSlow().
   */
  private executeNow(portalName: string, bound: BoundPortal | undefined): Decision | null {
    const plan = bound?.plan;
    if (!bound || !plan || plan.copy || this.audit) return null;
    const ready = this.readyNow();
    if (!ready) return null;
    const shape = this.knownShape(portalName, plan, ready.entry);
    if (shape === undefined) return null;
    const f = this.executeFields(shape, bound, ready.entry.enforced, ready.role);
    if (f instanceof MamoriError) return { action: 'refuse', error: f };
    return this.executeDecision(plan, f, ready.entry.enforced, ready.role, null);
  }

  /**
   * The rows' shape as already known: from the client's own Describe of this portal, else the statement's
   * cached shape (keyed by catalog load and search_path: PostgreSQL re-analyses a prepared statement when
   * search_path changes). Undefined: not known, ask the server.
   */
  private knownShape(portalName: string, plan: StatementPlanInfo | null, entry: CatalogEntry): Buffer | null | undefined {
    const own = this.portalShapes.get(portalName);
    if (own) return own;
    const cached = plan?.shape;
    if (cached && cached.catalogLoadId === entry.catalog.loadId && cached.searchPath === this.pathKey) return cached.rowDescription;
    return undefined;
  }

  /** Fields, result formats and field plans of an Execute's rows (a refusal when a field may not be read). */
  private executeFields(shape: Buffer | null, bound: BoundPortal | null, catalog: DatabaseCatalog, role: RolePolicy): ExecuteFields | MamoriError {
    // A prepared statement re-executed with its kept shape gets the same fields and plans: kept with the shape
    // (the RowDescription buffer, replaced when the shape changes) while catalog load, role policy, transition
    // and result formats are the same.
    const transition = bound?.plan?.transition;
    const formatsKey = (bound?.formats ?? []).join(',');
    const kept = shape ? this.fieldsMemo.get(shape) : undefined;
    if (kept && kept.catalog === catalog && kept.role === role && kept.transition === transition && kept.formatsKey === formatsKey) return kept.fields;
    const fields = shape ? decodeRowDescription(shape).fields : [];
    const formats = expandFormats(bound?.formats ?? [], fields.length);
    if (!shape) return { fields, formats, plans: [] };
    try {
      const f: ExecuteFields = { fields, formats, plans: this.fieldPlansOf(fields, catalog, role, transition) };
      this.fieldsMemo.set(shape, { catalog, role, transition, formatsKey, fields: f });
      return f;
    } catch (err) {
      if (err instanceof MamoriError) return err;
      throw err;
    }
  }

  private readonly fieldsMemo = new WeakMap<Buffer, { catalog: DatabaseCatalog; role: RolePolicy; transition: unknown; formatsKey: string; fields: ExecuteFields }>();
  /** Row rewriters kept with the fields they were built for (only those without a per-statement collector). */
  private readonly rewriterMemo = new WeakMap<ExecuteFields, { byteaOutput: string; rewriter: RowRewriter }>();

  private executeDecision(plan: StatementPlanInfo | null, f: ExecuteFields, catalog: DatabaseCatalog, role: RolePolicy, handle: StatementHandle | null): Decision {
    const rewriterPlans = f.plans;
    const collector = handle ? this.subjectCollector() : null;
    const reads = this.originReadsAudit();
    const origin = catalog.protectedColumns.length > 0
      ? this.originInspector(f.fields, rewriterPlans, f.formats, catalog, role, collector, reads) : null;
    if (rewriterPlans.length === 0 && !handle && !origin) return FORWARD;
    let rewriter: RowRewriter | null = null;
    if (rewriterPlans.length > 0) {
      const kept = collector ? undefined : this.rewriterMemo.get(f);
      if (kept && kept.byteaOutput === this.byteaOutput) rewriter = kept.rewriter;
      else {
        rewriter = this.rewriter(rewriterPlans, f.formats, collector);
        if (!collector) this.rewriterMemo.set(f, { byteaOutput: this.byteaOutput, rewriter });
      }
    }
    const transform = new ExecuteResults(this, rewriter, handle, collector, origin, reads);
    transform.decision = decisionLabel(plan?.columns ?? rewriterPlans.map((p) => ({ column: qualified(p.column), decision: p.action })));
    return { action: 'forward', transform };
  }

  /**
   * Execute of a portal on the fast path: forwarded as is; when its result has fields that can carry a cell,
   * their values are inspected (DESIGN.md §5). The shape comes from the client's Describe of the portal or
   * statement, else mamori describes the portal itself once and keeps the shape with the statement.
   */
  private watchedExecute(portal: string, bound: BoundPortal): Decision | Promise<Decision> {
    const ctx = this.originContextSync();
    return ctx ? this.watchedExecuteWith(portal, bound, ctx) : this.originContext().then((c) => this.watchedExecuteWith(portal, bound, c));
  }

  private watchedExecuteWith(portal: string, bound: BoundPortal, ctx: OriginContext): Decision | Promise<Decision> {
    if (ctx.catalog.protectedColumns.length === 0) return FORWARD;
    const searchPath = this.pathKey;
    const known = (): Buffer | null | undefined => {
      const p = this.portalShapes.get(portal);
      if (p !== undefined || bound.stmt === undefined) return p;
      const st = this.statementShapes.get(bound.stmt);
      return st && st.searchPath === searchPath ? st.rowDescription : undefined;
    };
    const shape = known();
    if (shape !== undefined) return this.watchedRows(shape, bound.formats, ctx) ?? FORWARD;
    if (this.describingPortals.has(portal) || (bound.stmt !== undefined && this.describingStatements.has(bound.stmt))) {
      // The client's own Describe is answered before this Execute's rows: read the shape then.
      return { action: 'forward', transform: new LazyResults(() => {
        const s = known();
        return s === undefined ? null : this.watchedRows(s, bound.formats, ctx)?.transform ?? null;
      }) };
    }
    return this.describeThenWatch(portal, bound, ctx, searchPath);
  }

  /** No Describe from the client (nor a kept shape): mamori describes the portal once, kept with the statement. */
  private async describeThenWatch(portal: string, bound: BoundPortal, ctx: OriginContext, searchPath: string): Promise<Decision> {
    const shape = await this.describeShape(portal);
    if (shape === undefined) return FORWARD; // skipped or failed: the server skips this Execute too
    if (bound.stmt !== undefined) this.statementShapes.set(bound.stmt, { rowDescription: shape, searchPath });
    return this.watchedRows(shape, bound.formats, ctx) ?? FORWARD;
  }

  /** The transform of a fast-path Execute (only fields of unknown origin are looked at, by their cell header), or null. */
  private watchedRows(shape: Buffer | null, bindFormats: readonly number[], ctx: OriginContext): { action: 'forward'; transform: ResultTransform } | null {
    // No row shape (NoData): a COPY … TO STDOUT among such statements has its CopyData searched for cells.
    if (shape === null) return { action: 'forward', transform: new CopyOutWatch(this, ctx) };
    const fields = decodeRowDescription(shape).fields;
    const formats = expandFormats(bindFormats, fields.length);
    const reads = this.originReadsAudit();
    const origin = this.originInspector(fields, [], formats, ctx.catalog, ctx.role, null, reads);
    return origin ? { action: 'forward', transform: new ExecuteResults(this, null, null, null, origin, reads) } : null;
  }

  /** Describe(portal) injected before the client's Execute: its RowDescription, null (NoData), undefined (skipped or failed). */
  private describeShape(portal: string): Promise<Buffer | null | undefined> {
    return new Promise((resolve) => {
      this.session.inject([encodeDescribe({ target: 'P', name: portal })], ['describe'], {
        response: (f) => {
          if (f.type === BE.RowDescription) resolve(Buffer.from(f.body));
          else if (f.type === BE.NoData) resolve(null);
          else if (f.type === BE.ErrorResponse) resolve(undefined);
        },
        skipped: () => resolve(undefined),
      });
    });
  }

  private async executeSlow(portalName: string, bound: BoundPortal | null): Promise<Decision> {
    await this.engine.refreshKeys(); // versions added by another process (mamori keys rotate) since the Parse
    const entry = await this.engine.catalog(this.session.database);
    const identity = await this.ensureIdentity();
    const role = this.rolePolicy(identity, entry.enforced);
    const plan = bound?.plan ?? null;
    if (plan?.copy) {
      const h = await this.intentFor(plan, bound?.subjects);
      if (h instanceof MamoriError) return { action: 'refuse', error: h };
      const t = this.copyTransform(plan.copy, entry.enforced, role, h);
      return t instanceof MamoriError ? { action: 'refuse', error: t } : { action: 'forward', transform: t };
    }
    // The rows' shape: known (the client's Describe, the statement's cached shape), else mamori asks the
    // server first (and caches it with the statement).
    let shape = this.knownShape(portalName, plan, entry);
    if (shape === undefined) {
      const pathKey = this.pathKey;
      shape = await this.describeFirst(portalName);
      if (plan) plan.shape = { rowDescription: shape, catalogLoadId: entry.catalog.loadId, searchPath: pathKey };
    }
    const f = this.executeFields(shape, bound, entry.enforced, role);
    if (f instanceof MamoriError) return { action: 'refuse', error: f };
    let handle: StatementHandle | null = null;
    if (plan || f.plans.length > 0) {
      const h = await this.intentFor(plan, bound?.subjects);
      if (h instanceof MamoriError) return { action: 'refuse', error: h };
      handle = h;
    }
    return this.executeDecision(plan, f, entry.enforced, role, handle);
  }

  /** An Execute's intent record, written (to the OS) before it runs; refused when it cannot be written. */
  private intentFor(plan: StatementPlanInfo | null, subjects: Subjects = {}): Promise<StatementHandle | null | MamoriError> | null {
    const started = plan ? this.beginIntent(plan.fingerprint, plan.command, plan.columns, plan.extras, subjects) : null;
    return started ? started.written.then(() => started.handle, (err: unknown) => this.intentFailed(err)) : null;
  }

  /** Injects Describe(portal) before the client's Execute and returns the RowDescription (null: no rows). */
  private describeFirst(portal: string): Promise<Buffer | null> {
    return new Promise((resolve) => {
      let shape: Buffer | null = null;
      this.session.inject([encodeDescribe({ target: 'P', name: portal })], ['describe'], {
        response: (f) => {
          if (f.type === BE.RowDescription) shape = Buffer.from(f.body);
          if (f.type === BE.RowDescription || f.type === BE.NoData || f.type === BE.ErrorResponse) resolve(shape);
        },
        skipped: () => resolve(null),
      });
    });
  }
}

/** Rows of a simple Query: each RowDescription starts a result set whose protected fields are rewritten. */
class QueryResults implements ResultTransform {
  private rewriter: RowRewriter | null = null;
  private origin: OriginInspector | null = null;
  private reads: OriginReads | null = null;
  /** No field of the current result set needs a look (read by the session's framer: rows may stream). */
  passRows = true;
  /** mamori ended the result with its own error: the rest of the Query's answers are dropped by the session. */
  private ended = false;
  /** A COPY TO in progress that is not a protected table's (a protected one takes copyTransform): binary or text. */
  private copyOut: { binary: boolean } | null = null;
  private rows = 0;
  /** Rows as the command tags count them (DELETE 3 …), summed over the Query's statements; null if none said. */
  private tagged: number | null = null;
  /** The metrics decision label (proxy/observe.ts reads it). */
  decision = 'none';
  private readonly subjects: SubjectCollector | null;
  constructor(
    private readonly policy: SessionPolicy,
    private readonly catalog: DatabaseCatalog,
    private readonly role: RolePolicy,
    private readonly handle: StatementHandle | null,
    private readonly transition?: readonly TransitionField[],
  ) {
    this.subjects = handle ? policy.subjectCollector() : null;
    this.recorded = handle !== null;
  }

  /** True when this statement has its own intent/completion records (`statements: all` skips it). */
  readonly recorded: boolean;
  private failed = false;

  message(f: Frame): Buffer | null {
    if (this.ended && f.type !== BE.ReadyForQuery) return null;
    switch (f.type) {
      case BE.RowDescription: {
        this.reads?.done(this.rows, null);
        this.reads = null;
        // Nothing protected by origin or in transition and no field that can carry a cell: rows pass (and may stream).
        if (!this.transition?.length && !this.policy.needsLook(f.body, this.catalog)) {
          this.rewriter = null;
          this.origin = null;
          this.passRows = true;
          return null;
        }
        const fields = decodeRowDescription(f.body).fields;
        let plans: FieldPlan[];
        try {
          plans = this.policy.fieldPlansOf(fields, this.catalog, this.role, this.transition);
        } catch (err) {
          if (err instanceof MamoriError) return this.end(err);
          throw err;
        }
        // A simple Query's RowDescription carries the real formats (binary for a BINARY cursor's FETCH).
        const formats = fields.map((x) => x.format);
        this.rewriter = plans.length > 0 ? this.policy.rewriter(plans, formats, this.subjects) : null;
        this.reads = this.policy.originReadsAudit();
        this.origin = this.policy.originInspector(fields, plans, formats, this.catalog, this.role, this.subjects, this.reads);
        this.passRows = this.rewriter === null && this.origin === null;
        return plans.length > 0 ? rewriteRowDescription(f.body, plans) : null;
      }
      case BE.DataRow:
        this.rows++;
        if (this.passRows) return null;
        try {
          return rowOut(f.body, this.rewriter, this.origin);
        } catch (err) {
          if (err instanceof OriginRefusal) return this.end(err.error);
          throw err;
        }
      case BE.CopyOutResponse:
        this.copyOut = { binary: decodeCopyResponse(f.body, 'CopyOutResponse').format === 1 };
        this.passRows = false;
        return null;
      case BE.CopyData: {
        if (!this.copyOut) return null;
        const d = copyCellDomain(f.body, this.copyOut.binary);
        const refused = d >= 0 ? this.policy.copyOriginRefusal(d, this.catalog, this.role) : null;
        return refused ? this.end(refused) : null;
      }
      case BE.CommandComplete: {
        this.copyOut = null;
        this.rewriter = null;
        this.origin = null;
        this.passRows = true;
        if (!this.handle) return null;
        const n = commandRows(f.body);
        if (n !== null) this.tagged = (this.tagged ?? 0) + n;
        return null;
      }
      case BE.ReadyForQuery:
        this.reads?.done(this.rows, this.ended ? '42501' : null);
        // once per Query: an ErrorResponse already completed it (the ReadyForQuery after it must not again)
        if (!this.failed) void this.handle?.complete({ rows: this.tagged ?? this.rows, sqlstate: null, ...this.subjects?.take() }).catch(ignore);
        return null;
      case BE.ErrorResponse:
        if (!this.failed) void this.handle?.complete({ rows: this.tagged ?? this.rows, sqlstate: errorSqlstate(f.body), ...this.subjects?.take() }).catch(ignore);
        this.failed = true;
        return null;
      default:
        return null;
    }
  }

  /** Ends the Query with mamori's error in place of the message being routed (see SessionPolicy.endResult). */
  private end(err: MamoriError): Buffer {
    this.ended = true;
    this.passRows = true;
    if (!this.failed) void this.handle?.complete({ rows: this.rows, sqlstate: err.sqlstate, ...this.subjects?.take() }).catch(ignore);
    this.failed = true;
    return this.policy.endResult(err);
  }
}

/** Rows of one Execute. */
class ExecuteResults implements ResultTransform {
  private rows = 0;
  /** The metrics decision label (proxy/observe.ts reads it). */
  decision = 'none';
  /** No field needs a look (read by the session's framer: rows may stream). */
  passRows: boolean;
  private ended = false;
  constructor(
    private readonly policy: SessionPolicy,
    private readonly rewriter: RowRewriter | null,
    private readonly handle: StatementHandle | null,
    private readonly subjects: SubjectCollector | null = null,
    private readonly origin: OriginInspector | null = null,
    private readonly reads: OriginReads | null = null,
  ) {
    this.recorded = handle !== null;
    this.passRows = rewriter === null && origin === null;
  }

  /** True when this statement has its own intent/completion records (`statements: all` skips it). */
  readonly recorded: boolean;

  message(f: Frame): Buffer | null {
    if (this.ended) return null;
    switch (f.type) {
      case BE.DataRow:
        this.rows++;
        if (this.passRows) return null;
        try {
          return rowOut(f.body, this.rewriter, this.origin);
        } catch (err) {
          if (!(err instanceof OriginRefusal)) throw err;
          this.ended = true;
          void this.handle?.complete({ rows: this.rows, sqlstate: err.error.sqlstate, ...this.subjects?.take() }).catch(ignore);
          this.reads?.done(this.rows, err.error.sqlstate);
          return this.policy.endResult(err.error);
        }
      case BE.CommandComplete:
        void this.handle?.complete({ rows: commandRows(f.body) ?? this.rows, sqlstate: null, ...this.subjects?.take() }).catch(ignore);
        this.reads?.done(this.rows, null);
        return null;
      case BE.PortalSuspended:
        this.reads?.done(this.rows, null);
        return null;
      case BE.ErrorResponse:
        void this.handle?.complete({ rows: this.rows, sqlstate: errorSqlstate(f.body), ...this.subjects?.take() }).catch(ignore);
        this.reads?.done(this.rows, errorSqlstate(f.body));
        return null;
      default:
        return null;
    }
  }
}

/** The result formats of a Bind body, read past its parameters without copying them (`at`: after the statement name). */
function bindResultFormats(body: Buffer, at: number): number[] {
  let pos = at;
  const nParamFormats = body.readUInt16BE(pos);
  pos += 2 + 2 * nParamFormats;
  const nParams = body.readUInt16BE(pos);
  pos += 2;
  for (let i = 0; i < nParams; i++) {
    const len = body.readInt32BE(pos);
    pos += 4 + (len > 0 ? len : 0);
  }
  const n = body.readUInt16BE(pos);
  pos += 2;
  if (pos + 2 * n > body.length) throw new RangeError('Bind: message is truncated');
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = body.readUInt16BE(pos + 2 * i);
  return out;
}

/**
 * The results of an Execute whose shape is known only once the client's own Describe is answered (which the
 * server does before the Execute's rows): the real transform is made at the first message routed to it.
 */
class LazyResults implements ResultTransform {
  private inner: ResultTransform | null | undefined;
  constructor(private readonly make: () => ResultTransform | null) {}

  private get resolved(): ResultTransform | null {
    if (this.inner === undefined) this.inner = this.make();
    return this.inner;
  }

  get passRows(): boolean {
    const t = this.resolved;
    return t === null || t.passRows === true;
  }

  message(f: Frame): Buffer | null {
    return this.resolved?.message(f) ?? null;
  }
}

/** One DataRow through the protected-field rewriter and the unknown-origin inspector; null: unchanged. */
function rowOut(body: Buffer, rewriter: RowRewriter | null, origin: OriginInspector | null): Buffer | null {
  const out = rewriter ? rewriter.rewrite(body) : null;
  if (!origin) return out;
  return origin.inspect(out ? out.subarray(5) : body) ?? out;
}

/**
 * A fast-path Execute without a row shape (NoData): if it turns out to be `COPY … TO STDOUT`, its CopyData is
 * searched for cell headers and decided as a simple Query's COPY is (only ciphertext readers get such rows).
 */
class CopyOutWatch implements ResultTransform {
  private copyOut: { binary: boolean } | null = null;
  private ended = false;

  constructor(private readonly policy: SessionPolicy, private readonly ctx: OriginContext) {}

  message(f: Frame): Buffer | null {
    if (this.ended) return null;
    if (f.type === BE.CopyOutResponse) {
      this.copyOut = { binary: decodeCopyResponse(f.body, 'CopyOutResponse').format === 1 };
      return null;
    }
    if (f.type !== BE.CopyData || !this.copyOut) return null;
    const d = copyCellDomain(f.body, this.copyOut.binary);
    const refused = d >= 0 ? this.policy.copyOriginRefusal(d, this.ctx.catalog, this.ctx.role) : null;
    if (!refused) return null;
    this.ended = true;
    return this.policy.endResult(refused);
  }
}

/**
 * The audit of cells of unknown origin released by one result set: an intent record per column, written when
 * the first cell of that column is found; the session holds its output to the client (the row carrying the
 * cell and everything after it) until the record has reached the OS — or ends, fail closed, when it cannot.
 * Completed with the row count when the result set ends.
 */
export class OriginReads {
  private columns = new Set<string>();
  private handles: Array<Promise<StatementHandle | null>> = [];

  constructor(
    private readonly intent: ((columns: ColumnDecision[]) => Promise<StatementHandle>) | null,
    /** Holds the client's output until the gate settles (false: the intent is lost and failMode is closed). */
    private readonly hold: ((gate: Promise<boolean>) => void) | null = null,
    private readonly failOpen = false,
  ) {}

  release(column: ProtectedColumn, action: FieldAction): void {
    if (!this.intent) return;
    const name = qualified(column);
    if (this.columns.has(name)) return;
    this.columns.add(name);
    const written = this.intent([{ column: name, decision: action } as ColumnDecision]);
    this.handles.push(written.catch(() => null));
    this.hold?.(written.then(() => true, () => this.failOpen));
  }

  done(rows: number, sqlstate: string | null): void {
    if (this.handles.length === 0 && this.columns.size === 0) return; // no cell of unknown origin released
    const hs = this.handles;
    this.handles = [];
    this.columns = new Set();
    for (const h of hs) void h.then((x) => x?.complete({ rows, sqlstate })).catch(() => undefined);
  }
}

/** Search and deletion records of several statements in one. */
function mergeExtras(all: readonly StatementExtras[]): StatementExtras {
  if (all.length === 1) return all[0]!;
  const searches = all.flatMap((x) => x.searches).filter((s, i, a) => a.findIndex((y) => y.column === s.column) === i);
  return { searches, deletions: all.flatMap((x) => x.deletions) };
}



export function qualified(c: ProtectedColumn): string {
  return `${c.schema}.${c.table}.${c.column}`;
}

/** search_path text → schema names as PostgreSQL reads them (quoted kept, unquoted folded). */
export function parseSearchPath(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split(',')) {
    const s = raw.trim();
    if (s === '') continue;
    if (s.startsWith('"') && s.endsWith('"')) out.push(s.slice(1, -1).replace(/""/g, '"'));
    else out.push(s.toLowerCase());
  }
  return out;
}

function noConverter(c: ProtectedColumn, encoding: string): string {
  return `protected column ${qualified(c)} cannot be rendered in client_encoding ${encoding}: mamori has no converter for it (docs/results.md lists the encodings it converts)`;
}

function isAscii(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i]! >= 0x80) return false;
  return true;
}

/** The Parse's declared types with mamori's added parameters: each declared as the client declared its source. */
function transitionParamTypes(declared: readonly number[], plan: TransitionPlan): number[] {
  if (plan.extraParams.length === 0) return [...declared];
  const out = Array.from({ length: plan.clientParams + plan.extraParams.length }, (_, i) => declared[i] ?? 0);
  for (const x of plan.extraParams) out[x.index - 1] = declared[x.from - 1] ?? 0;
  return out;
}

function encodeQueryRaw(sql: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + sql.length + 1);
  out[0] = FE.Query;
  out.writeInt32BE(4 + sql.length + 1, 1);
  sql.copy(out, 5);
  out[5 + sql.length] = 0;
  return out;
}

/** A Parse body (no header) for name + SQL bytes + declared types. */
function encodeParseBody(name: Buffer, sql: Buffer, types: readonly number[]): Buffer {
  const body = Buffer.allocUnsafe(name.length + 1 + sql.length + 1 + 2 + 4 * types.length);
  let o = name.copy(body, 0);
  body[o++] = 0;
  o += sql.copy(body, o);
  body[o++] = 0;
  body.writeUInt16BE(types.length, o);
  o += 2;
  for (const t of types) {
    body.writeUInt32BE(t >>> 0, o);
    o += 4;
  }
  return body;
}

function encodeParseFromBody(body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = FE.Parse;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

export { errorResponse };
