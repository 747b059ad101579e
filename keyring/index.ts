// Public API of the keyring (the proxy and the CLI import from here).
export {
  Keyring,
  KeyringError,
  escrowCohortPath,
  stateFilePath,
  type DomainInfo,
  type KeyEvent,
  type KeyEventType,
  type KeyringErrorCode,
  type KeyringLogger,
  type KeyringOptions,
  type NewRoot,
  type PurgeNotice,
  type VersionInfo,
} from './keyring.js';
export type { KeyringConfig, KmsConfig, StoreConfig, EscrowConfig } from './config-types.js';
export type { KeyPurpose, WrapContext } from './context.js';
export { KeystoreIntegrityError, type VersionStatus } from './keystore.js';
export { RootKeyError, UnwrapError, type RootKeyProvider, type KmsClientLike, type KmsClientProvider, type KmsProviderOptions } from './providers/index.js';
export { NOTIFY_CHANNEL } from './store/postgres.js';
export {
  countVersionRows,
  parseColumnPath,
  reencryptColumn,
  retireVersion,
  rotateAndReencrypt,
  type ReencryptOptions,
  type ReencryptProgress,
  type RotateJobResult,
} from './rotation.js';
export { runKeysCommand, keyringConfigFrom, type CliIo } from './cli.js';
export { CellDecryptError, parseCellHeader, type CellHeader, type CellKey, type CellMode } from './cells/index.js';
