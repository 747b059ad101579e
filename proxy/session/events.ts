// What a Session tells the outside world about itself: connects, authentication failures, disconnects,
// refusals, finished statements and relayed bytes. The listener supplies an implementation (proxy/observe.ts:
// audit records and metrics); the session only calls it, so it stays free of audit and metrics code.
// Every method is optional and must not throw or block: it runs on the session's hot path.

/** The session fields observers may read (Session has them all). */
export interface SessionInfo {
  readonly id: string;
  readonly user: string;
  readonly database: string;
  readonly clientAddress: string;
  readonly clientTls: boolean;
  readonly tlsSubject: string | null;
  readonly applicationName: string;
}

export interface DisconnectInfo {
  durationMs: number;
  /** Bytes received from the client / from the upstream server over the session's life. */
  bytesIn: number;
  bytesOut: number;
  reason: string;
}

export interface RefusalInfo {
  sqlstate: string;
  /** mamori's error code (bounded vocabulary, never a value). */
  code: string;
  /** The refused message's type byte and body: observers may fingerprint its SQL (never keep the text). */
  messageType: number;
  body: Buffer;
}

export interface StatementDoneInfo {
  /** CommandComplete tag (`SELECT 3`), or null for an ErrorResponse. */
  tag: string | null;
  /** The result transform policy code attached to the statement, if any (carries its decision). */
  transform: unknown;
  seconds: number;
}

export type UpstreamErrorKind = 'connect' | 'tls' | 'auth' | 'reset' | 'timeout' | 'protocol' | 'other';

export interface SessionEvents {
  /** Authentication succeeded: the session is running. */
  connected?(s: SessionInfo): void;
  /** Authentication failed; `reason` is mamori's, never a password or proof. */
  authFailed?(s: SessionInfo, reason: string): void;
  /** A session that had connected ended. */
  disconnected?(s: SessionInfo, info: DisconnectInfo): void;
  refused?(s: SessionInfo, info: RefusalInfo): void;
  statementDone?(s: SessionInfo, info: StatementDoneInfo): void;
  /** Bytes read from one side (called per socket chunk: must be cheap). */
  bytes?(side: 'client' | 'upstream', n: number): void;
  /** Bytes written to one side since the last call (called once per flush of the session's output). */
  sent?(side: 'client' | 'upstream', n: number): void;
  upstreamError?(kind: UpstreamErrorKind): void;
}
