// The AWS KMS root through the SDK's KMS keyrings. Tests inject `clientProvider` (a client implementing
// GenerateDataKey/Encrypt/Decrypt/ScheduleKeyDeletion); production uses the SDK's own client. The rest of
// the path is the same either way.
import {
  AwsKmsMrkAwareSymmetricKeyringNode,
  getKmsClient,
  KmsKeyringNode,
  type KeyringNode,
} from '@aws-crypto/client-node';
import { envelope, type Envelope } from './envelope.js';
import { RootKeyError, type RootKeyProvider } from './types.js';
import type { WrapContext } from '../context.js';
import type { KmsConfig } from '../config-types.js';

type Blob = Uint8Array | Buffer | string;
/** The slice of the KMS client mamori uses (structurally the SDK's AwsEsdkKMSInterface plus key deletion). */
export interface KmsClientLike {
  generateDataKey(args: { KeyId: string; EncryptionContext?: Record<string, string>; NumberOfBytes?: number; GrantTokens?: string[] }): Promise<{ CiphertextBlob?: Blob; Plaintext?: Blob; KeyId?: string }>;
  encrypt(args: { KeyId: string; Plaintext: Uint8Array; EncryptionContext?: Record<string, string>; GrantTokens?: string[] }): Promise<{ CiphertextBlob?: Blob; KeyId?: string }>;
  decrypt(args: { KeyId?: string; CiphertextBlob: Uint8Array; EncryptionContext?: Record<string, string>; GrantTokens?: string[] }): Promise<{ Plaintext?: Blob; KeyId?: string }>;
  scheduleKeyDeletion?(args: { KeyId: string; PendingWindowInDays?: number }): Promise<{ DeletionDate?: Date; KeyState?: string }>;
}
export type KmsClientProvider = (region: string) => KmsClientLike | false;

export interface KmsProviderOptions {
  clientProvider?: KmsClientProvider;
  /** ScheduleKeyDeletion waiting period, 7–30 days (default 30). */
  pendingWindowInDays?: number;
}

const defaultProvider: KmsClientProvider = getKmsClient as unknown as KmsClientProvider;

export class KmsRootProvider implements RootKeyProvider {
  readonly kind = 'aws-kms' as const;
  readonly identity: string;
  private readonly env: Envelope;
  private readonly client: KmsClientLike;

  constructor(private readonly cfg: KmsConfig, escrow?: KeyringNode, private readonly opts: KmsProviderOptions = {}) {
    if (!/^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)\/[A-Za-z0-9/_-]+$/.test(cfg.keyArn)) {
      throw new RootKeyError(`keyring.kms.keyArn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)`);
    }
    const provider = opts.clientProvider ?? defaultProvider;
    const client = provider(cfg.region);
    if (!client) throw new RootKeyError(`no KMS client for region ${cfg.region}`);
    this.client = client;
    // A multi-region key is one key in every region: its identity leaves the region out, so a replica opens
    // what the primary wrapped.
    this.identity = `aws-kms:${cfg.multiRegion ? cfg.keyArn.replace(/^(arn:aws[a-z-]*:kms:)[a-z0-9-]+:/, '$1*:') : cfg.keyArn}`;
    const keyring: KeyringNode = cfg.multiRegion
      ? // MRK-aware: a replica of the same multi-region key in cfg.region can unwrap what the primary wrapped.
        new AwsKmsMrkAwareSymmetricKeyringNode({ keyId: cfg.keyArn, client: client as never })
      : new KmsKeyringNode({ generatorKeyId: cfg.keyArn, clientProvider: ((r: string) => provider(r)) as never });
    this.env = envelope(keyring, escrow);
  }

  wrap(dataKey: Uint8Array, ctx: WrapContext): Promise<Buffer> {
    return this.env.wrap(dataKey, ctx);
  }

  unwrap(blob: Uint8Array, ctx: WrapContext): Promise<Buffer> {
    return this.env.unwrap(blob, ctx);
  }

  async destroy(): Promise<string> {
    if (!this.client.scheduleKeyDeletion) throw new RootKeyError('the KMS client cannot schedule key deletion');
    const days = this.opts.pendingWindowInDays ?? 30;
    if (days < 7 || days > 30) throw new RootKeyError('KMS pending window must be 7–30 days');
    const out = await this.client.scheduleKeyDeletion({ KeyId: this.cfg.keyArn, PendingWindowInDays: days });
    const when = out.DeletionDate ? out.DeletionDate.toISOString() : `in ${days} days`;
    return (
      `scheduled deletion of ${this.cfg.keyArn} (${when}); until then it can be cancelled, ` +
      `and replicas of a multi-region key must be scheduled for deletion in their own regions`
    );
  }
}
