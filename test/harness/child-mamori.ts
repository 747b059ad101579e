// `mamori` as a child process (bin/mamori.js): what an operator runs. Collects stdout/stderr, waits for
// lines, sends signals and waits for the exit, and makes sure the child never outlives the test run.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const MAMORI_BIN = fileURLToPath(new URL('../../bin/mamori.js', import.meta.url));

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export interface ChildMamori {
  child: ChildProcess;
  pid: number;
  /** Everything written so far. */
  stdout(): string;
  stderr(): string;
  /** Resolves with the match once stdout or stderr matches `re` (rejects on exit or timeout). */
  waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or the signal's name) once the process has exited. */
  exited: Promise<number | string>;
  kill(signal: NodeJS.Signals): void;
}

export function runMamori(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildMamori {
  const child = spawn(process.execPath, [MAMORI_BIN, ...args], {
    cwd: opts.cwd ?? process.cwd(),
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let out = '';
  let err = '';
  const listeners = new Set<() => void>();
  const poke = (): void => {
    for (const l of [...listeners]) l();
  };
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    poke();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    poke();
  });
  let done = false;
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true;
      live.delete(child);
      poke();
      resolve(code ?? signal ?? -1);
    });
  });
  return {
    child,
    pid: child.pid!,
    stdout: () => out,
    stderr: () => err,
    exited,
    kill: (signal) => {
      child.kill(signal);
    },
    waitFor(re, ms) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = out.match(re) ?? err.match(re);
          if (m) {
            finish();
            resolve(m);
          } else if (done) {
            finish();
            reject(new Error(`mamori exited before printing ${re}: ${err.slice(-2000)}`));
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`timed out waiting for ${re}; stdout: ${out.slice(-1500)} stderr: ${err.slice(-1500)}`));
        }, ms);
        const finish = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
  };
}

/** Waits for the exit, killing the child if it takes longer than `ms`; returns the exit code or signal. */
export async function exitWithin(m: ChildMamori, ms: number): Promise<number | string | 'timeout'> {
  let t: NodeJS.Timeout | undefined;
  const r = await Promise.race([m.exited, new Promise<'timeout'>((resolve) => { t = setTimeout(() => resolve('timeout'), ms); })]);
  clearTimeout(t);
  if (r === 'timeout') {
    m.kill('SIGKILL');
    await m.exited;
  }
  return r;
}
