// The listener: accepts clients, runs their startup phase, enforces the connection limit and startup
// timeout, forwards CancelRequests, owns the client-leg TLS context (reloadable) and the control
// connection pool, and shuts down gracefully.
import { readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import pg from 'pg';
import { loadModule } from 'libpg-query';
import type { Logger } from 'pino';
import type { MamoriConfig } from '../config/schema.js';
import type { ConfigSecrets } from '../config/load.js';
import { errorResponse, MamoriError, PG_ERRORS } from './errors.js';
import { fetchVerifier } from './session/auth-lookup.js';
import { readStartup } from './session/startup.js';
import { parseCaBundle, verifyClientCertificate } from './session/client-cert.js';
import { Session, type SessionHooks } from './session/session.js';
import { openUpstream, tlsOptionsFor, type UpstreamTarget } from './session/upstream.js';
import type { ScramVerifier } from './session/scram.js';
import { Keyring, keyringConfigFrom } from '../keyring/index.js';
import type { AuditTrail } from './audit/trail.js';
import { KeyringSubjectKeys } from './audit/subject-keys.js';
import { recordAllStatements } from './audit/all-statements.js';
import { recordKeyEvents } from './audit/policy-records.js';
import { createOps, metricsFor, openAuditTrail, tcpReachable } from './ops.js';
import type { Metrics } from './metrics.js';
import { PolicyEngine } from './policy/engine.js';

export interface MamoriServer {
  port: number;
  host: string;
  /** Sessions currently open (authenticated or in startup). */
  readonly connections: number;
  /** Port of the metrics/health HTTP listener, or null when metrics are disabled. */
  readonly metricsPort: number | null;
  /** Re-reads the client-leg certificate and key (SIGHUP). */
  reloadTls(): void;
  /** The column-policy engine, when columns are configured (config reloads go through it). */
  readonly engine: PolicyEngine | null;
  /** SIGHUP: the certificate (reloadTls) and the keystore (new key versions, rotation flags). */
  reload(): Promise<void>;
  /** Stops accepting, lets sessions finish up to the grace period, then ends the rest. */
  shutdown(graceSeconds?: number): Promise<void>;
}

export interface StartOptions {
  config: MamoriConfig;
  secrets: ConfigSecrets;
  log: Logger;
  hooks?: SessionHooks;
}

interface TlsState {
  context: SecureContext;
  certDer: Buffer;
}

function loadTls(cfg: NonNullable<MamoriConfig['tls']>): TlsState {
  const cert = readFileSync(cfg.cert);
  const key = readFileSync(cfg.key);
  const context = createSecureContext({
    cert, key, minVersion: cfg.minVersion,
    ...(cfg.clientCa ? { ca: readFileSync(cfg.clientCa) } : {}),
  });
  return { context, certDer: new X509Certificate(cert).raw };
}

export function upstreamTarget(cfg: MamoriConfig): UpstreamTarget {
  const t = cfg.upstream.tls;
  return {
    host: cfg.upstream.host,
    port: cfg.upstream.port,
    connectTimeoutMs: cfg.upstream.connectTimeoutSeconds * 1000,
    tls: { mode: t.mode, ca: t.ca ? readFileSync(t.ca) : undefined, servername: t.servername },
  };
}

/** pg connection settings for mamori's own logins upstream (control connection), TLS as configured. */
export function controlClientConfig(cfg: MamoriConfig, secrets: ConfigSecrets, target: UpstreamTarget): pg.ClientConfig {
  return {
    host: target.host,
    port: target.port,
    user: cfg.control.user,
    password: secrets.controlPassword,
    database: cfg.control.database,
    application_name: 'mamori-control',
    ssl: target.tls.mode === 'disable' ? false : tlsOptionsFor(target),
  };
}

/**
 * The column-policy engine, when the configuration protects columns: opens the keyring (which must have
 * been initialised with `mamori keys init`, except in the embedded default) and the audit trail.
 */
async function startPolicy(config: MamoriConfig, secrets: ConfigSecrets, target: UpstreamTarget, log: Logger, metrics: Metrics | null): Promise<{ engine: PolicyEngine; audit: AuditTrail | null; keyringReady(): boolean; close(): Promise<void> } | null> {
  if (Object.keys(config.columns).length === 0) return null;
  const keyring = await Keyring.open(keyringConfigFrom(config.keyring), {
    ...(config.keyring.store.type === 'postgres' ? { pg: new pg.Pool(controlClientConfig(config, secrets, target)) } : {}),
  });
  const keyEvents = recordKeyEvents(keyring); // every key event, unwraps included, once the trail is open
  // the subject key (purpose subject, created on first start) hashes data subjects for the audit trail
  const subjects = await KeyringSubjectKeys.open(keyring);
  const audit = await openAuditTrail(config, secrets, log, { keyring: subjects, metrics });
  keyEvents.attach(audit);
  const engine = await PolicyEngine.start({ config, keyring, control: controlClientConfig(config, secrets, target), log, audit, subjects, metrics });
  return {
    engine,
    audit,
    keyringReady() {
      try {
        subjects.subjectKey();
        keyring.list();
        return true;
      } catch {
        return false;
      }
    },
    async close() {
      await engine.close();
      await audit?.close();
      subjects.close();
      keyEvents.close();
      await keyring.close();
    },
  };
}

export async function startMamori(opts: StartOptions): Promise<MamoriServer> {
  const { config, secrets, log } = opts;
  await loadModule(); // libpg-query's WASM, once
  const target = upstreamTarget(config);
  const metrics = metricsFor(config);
  const policy = opts.hooks ? null : await startPolicy(config, secrets, target, log, metrics);
  // without protected columns the trail still records connections, refusals and (statements: all) statements
  const ownTrail = policy ? null : await openAuditTrail(config, secrets, log, { metrics });
  const trail = policy?.audit ?? ownTrail;
  const ops = createOps(config, log, trail, metrics);
  const baseHooks: SessionHooks = opts.hooks ?? policy?.engine.hooks() ?? {};
  const hooks: SessionHooks = trail && config.audit.statements === 'all'
    ? recordAllStatements(baseHooks, trail, () => undefined) // failures are counted by the trail (lost/refused metrics)
    : baseHooks;
  let tls: TlsState | null = config.tls ? loadTls(config.tls) : null;
  let clientCas = config.tls?.clientCa ? parseCaBundle(readFileSync(config.tls.clientCa)) : [];
  const pool = new pg.Pool({ ...controlClientConfig(config, secrets, target), max: 4, idleTimeoutMillis: 30_000 });
  pool.on('error', (err) => log.warn({ err: err.message }, 'control connection error'));
  const fn = config.auth.lookupFunction;
  const lookupVerifier = async (user: string): Promise<ScramVerifier | null> => {
    const client = await pool.connect();
    try {
      return await fetchVerifier(client, fn, user);
    } finally {
      client.release();
    }
  };

  const sessions = new Set<Session>();
  let pendingStartups = 0;
  let shuttingDown = false;
  const limits = config.limits;

  const handle = async (raw: Socket): Promise<void> => {
    const clientAddress = `${raw.remoteAddress ?? '?'}:${raw.remotePort ?? 0}`;
    raw.setNoDelay(true);
    raw.on('error', () => undefined);
    pendingStartups++;
    const timer = setTimeout(() => {
      ops.observer.rejected('startup_error', clientAddress); // startup timeout
      raw.destroy();
    }, limits.startupTimeoutSeconds * 1000);
    let counted = true;
    const uncount = (): void => {
      if (counted) pendingStartups--;
      counted = false;
    };
    try {
      const outcome = await readStartup(raw, {
        context: () => tls?.context ?? null,
        requestCert: Boolean(config.tls?.clientCa),
      });
      if (outcome.kind === 'closed') {
        log.debug({ client: clientAddress, reason: outcome.reason }, 'connection closed during startup');
        raw.destroy();
        return;
      }
      if (outcome.kind === 'cancel') {
        await forwardCancel(target, outcome.raw, log);
        return;
      }
      const sock = outcome.socket;
      const refuse = (msg: Buffer): void => {
        sock.end(msg);
        setTimeout(() => sock.destroy(), 1000).unref();
      };
      if (outcome.kind === 'unsupported') {
        refuse(PG_ERRORS.unsupportedProtocol(outcome.packet.major, outcome.packet.minor));
        return;
      }
      if (shuttingDown) {
        ops.observer.rejected('shutting_down', clientAddress);
        return refuse(PG_ERRORS.shuttingDown());
      }
      if (sessions.size + pendingStartups > limits.maxConnections) {
        log.warn({ client: clientAddress }, 'connection refused: max connections reached');
        ops.observer.rejected('too_many', clientAddress);
        return refuse(PG_ERRORS.tooManyClients());
      }
      if (config.tls?.require && !outcome.tls) {
        ops.observer.rejected('tls_required', clientAddress);
        return refuse(errorResponse(new MamoriError('invalid_authorization_specification',
          'TLS is required: connect with sslmode=require or stronger', { severity: 'FATAL' })));
      }
      let tlsSubject: string | null = null;
      if (outcome.tls && config.tls?.clientCa) {
        const t = sock as TLSSocket;
        const peer = t.getPeerCertificate();
        if (peer && Object.keys(peer).length > 0) {
          if (!verifyClientCertificate(t, clientCas)) {
            log.warn({ client: clientAddress }, 'client certificate refused: it does not chain to tls.clientCa');
            ops.observer.rejected('cert_required', clientAddress);
            return refuse(errorResponse(new MamoriError('invalid_authorization_specification',
              'the client certificate is not trusted', { severity: 'FATAL' })));
          }
          tlsSubject = peer.subject ? Object.entries(peer.subject).map(([k, v]) => `${k}=${String(v)}`).join(',') : null;
        }
      }
      const session = new Session(sock, {
        upstream: target,
        lookupVerifier,
        certificateDer: () => tls?.certDer ?? null,
        limits,
        hooks,
        log,
        events: ops.observer,
        onClose: (s) => sessions.delete(s),
      }, clientAddress, outcome.tls);
      session.tlsSubject = tlsSubject;
      sessions.add(session);
      uncount();
      await session.start(outcome.message);
    } catch (err) {
      log.error({ err: (err as Error).message, client: clientAddress }, 'session startup error');
      raw.destroy();
    } finally {
      clearTimeout(timer);
      uncount();
    }
  };

  const server: Server = createServer({ noDelay: true, pauseOnConnect: true }, (sock) => {
    void handle(sock);
  });
  server.maxConnections = limits.maxConnections * 2 + 16; // hard backstop; the limit proper is PostgreSQL-worded
  let metricsPort: number | null;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.listen.port, config.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    metricsPort = await ops.startHttp({
      upstream: () => tcpReachable(target.host, target.port),
      ...(policy ? { keyring: () => policy.keyringReady(), catalog: () => policy.engine.catalogFresh() } : {}),
      ...(trail ? { audit: () => trail.probe() } : {}),
    });
  } catch (err) {
    // A port in use (say): release everything already opened so the process can report it and exit.
    server.close();
    await pool.end().catch(() => undefined);
    await policy?.close().catch(() => undefined);
    await ownTrail?.close().catch(() => undefined);
    throw err;
  }
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.listen.port;
  log.info({ host: config.listen.host, port, upstream: `${target.host}:${target.port}`, tls: Boolean(tls) }, 'mamori listening');

  return {
    port,
    host: config.listen.host,
    metricsPort,
    get connections() {
      return sessions.size + pendingStartups;
    },
    engine: policy?.engine ?? null,
    reloadTls() {
      if (!config.tls) return;
      try {
        tls = loadTls(config.tls);
        clientCas = config.tls.clientCa ? parseCaBundle(readFileSync(config.tls.clientCa)) : [];
        log.info('TLS certificate reloaded');
      } catch (err) {
        log.error({ err: (err as Error).message }, 'TLS certificate reload failed; keeping the old certificate');
      }
    },
    async reload() {
      (this as MamoriServer).reloadTls();
      try {
        await policy?.engine.reload();
        if (policy) log.info('keystore reloaded');
      } catch (err) {
        log.error({ err: (err as Error).message }, 'keystore reload failed; keeping the previous keys');
      }
    },
    async shutdown(graceSeconds = limits.shutdownGraceSeconds) {
      shuttingDown = true;
      // The listener stays open until the sessions are gone or the deadline passes, so newcomers get
      // PostgreSQL's 57P03 "the database system is shutting down" rather than a bare refused connect.
      const deadline = Date.now() + graceSeconds * 1000;
      while (sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sessions) s.terminate();
      await closed;
      await pool.end();
      await ops.close();
      await policy?.close();
      await ownTrail?.close();
      log.info('mamori stopped');
    },
  };
}

/** Forwards a CancelRequest upstream unchanged (over TLS when the upstream leg uses it). */
async function forwardCancel(target: UpstreamTarget, raw: Buffer, log: Logger): Promise<void> {
  try {
    const up = await openUpstream(target);
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 5000);
      const done = (): void => {
        clearTimeout(t);
        resolve();
      };
      up.once('close', done);
      up.once('error', done);
      up.end(raw);
    });
    up.destroy();
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'cancel forwarding failed');
  }
}
