// A session's view of the trail: fills in the session context on every record and pairs each statement's
// intent record (written, and awaited, before the first protected row is released) with its completion record.
import type { AuditTrail } from './trail.js';
import { RecordTemplate, type AuditEvent, type AuditPayload, type ColumnDecision } from './record.js';

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

/** What changes from one intent record of a statement to the next; the rest is the template's. */
const INTENT_VARS = ['statement', 'subjects', 'subjectKeyId'] as const;
/** What changes from one completion record of a statement to the next. */
const COMPLETE_VARS = ['statement', 'durationMs', 'rows', 'sqlstate', 'subjects', 'subjectKeyId', 'subjectsDropped'] as const;
/** Statement shapes whose templates a session keeps (beyond that the cache starts over). */
const MAX_TEMPLATES = 64;

/** The record templates of one statement shape in one session (same fingerprint, command, mode and decisions). */
interface StatementTemplates {
  command: string;
  mode: 'protected' | 'all';
  columns: readonly ColumnDecision[];
  intent: RecordTemplate;
  complete: RecordTemplate;
}

export class SessionAudit {
  private n = 0;
  /** By fingerprint: a statement run again seals its records from templates instead of member by member. */
  private readonly templates = new Map<string, StatementTemplates>();
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
    const { handle, written } = this.begin(start);
    return written.then(() => handle);
  }

  /**
   * The intent record appended, and its handle: `written` is the promise of the write the record shares (it
   * settles as intent() does), so a caller on the hot path awaits it without a promise of its own per statement.
   * The handle must not be used before `written` has resolved.
   */
  begin(start: StatementStart): { handle: StatementHandle; written: Promise<void> } {
    const id = `${this.context.session}:${++this.n}`;
    const began = performance.now();
    const t = this.templatesFor(start);
    const written = this.trail.appendFrom(t.intent, { statement: id, subjects: start.subjects, subjectKeyId: start.subjectKeyId });
    return { handle: new Statement(this.trail, t.complete, id, began), written };
  }

  /** The templates of this statement's records: kept per fingerprint, made anew when anything shared differs. */
  private templatesFor(start: StatementStart): StatementTemplates {
    const { fingerprint, command, mode } = start;
    const kept = this.templates.get(fingerprint);
    if (kept !== undefined && kept.command === command && kept.mode === mode && sameDecisions(kept.columns, start.columns)) return kept;
    const columns = Object.freeze(start.columns.map((c) => Object.freeze({ column: c.column, decision: c.decision })));
    const shared = { ...this.context, fingerprint, command, columns };
    const t: StatementTemplates = {
      command,
      mode,
      columns,
      intent: new RecordTemplate({ ...shared, kind: 'statement_intent', mode }, INTENT_VARS),
      complete: new RecordTemplate({ ...shared, kind: 'statement_complete' }, COMPLETE_VARS),
    };
    if (this.templates.size >= MAX_TEMPLATES) this.templates.clear();
    this.templates.set(fingerprint, t);
    return t;
  }
}

/**
 * A statement's handle: a class rather than an object with a closure, since one is made per protected statement
 * (and the sources run through tsx, whose kept function names cost a property definition per closure made).
 */
class Statement implements StatementHandle {
  constructor(
    private readonly trail: AuditTrail,
    private readonly template: RecordTemplate,
    readonly id: string,
    private readonly began: number,
  ) {}

  complete(outcome: StatementOutcome): Promise<void> {
    return this.trail.appendLaterFrom(this.template, {
      statement: this.id,
      durationMs: Math.round((performance.now() - this.began) * 1000) / 1000,
      rows: outcome.rows,
      sqlstate: outcome.sqlstate,
      subjects: outcome.subjects,
      subjectKeyId: outcome.subjectKeyId,
      subjectsDropped: outcome.subjectsDropped,
    });
  }
}

function sameDecisions(a: readonly ColumnDecision[], b: readonly ColumnDecision[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i]!.column !== b[i]!.column || a[i]!.decision !== b[i]!.decision) return false;
  return true;
}
