// Shared setup for keyring tests: a throwaway directory with a local-root config.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import type { KeyringConfig } from '../../keyring/config-types.js';

export interface TmpKeyring {
  dir: string;
  cfg: KeyringConfig;
  cleanup(): void;
}

export function tmpLocal(extra: Partial<KeyringConfig> = {}): TmpKeyring {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-kr-'));
  const cfg: KeyringConfig = {
    provider: 'local',
    keyFile: join(dir, 'root.key'),
    store: { type: 'file', path: join(dir, 'keystore.json') },
    ...extra,
  };
  return { dir, cfg, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function rsaPair(): { publicKey: string; privateKey: string } {
  return generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}
