// The listener's operational side: the audit trail (opened whenever `audit.statements` is not `none`, also
// without protected columns), the metrics registry, the session observer, and the HTTP listener with its
// readiness checks. startMamori (server.ts) calls these and closes them on shutdown.
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import type { MamoriConfig } from '../config/schema.js';
import type { ConfigSecrets } from '../config/load.js';
import { AuditTrail, type SubjectKeySource } from './audit/trail.js';
import { loadPrivateKey } from './audit/checkpoint.js';
import { createMetrics, type Metrics } from './metrics.js';
import { startHttp, type HttpHandle, type Readiness } from './http.js';
import { createObserver, type Observer } from './observe.js';

/** Opens the audit trail as configured (null for `statements: none`), signing checkpoints when the key exists. */
export async function openAuditTrail(config: MamoriConfig, secrets: ConfigSecrets, log: Logger, opts: { keyring?: SubjectKeySource; metrics?: Metrics | null } = {}): Promise<AuditTrail | null> {
  if (config.audit.statements === 'none') return null;
  let signingKey: KeyObject | undefined;
  const keyFile = config.audit.signingKeyFile;
  if (keyFile && existsSync(keyFile)) {
    signingKey = await loadPrivateKey(keyFile).catch((err: unknown) => {
      log.error({ err: (err as Error).message }, 'audit signing key unreadable; checkpoints are written unsigned');
      return undefined;
    });
  } else {
    log.warn('no audit signing key (mamori audit keygen); checkpoints are written unsigned');
  }
  const trail = await AuditTrail.open(config.audit, {
    program: 'proxy',
    sinkPasswords: secrets.auditSinkPasswords,
    ...(signingKey ? { signingKey } : {}),
    ...(opts.keyring ? { keyring: opts.keyring } : {}),
    ...(opts.metrics ? { observer: opts.metrics.audit } : {}),
  });
  if (!trail.writable()) log.error({ err: trail.stats().lastError }, 'audit trail not writable; protected access is refused until it is (failMode closed)');
  return trail;
}

/** True when a TCP connection to host:port opens within the timeout (a cheap "upstream reachable"). */
export function tcpReachable(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

export interface ReadyChecks {
  upstream(): Promise<boolean>;
  /** Absent when no column is protected (no keyring, no catalog). */
  keyring?: () => boolean;
  catalog?: () => boolean;
  /** May write a heartbeat to find out (AuditTrail.probe). */
  audit?: () => boolean | Promise<boolean>;
}

export async function readiness(checks: ReadyChecks): Promise<Readiness> {
  const c: Record<string, boolean> = { upstream: await checks.upstream() };
  if (checks.keyring) c.keyring = checks.keyring();
  if (checks.audit) c.audit = await checks.audit();
  if (checks.catalog) c.catalog = checks.catalog();
  return { ok: Object.values(c).every(Boolean), checks: c };
}

export interface Ops {
  metrics: Metrics | null;
  observer: Observer;
  /** Starts the HTTP listener (when metrics are enabled); resolves to its port, or null. */
  startHttp(checks: ReadyChecks): Promise<number | null>;
  close(): Promise<void>;
}

export function createOps(config: MamoriConfig, log: Logger, trail: AuditTrail | null, metrics: Metrics | null): Ops {
  const observer = createObserver({ trail, metrics, log });
  let http: HttpHandle | null = null;
  return {
    metrics,
    observer,
    async startHttp(checks) {
      if (!metrics || !config.metrics.enabled) return null;
      // bytes are summed per chunk in plain numbers and moved into the counters at each scrape
      const scraped: Metrics = { ...metrics, render: () => (observer.flushBytes(), metrics.render()) };
      http = await startHttp({ host: config.metrics.host, port: config.metrics.port }, { metrics: scraped, ready: () => readiness(checks) });
      log.info({ host: config.metrics.host, port: http.port }, 'metrics listening');
      return http.port;
    },
    async close() {
      await http?.close().catch(() => undefined);
    },
  };
}

export function metricsFor(config: MamoriConfig): Metrics | null {
  return config.metrics.enabled ? createMetrics({ userLabels: config.metrics.userLabels }) : null;
}
