// Builds the configured root provider (with the escrow keyring in the wrap path when configured).
import { readFileSync } from 'node:fs';
import type { KeyringNode } from '@aws-crypto/client-node';
import type { KeyringConfig } from '../config-types.js';
import { escrowKeyId, escrowWrapKeyring } from './envelope.js';
import { KmsRootProvider, type KmsProviderOptions } from './kms.js';
import { LocalRootProvider } from './local.js';
import { RootKeyError, type RootKeyProvider } from './types.js';

export * from './types.js';
export { LocalRootProvider, createLocalRootKey, readLocalRootKey, localRootIdentity } from './local.js';
export { KmsRootProvider, type KmsClientLike, type KmsClientProvider, type KmsProviderOptions } from './kms.js';
export { EscrowRootProvider } from './escrow.js';

export interface Escrow {
  keyId: string;
  keyring: KeyringNode;
}

export function loadEscrow(cfg: KeyringConfig): Escrow | undefined {
  if (!cfg.escrow) return undefined;
  let pem: string;
  try {
    pem = readFileSync(cfg.escrow.publicKeyFile, 'utf8');
  } catch {
    throw new RootKeyError(`escrow public key ${cfg.escrow.publicKeyFile} cannot be read`);
  }
  return { keyId: escrowKeyId(pem), keyring: escrowWrapKeyring(pem) };
}

export interface ProviderOverrides {
  kms?: KmsProviderOptions;
  /** Use this key file / key ARN instead of the configured one (rewrap and shred build the new root this way). */
  keyFile?: string;
  keyArn?: string;
}

export function openRootProvider(cfg: KeyringConfig, escrow?: Escrow, over: ProviderOverrides = {}): RootKeyProvider {
  if (cfg.provider === 'local') {
    const path = over.keyFile ?? cfg.keyFile;
    if (!path) throw new RootKeyError('keyring.keyFile is required with provider: local');
    return LocalRootProvider.open(path, escrow?.keyring);
  }
  if (!cfg.kms) throw new RootKeyError('keyring.kms is required with provider: aws-kms');
  const kms = over.keyArn ? { ...cfg.kms, keyArn: over.keyArn } : cfg.kms;
  return new KmsRootProvider(kms, escrow?.keyring, over.kms);
}
