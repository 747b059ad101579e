// Further in-process mamori instances in front of a stack's cluster, with other settings (limits, TLS
// require): one cluster per test file, as many proxies as the file's stories need.
import pino from 'pino';
import { defaultConfig } from '../../config/load.js';
import type { MamoriConfigInput } from '../../config/schema.js';
import { startMamori, type MamoriServer } from '../../proxy/server.js';
import { CONTROL_PASSWORD, type Stack } from './mamori.js';

/** Starts another mamori with the stack's upstream and client-leg TLS, plus `overrides` (sections replace). */
export async function startAnotherMamori(stack: Stack, overrides: MamoriConfigInput = {}, logLines: string[] = []): Promise<MamoriServer> {
  const base = stack.config;
  const config = defaultConfig({
    listen: { host: '127.0.0.1', port: 0 },
    ...(base.tls ? { tls: { cert: base.tls.cert, key: base.tls.key } } : {}),
    upstream: base.upstream,
    // Like the stack: no audit trail in the cwd, no metrics listener on the fixed default port.
    audit: { statements: 'none' },
    metrics: { enabled: false },
    ...overrides,
  } as MamoriConfigInput);
  const log = pino({ level: 'debug' }, { write: (s: string) => { logLines.push(s); } });
  return startMamori({ config, secrets: { controlPassword: CONTROL_PASSWORD, auditSinkPasswords: [] }, log });
}

/** Polls until `check` is true or the time is up; returns the last result. */
export async function eventually(check: () => boolean, ms: number, stepMs = 25): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return true;
}
