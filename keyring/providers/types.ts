// The root-key provider interface: wraps and unwraps data keys under the root, bound to a context.
import type { WrapContext } from '../context.js';

export interface RootKeyProvider {
  readonly kind: 'local' | 'aws-kms' | 'escrow';
  /** A non-secret name of the root (local: a fingerprint derived from the key; KMS: the key ARN). */
  readonly identity: string;
  wrap(dataKey: Uint8Array, ctx: WrapContext): Promise<Buffer>;
  /** Unwraps and checks the context; throws UnwrapError (never with key bytes in it). */
  unwrap(blob: Uint8Array, ctx: WrapContext): Promise<Buffer>;
  /** Destroys the root for good (local: overwrite + unlink the key file; KMS: ScheduleKeyDeletion). */
  destroy(): Promise<string>;
}

export class UnwrapError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UnwrapError';
  }
}

export class RootKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RootKeyError';
  }
}
