// The operations HTTP listener, apart from the PostgreSQL port: /metrics (Prometheus text), /healthz (the
// process is up), /readyz (upstream reachable, keyring unlocked, audit writable, catalog fresh — asked of the
// caller's `ready` callback, bounded by a timeout). Anything else is 404; methods other than GET/HEAD are 405.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Metrics } from './metrics.js';

export interface Readiness {
  ok: boolean;
  checks: Record<string, boolean>;
}

export interface HttpDeps {
  ready: () => Promise<Readiness>;
  metrics: Metrics;
  /** How long /readyz waits for `ready` before answering 503 (default 2000 ms). */
  readyTimeoutMs?: number;
}

export interface HttpHandle {
  port: number;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, type: string, body: string, head: boolean): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}

async function readiness(deps: HttpDeps): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Readiness>((resolve) => {
    timer = setTimeout(() => resolve({ ok: false, checks: { timeout: false } }), deps.readyTimeoutMs ?? 2000);
  });
  try {
    return await Promise.race([deps.ready(), timeout]);
  } catch {
    return { ok: false, checks: { error: false } };
  } finally {
    clearTimeout(timer);
  }
}

export async function startHttp(listen: { host: string; port: number }, deps: HttpDeps): Promise<HttpHandle> {
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.setHeader('allow', 'GET, HEAD');
      return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', false);
    }
    const path = (req.url ?? '/').split('?')[0];
    switch (path) {
      case '/metrics':
        return send(res, 200, deps.metrics.contentType, await deps.metrics.render(), head);
      case '/healthz':
        return send(res, 200, 'text/plain; charset=utf-8', 'ok\n', head);
      case '/readyz': {
        const r = await readiness(deps);
        deps.metrics.readiness(r.checks);
        return send(res, r.ok ? 200 : 503, 'application/json', JSON.stringify(r) + '\n', head);
      }
      default:
        return send(res, 404, 'text/plain; charset=utf-8', 'not found\n', head);
    }
  };
  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n', false);
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
