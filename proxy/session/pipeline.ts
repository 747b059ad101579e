// The session state machine of DESIGN.md §3: which backend responses answer which frontend message.
// Every message sent upstream that the server answers (the client's or mamori's own) is queued as an
// expectation; each backend message is routed by the head of that queue. State (prepared statements,
// portals, transaction status) changes only when the server confirms it. After an error in the extended
// protocol the server skips everything up to Sync, so the queue drops those expectations too.
import type { Frame } from '../wire/framer.js';
import { BE } from '../wire/types.js';

/** Names mamori uses for its own statements and portals; clients may not use this prefix. */
export const RESERVED_PREFIX = '__mamori_';

export type ExpectKind = 'parse' | 'bind' | 'describe' | 'execute' | 'close' | 'sync' | 'query' | 'function';

/** Receives the responses to a message mamori sent itself; nothing of it reaches the client. */
export interface InjectedOwner {
  response(frame: Frame): void;
  /** The server skipped the message because an earlier one in the batch failed. */
  skipped(): void;
}

export interface StatementInfo {
  sql: string;
  paramTypes: number[];
  /** What policy code decided about the statement (opaque here); kept only once the server confirms it. */
  plan?: unknown;
  /** Plans of the SQL PREPAREs the statement runs (see Expectation.preparePlans). */
  preparePlans?: readonly unknown[];
}

export interface PortalInfo {
  statement: string;
  resultFormats: number[];
  plan?: unknown;
}

export interface Expectation {
  kind: ExpectKind;
  /** Absent for the client's own messages. */
  owner?: InjectedOwner;
  /** An injected message whose errors stay with mamori (it ends its batch with its own Sync). */
  ownErrors?: boolean;
  /**
   * A refusal: the message sent upstream is a substitute the server rejects at the same step, so client
   * and server agree on the error and on skip-until-Sync. The server's ErrorResponse is replaced by this.
   */
  refusal?: Buffer;
  /** parse: statement name + info; bind: portal name + info; close: 'S'|'P' + name; describe: 'S'|'P' + name. */
  name?: string;
  target?: 'S' | 'P';
  statement?: StatementInfo;
  portal?: PortalInfo;
  /** SQL text the message runs (query, or execute's statement) for PREPARE/DEALLOCATE tracking. */
  sql?: string;
  /** Count of CommandCompletes seen so far (a simple Query may run several statements). */
  completed?: number;
  /**
   * Told whether the server accepted the message (ParseComplete / BindComplete) or not (error, skipped);
   * for a simple Query, told true at its ReadyForQuery (it has finished, whatever its statements did).
   */
  onOutcome?: (ok: boolean) => void;
  /** Policy plans of the SQL PREPAREs of a simple Query, in statement order: kept with each once its tag confirms it. */
  preparePlans?: readonly unknown[];
  /** Rewrites the responses routed to the client (protected result sets); absent on the fast path. */
  transform?: ResultTransform;
  /** PREPARE / DEALLOCATE tags seen so far, to pair each with its statement. */
  prepares?: number;
  deallocs?: number;
}

/**
 * Rewrites backend messages answering one expectation before they reach the client: returns the bytes to
 * send instead, or null to forward the original. Throwing ends the session (fail closed).
 */
export interface ResultTransform {
  message(frame: Frame): Buffer | null;
  /**
   * True while the current result set's DataRows need no inspection (no protected field, no field that can
   * carry a cell): large rows may then stream through unbuffered. Absent means every row is inspected.
   */
  readonly passRows?: boolean;
}

export type Route =
  | { to: 'client' }
  | { to: 'owner'; owner: InjectedOwner }
  | { to: 'replace'; raw: Buffer }
  | { to: 'drop' };

export type TxStatus = 'I' | 'T' | 'E';

export class DesyncError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DesyncError';
  }
}

/** What PREPARE / DEALLOCATE / DISCARD statements in an SQL string do, in order (for namespace tracking). */
export type SqlNamespaceEffect =
  | { kind: 'prepare'; name: string }
  | { kind: 'deallocate'; name: string | null /* null = ALL */ }
  | { kind: 'discard-all' };

export interface PipelineOptions {
  /** Finds the namespace effects of SQL text; only called on PREPARE/DEALLOCATE/DISCARD command tags. */
  namespaceEffects?: (sql: string) => SqlNamespaceEffect[];
}

const CLIENT: Route = { to: 'client' };
const EXTENDED = new Set<ExpectKind>(['parse', 'bind', 'describe', 'execute', 'close']);

export class Pipeline {
  readonly statements = new Map<string, StatementInfo>();
  readonly portals = new Map<string, PortalInfo>();
  txStatus: TxStatus = 'I';
  /** Set between a CopyInResponse and the end of that COPY: the client streams CopyData. */
  copyIn = false;
  copyOut = false;
  private readonly queue: Expectation[] = [];
  private head = 0;
  private readonly namespaceEffects: ((sql: string) => SqlNamespaceEffect[]) | undefined;

  constructor(opts: PipelineOptions = {}) {
    this.namespaceEffects = opts.namespaceEffects;
  }

  /** Number of messages sent upstream still waiting for their responses. */
  get inFlight(): number {
    return this.queue.length - this.head;
  }

  /** True when nothing is outstanding: the session is idle between round trips. */
  get idle(): boolean {
    return this.inFlight === 0;
  }

  /**
   * Queues the expectation for a message being sent upstream. While the server is skipping to Sync after
   * an error (and no Sync has been sent since), it will answer nothing: the message is not queued, and an
   * injected message's owner learns at once that it was skipped. Returns false in that case.
   */
  expect(e: Expectation): boolean {
    if (e.kind === 'sync') {
      this.skippingToSync = false;
      this.extendedOpen = false;
    } else if (this.skippingToSync) {
      if (e.owner) queueMicrotask(() => e.owner!.skipped());
      e.onOutcome?.(false);
      return false;
    }
    if (!e.owner && EXTENDED.has(e.kind)) this.extendedOpen = true;
    this.queue.push(e);
    return true;
  }

  /**
   * True while the client has sent extended-protocol messages not yet followed by a Sync. Mamori may add
   * a Sync of its own only when this is false: then a Sync changes no transaction boundary.
   */
  extendedOpen = false;

  /** True after an extended-protocol error until a Sync is sent: the server ignores messages meanwhile. */
  skippingToSync = false;

  peek(): Expectation | undefined {
    return this.queue[this.head];
  }

  private pop(): Expectation {
    const e = this.queue[this.head++]!;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    return e;
  }

  /** The expectation the last routed backend message answered (for its transform). */
  last: Expectation | undefined;

  private routeOf(e: Expectation): Route {
    this.last = e;
    return e.owner ? { to: 'owner', owner: e.owner } : CLIENT;
  }

  /** Routes one backend message and applies the state change it confirms. */
  server(frame: Frame): Route {
    const t = frame.type;
    // Asynchronous messages: at any time, never shift the queue.
    this.last = undefined;
    if (t === BE.NoticeResponse || t === BE.NotificationResponse || t === BE.ParameterStatus) return CLIENT;
    // Sent once after authentication, before the first ReadyForQuery; passed through unchanged so any
    // instance can forward a CancelRequest carrying it.
    if (t === BE.BackendKeyData) return CLIENT;
    const e = this.queue[this.head];
    if (t === BE.ErrorResponse) return this.error(frame, e);
    if (!e) throw new DesyncError(`unexpected ${String.fromCharCode(t)} with nothing outstanding`);
    if (e.refusal) throw new DesyncError('a refused message was not rejected by the server');
    switch (t) {
      case BE.ParseComplete:
        this.want(e, 'parse', t);
        this.pop();
        e.onOutcome?.(true);
        if (!e.owner || e.name!.startsWith(RESERVED_PREFIX)) this.statements.set(e.name!, e.statement!);
        return this.routeOf(e);
      case BE.BindComplete:
        this.want(e, 'bind', t);
        this.pop();
        e.onOutcome?.(true);
        this.portals.set(e.name!, e.portal!);
        return this.routeOf(e);
      case BE.CloseComplete:
        this.want(e, 'close', t);
        this.pop();
        if (e.target === 'S') this.statements.delete(e.name!);
        else this.portals.delete(e.name!);
        return this.routeOf(e);
      case BE.ParameterDescription:
        this.want(e, 'describe', t);
        return this.routeOf(e);
      case BE.RowDescription:
        if (e.kind === 'describe') this.pop();
        else this.want(e, 'query', t);
        return this.routeOf(e);
      case BE.NoData:
        this.want(e, 'describe', t);
        this.pop();
        return this.routeOf(e);
      case BE.DataRow:
        if (e.kind !== 'execute' && e.kind !== 'query') this.want(e, 'execute', t);
        return this.routeOf(e);
      case BE.CommandComplete:
      case BE.EmptyQueryResponse:
        this.copyIn = this.copyOut = false;
        if (t === BE.CommandComplete) this.commandComplete(e, frame);
        if (e.kind === 'execute') this.pop();
        else this.want(e, 'query', t);
        return this.routeOf(e);
      case BE.PortalSuspended:
        this.want(e, 'execute', t);
        this.pop();
        return this.routeOf(e);
      case BE.CopyInResponse:
        this.wantOneOf(e, t);
        this.copyIn = true;
        return this.routeOf(e);
      case BE.CopyOutResponse:
        this.wantOneOf(e, t);
        this.copyOut = true;
        return this.routeOf(e);
      case BE.CopyData:
      case BE.CopyDone:
        if (!this.copyOut) throw new DesyncError('copy data outside COPY TO');
        return this.routeOf(e);
      case BE.FunctionCallResponse:
        this.want(e, 'function', t);
        return this.routeOf(e);
      case BE.ReadyForQuery: {
        if (e.kind !== 'sync' && e.kind !== 'query' && e.kind !== 'function') this.want(e, 'sync', t);
        this.pop();
        const status = String.fromCharCode(frame.body[0] ?? 0x49) as TxStatus;
        this.txStatus = status;
        this.copyIn = this.copyOut = false;
        if (e.kind === 'query') {
          // A simple Query destroys the unnamed statement and portal.
          this.statements.delete('');
          this.portals.delete('');
          e.onOutcome?.(true);
        }
        if (status === 'I') this.portals.clear(); // portals die at transaction end
        return this.routeOf(e);
      }
      default:
        throw new DesyncError(`unexpected backend message ${String.fromCharCode(t)}`);
    }
  }

  private error(frame: Frame, e: Expectation | undefined): Route {
    // An error with nothing outstanding (idle-session timeout, admin shutdown): the client sees it.
    if (!e) return CLIENT;
    // An error answering one of mamori's own messages inside the client's batch is the client's error too
    // (its statement would have failed at this point; the server now skips the client's messages up to its
    // Sync); the owner is told as well. Where mamori ended its messages with its own Sync, the error is
    // mamori's alone.
    if (e.owner) e.owner.response(frame);
    this.last = e;
    const route: Route = e.refusal ? { to: 'replace', raw: e.refusal } : e.ownErrors ? { to: 'drop' } : CLIENT;
    this.copyIn = this.copyOut = false;
    if (e.kind === 'query' || e.kind === 'function' || e.kind === 'sync') {
      e.refusal = undefined; // the substitute was rejected; its ReadyForQuery ends it as usual
      return route;
    }
    // Extended protocol: this message failed and the server skips everything up to the next Sync.
    this.pop();
    e.onOutcome?.(false);
    while (this.head < this.queue.length && this.queue[this.head]!.kind !== 'sync') {
      const skipped = this.pop();
      skipped.owner?.skipped();
      skipped.onOutcome?.(false);
    }
    // No Sync sent yet: messages sent from now on are skipped by the server too.
    this.skippingToSync = this.head >= this.queue.length;
    return route;
  }

  private commandComplete(e: Expectation, frame: Frame): void {
    e.completed = (e.completed ?? 0) + 1;
    if (!this.namespaceEffects) return;
    // Only PREPARE / DEALLOCATE / DISCARD change the statement namespace; look at the tag first (cheap).
    const b = frame.body;
    const c0 = b[0];
    if (c0 !== 0x50 && c0 !== 0x44) return; // 'P', 'D'
    const tag = b.toString('latin1', 0, b.length - 1);
    if (tag !== 'PREPARE' && tag !== 'DEALLOCATE' && tag !== 'DEALLOCATE ALL' && tag !== 'DISCARD ALL') return;
    if (tag === 'DISCARD ALL') {
      this.statements.clear();
      this.portals.clear();
      return;
    }
    if (tag === 'DEALLOCATE ALL') {
      this.statements.clear();
      return;
    }
    const sql = e.sql;
    if (!sql) return;
    // The k-th PREPARE/DEALLOCATE tag of this message belongs to its k-th such statement.
    const effects = this.namespaceEffects(sql).filter((x) => (tag === 'PREPARE' ? x.kind === 'prepare' : x.kind === 'deallocate'));
    const idx = (tag === 'PREPARE' ? (e.prepares = (e.prepares ?? 0) + 1) : (e.deallocs = (e.deallocs ?? 0) + 1)) - 1;
    const eff = effects[idx];
    if (!eff) return;
    if (eff.kind === 'prepare') {
      const plan = e.preparePlans?.[idx];
      this.statements.set(eff.name, { sql, paramTypes: [], ...(plan !== undefined && plan !== null ? { plan } : {}) });
    }
    else if (eff.kind === 'deallocate') {
      if (eff.name === null) this.statements.clear();
      else this.statements.delete(eff.name);
    }
  }

  private want(e: Expectation, kind: ExpectKind, t: number): void {
    if (e.kind !== kind) {
      throw new DesyncError(`backend message ${String.fromCharCode(t)} does not answer ${e.kind}`);
    }
  }

  private wantOneOf(e: Expectation, t: number): void {
    if (e.kind !== 'query' && e.kind !== 'execute') {
      throw new DesyncError(`backend message ${String.fromCharCode(t)} does not answer ${e.kind}`);
    }
  }
}

