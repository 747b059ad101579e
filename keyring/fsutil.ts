// Durable file writes: temp file + fsync + rename + fsync of the directory, so a crash leaves either the old
// or the new content, never a torn file.
import { closeSync, fstatSync, fsyncSync, openSync, renameSync, statSync, writeSync, unlinkSync, existsSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export function writeFileDurable(path: string, data: Uint8Array | string, mode = 0o600): void {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

/** Overwrites a file with random bytes, syncs, unlinks it (best effort against recovery from the same disk). */
export function shredFile(path: string): void {
  if (!existsSync(path)) return;
  const fd = openSync(path, 'r+');
  try {
    const size = Math.max(32, fstatSync(fd).size);
    writeSync(fd, randomBytes(size), 0, size, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  unlinkSync(path);
  fsyncDir(dirname(path));
}

/**
 * Calls `onChange` whenever the file at `path` is created, replaced, changed or removed, by polling its stat.
 * Unlike fs.watchFile, the baseline is taken synchronously before this returns: fs.watchFile's first stat runs
 * later on the thread pool, so a save made right after the call could become the baseline and never be
 * reported. Start watching before reading the file, and no change after the read is missed. Returns a stop
 * function; the timer does not keep the process alive.
 */
export function pollFile(path: string, intervalMs: number, onChange: () => void): () => void {
  const sig = (): string => {
    try {
      const s = statSync(path, { bigint: true });
      return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
    } catch {
      return 'absent';
    }
  };
  let last = sig();
  const timer = setInterval(() => {
    const now = sig();
    if (now === last) return;
    last = now;
    onChange();
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
