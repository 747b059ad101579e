// The `keyring:` section of the config as the keyring consumes it (config/schema.ts produces this shape).
export interface KmsConfig {
  keyArn: string;
  region: string;
  /** Multi-region key: use the MRK-aware keyring so a replica in `region` can unwrap. */
  multiRegion?: boolean;
  /** A KMS HMAC key for keystore integrity (not implemented yet: the wrapped integrity key is used). */
  hmacKeyArn?: string;
}

export type StoreConfig = { type: 'file'; path: string } | { type: 'postgres'; table: string };

export interface EscrowConfig {
  /** RSA public key (PEM) of the offline escrow holder. */
  publicKeyFile: string;
  /** Where `mamori keys escrow export` writes per-cohort copies; shred deletes the shredded cohort's copy. */
  exportDir?: string;
}

export interface KeyringConfig {
  provider: 'local' | 'aws-kms';
  keyFile?: string;
  kms?: KmsConfig;
  store: StoreConfig;
  escrow?: EscrowConfig;
  cacheTtlSeconds?: number;
  rotateAfterEncryptions?: number;
  keystoreId?: string;
  /** The generation pin (rollback detection); default: keyring.state next to the key file or keystore file. */
  stateFile?: string;
}

export const DEFAULT_CACHE_TTL_SECONDS = 300;
export const DEFAULT_ROTATE_AFTER = 1_000_000_000;
