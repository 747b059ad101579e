// A read-only root made from the escrow private key: it unwraps the escrow copies so a lost root can be
// replaced (`mamori keys escrow recover`). It cannot wrap; recovery rewraps everything under a new root.
import { escrowKeyId, escrowUnwrapKeyring, envelope, type Envelope } from './envelope.js';
import { RootKeyError, type RootKeyProvider } from './types.js';
import { createPublicKey } from 'node:crypto';
import type { WrapContext } from '../context.js';

export class EscrowRootProvider implements RootKeyProvider {
  readonly kind = 'escrow' as const;
  readonly identity: string;
  private readonly env: Envelope;

  constructor(privateKeyPem: string) {
    const pub = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString();
    this.identity = `escrow:${escrowKeyId(pub)}`;
    const ring = escrowUnwrapKeyring(privateKeyPem);
    this.env = envelope(ring, undefined, ring);
  }

  async wrap(_dataKey: Uint8Array, _ctx: WrapContext): Promise<Buffer> {
    throw new RootKeyError('the escrow key only unwraps; rewrap under a new root');
  }

  unwrap(blob: Uint8Array, ctx: WrapContext): Promise<Buffer> {
    return this.env.unwrap(blob, ctx);
  }

  async destroy(): Promise<string> {
    throw new RootKeyError('the escrow key is held offline; destroy it there');
  }
}
