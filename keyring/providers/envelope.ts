// Wrapping through the AWS Encryption SDK: committing suite without signatures, strict commitment policy.
// One envelope per data key; never used for cells (too slow and too large per value).
import {
  AlgorithmSuiteIdentifier,
  buildClient,
  CommitmentPolicy,
  MultiKeyringNode,
  RawRsaKeyringNode,
  type KeyringNode,
} from '@aws-crypto/client-node';
import { createHash, createPublicKey } from 'node:crypto';
import { checkContext, ContextMismatchError, describeContext, encryptionContext, type WrapContext } from '../context.js';
import { UnwrapError } from './types.js';

const { encrypt, decrypt } = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
const SUITE = AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY;

export const ESCROW_NAMESPACE = 'mamori-escrow';

export interface Envelope {
  wrap(dataKey: Uint8Array, ctx: WrapContext): Promise<Buffer>;
  unwrap(blob: Uint8Array, ctx: WrapContext): Promise<Buffer>;
}

/** An envelope whose wraps go to `root` (and the escrow keyring, when given) and whose unwraps use `unwrapWith`. */
export function envelope(root: KeyringNode, escrow?: KeyringNode, unwrapWith: KeyringNode = root): Envelope {
  const wrapWith = escrow ? new MultiKeyringNode({ generator: root, children: [escrow] }) : root;
  return {
    async wrap(dataKey, ctx) {
      const { result } = await encrypt(wrapWith, dataKey, { encryptionContext: encryptionContext(ctx), suiteId: SUITE });
      return result;
    },
    async unwrap(blob, ctx) {
      let out: { plaintext: Buffer; messageHeader: { encryptionContext: Readonly<Record<string, string>>; suiteId: number } };
      try {
        out = await decrypt(unwrapWith, blob, { maxBodySize: 1024 });
      } catch (err) {
        // The SDK's messages name providers and keys, never key bytes; keep only our own wording plus the cause.
        throw new UnwrapError(`cannot unwrap ${describeContext(ctx)}: ${(err as Error).message.replace(/\s+/g, ' ').trim()}`, { cause: err });
      }
      try {
        if (out.messageHeader.suiteId !== SUITE) throw new UnwrapError(`cannot unwrap ${describeContext(ctx)}: unexpected algorithm suite`);
        checkContext(ctx, out.messageHeader.encryptionContext);
      } catch (err) {
        out.plaintext.fill(0);
        if (err instanceof ContextMismatchError) throw new UnwrapError(`cannot unwrap ${describeContext(ctx)}: ${err.message}`);
        throw err;
      }
      return out.plaintext;
    },
  };
}

/** A short fingerprint of an RSA public key, recorded with each escrowed entry. */
export function escrowKeyId(publicKeyPem: string): string {
  const der = createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex').slice(0, 16);
}

export function escrowWrapKeyring(publicKeyPem: string): RawRsaKeyringNode {
  return new RawRsaKeyringNode({
    keyNamespace: ESCROW_NAMESPACE,
    keyName: escrowKeyId(publicKeyPem),
    rsaKey: { publicKey: publicKeyPem },
    oaepHash: 'sha256',
  });
}

export function escrowUnwrapKeyring(privateKeyPem: string): RawRsaKeyringNode {
  const pub = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString();
  return new RawRsaKeyringNode({
    keyNamespace: ESCROW_NAMESPACE,
    keyName: escrowKeyId(pub),
    rsaKey: { privateKey: privateKeyPem },
    oaepHash: 'sha256',
  });
}
