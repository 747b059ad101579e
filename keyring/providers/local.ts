// The local root: a 256-bit key in a file only its owner can read, used through the SDK's raw AES keyring.
import { RawAesKeyringNode, RawAesWrappingSuiteIdentifier, type KeyringNode } from '@aws-crypto/client-node';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { writeFileDurable, shredFile } from '../fsutil.js';
import { envelope, type Envelope } from './envelope.js';
import { RootKeyError, type RootKeyProvider } from './types.js';
import type { WrapContext } from '../context.js';

export const ROOT_KEY_BYTES = 32;

/** Creates a new root key file (mode 0600); refuses to overwrite an existing one. */
export function createLocalRootKey(path: string): void {
  if (existsSync(path)) throw new RootKeyError(`root key file ${path} already exists; refusing to overwrite it`);
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileDurable(path, randomBytes(ROOT_KEY_BYTES), 0o600);
}

/** Reads the root key, refusing a missing, short, or group/world-accessible file. */
export function readLocalRootKey(path: string): Buffer {
  if (!existsSync(path)) throw new RootKeyError(`root key file ${path} not found (create one with \`mamori keys init\`)`);
  const st = statSync(path);
  if (!st.isFile()) throw new RootKeyError(`root key file ${path} is not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw new RootKeyError(
      `root key file ${path} is accessible by group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 ${path}`,
    );
  }
  const key = readFileSync(path);
  if (key.length !== ROOT_KEY_BYTES) {
    key.fill(0);
    throw new RootKeyError(`root key file ${path} must hold exactly ${ROOT_KEY_BYTES} bytes`);
  }
  return key;
}

/** A stable, non-secret name for a local root (an HMAC of a fixed label, not the key). */
export function localRootIdentity(key: Uint8Array): string {
  return 'local:' + createHmac('sha256', key).update('mamori root key id').digest('hex').slice(0, 16);
}

export class LocalRootProvider implements RootKeyProvider {
  readonly kind = 'local' as const;
  readonly identity: string;
  readonly keyring: KeyringNode;
  private readonly env: Envelope;

  private constructor(readonly path: string, key: Buffer, escrow?: KeyringNode) {
    this.identity = localRootIdentity(key);
    this.keyring = new RawAesKeyringNode({
      keyNamespace: 'mamori-root',
      keyName: this.identity,
      // The SDK wants a buffer that owns its whole ArrayBuffer; it keeps the key (as a KeyObject where supported).
      unencryptedMasterKey: new Uint8Array(key),
      wrappingSuite: RawAesWrappingSuiteIdentifier.AES256_GCM_IV12_TAG16_NO_PADDING,
    });
    key.fill(0);
    this.env = envelope(this.keyring, escrow);
  }

  static open(path: string, escrow?: KeyringNode): LocalRootProvider {
    return new LocalRootProvider(path, readLocalRootKey(path), escrow);
  }

  wrap(dataKey: Uint8Array, ctx: WrapContext): Promise<Buffer> {
    return this.env.wrap(dataKey, ctx);
  }

  unwrap(blob: Uint8Array, ctx: WrapContext): Promise<Buffer> {
    return this.env.unwrap(blob, ctx);
  }

  async destroy(): Promise<string> {
    shredFile(this.path);
    return `overwrote and removed ${this.path}`;
  }
}
