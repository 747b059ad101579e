// Runs mamori as its own process (`node bin/mamori.js start --config FILE`) in front of a cluster, so a
// test can measure mamori's memory alone (VmRSS from /proc/<pid>/status) while it drives clients.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { freePort, type Cluster } from './cluster.js';
import { CONTROL_PASSWORD, CONTROL_USER, setupDatabase } from './mamori.js';

export interface MamoriProcess {
  pid: number;
  host: string;
  port: number;
  /** Resident set size in bytes, from /proc. */
  rss(): number;
  stop(): Promise<void>;
}

const BIN = fileURLToPath(new URL('../../bin/mamori.js', import.meta.url));
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/**
 * Starts mamori in a child process in front of `cluster` (the control role and lookup function are
 * installed first). `extra` is merged into the YAML config (e.g. `limits`).
 */
export async function startMamoriProcess(cluster: Cluster, extra: Record<string, unknown> = {}): Promise<MamoriProcess> {
  await setupDatabase(cluster);
  const dir = mkdtempSync(join(tmpdir(), 'mamori-proc-'));
  const port = await freePort();
  const config = {
    listen: { host: '127.0.0.1', port },
    upstream: { host: cluster.host, port: cluster.port, tls: { mode: 'disable' } },
    control: { user: CONTROL_USER, passwordEnv: 'MAMORI_TEST_CONTROL_PASSWORD' },
    log: { level: 'warn' },
    ...extra,
  };
  const file = join(dir, 'mamori.yaml');
  writeFileSync(file, stringify(config));
  const child = spawn(process.execPath, [BIN, 'start', '--config', file], {
    env: { ...process.env, MAMORI_TEST_CONTROL_PASSWORD: CONTROL_PASSWORD },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let output = '';
  const onOut = (d: Buffer): void => {
    output = (output + d.toString()).slice(-8000);
  };
  child.stdout!.on('data', onOut);
  child.stderr!.on('data', onOut);
  let exited = false;
  child.once('exit', () => {
    exited = true;
    live.delete(child);
  });
  // Ready once the port accepts connections.
  const { connect } = await import('node:net');
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`mamori exited during startup: ${output}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`mamori did not start: ${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    pid: child.pid!,
    host: '127.0.0.1',
    port,
    rss: () => rssOf(child.pid!),
    async stop() {
      if (!exited) {
        const done = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await done;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
