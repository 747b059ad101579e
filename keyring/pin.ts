// The local generation pin: the highest keystore generation this host has seen, per keystore id, kept in
// a small file next to the root key. A keystore whose (MACed) generation is lower was restored from an
// older copy, which would resurrect retired or shredded keys and forget rotations: refuse it.
import { existsSync, readFileSync } from 'node:fs';
import { writeFileDurable } from './fsutil.js';
import { KeystoreIntegrityError } from './keystore.js';

type PinState = Record<string, number>;

function read(path: string): PinState {
  if (!existsSync(path)) return {};
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as PinState;
  } catch {
    // fall through
  }
  throw new KeystoreIntegrityError(`state file ${path} is unreadable; restore it or remove it knowingly`);
}

/** Throws if `generation` is older than the pinned one; otherwise raises the pin to it. */
export function checkAndPin(path: string, keystoreId: string, generation: number): void {
  const state = read(path);
  const pinned = state[keystoreId] ?? 0;
  if (generation < pinned) {
    throw new KeystoreIntegrityError(
      `generation ${generation} is older than generation ${pinned} already seen here (state file ${path}): ` +
        'an older copy of the keystore was restored (rollback)',
    );
  }
  if (generation > pinned) writeFileDurable(path, JSON.stringify({ ...state, [keystoreId]: generation }) + '\n', 0o600);
}

export function pinnedGeneration(path: string, keystoreId: string): number {
  return read(path)[keystoreId] ?? 0;
}
