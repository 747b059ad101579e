// A session's view of the trail: fills in the session context on every record and pairs each statement's
// intent record (written, and awaited, before the first protected row is released) with its completion record.
import type { AuditTrail } from './trail.js';
import type { AuditEvent, AuditPayload, ColumnDecision } from './record.js';

export interface SessionContext {
  session: string;
  user: string | null;
  client: string | null;
  tlsSubject: string | null;
  applicationName: string | null;
  database: string | null;
}

export interface StatementStart {
  fingerprint: string;
  command: string;
  columns: ColumnDecision[];
  mode: 'protected' | 'all';
  subjects?: string[];
  subjectKeyId?: string;
}

export interface StatementOutcome {
  rows: number | null;
  sqlstate: string | null;
  /** Subjects seen only while the result streamed (e.g. values returned in plaintext). */
  subjects?: string[];
  subjectKeyId?: string;
  /** Distinct subjects beyond the per-statement bound (not listed). */
  subjectsDropped?: number;
}

export interface StatementHandle {
  /** `session:n`, shared by the intent and completion records. */
  readonly id: string;
  /** Appends the completion record with the duration since the intent. */
  complete(outcome: StatementOutcome): Promise<void>;
}

export class SessionAudit {
  private n = 0;
  /** Frozen: sealing serializes a frozen context once for all the session's records (record.ts). */
  readonly context: Readonly<SessionContext>;
  constructor(
    private readonly trail: AuditTrail,
    context: SessionContext,
  ) {
    this.context = Object.freeze({ ...context });
  }

  /**
   * Any record, with this session's context (passed apart: no merged copy per record). Nothing waits on these
   * before releasing data, so they share the next write (AuditTrail.appendLater).
   */
  record(event: AuditPayload & Partial<AuditEvent>): Promise<void> {
    return this.trail.appendLater(event as AuditEvent, this.context);
  }

  /**
   * The intent record. Resolves once it has reached the OS; rejects with AuditUnavailableError when it cannot
   * (failMode closed): the caller must then refuse the statement instead of releasing rows.
   */
  intent(start: StatementStart): Promise<StatementHandle> {
    return this.intentOr(start, (err) => {
      throw err;
    });
  }

  /**
   * The intent record, with what to answer when it cannot be written (`failed` gets the trail's error): one
   * promise per protected statement instead of the intent's and a caller's mapping of its failure.
   */
  intentOr<T>(start: StatementStart, failed: (err: unknown) => T): Promise<StatementHandle | T> {
    const id = `${this.context.session}:${++this.n}`;
    const began = performance.now();
    const { fingerprint, command } = start;
    // frozen (and so are its decisions): sealing serializes a frozen array once for both records (record.ts)
    const columns = freezeColumns(start.columns);
    // built field by field: object spread into a record costs more than the rest of sealing it
    const written = this.trail.append(
      { kind: 'statement_intent', statement: id, mode: start.mode, fingerprint, command, columns, subjects: start.subjects, subjectKeyId: start.subjectKeyId },
      this.context,
    );
    const handle: StatementHandle = {
      id,
      complete: (outcome) =>
        this.trail.appendLater(
          {
            kind: 'statement_complete',
            statement: id,
            fingerprint,
            command,
            columns,
            durationMs: Math.round((performance.now() - began) * 1000) / 1000,
            rows: outcome.rows,
            sqlstate: outcome.sqlstate,
            subjects: outcome.subjects,
            subjectKeyId: outcome.subjectKeyId,
            subjectsDropped: outcome.subjectsDropped,
          },
          this.context,
        ),
    };
    return written.then(() => handle, failed);
  }
}

/** The column decisions frozen in place (a prepared statement's plan passes the same array each time: frozen once). */
function freezeColumns(columns: ColumnDecision[]): ColumnDecision[] {
  if (Object.isFrozen(columns)) return columns;
  for (const c of columns) Object.freeze(c);
  return Object.freeze(columns) as ColumnDecision[];
}
