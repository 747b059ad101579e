// The keystore as one JSON file, written atomically (temp + fsync + rename + fsync dir). A short-lived
// lock file serialises writers on one host; the revision is the document's generation.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeFileDurable } from '../fsutil.js';
import type { KeystoreDoc } from '../keystore.js';
import { KeystoreConflictError, type KeystoreBackend, type Loaded } from './types.js';

const STALE_LOCK_MS = 30_000;

export class FileKeystore implements KeystoreBackend {
  readonly description: string;

  constructor(readonly path: string) {
    this.description = `keystore file ${path}`;
  }

  async load(): Promise<Loaded | null> {
    if (!existsSync(this.path)) return null;
    let doc: KeystoreDoc;
    try {
      doc = JSON.parse(readFileSync(this.path, 'utf8')) as KeystoreDoc;
    } catch {
      throw new Error(`${this.description} is not valid JSON`);
    }
    return { doc, rev: String(doc.header?.generation) };
  }

  async save(doc: KeystoreDoc, expectedRev: string | null): Promise<string> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    const lock = `${this.path}.lock`;
    await this.acquire(lock);
    try {
      const cur = existsSync(this.path) ? await this.load() : null;
      if ((cur?.rev ?? null) !== expectedRev) throw new KeystoreConflictError();
      writeFileDurable(this.path, JSON.stringify(doc, null, 2) + '\n', 0o600);
      return String(doc.header.generation);
    } finally {
      unlinkSync(lock);
    }
  }

  private async acquire(lock: string): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        closeSync(openSync(lock, 'wx', 0o600));
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        try {
          if (Date.now() - statSync(lock).mtimeMs > STALE_LOCK_MS) unlinkSync(lock);
        } catch {
          // gone already
        }
        if (i > 500) throw new Error(`${this.description}: lock ${lock} is held`);
        await sleep(10);
      }
    }
  }

  async close(): Promise<void> {}
}
