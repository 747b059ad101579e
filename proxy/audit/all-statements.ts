// `audit.statements: all`: one record per statement — each Query, and each Execute with the SQL of its
// prepared statement — carrying the lexer fingerprint (no parse, no values). The record is appended and NOT
// awaited: a statement that touches nothing protected never waits for the trail, whatever the fail mode
// (a record that cannot be written is counted as lost or refused by the trail and logged). Statements the
// policy treats as protected are skipped here: they already get their awaited intent and completion records.
import type { Frame } from '../wire/framer.js';
import { FE } from '../wire/types.js';
import type { Decision, Session, SessionHooks } from '../session/session.js';
import { fingerprint } from '../sql/fingerprint.js';
import { sessionFields } from '../observe.js';
import type { AuditTrail } from './trail.js';
import type { RecordContext } from './record.js';

/** First keyword of a fingerprint, upper-cased: the command as far as the lexer knows it. */
export function commandOfFingerprint(fp: string): string {
  const m = /^[\s(]*([a-z_]+)/i.exec(fp);
  return m ? m[1]!.toUpperCase() : 'OTHER';
}

interface Names {
  statements: Map<string, Buffer>;
  portals: Map<string, string>;
  /** The session's record context, built once (the session fields do not change once it runs). */
  context: RecordContext;
}

interface Fingerprint {
  fingerprint: string;
  command: string;
}

function cstr(body: Buffer, from: number): [string, number] {
  const end = body.indexOf(0, from);
  return [body.toString('utf8', from, end), end + 1];
}

export function recordAllStatements(inner: SessionHooks, trail: AuditTrail, onError: (err: Error) => void): SessionHooks {
  const names = new WeakMap<object, Names>();
  const fingerprints = new Map<string, Fingerprint>(); // small cache: repeated statements skip the lexer
  const fp = (sql: Buffer): Fingerprint => {
    const key = sql.length <= 512 ? sql.toString('latin1') : null;
    const hit = key !== null ? fingerprints.get(key) : undefined;
    if (hit !== undefined) return hit;
    const f = fingerprint(sql);
    const entry = { fingerprint: f, command: commandOfFingerprint(f) };
    if (key !== null) {
      if (fingerprints.size >= 4096) fingerprints.clear();
      fingerprints.set(key, entry);
    }
    return entry;
  };
  const record = (session: Session, n: Names, sql: Buffer): void => {
    const f = fp(sql);
    trail.appendLater({ kind: 'statement_intent', statement: `${session.id}:all`, mode: 'all', fingerprint: f.fingerprint, command: f.command }, n.context).catch(onError);
  };
  const after = (session: Session, n: Names, sql: Buffer | null, d: Decision): Decision => {
    // statements with their own intent/completion records are skipped; a refusal is recorded by the session
    if (sql && d.action !== 'refuse' && (d.transform as { recorded?: boolean } | undefined)?.recorded !== true) record(session, n, sql);
    return d;
  };
  return {
    ...inner, // other hooks (notices) unchanged
    clientMessage(session, frame: Frame) {
      let sql: Buffer | null = null;
      let n = names.get(session);
      if (!n) {
        n = { statements: new Map(), portals: new Map(), context: sessionFields(session) };
        names.set(session, n);
      }
      if (frame.type === FE.Query) sql = frame.body.subarray(0, frame.body.length - 1);
      else if (frame.type === FE.Parse) {
        const [name, at] = cstr(frame.body, 0);
        const [text] = cstr(frame.body, at);
        n.statements.set(name, Buffer.from(text, 'utf8'));
      } else if (frame.type === FE.Bind) {
        const [portal, at] = cstr(frame.body, 0);
        const [stmt] = cstr(frame.body, at);
        n.portals.set(portal, stmt);
      } else if (frame.type === FE.Execute) {
        const [portal] = cstr(frame.body, 0);
        const stmt = n.portals.get(portal);
        sql = stmt !== undefined ? (n.statements.get(stmt) ?? null) : null;
      }
      const d = inner.clientMessage ? inner.clientMessage(session, frame) : { action: 'forward' as const };
      if (sql === null) return d;
      const s = sql;
      const cur = n;
      return d instanceof Promise ? d.then((x) => after(session, cur, s, x)) : after(session, n, s, d);
    },
  };
}
