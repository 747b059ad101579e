// Every metric mamori exports, defined in one place on one prom-client Registry, prefixed `mamori_`.
// Label values come only from the fixed enums below (anything else is counted as `other`), so cardinality is
// bounded by construction; SQL text never becomes a label, and user names only when `metrics.userLabels` is on.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AuditObserver } from './audit/trail.js';

export const COMMANDS = ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'MERGE', 'COPY', 'TRUNCATE', 'DDL', 'TRANSACTION', 'SET', 'CALL', 'OTHER'] as const;
export type CommandLabel = (typeof COMMANDS)[number];
export const DECISIONS = ['none', 'plaintext', 'mask', 'null', 'ciphertext', 'deny', 'write', 'search', 'mixed'] as const;
export type StatementDecision = (typeof DECISIONS)[number];
export const REJECT_REASONS = ['tls_required', 'auth_failed', 'cert_required', 'not_allowed', 'too_many', 'startup_error', 'upstream_unavailable', 'shutting_down', 'other'] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];
export const REFUSAL_REASONS = ['deny', 'search_limit', 'unparseable', 'protected_write', 'plaintext_write', 'audit_unavailable', 'unsupported', 'copy', 'pending_approval', 'other'] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];
export const UPSTREAM_ERRORS = ['connect', 'tls', 'auth', 'reset', 'timeout', 'protocol', 'other'] as const;
export type UpstreamErrorKind = (typeof UPSTREAM_ERRORS)[number];
export const CRYPTO_MODES = ['gcm', 'siv', 'kms', 'local'] as const;
export type CryptoMode = (typeof CRYPTO_MODES)[number];
export const CRYPTO_OPS = ['encrypt', 'decrypt', 'wrap', 'unwrap', 'hmac'] as const;
export type CryptoOp = (typeof CRYPTO_OPS)[number];
export const MEMBERSHIP_ACTIONS = ['grant', 'revoke', 'pending', 'approve', 'reject', 'password_change'] as const;
export type MembershipAction = (typeof MEMBERSHIP_ACTIONS)[number];
export const READY_CHECKS = ['upstream', 'keyring', 'audit', 'catalog'] as const;

/** Maps a command tag from the wire (`SELECT 3`, `CREATE TABLE`, `BEGIN` …) to a bounded label. */
export function commandLabel(tag: string): CommandLabel {
  const word = tag.trim().split(/\s+/)[0]?.toUpperCase() ?? '';
  if ((COMMANDS as readonly string[]).includes(word)) return word as CommandLabel;
  if (['CREATE', 'ALTER', 'DROP', 'COMMENT', 'GRANT', 'REVOKE'].includes(word)) return 'DDL';
  if (['BEGIN', 'COMMIT', 'ROLLBACK', 'START', 'SAVEPOINT', 'RELEASE', 'PREPARE', 'END', 'ABORT'].includes(word)) return 'TRANSACTION';
  if (['RESET', 'SHOW', 'DISCARD'].includes(word)) return 'SET';
  return 'OTHER';
}

function bounded<T extends string>(allowed: readonly T[], value: string, fallback: T): T {
  return (allowed as readonly string[]).includes(value) ? (value as T) : fallback;
}

export interface MetricsOptions {
  /** Add a `user` label to statement and refusal counters (off by default: users can be many). */
  userLabels?: boolean;
  /** process_* and nodejs_* defaults from prom-client (on by default). */
  defaults?: boolean;
}

export interface Metrics {
  readonly registry: Registry;
  readonly contentType: string;
  connectionOpened(): void;
  connectionClosed(): void;
  connectionRejected(reason: RejectReason): void;
  /** One finished statement: its command tag, the strongest decision it involved, and its duration. */
  statement(commandTag: string, decision: StatementDecision, seconds: number, user?: string): void;
  upstreamError(kind: UpstreamErrorKind): void;
  bytes(side: 'client' | 'upstream', direction: 'in' | 'out', n: number): void;
  crypto(mode: CryptoMode, op: CryptoOp, n?: number): void;
  keyCache(hit: boolean): void;
  refusal(reason: RefusalReason, user?: string): void;
  search(limitHit: boolean): void;
  configReload(ok: boolean): void;
  membershipChange(action: MembershipAction): void;
  /** Readiness as last probed (each check 1 or 0), so alerts need not scrape /readyz. */
  readiness(checks: Record<string, boolean>): void;
  /** Hooks for AuditTrail: records written and lost, write latency. */
  readonly audit: Required<AuditObserver>;
  render(): Promise<string>;
}

export function createMetrics(opts: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  const userLabels = opts.userLabels === true;
  if (opts.defaults !== false) collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const connActive = new Gauge({ name: 'mamori_connections_active', help: 'Client connections open now', registers });
  const connTotal = new Counter({ name: 'mamori_connections_total', help: 'Client connections accepted', registers });
  const connRejected = new Counter({ name: 'mamori_connections_rejected_total', help: 'Client connections refused, by reason', labelNames: ['reason'], registers });
  const stmtLabels = userLabels ? ['command', 'decision', 'user'] : ['command', 'decision'];
  const statements = new Counter({ name: 'mamori_statements_total', help: 'Statements completed, by command and policy decision', labelNames: stmtLabels, registers });
  const duration = new Histogram({
    name: 'mamori_statement_duration_seconds',
    help: 'Statement duration through mamori, by command',
    labelNames: ['command'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers,
  });
  const upstreamErrors = new Counter({ name: 'mamori_upstream_errors_total', help: 'Errors talking to PostgreSQL, by kind', labelNames: ['kind'], registers });
  const bytes = new Counter({ name: 'mamori_bytes_total', help: 'Bytes relayed, by side (client/upstream) and direction (in/out)', labelNames: ['side', 'direction'], registers });
  const crypto = new Counter({ name: 'mamori_crypto_operations_total', help: 'Cryptographic operations, by mode and operation', labelNames: ['mode', 'op'], registers });
  const cacheHits = new Counter({ name: 'mamori_key_cache_hits_total', help: 'Data-key cache hits', registers });
  const cacheMisses = new Counter({ name: 'mamori_key_cache_misses_total', help: 'Data-key cache misses (an unwrap followed)', registers });
  const refusals = new Counter({ name: 'mamori_refusals_total', help: 'Statements refused by mamori, by reason', labelNames: userLabels ? ['reason', 'user'] : ['reason'], registers });
  const searches = new Counter({ name: 'mamori_searches_total', help: 'Searches on protected columns', registers });
  const searchLimit = new Counter({ name: 'mamori_search_limit_hits_total', help: 'Searches stopped by a search limit', registers });
  const auditWritten = new Counter({ name: 'mamori_audit_records_written_total', help: 'Audit records written to the primary sink', registers });
  const auditLost = new Counter({ name: 'mamori_audit_records_lost_total', help: 'Audit records that could not be written and were dropped (failMode open)', registers });
  const auditRefused = new Counter({ name: 'mamori_audit_records_refused_total', help: 'Audit records that could not be written, so the access was refused (failMode closed)', registers });
  const auditLatency = new Histogram({
    name: 'mamori_audit_write_seconds',
    help: 'Time from an audit append to its record reaching the OS',
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1],
    registers,
  });
  const reloads = new Counter({ name: 'mamori_config_reloads_total', help: 'Configuration reloads, by outcome', labelNames: ['outcome'], registers });
  const membership = new Counter({ name: 'mamori_membership_changes_total', help: 'Membership and verifier changes of protected grants, by action', labelNames: ['action'], registers });
  const ready = new Gauge({ name: 'mamori_ready', help: 'Readiness checks as last probed (1 ok, 0 failing)', labelNames: ['check'], registers });

  const userLabel = (u: string | undefined): { user?: string } => (userLabels ? { user: u ?? '' } : {});

  return {
    registry,
    contentType: registry.contentType,
    connectionOpened() {
      connActive.inc();
      connTotal.inc();
    },
    connectionClosed() {
      connActive.dec();
    },
    connectionRejected(reason) {
      connRejected.inc({ reason: bounded(REJECT_REASONS, reason, 'other') });
    },
    statement(commandTag, decision, seconds, user) {
      const command = commandLabel(commandTag);
      statements.inc({ command, decision: bounded(DECISIONS, decision, 'none'), ...userLabel(user) });
      duration.observe({ command }, seconds);
    },
    upstreamError(kind) {
      upstreamErrors.inc({ kind: bounded(UPSTREAM_ERRORS, kind, 'other') });
    },
    bytes(side, direction, n) {
      bytes.inc({ side: side === 'upstream' ? 'upstream' : 'client', direction: direction === 'out' ? 'out' : 'in' }, n);
    },
    crypto(mode, op, n = 1) {
      crypto.inc({ mode: bounded(CRYPTO_MODES, mode, 'local'), op: bounded(CRYPTO_OPS, op, 'decrypt') }, n);
    },
    keyCache(hit) {
      (hit ? cacheHits : cacheMisses).inc();
    },
    refusal(reason, user) {
      refusals.inc({ reason: bounded(REFUSAL_REASONS, reason, 'other'), ...userLabel(user) });
    },
    search(limitHit) {
      searches.inc();
      if (limitHit) searchLimit.inc();
    },
    configReload(ok) {
      reloads.inc({ outcome: ok ? 'ok' : 'rejected' });
    },
    membershipChange(action) {
      if ((MEMBERSHIP_ACTIONS as readonly string[]).includes(action)) membership.inc({ action });
    },
    readiness(checks) {
      for (const check of READY_CHECKS) if (check in checks) ready.set({ check }, checks[check] ? 1 : 0);
    },
    audit: {
      written: (n) => auditWritten.inc(n),
      lost: (n) => auditLost.inc(n),
      refused: (n) => auditRefused.inc(n),
      writeLatency: (s) => auditLatency.observe(s),
    },
    render: () => registry.metrics(),
  };
}
