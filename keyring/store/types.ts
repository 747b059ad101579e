// Where the keystore document lives. Saves are optimistic: they name the revision they were based on and
// fail with KeystoreConflictError if someone else saved in between (the caller reloads and retries).
import type { KeystoreDoc } from '../keystore.js';

export interface Loaded {
  doc: KeystoreDoc;
  rev: string;
}

export interface KeystoreBackend {
  readonly description: string;
  load(): Promise<Loaded | null>;
  /** Saves `doc` if the stored revision is still `expectedRev` (null: nothing stored yet); returns the new revision. */
  save(doc: KeystoreDoc, expectedRev: string | null): Promise<string>;
  close(): Promise<void>;
}

export class KeystoreConflictError extends Error {
  constructor() {
    super('keystore changed concurrently');
    this.name = 'KeystoreConflictError';
  }
}
