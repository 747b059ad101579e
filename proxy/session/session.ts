// One client session: authentication (mamori is the SCRAM server; it logs in upstream with the ClientKey
// recovered from the client's proof), then the running phase, where both directions are framed, every
// message is tracked by the Pipeline, and unchanged messages are forwarded as their original bytes.
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { errorResponse, MamoriError, PG_ERRORS, toMamoriError } from '../errors.js';
import { Framer, FramingError, type Frame } from '../wire/framer.js';
import { BE, FE, ProtocolError, type StartupMessage, type TransactionStatus } from '../wire/types.js';
import { decodeAuthentication, encodeAuthentication, decodeParameterStatus } from '../wire/backend.js';
import {
  decodeBind, decodeClose, decodeDescribe, decodeExecute, decodeParse, decodeQuery,
  decodeSASLInitialResponse, decodeSASLResponse, encodeFlush, encodeParse, encodeQuery, encodeSASLInitialResponse, encodeSASLResponse, encodeSync,
} from '../wire/frontend.js';
import { encodeStartupMessage } from '../wire/startup.js';
import { DesyncError, Pipeline, RESERVED_PREFIX, type Expectation, type InjectedOwner, type ResultTransform } from './pipeline.js';
import { ScramClientWithKey, ScramServerExchange, tlsServerEndPointHash, wipeSecret, type ScramVerifier } from './scram.js';
import { openUpstream, type UpstreamSocket, type UpstreamTarget } from './upstream.js';
import { namespaceEffects } from './namespace.js';
import type { SessionEvents } from './events.js';

export type ClientSocket = Socket | TLSSocket;

/** What a hook decides for one client message in the running phase. */
/** What a forwarded message carries for policy code: a result transform, a plan kept with the statement or portal once confirmed, an outcome callback. */
export interface DecisionExtras {
  transform?: ResultTransform;
  plan?: unknown;
  onOutcome?: (ok: boolean) => void;
  /** A simple Query's SQL PREPAREs: their plans in statement order, kept with each statement the server confirms. */
  preparePlans?: readonly unknown[];
}

export type Decision =
  | ({ action: 'forward' } & DecisionExtras)
  /** Send these bytes upstream instead (a rewritten Query, Parse or Bind); the response is the client's. */
  | ({ action: 'replace'; raw: Buffer } & DecisionExtras)
  | { action: 'refuse'; error: MamoriError };

export const FORWARD: Decision = { action: 'forward' };

/**
 * Policy hooks (later issues: SQL analysis, result transforms, audit). A hook may return a promise:
 * the message and everything after it wait until it settles ("decisions before execution").
 */
export interface SessionHooks {
  clientMessage?(session: Session, frame: Frame): Decision | Promise<Decision>;
  /**
   * Every ErrorResponse / NoticeResponse on its way to the client (rare, off the hot path): returns the
   * bytes to send instead (e.g. with fields that could echo protected values removed), or null.
   */
  serverNotice?(session: Session, frame: Frame): Buffer | null;
}

export interface SessionLimits {
  maxRewriteMessageBytes: number;
  maxMessageBytes: number;
  idleTimeoutSeconds: number;
}

export interface SessionEnv {
  upstream: UpstreamTarget;
  /** The user's SCRAM verifier through the control connection; null for unknown users. */
  lookupVerifier(user: string): Promise<ScramVerifier | null>;
  /** DER of mamori's own certificate for SCRAM-SHA-256-PLUS on the client leg. */
  certificateDer(): Buffer | null;
  limits: SessionLimits;
  hooks: SessionHooks;
  log: Logger;
  onClose(session: Session): void;
  /** Connect, auth failure, disconnect, refusal, statement and byte events (audit records, metrics). */
  events?: SessionEvents;
}

let nextSessionId = 1;

/** Parses libpq's `options` startup parameter (`-c name=value`, `--name=value`, backslash escapes). */
export function parseStartupOptions(options: string): Array<[string, string]> {
  const words: string[] = [];
  let cur = '';
  let has = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === '\\' && i + 1 < options.length) {
      cur += options[++i];
      has = true;
    } else if (ch === ' ' || ch === '\t' || ch === '\n') {
      if (has) words.push(cur);
      cur = '';
      has = false;
    } else {
      cur += ch;
      has = true;
    }
  }
  if (has) words.push(cur);
  const out: Array<[string, string]> = [];
  for (let i = 0; i < words.length; i++) {
    let w = words[i]!;
    if (w === '-c' && i + 1 < words.length) w = words[++i]!;
    else if (w.startsWith('-c')) w = w.slice(2);
    else if (w.startsWith('--')) w = w.slice(2);
    else continue;
    const eq = w.indexOf('=');
    if (eq > 0) out.push([w.slice(0, eq).replace(/-/g, '_').toLowerCase(), w.slice(eq + 1)]);
  }
  return out;
}

export class Session {
  readonly id = `s${process.pid.toString(36)}-${(nextSessionId++).toString(36)}`;
  readonly pipeline = new Pipeline({ namespaceEffects });
  /** Server-reported parameters (ParameterStatus) plus the startup GUCs, as the session knows them. */
  readonly params = new Map<string, string>();
  /** Startup parameters and `options` GUCs as the client sent them. */
  readonly startupGucs = new Map<string, string>();
  user = '';
  database = '';
  applicationName = '';
  tlsSubject: string | null = null;
  /** The upstream backend's process id (from BackendKeyData). */
  backendPid = 0;
  /** Set by policy code while a COPY FROM's data must reach clientMessage whole (protected COPY): no streaming. */
  inspectCopyIn = false;
  log: Logger;
  private upstream: UpstreamSocket | null = null;
  private closed = false;
  private clientFramer: Framer | null = null;
  private serverFramer: Framer | null = null;
  /** Client messages waiting behind an undecided one, in order. */
  private held: Frame[] = [];
  private deciding = false;
  /** holdUpstream() is keeping messages for the upstream in upOut; a release is scheduled. */
  private upstreamHeld = false;
  private releaseScheduled = false;
  /** Messages for the upstream held by holdUpstream(), in order. */
  private upOut: Buffer[] = [];
  private out: Buffer[] = [];
  private idleTimer: NodeJS.Timeout | null = null;
  /** For SessionEvents: when authentication succeeded (0 before), bytes read from each side, statement start. */
  private connectedAt = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  /** Bytes written to each side since the last report (reportSent). */
  private sentClient = 0;
  private sentUpstream = 0;
  private busySince = 0;

  constructor(
    private client: ClientSocket,
    private readonly env: SessionEnv,
    readonly clientAddress: string,
    readonly clientTls: boolean,
  ) {
    this.log = env.log.child({ session: this.id, client: clientAddress });
  }

  get txStatus(): TransactionStatus {
    return this.pipeline.txStatus;
  }

  // ---------------------------------------------------------------------------------------------
  // Authentication

  async start(startup: StartupMessage): Promise<void> {
    const params = new Map(startup.params);
    this.user = params.get('user') ?? '';
    this.database = params.get('database') || this.user;
    this.applicationName = params.get('application_name') ?? '';
    for (const [k, v] of startup.params) {
      if (k === 'options') for (const [gk, gv] of parseStartupOptions(v)) this.startupGucs.set(gk, gv);
      else if (k !== 'user' && k !== 'database' && !k.startsWith('_pq_.')) this.startupGucs.set(k, v);
    }
    this.log = this.log.child({ user: this.user, database: this.database });
    if (!this.user) return this.fatal(PG_ERRORS.noUserName(), 'no user name');
    if (params.has('replication') && !/^(false|off|no|0)$/i.test(params.get('replication')!)) {
      return this.fatal(errorResponse(new MamoriError('feature_not_supported',
        'replication connections are not supported through mamori', { severity: 'FATAL' })), 'replication refused');
    }
    const cert = this.env.certificateDer();
    let upstream: UpstreamSocket;
    let verifier: ScramVerifier | null;
    try {
      [verifier, upstream] = await Promise.all([
        this.env.lookupVerifier(this.user),
        openUpstream(this.env.upstream),
      ]);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'upstream unavailable during startup');
      this.env.events?.upstreamError?.('connect');
      return this.fatal(errorResponse(new MamoriError('connection_failure',
        'could not connect to the upstream server', { severity: 'FATAL' })), 'upstream unavailable');
    }
    this.upstream = upstream;
    upstream.on('error', (err) => {
      this.log.debug({ err: err.message }, 'upstream socket error');
      this.env.events?.upstreamError?.('reset');
    });
    upstream.on('close', () => this.close('upstream closed'));
    this.client.on('error', (err) => this.log.debug({ err: err.message }, 'client socket error'));
    this.client.on('close', () => this.close('client closed'));

    const up = new MessageReader(upstream, this.env.limits.maxRewriteMessageBytes, false);
    const cl = new MessageReader(this.client, this.env.limits.maxRewriteMessageBytes, false);
    this.writeUpstream(upstream, encodeStartupMessage({ protocol: startup.protocol, params: startup.params }));

    let clientKey: Buffer | null = null;
    try {
      // Upstream speaks first: NegotiateProtocolVersion (relayed), then its authentication request.
      let m = await up.next();
      if (m.type === BE.NegotiateProtocolVersion) {
        this.writeClient(m.raw);
        m = await up.next();
      }
      if (m.type === BE.ErrorResponse) return this.fatal(m.raw, 'upstream refused the startup');
      if (m.type !== BE.Authentication) throw new ProtocolError('upstream did not ask for authentication');
      const auth = decodeAuthentication(m.body);

      if (auth.kind === 'AuthenticationCleartextPassword' || auth.kind === 'AuthenticationMD5Password') {
        // The upstream wants the password itself: relay the exchange, but never over a plaintext client leg.
        if (!this.clientTls) {
          return this.fatal(errorResponse(new MamoriError('invalid_authorization_specification',
            'the upstream requires password authentication, which mamori relays only over TLS', { severity: 'FATAL' })),
          'cleartext/md5 over a non-TLS client leg');
        }
        this.writeClient(m.raw);
        const p = await cl.next();
        if (p.type !== FE.AuthResponse) throw new ProtocolError('expected a password message');
        this.writeUpstream(upstream, p.raw);
        // The upstream's verdict belongs to the startup phase: the running phase's pipeline expects
        // ParameterStatus/BackendKeyData/ReadyForQuery next, not an Authentication message.
        const verdict = await up.next();
        if (verdict.type === BE.ErrorResponse) return this.fatal(verdict.raw, 'upstream refused the login');
        if (verdict.type !== BE.Authentication || decodeAuthentication(verdict.body).kind !== 'AuthenticationOk') {
          throw new ProtocolError('upstream: expected AuthenticationOk');
        }
        this.writeClient(verdict.raw);
      } else {
        // Mamori authenticates the client itself with SCRAM against the verifier.
        const scram = new ScramServerExchange({
          verifier, user: this.user,
          channelBinding: this.clientTls && cert ? tlsServerEndPointHash(cert) : null,
        });
        this.writeClient(encodeAuthentication({ kind: 'AuthenticationSASL', mechanisms: scram.mechanisms() }));
        const first = await cl.next();
        if (first.type !== FE.AuthResponse) throw new ProtocolError('expected SASLInitialResponse');
        const init = decodeSASLInitialResponse(first.body);
        const r1 = scram.clientFirst(init.mechanism, init.data ?? Buffer.alloc(0));
        if (!r1.ok) return this.authFailed(r1.reason);
        this.writeClient(encodeAuthentication({ kind: 'AuthenticationSASLContinue', data: r1.serverFirst }));
        const fin = await cl.next();
        if (fin.type !== FE.AuthResponse) throw new ProtocolError('expected SASLResponse');
        const r2 = scram.clientFinal(decodeSASLResponse(fin.body).data);
        if (!r2.ok) return this.authFailed(r2.reason);
        clientKey = r2.clientKey;

        if (auth.kind === 'AuthenticationSASL') {
          const upCert = 'getPeerCertificate' in upstream ? (upstream as TLSSocket).getPeerCertificate(false)?.raw : undefined;
          const sc = new ScramClientWithKey({ clientKey, verifier: verifier!, channelBinding: upCert ? tlsServerEndPointHash(upCert) : null });
          const mech = sc.chooseMechanism(auth.mechanisms);
          this.writeUpstream(upstream, encodeSASLInitialResponse({ mechanism: mech, data: sc.clientFirst() }));
          const c1 = await up.next();
          if (c1.type === BE.ErrorResponse) return this.fatal(c1.raw, 'upstream refused the login');
          const cont = decodeAuthentication(c1.body);
          if (cont.kind !== 'AuthenticationSASLContinue') throw new ProtocolError('upstream: expected SASLContinue');
          const s1 = sc.serverFirst(cont.data);
          if (!s1.ok) throw new MamoriError('invalid_authorization_specification', `upstream SCRAM: ${s1.reason}`, { severity: 'FATAL' });
          this.writeUpstream(upstream, encodeSASLResponse(s1.clientFinal));
          const c2 = await up.next();
          if (c2.type === BE.ErrorResponse) return this.fatal(c2.raw, 'upstream refused the login');
          const final = decodeAuthentication(c2.body);
          if (final.kind !== 'AuthenticationSASLFinal') throw new ProtocolError('upstream: expected SASLFinal');
          const s2 = sc.serverFinal(final.data);
          sc.dispose();
          if (!s2.ok) throw new MamoriError('invalid_authorization_specification', `upstream SCRAM: ${s2.reason}`, { severity: 'FATAL' });
          const ok = await up.next();
          if (ok.type === BE.ErrorResponse) return this.fatal(ok.raw, 'upstream refused the login');
          if (decodeAuthentication(ok.body).kind !== 'AuthenticationOk') throw new ProtocolError('upstream: expected AuthenticationOk');
        } else if (auth.kind !== 'AuthenticationOk') {
          return this.fatal(errorResponse(new MamoriError('feature_not_supported',
            'the upstream asks for an authentication method mamori does not support', { severity: 'FATAL' })), 'unsupported upstream auth');
        }
        this.writeClient(encodeAuthentication({ kind: 'AuthenticationSASLFinal', data: r2.serverFinal }));
        this.writeClient(encodeAuthentication({ kind: 'AuthenticationOk' }));
      }
    } catch (err) {
      const e = toMamoriError(err);
      this.log.warn({ err: (err as Error).message }, 'startup failed');
      return this.fatal(errorResponse(new MamoriError(e.code, e.message, { severity: 'FATAL' })), 'startup failed');
    } finally {
      wipeSecret(clientKey);
    }
    this.log.info({ tls: this.clientTls, applicationName: this.applicationName }, 'session authenticated');
    this.connectedAt = Date.now();
    this.env.events?.connected?.(this);
    // Hand both sockets to the running phase, with whatever was read ahead.
    this.run(up.detach(), cl.detach());
  }

  private authFailed(reason: string): void {
    this.log.warn({ reason }, 'authentication failed');
    this.env.events?.authFailed?.(this, reason);
    this.fatal(PG_ERRORS.passwordAuthFailed(this.user), 'authentication failed');
  }

  /** Sends a FATAL error to the client and ends the session. */
  fatal(raw: Buffer, reason: string): void {
    if (this.closed) return;
    this.writeClient(raw);
    this.close(reason);
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.flushOut();
    this.log.debug({ reason }, 'session closed');
    if (this.connectedAt > 0) {
      this.env.events?.disconnected?.(this, { durationMs: Date.now() - this.connectedAt, bytesIn: this.bytesIn, bytesOut: this.bytesOut, reason });
    }
    this.client.end();
    this.client.destroySoon?.();
    setTimeout(() => this.client.destroy(), 1000).unref();
    this.upstream?.destroy();
    this.env.onClose(this);
  }

  /** Ends the session with PostgreSQL's administrator-command FATAL (graceful shutdown deadline). */
  terminate(): void {
    this.fatal(PG_ERRORS.adminShutdown(), 'shutdown');
  }

  // ---------------------------------------------------------------------------------------------
  // Running phase

  private run(upRest: Buffer[], clRest: Buffer[]): void {
    const upstream = this.upstream!;
    const client = this.client;
    const limits = this.env.limits;
    this.serverFramer = new Framer(
      {
        frame: (f) => this.onServerFrame(f),
        streamStart: (_t, header) => this.toClient(header),
        streamChunk: (c) => this.toClient(c),
        streamEnd: () => undefined,
      },
      {
        maxBufferedBytes: limits.maxRewriteMessageBytes,
        maxMessageBytes: limits.maxMessageBytes,
        // Rows and COPY data stream through while no policy needs to see them.
        streamable: (t) => {
          if (t !== BE.DataRow && t !== BE.CopyData) return false;
          const e = this.pipeline.peek();
          return !e?.owner && (!e?.transform || e.transform.passRows === true);
        },
      },
    );
    this.clientFramer = new Framer(
      {
        frame: (f) => this.onClientFrame(f),
        // Streamed CopyData honours backpressure like whole messages (toUpstream pauses the client).
        streamStart: (_t, header) => this.toUpstream(header),
        streamChunk: (c) => this.toUpstream(c),
        streamEnd: () => undefined,
      },
      {
        maxBufferedBytes: limits.maxRewriteMessageBytes,
        maxMessageBytes: limits.maxMessageBytes,
        streamable: (t) => t === FE.CopyData && this.pipeline.copyIn && !this.inspectCopyIn,
      },
    );
    upstream.on('data', (chunk: Buffer) => this.feed(this.serverFramer!, chunk, 'server'));
    client.on('data', (chunk: Buffer) => this.feed(this.clientFramer!, chunk, 'client'));
    // Backpressure: a slow reader pauses the socket that feeds it.
    client.on('drain', () => {
      if (!this.outputHold) upstream.resume();
    });
    upstream.on('drain', () => {
      if (!this.deciding) client.resume();
    });
    client.on('end', () => this.close('client ended'));
    // The server's first ReadyForQuery (after ParameterStatus and BackendKeyData) ends the startup.
    this.pipeline.expect({ kind: 'sync' });
    for (const c of upRest) this.feed(this.serverFramer, c, 'server');
    for (const c of clRest) this.feed(this.clientFramer, c, 'client');
    upstream.resume();
    client.resume();
  }

  private feed(framer: Framer, chunk: Buffer, side: 'client' | 'server'): void {
    if (this.closed) return;
    if (side === 'client') this.bytesIn += chunk.length;
    else this.bytesOut += chunk.length;
    this.env.events?.bytes?.(side === 'client' ? 'client' : 'upstream', chunk.length);
    // The messages of one client read go upstream in one write (libpq and drivers send Parse/Bind/
    // Describe/Execute/Sync together), instead of one syscall each.
    const client = side === 'client';
    if (client) this.holdUpstream();
    try {
      this.pushFrames(framer, chunk, side);
    } finally {
      // While a decision is pending the upstream stays held: the messages it releases join this write.
      if (client && !this.deciding) this.releaseUpstream();
    }
    this.flushOut();
  }

  /**
   * Holds the messages for the upstream so those decided in this turn of the event loop leave in one write.
   * A release is always scheduled (setImmediate runs once the turn's microtasks are done): a decision that
   * waits on the server (a Bind waiting for its Parse's outcome, an injected Describe) lets the loop reach
   * it, so held bytes never wait behind something that needs them sent.
   */
  private holdUpstream(): void {
    if (!this.upstream || this.upstreamHeld) return;
    this.upstreamHeld = true;
    if (!this.releaseScheduled) {
      this.releaseScheduled = true;
      setImmediate(this.scheduledRelease);
    }
  }

  private readonly scheduledRelease = (): void => {
    this.releaseScheduled = false;
    this.releaseUpstream();
  };

  /** Sends what holdUpstream() kept back, in one write. */
  private releaseUpstream(): void {
    if (!this.upstreamHeld) return;
    this.upstreamHeld = false;
    const out = this.upOut;
    if (out.length === 0 || !this.upstream) return;
    this.upOut = [];
    if (!writeAll(this.upstream, out)) this.client.pause();
  }

  private pushFrames(framer: Framer, chunk: Buffer, side: 'client' | 'server'): void {
    try {
      framer.push(chunk);
    } catch (err) {
      if (err instanceof FramingError || err instanceof ProtocolError) {
        this.log.warn({ side, err: err.message }, 'protocol violation');
        if (side === 'client') {
          this.flushOut();
          this.fatal(errorResponse(new MamoriError(/exceeds/.test(err.message) ? 'program_limit_exceeded' : 'protocol_violation',
            err.message, { severity: 'FATAL' })), 'client protocol violation');
        } else {
          this.fatal(errorResponse(new MamoriError('connection_failure', 'invalid data from the upstream server', { severity: 'FATAL' })), 'upstream protocol violation');
        }
        return;
      }
      if (err instanceof DesyncError) {
        this.log.error({ err: err.message }, 'protocol desynchronised');
        this.fatal(errorResponse(new MamoriError('internal_error', 'protocol state lost; closing the session', { severity: 'FATAL' })), 'desync');
        return;
      }
      // Anything else (a result transform that cannot decrypt, a bug): this session ends, fail closed,
      // with nothing more released to the client; the process and other sessions carry on.
      const me = toMamoriError(err);
      this.log.error({ side, err: (err as Error).message, code: me.code }, 'session error');
      this.out = [];
      this.fatal(errorResponse(new MamoriError(me.code, me.message, { severity: 'FATAL' })), 'session error');
    }
  }

  // Server → client ------------------------------------------------------------------------------

  private onServerFrame(f: Frame): void {
    const route = this.pipeline.server(f);
    if (f.type === BE.ParameterStatus) {
      const ps = decodeParameterStatus(f.body);
      this.params.set(ps.name, ps.value);
    }
    switch (route.to) {
      case 'client': {
        // After mamori ended a result with its own error, the server's further answers up to ReadyForQuery
        // are not the client's to see (their transforms still run, for the audit).
        const dropping = this.discarding && f.type !== BE.ReadyForQuery && !ASYNC_MESSAGES.has(f.type)
          && !(f.type === BE.ErrorResponse && isFatal(f.body));
        const transform = this.pipeline.last?.transform;
        let out = transform ? transform.message(f) ?? f.raw : f.raw;
        if (dropping) break;
        if (f.type === BE.ReadyForQuery && this.discarding) out = this.endDiscard(out);
        if ((f.type === BE.ErrorResponse || f.type === BE.NoticeResponse) && this.env.hooks.serverNotice) {
          out = this.env.hooks.serverNotice(this, { type: f.type, body: out.subarray(5), raw: out }) ?? out;
        }
        this.toClient(out);
        if (this.env.events?.statementDone && (f.type === BE.CommandComplete || f.type === BE.ErrorResponse)) {
          this.env.events.statementDone(this, {
            tag: f.type === BE.CommandComplete ? f.body.toString('latin1', 0, f.body.length - 1) : null,
            transform,
            seconds: this.busySince > 0 ? (performance.now() - this.busySince) / 1000 : 0,
          });
        }
        if (f.type === BE.ErrorResponse && isFatal(f.body)) this.close('upstream FATAL');
        else if (f.type === BE.BackendKeyData) this.backendPid = f.body.readInt32BE(0);
        break;
      }
      case 'replace':
        if (!this.discarding) this.toClient(route.raw);
        break;
      case 'owner':
        route.owner.response(f);
        break;
      case 'drop':
        break;
    }
    if (f.type === BE.ReadyForQuery) this.armIdleTimer();
  }

  /** Set by endResultWithError until the next ReadyForQuery reaches the client. */
  private discarding = false;

  /**
   * A result transform ends the current result with mamori's own error (the ErrorResponse it returns
   * for the message being routed): from here to ReadyForQuery the server's answers are dropped, as the
   * client expects after an error. The server did not fail, so a failing message of mamori's own puts its
   * transaction block in the failed state too (inside the client's extended batch it also makes the server
   * skip the client's messages up to its Sync, as a real error would).
   */
  endResultWithError(): void {
    if (this.discarding) return;
    this.discarding = true;
    this.inject([encodeParse({ name: `${RESERVED_PREFIX}refused`, sql: REFUSAL_SQL, paramTypes: [] })], ['parse'], { response: () => undefined, skipped: () => undefined });
  }

  /** The ReadyForQuery that ends a discarded result: a block the client saw fail is reported failed. */
  private endDiscard(rfq: Buffer): Buffer {
    this.discarding = false;
    if (rfq[5] !== 0x54) return rfq; // 'T'
    const out = Buffer.from(rfq);
    out[5] = 0x45; // 'E'
    return out;
  }

  /** Set while output for the client waits on a gate (see holdOutput). */
  private outputHold: Promise<void> | null = null;

  /**
   * Output for the client waits until `gate` settles: a result transform that finds protected data mid-result
   * (a cell of unknown origin) must have its audit intent reach the OS before the row carrying it is released.
   * The upstream is paused meanwhile; frames already received queue behind the held ones, in order. A gate
   * that resolves false (the intent could not be written, failMode closed) ends the session with `refusal`
   * and nothing held is released.
   */
  holdOutput(gate: Promise<boolean>, refusal: MamoriError): void {
    const before = this.outputHold ?? Promise.resolve();
    const hold: Promise<void> = before.then(() => gate).catch(() => false).then((ok) => {
      if (this.outputHold !== hold) return; // a later hold chained behind this one releases everything
      this.outputHold = null;
      if (this.closed) return;
      if (!ok) {
        this.out = [];
        this.fatal(errorResponse(new MamoriError(refusal.code, refusal.message, { severity: 'FATAL' })), 'audit unavailable');
        return;
      }
      this.flushOut();
      if (this.client.writableNeedDrain !== true) this.upstream?.resume();
    });
    this.outputHold = hold;
    this.upstream?.pause();
  }

  /** Queues bytes for the client; adjacent subarrays of one chunk are merged into one write. */
  toClient(b: Buffer): void {
    const last = this.out[this.out.length - 1];
    if (last && last.buffer === b.buffer && last.byteOffset + last.length === b.byteOffset) {
      this.out[this.out.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + b.length);
    } else {
      this.out.push(b);
    }
  }

  private flushOut(): void {
    if (this.out.length === 0 || this.outputHold) {
      if (this.sentUpstream > 0 || this.sentClient > 0) this.reportSent();
      return;
    }
    const out = this.out;
    this.out = [];
    let n = 0;
    for (const b of out) n += b.length;
    const ok = writeAll(this.client, out);
    this.sentClient += n;
    this.reportSent();
    if (!ok) this.upstream?.pause();
  }

  /** A startup or FATAL write to the client, counted. */
  private writeClient(b: Buffer): boolean {
    this.sentClient += b.length;
    return this.client.write(b);
  }

  private writeUpstream(upstream: UpstreamSocket, b: Buffer): boolean {
    this.sentUpstream += b.length;
    return upstream.write(b);
  }

  /** Passes the bytes written since the last report to the observer: once per flush, not per message. */
  private reportSent(): void {
    const events = this.env.events;
    if (this.sentClient > 0) events?.sent?.('client', this.sentClient);
    if (this.sentUpstream > 0) events?.sent?.('upstream', this.sentUpstream);
    this.sentClient = 0;
    this.sentUpstream = 0;
  }

  // Client → server ------------------------------------------------------------------------------

  private onClientFrame(f: Frame): void {
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    if (this.pipeline.idle) this.busySince = performance.now();
    if (this.deciding) {
      this.held.push(copyFrame(f));
      return;
    }
    this.process(f);
  }

  private process(f: Frame): void {
    const hook = this.env.hooks.clientMessage;
    const d = hook ? hook(this, f) : FORWARD;
    if (d instanceof Promise) {
      this.deciding = true;
      this.holdUpstream();
      this.client.pause();
      const frame = copyFrame(f);
      d.then(
        (decision) => this.apply(frame, decision),
        (err: unknown) => this.apply(frame, { action: 'refuse', error: toMamoriError(err) }),
      ).finally(() => {
        this.deciding = false;
        this.holdUpstream();
        while (!this.deciding && this.held.length > 0) this.process(this.held.shift()!);
        if (!this.deciding) this.releaseUpstream();
        // A congested upstream keeps the client paused: its 'drain' resumes it (else decided CopyData piles up).
        if (!this.deciding && !this.closed && this.upstream?.writableNeedDrain !== true) this.client.resume();
        this.flushOut();
      });
      return;
    }
    this.apply(f, d);
  }

  private apply(f: Frame, d: Decision): void {
    if (this.closed) return;
    let e: Expectation | null;
    try {
      e = this.expectationFor(f);
    } catch (err) {
      const me = toMamoriError(err);
      if (me.code === 'reserved_name') {
        d = { action: 'refuse', error: me };
        e = this.expectationForKind(f);
      } else {
        this.fatal(errorResponse(new MamoriError(me.code, me.message, { severity: 'FATAL' })), 'bad client message');
        return;
      }
    }
    if (d.action === 'refuse') return this.refuse(f, e, d.error);
    if (e) {
      if (d.transform) e.transform = d.transform;
      if (d.onOutcome) e.onOutcome = d.onOutcome;
      if (d.preparePlans) {
        e.preparePlans = d.preparePlans;
        if (e.statement) e.statement.preparePlans = d.preparePlans; // Parse: its Executes run the PREPAREs
      }
      if (d.plan !== undefined) {
        if (e.statement) e.statement.plan = d.plan;
        if (e.portal) e.portal.plan = d.plan;
      }
      this.pipeline.expect(e);
    }
    this.toUpstream(d.action === 'replace' ? d.raw : f.raw);
    if (f.type === FE.Terminate) {
      this.releaseUpstream();
      this.close('client terminated');
    }
  }

  toUpstream(raw: Buffer): void {
    this.sentUpstream += raw.length; // reported with the next flushOut
    if (this.upstreamHeld) this.upOut.push(raw);
    else if (!this.upstream!.write(raw)) this.client.pause();
  }

  /**
   * Refuses one client message so that client and server stay in step: a substitute that the server
   * rejects at the same point goes upstream (aborting a transaction block, starting skip-until-Sync),
   * and mamori's own ErrorResponse replaces the server's.
   */
  refuse(f: Frame, e: Expectation | null, error: MamoriError): void {
    this.log.info({ sqlstate: error.sqlstate, reason: error.code }, 'statement refused');
    this.env.events?.refused?.(this, { sqlstate: error.sqlstate, code: error.code, messageType: f.type, body: f.body });
    const refusal = errorResponse(error);
    if (f.type === FE.Query || f.type === FE.FunctionCall) {
      this.pipeline.expect({ kind: 'query', refusal });
      this.toUpstream(encodeQuery(REFUSAL_SQL));
      return;
    }
    if (!e || e.kind === 'sync') {
      // Sync/Flush/Copy messages are never refused by policy; a refusal here is a bug: fail closed.
      this.fatal(errorResponse(new MamoriError('internal_error', 'cannot refuse this message', { severity: 'FATAL' })), 'refusal of an unrefusable message');
      return;
    }
    this.pipeline.expect({ kind: e.kind, refusal });
    this.toUpstream(encodeParse({ name: `${RESERVED_PREFIX}refused`, sql: REFUSAL_SQL, paramTypes: [] }));
  }

  /**
   * Sends mamori's own messages upstream at the current pipeline position; their responses go to `owner`
   * (`kinds` gives the expectation for each message). At a Sync boundary mamori ends them with its own
   * Sync, so an error in them (an aborted transaction, say) stays mamori's and the server is not left
   * skipping the client's next messages; inside the client's extended batch it ends them with Flush
   * (a Sync there would end the client's implicit transaction), and an error is the client's error too.
   */
  inject(messages: Buffer[], kinds: Array<Expectation['kind']>, owner: InjectedOwner): void {
    const ownSync = !this.pipeline.extendedOpen;
    for (const k of kinds) {
      this.pipeline.expect({ kind: k, owner, ownErrors: ownSync, name: `${RESERVED_PREFIX}inj`, statement: { sql: '', paramTypes: [] } });
    }
    if (ownSync) this.pipeline.expect({ kind: 'sync', owner, ownErrors: true });
    for (const m of messages) this.toUpstream(m);
    this.toUpstream(ownSync ? SYNC : FLUSH);
    // The caller waits for the answer: send now, with whatever was held before it.
    this.releaseUpstream();
  }

  private expectationFor(f: Frame): Expectation | null {
    switch (f.type) {
      case FE.Query: {
        const q = decodeQuery(f.body);
        return { kind: 'query', sql: q.sql };
      }
      case FE.Parse: {
        const p = decodeParse(f.body);
        reserved(p.name, 'prepared statement');
        return { kind: 'parse', name: p.name, statement: { sql: p.sql, paramTypes: p.paramTypes } };
      }
      case FE.Bind: {
        const b = decodeBind(f.body);
        reserved(b.portal, 'portal');
        reserved(b.statement, 'prepared statement');
        return { kind: 'bind', name: b.portal, portal: { statement: b.statement, resultFormats: b.resultFormats } };
      }
      case FE.Describe: {
        const d = decodeDescribe(f.body);
        reserved(d.name, d.target === 'S' ? 'prepared statement' : 'portal');
        return { kind: 'describe', target: d.target, name: d.name };
      }
      case FE.Execute: {
        const x = decodeExecute(f.body);
        reserved(x.portal, 'portal');
        const portal = this.pipeline.portals.get(x.portal);
        const st = portal ? this.pipeline.statements.get(portal.statement) : undefined;
        return { kind: 'execute', name: x.portal, ...(st ? { sql: st.sql } : {}), ...(st?.preparePlans ? { preparePlans: st.preparePlans } : {}) };
      }
      case FE.Close: {
        const c = decodeClose(f.body);
        reserved(c.name, c.target === 'S' ? 'prepared statement' : 'portal');
        return { kind: 'close', target: c.target, name: c.name };
      }
      case FE.Sync:
        return { kind: 'sync' };
      case FE.FunctionCall:
        return { kind: 'function' };
      case FE.Flush:
      case FE.Terminate:
      case FE.CopyData:
      case FE.CopyDone:
      case FE.CopyFail:
        return null;
      default:
        throw new MamoriError('protocol_violation', `invalid frontend message type ${f.type}`, { severity: 'FATAL' });
    }
  }

  private expectationForKind(f: Frame): Expectation | null {
    const kinds: Record<number, Expectation['kind']> = {
      [FE.Parse]: 'parse', [FE.Bind]: 'bind', [FE.Describe]: 'describe', [FE.Execute]: 'execute', [FE.Close]: 'close',
    };
    const k = kinds[f.type];
    return k ? { kind: k } : null;
  }

  private armIdleTimer(): void {
    const secs = this.env.limits.idleTimeoutSeconds;
    if (secs <= 0 || !this.pipeline.idle || this.closed) return;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.pipeline.idle) this.fatal(PG_ERRORS.idleSessionTimeout(), 'idle timeout');
    }, secs * 1000);
    this.idleTimer.unref();
  }
}

/** Below this many bytes, buffers bound for one socket are joined: one copy is cheaper than a writev. */
const SMALL_WRITE = 16 * 1024;

/** Writes buffers in order with one syscall where possible; false when the socket asks to wait for 'drain'. */
function writeAll(sock: ClientSocket | UpstreamSocket, bufs: readonly Buffer[]): boolean {
  if (bufs.length === 1) return sock.write(bufs[0]!);
  let n = 0;
  for (const b of bufs) n += b.length;
  if (n <= SMALL_WRITE) return sock.write(Buffer.concat(bufs, n));
  let ok = true;
  sock.cork();
  for (const b of bufs) ok = sock.write(b) && ok;
  sock.uncork();
  return ok;
}

const SYNC = encodeSync();
/** Backend messages that may arrive at any time; never part of a statement's answer. */
const ASYNC_MESSAGES = new Set<number>([BE.NoticeResponse, BE.NotificationResponse, BE.ParameterStatus]);
const FLUSH = encodeFlush();

/** Text the server rejects at parse time, used as the substitute for a refused message. */
const REFUSAL_SQL = 'mamori refused this statement';

function reserved(name: string, what: string): void {
  if (name.startsWith(RESERVED_PREFIX)) {
    throw new MamoriError('reserved_name', `${what} names beginning with "${RESERVED_PREFIX}" are reserved for mamori`);
  }
}

function isFatal(body: Buffer): boolean {
  // Severity is the first field ('S'); FATAL and PANIC end the connection.
  const s = body.toString('latin1', 1, 6);
  return s === 'FATAL' || s === 'PANIC';
}

function copyFrame(f: Frame): Frame {
  const raw = Buffer.from(f.raw);
  return { type: f.type, raw, body: raw.subarray(f.raw.length - f.body.length) };
}

/**
 * Reads whole messages from a socket during startup, one at a time; `detach()` stops reading and returns
 * anything already read past the last message, for the running phase to consume first.
 */
class MessageReader {
  private queue: Frame[] = [];
  private waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;
  private error: Error | null = null;
  private readonly framer: Framer;
  private readonly onData: (c: Buffer) => void;
  private readonly onEnd: () => void;
  private rawRest: Buffer[] = [];

  constructor(private readonly sock: ClientSocket | UpstreamSocket, maxBytes: number, startup: boolean) {
    this.framer = new Framer({ frame: (f) => this.push(copyFrame(f)) }, { maxBufferedBytes: maxBytes, maxMessageBytes: maxBytes, startup });
    this.onData = (c: Buffer) => {
      this.rawRest.push(c);
      try {
        this.framer.push(c);
      } catch (err) {
        this.fail(err as Error);
      }
    };
    this.onEnd = () => this.fail(new MamoriError('connection_failure', 'connection closed during startup', { severity: 'FATAL' }));
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.resume();
  }

  private push(f: Frame): void {
    // Track how many raw bytes have been consumed as whole messages.
    this.consumed += f.raw.length;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(f);
    } else this.queue.push(f);
  }
  private consumed = 0;

  private fail(err: Error): void {
    this.error = err;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(err);
    }
  }

  next(): Promise<Frame> {
    const f = this.queue.shift();
    if (f) return Promise.resolve(f);
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      const timer = setTimeout(() => this.fail(new MamoriError('connection_failure', 'timed out during startup', { severity: 'FATAL' })), 30_000);
      const orig = this.waiter;
      this.waiter = {
        resolve: (v) => { clearTimeout(timer); orig.resolve(v); },
        reject: (e) => { clearTimeout(timer); orig.reject(e); },
      };
    });
  }

  /** Stops reading; returns bytes received but not yet consumed by next() (queued frames, then the partial rest). */
  detach(): Buffer[] {
    this.sock.pause();
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    const all = Buffer.concat(this.rawRest);
    const unconsumedQueued = this.queue.reduce((n, f) => n + f.raw.length, 0);
    const start = this.consumed - unconsumedQueued;
    return start < all.length ? [all.subarray(start)] : [];
  }
}
