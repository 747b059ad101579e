// `audit.statements: all`: one record per statement — each Query, and each Execute with the SQL of its
// prepared statement — carrying the lexer fingerprint (no parse, no values). The record is appended and NOT
// awaited: a statement that touches nothing protected never waits for the trail, whatever the fail mode
// (a record that cannot be written is counted as lost or refused by the trail and logged). Statements the
// policy treats as protected are skipped here: they already get their awaited intent and completion records.
import type { Frame } from '../wire/framer.js';
import { FE } from '../wire/types.js';
import type { Decision, SessionHooks } from '../session/session.js';
import { fingerprint } from '../sql/fingerprint.js';
import { sessionFields } from '../observe.js';
import type { AuditTrail } from './trail.js';
import type { RecordContext } from './record.js';

/** First keyword of a fingerprint, upper-cased: the command as far as the lexer knows it. */
export function commandOfFingerprint(fp: string): string {
  // a scan, not a regex: this runs for every statement (same result as /^[\s(]*([a-z_]+)/i)
  const n = fp.length;
  let i = 0;
  for (; i < n; i++) {
    const c = fp.charCodeAt(i);
    if (c !== 40 /* ( */ && !(c === 32 || (c >= 9 && c <= 13) || c === 0xa0 || c === 0xfeff || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000)) break;
  }
  let j = i;
  for (; j < n; j++) {
    const c = fp.charCodeAt(j);
    if (!((c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95)) break;
  }
  return j > i ? fp.slice(i, j).toUpperCase() : 'OTHER';
}

/** A prepared statement's text; its fingerprint is computed at its first Execute and kept with it. */
interface Prepared {
  text: string;
  fp: Fingerprint | null;
}

interface Names {
  statements: Map<string, Prepared>;
  portals: Map<string, string>;
  /** The session's record context, built once and frozen (the session fields do not change once it runs): sealing serializes a frozen context once per session. */
  context: RecordContext;
  /** `session:all`, the `statement` of every record of the session. */
  statement: string;
}

interface Fingerprint {
  fingerprint: string;
  command: string;
}

function cstr(body: Buffer, from: number): [string, number] {
  const end = body.indexOf(0, from);
  return [body.toString('utf8', from, end), end + 1];
}

const fingerprintOf = (sql: string | Buffer): Fingerprint => {
  const f = fingerprint(sql);
  return { fingerprint: f, command: commandOfFingerprint(f) };
};

export function recordAllStatements(inner: SessionHooks, trail: AuditTrail, onError: (err: Error) => void): SessionHooks {
  const names = new WeakMap<object, Names>();
  // Texts Parsed again under a new statement (unnamed statements of drivers that re-Parse each time) skip the
  // lexer. Simple Query texts are not cached: they usually carry their literals, so they rarely repeat.
  const parsed = new Map<string, Fingerprint>();
  const preparedFp = (p: Prepared): Fingerprint => {
    if (p.fp !== null) return p.fp;
    let f = p.text.length <= 512 ? parsed.get(p.text) : undefined;
    if (f === undefined) {
      f = fingerprintOf(p.text);
      if (p.text.length <= 512) {
        if (parsed.size >= 4096) parsed.clear();
        parsed.set(p.text, f);
      }
    }
    return (p.fp = f);
  };
  // Records of one batch share one promise (AuditTrail's group commit): one rejection handler per batch, not
  // one derived promise per statement.
  let watched: Promise<void> | null = null;
  const record = (n: Names, f: Fingerprint): void => {
    const p = trail.appendLater({ kind: 'statement_intent', statement: n.statement, mode: 'all', fingerprint: f.fingerprint, command: f.command }, n.context);
    if (p !== watched) {
      watched = p;
      p.catch(onError);
    }
  };
  const after = (n: Names, sql: Buffer | Prepared, d: Decision): Decision => {
    // statements with their own intent/completion records are skipped (no fingerprint computed); a refusal is
    // recorded by the session
    if (d.action !== 'refuse' && (d.transform as { recorded?: boolean } | undefined)?.recorded !== true) {
      record(n, Buffer.isBuffer(sql) ? fingerprintOf(sql) : preparedFp(sql));
    }
    return d;
  };
  return {
    ...inner, // other hooks (notices) unchanged
    clientMessage(session, frame: Frame) {
      let n = names.get(session);
      if (!n) {
        n = { statements: new Map(), portals: new Map(), context: Object.freeze(sessionFields(session)), statement: `${session.id}:all` };
        names.set(session, n);
      }
      let sql: Buffer | Prepared | null = null;
      if (frame.type === FE.Query) sql = frame.body.subarray(0, frame.body.length - 1);
      else if (frame.type === FE.Parse) {
        const [name, at] = cstr(frame.body, 0);
        const [text] = cstr(frame.body, at);
        n.statements.set(name, { text, fp: null });
      } else if (frame.type === FE.Bind) {
        const [portal, at] = cstr(frame.body, 0);
        const [stmt] = cstr(frame.body, at);
        n.portals.set(portal, stmt);
      } else if (frame.type === FE.Execute) {
        const [portal] = cstr(frame.body, 0);
        const stmt = n.portals.get(portal);
        sql = (stmt !== undefined ? n.statements.get(stmt) : undefined) ?? null;
      }
      const d = inner.clientMessage ? inner.clientMessage(session, frame) : { action: 'forward' as const };
      if (sql === null) return d;
      const cur = n;
      const s = sql;
      return d instanceof Promise ? d.then((x) => after(cur, s, x)) : after(n, s, d);
    },
  };
}
