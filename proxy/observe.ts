// The listener's SessionEvents: each session event becomes an audit record (connect, auth_failure, disconnect,
// refusal) and moves the metrics. Records are appended without being awaited: nothing here may hold up a
// session, and only protected statements wait for their own intent record (session-policy.ts). A record that
// cannot be written is counted by the trail (lost in failMode open, refused in closed) and logged once per burst.
import type { Logger } from 'pino';
import type { AuditTrail } from './audit/trail.js';
import type { AuditEvent, RecordContext } from './audit/record.js';
import type { Metrics, RefusalReason, RejectReason, StatementDecision } from './metrics.js';
import type { SessionEvents, SessionInfo } from './session/events.js';
import { fingerprint } from './sql/fingerprint.js';
import { FE } from './wire/types.js';

export interface Observer extends SessionEvents {
  /** A connection refused before a session existed (limit, TLS required, startup timeout …). */
  rejected(reason: RejectReason, client: string): void;
  /** Moves the byte counts gathered since the last call into the metrics (before each scrape). */
  flushBytes(): void;
}

/** The session-context fields of a record. */
export function sessionFields(s: SessionInfo): Pick<AuditEvent, 'session' | 'user' | 'client' | 'tlsSubject' | 'applicationName' | 'database'> {
  return {
    session: s.id,
    user: s.user || null,
    client: s.clientAddress,
    tlsSubject: s.tlsSubject,
    applicationName: s.applicationName || null,
    database: s.database || null,
  };
}

/** mamori error code → the bounded refusal label. */
export function refusalReason(code: string): RefusalReason {
  switch (code) {
    case 'insufficient_privilege':
      return 'deny';
    case 'system_error':
      return 'audit_unavailable';
    case 'feature_not_supported':
      return 'unsupported';
    case 'syntax_error':
      return 'unparseable';
    case 'object_not_in_prerequisite_state':
      return 'protected_write';
    case 'program_limit_exceeded':
      return 'search_limit';
    default:
      return 'other';
  }
}

/** The decision a policy result transform carries (session-policy's QueryResults/ExecuteResults), else none. */
export function decisionOf(transform: unknown): StatementDecision {
  const d = (transform as { decision?: unknown } | null | undefined)?.decision;
  return typeof d === 'string' ? (d as StatementDecision) : 'none';
}

/** The SQL of a Query or Parse body, for fingerprinting (never kept). */
export function sqlOf(type: number, body: Buffer): Buffer | null {
  if (type === FE.Query) return body.subarray(0, Math.max(0, body.length - 1));
  if (type === FE.Parse) {
    const nameEnd = body.indexOf(0);
    const sqlEnd = nameEnd < 0 ? -1 : body.indexOf(0, nameEnd + 1);
    return sqlEnd < 0 ? null : body.subarray(nameEnd + 1, sqlEnd);
  }
  return null;
}

export function createObserver(opts: { trail: AuditTrail | null; metrics: Metrics | null; log: Logger }): Observer {
  const { trail, metrics, log } = opts;
  let clientIn = 0;
  let upstreamIn = 0;
  let clientOut = 0;
  let upstreamOut = 0;
  let lastWarn = 0;
  // session records wait for nobody: they share the next write (appendLater); the context is passed apart
  const append = (event: AuditEvent, context: RecordContext | null = null): void => {
    if (!trail) return;
    trail.appendLater(event, context).catch((err: unknown) => {
      const now = Date.now();
      if (now - lastWarn > 10_000) {
        lastWarn = now;
        log.warn({ err: (err as Error).message, kind: event.kind }, 'audit record could not be written');
      }
    });
  };
  return {
    connected(s) {
      metrics?.connectionOpened();
      append({ kind: 'connect', tls: s.clientTls }, sessionFields(s));
    },
    authFailed(s, reason) {
      metrics?.connectionRejected('auth_failed');
      append({ kind: 'auth_failure', reason }, sessionFields(s));
    },
    disconnected(s, info) {
      metrics?.connectionClosed();
      append({ kind: 'disconnect', reason: info.reason, durationMs: info.durationMs, bytesIn: info.bytesIn, bytesOut: info.bytesOut } as AuditEvent, sessionFields(s));
    },
    refused(s, info) {
      metrics?.refusal(refusalReason(info.code), s.user);
      const sql = sqlOf(info.messageType, info.body);
      append({
        kind: 'refusal',
        reason: info.code,
        sqlstate: info.sqlstate,
        ...(sql ? { fingerprint: fingerprint(sql) } : {}),
      }, sessionFields(s));
    },
    statementDone(s, info) {
      metrics?.statement(info.tag ?? 'OTHER', decisionOf(info.transform), info.seconds, s.user);
    },
    bytes(side, n) {
      if (side === 'client') clientIn += n;
      else upstreamIn += n;
    },
    sent(side, n) {
      if (side === 'client') clientOut += n;
      else upstreamOut += n;
    },
    upstreamError(kind) {
      metrics?.upstreamError(kind);
    },
    rejected(reason, client) {
      metrics?.connectionRejected(reason);
      append({ kind: 'auth_failure', reason, client });
    },
    flushBytes() {
      if (!metrics) return;
      if (clientIn > 0) metrics.bytes('client', 'in', clientIn);
      if (upstreamIn > 0) metrics.bytes('upstream', 'in', upstreamIn);
      if (clientOut > 0) metrics.bytes('client', 'out', clientOut);
      if (upstreamOut > 0) metrics.bytes('upstream', 'out', upstreamOut);
      clientIn = 0;
      upstreamIn = 0;
      clientOut = 0;
      upstreamOut = 0;
    },
  };
}
