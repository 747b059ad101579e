// COPY on protected tables in a session (docs/copy.md): the per-statement state between the COPY's Query
// (or Execute) and its end. COPY FROM: each client CopyData is rewritten by a CopyInRewriter (protected
// fields encrypted; the cells of one message are reserved together through the keystore); an invalid value
// turns into CopyFail upstream, so the server stores nothing, and the server's "COPY from stdin failed"
// error is replaced by mamori's own naming line and column. COPY TO: each backend CopyData is rewritten by a
// CopyOutRewriter per the read policy.
import type { Frame } from '../wire/framer.js';
import { BE } from '../wire/types.js';
import { encodeCopyData, encodeCopyFail } from '../wire/frontend.js';
import { commandRows, errorSqlstate } from '../wire/backend.js';
import { MamoriError, errorResponse } from '../errors.js';
import type { Decision } from '../session/session.js';
import type { ResultTransform } from '../session/pipeline.js';
import {
  CopyError,
  CopyInRewriter,
  CopyOptionError,
  CopyOutRewriter,
  copyFormat,
  type CopyInBatch,
  type CopyOutField,
  type CopyValue,
} from '../results/copy.js';
import { columnName } from '../results/logical.js';
import type { ClientCodec } from '../results/client-encoding.js';
import type { CellKeys } from '../results/keys.js';
import type { CopyPlan, ProtectedColumn, ReadDecision } from '../sql/types.js';
import type { StatementHandle } from '../audit/session.js';
import type { SubjectCollector } from '../audit/statement-records.js';

const EMPTY = Buffer.alloc(0);
const DROP: Decision = { action: 'replace', raw: EMPTY };

export interface CopyInOptions {
  rewriter: CopyInRewriter;
  /** Encrypts one message's values (async: counted by the keystore, refused while a domain's writes are frozen). */
  encryptAll(values: readonly CopyValue[]): Promise<Buffer[]>;
  /**
   * The same without waiting when the keys are at hand and encryptions reserved (null: use encryptAll); throws
   * as encryptAll rejects. A message decided at once is forwarded like any other (no pause, no frame copy).
   */
  encryptAllNow(values: readonly CopyValue[]): Buffer[] | null;
  handle: StatementHandle | null;
  /** Collects the subjects of the values written (attached to the completion record), or null. */
  subjects?: SubjectCollector | null;
  /** Called once when the COPY is over (either way): the session stops routing CopyData here. */
  onEnd(): void;
}

/** One COPY FROM STDIN in progress: the client's CopyData/CopyDone/CopyFail and the server's answer. */
export class CopyInStream implements ResultTransform {
  private failure: MamoriError | null = null;
  private failSent = false;
  private finished = false;
  private ended = false;

  constructor(private readonly o: CopyInOptions) {}

  /** True while client copy messages belong to this COPY. */
  get active(): boolean {
    return !this.ended;
  }

  clientMessage(f: Frame): Decision | Promise<Decision> {
    // After mamori's CopyFail (or the client's own CopyDone/CopyFail) the rest of the client's copy
    // messages are dropped: the server has left copy mode.
    if (this.failure && !this.failSent) return this.fail(this.failure);
    if (this.failure || this.finished) return DROP;
    switch (f.type) {
      case 0x64: // CopyData
        return this.run(() => this.o.rewriter.push(f.body), null);
      case 0x63: // CopyDone
        this.finished = true;
        return this.run(() => this.o.rewriter.end(), f.raw);
      default: // CopyFail from the client: forwarded as is
        this.finished = true;
        return { action: 'forward' };
    }
  }

  private run(parse: () => CopyInBatch, trailer: Buffer | null): Decision | Promise<Decision> {
    let batch: CopyInBatch;
    try {
      batch = parse();
    } catch (e) {
      // 22021: bytes invalid in the COPY's encoding (or a NUL), as PostgreSQL reports them; else 22P02.
      if (e instanceof CopyError) return this.fail(new MamoriError(e.sqlstate === '22021' ? 'character_not_in_repertoire' : 'invalid_text_representation', e.message));
      throw e;
    }
    if (batch.values.length === 0) return this.emit(batch.render([], true), trailer);
    const subjects = this.o.subjects;
    if (subjects) for (const v of batch.values) subjects.add(v.column, v.canonical);
    const refused = (err: unknown): Decision => this.fail(new MamoriError('object_not_in_prerequisite_state', `a protected column cannot be written now: ${(err as Error).message}`));
    let now: Buffer[] | null;
    try {
      now = this.o.encryptAllNow(batch.values);
    } catch (err) {
      return refused(err);
    }
    if (now) return this.emit(batch.render(now, true), trailer);
    return this.o.encryptAll(batch.values).then((cells) => this.emit(batch.render(cells, true), trailer), refused);
  }

  /** `data`: one CopyData message, as render(…, true) builds it (just the 5-byte header when no row ended). */
  private emit(data: Buffer, trailer: Buffer | null): Decision {
    if (data.length === 5) return trailer ? { action: 'replace', raw: trailer } : DROP;
    return { action: 'replace', raw: trailer ? Buffer.concat([data, trailer]) : data };
  }

  private fail(err: MamoriError): Decision {
    this.failure = err;
    this.failSent = true;
    return { action: 'replace', raw: encodeCopyFail(err.message) };
  }

  /** The server's messages answering the COPY statement. */
  message(f: Frame): Buffer | null {
    switch (f.type) {
      case BE.CopyInResponse:
        // Defence in depth: the analysis refuses binary COPY; should the server still answer binary, fail.
        if (f.body[0] !== 0) this.failure ??= new MamoriError('feature_not_supported', 'binary COPY is not supported on protected tables');
        return null;
      case BE.CommandComplete:
        this.end(commandRows(f.body) ?? this.o.rewriter.rows, null);
        return null;
      case BE.ErrorResponse: {
        this.end(this.o.rewriter.rows, this.failure?.sqlstate ?? errorSqlstate(f.body));
        // The server's "COPY from stdin failed: …" (57014) becomes mamori's error with its own SQLSTATE.
        return this.failure ? errorResponse(this.failure) : null;
      }
      default:
        return null;
    }
  }

  private end(rows: number, sqlstate: string | null): void {
    if (this.ended) return;
    this.ended = true;
    this.o.onEnd();
    void this.o.handle?.complete({ rows, sqlstate, ...this.o.subjects?.take() }).catch(() => undefined);
  }
}

/**
 * COPY TO STDOUT: the server's CopyData rewritten per field action. The plaintext values sent feed the subject
 * trail like row results: hashed as they pass, attached to the completion record (bounded; long lists go to a
 * side file, see docs/audit.md).
 */
export class CopyOutTransform implements ResultTransform {
  constructor(
    private readonly rewriter: CopyOutRewriter,
    private readonly handle: StatementHandle | null,
    private readonly subjects: SubjectCollector | null = null,
  ) {}

  message(f: Frame): Buffer | null {
    switch (f.type) {
      case BE.CopyOutResponse:
        if (f.body[0] !== 0) throw new MamoriError('feature_not_supported', 'binary COPY is not supported on protected tables');
        return null;
      case BE.CopyData: {
        const out = this.rewriter.push(f.body);
        return out.length === 0 ? EMPTY : encodeCopyData(out);
      }
      case BE.CopyDone: {
        const rest = this.rewriter.end();
        return rest.length === 0 ? null : Buffer.concat([encodeCopyData(rest), f.raw]);
      }
      case BE.CommandComplete:
        void this.handle?.complete({ rows: commandRows(f.body) ?? this.rewriter.rows, sqlstate: null, ...this.subjects?.take() }).catch(() => undefined);
        return null;
      case BE.ErrorResponse:
        void this.handle?.complete({ rows: this.rewriter.rows, sqlstate: errorSqlstate(f.body), ...this.subjects?.take() }).catch(() => undefined);
        return null;
      default:
        return null;
    }
  }
}



export interface CopySetup {
  /** The read decision and export grant of the session user for a column. */
  read(col: ProtectedColumn): ReadDecision;
  canExport(col: ProtectedColumn): boolean;
  /** The key domain (name) configured for a column; undefined when it has no policy. */
  keyDomain(col: ProtectedColumn): string | undefined;
  domainId(domain: string): number;
  keys: CellKeys;
  encryptAll(items: readonly { domain: string; canonical: Buffer }[]): Promise<Buffer[]>;
  /** encryptAll without waiting, or null (see EngineKeys.encryptAllNow in proxy/policy/keys.ts). */
  encryptAllNow(items: readonly { domain: string; canonical: Buffer }[]): Buffer[] | null;
  byteaOutput: 'hex' | 'escape';
  /** The codec of the COPY data's encoding (undefined: the session's client_encoding); null if none. */
  codecFor(encoding: string | undefined): ClientCodec | null;
  handle: StatementHandle | null;
  /** Collects the subjects of the values a COPY writes or the plaintext it sends (null: no subject hashing). */
  subjects: SubjectCollector | null;
  onShredded(col: ProtectedColumn): void;
  /** COPY FROM: route the client's copy messages to `stream` until it calls onEnd. */
  startIn(stream: CopyInStream): void;
  endIn(stream: CopyInStream): void;
}

/** The transform for a planned COPY (and, for FROM, the stream the session routes client data to). */
export function copyTransform(plan: CopyPlan, s: CopySetup): ResultTransform | MamoriError {
  let fmt;
  try {
    fmt = copyFormat(plan.options, plan.columnNames, (e) => s.codecFor(e));
  } catch (e) {
    if (e instanceof CopyOptionError) return new MamoriError('feature_not_supported', e.message);
    throw e;
  }
  const domains = new Map<ProtectedColumn, string>();
  for (const c of plan.columns) {
    if (!c || domains.has(c)) continue;
    const d = s.keyDomain(c);
    if (d === undefined) return new MamoriError('feature_not_supported', `column ${columnName(c)} has no policy`);
    domains.set(c, d);
  }
  if (plan.direction === 'from') {
    const stream: CopyInStream = new CopyInStream({
      rewriter: new CopyInRewriter(fmt, plan.columns),
      encryptAll: (values) => s.encryptAll(values.map((v) => ({ domain: domains.get(v.column)!, canonical: v.canonical }))),
      encryptAllNow: (values) => s.encryptAllNow(values.map((v) => ({ domain: domains.get(v.column)!, canonical: v.canonical }))),
      handle: s.handle,
      subjects: s.subjects,
      onEnd: () => s.endIn(stream),
    });
    s.startIn(stream);
    return stream;
  }
  const fields: CopyOutField[] = [];
  for (let index = 0; index < plan.columns.length; index++) {
    const column = plan.columns[index];
    if (!column) continue;
    const decision = s.read(column);
    if (decision === 'deny') return new MamoriError('insufficient_privilege', `permission denied to read column "${columnName(column)}"`);
    if (decision === 'plaintext' && !s.canExport(column)) {
      return new MamoriError('insufficient_privilege', `permission denied to export column "${columnName(column)}": COPY TO of plaintext needs the export grant`);
    }
    fields.push({ index, column, action: decision, domainId: s.domainId(domains.get(column)!) });
  }
  const subjects = s.subjects;
  const rewriter = new CopyOutRewriter(fmt, plan.columns.length, fields, s.keys, {
    byteaOutput: s.byteaOutput,
    onShredded: (c) => s.onShredded(c),
    ...(subjects ? { onPlaintext: (c: ProtectedColumn, canonical: Buffer) => subjects.add(c, canonical) } : {}),
  });
  return new CopyOutTransform(rewriter, s.handle, subjects);
}
