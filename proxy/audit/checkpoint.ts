// Signed checkpoints: every so often the trail signs (instance, seq, head hash, time) with Ed25519 and writes the
// checkpoint record to the main sink AND to a second sink that the people who can edit the main one cannot reach.
// A verifier holding only the public key can then tell a truncated or rolled-back trail from an intact one.
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Writable } from 'node:stream';
import pg from 'pg';
import { canonicalJson, serializeRecord, type AuditRecord, type CheckpointBody } from './record.js';
import { ensureAuditTable, insertRecords, pgClientConfig } from './sinks/postgres.js';
import type { PostgresSinkConfig } from './config.js';

/** The bytes that are signed: a fixed domain prefix, then the canonical JSON of the body. */
export function checkpointMessage(body: CheckpointBody): Buffer {
  return Buffer.from(`mamori-audit-checkpoint-v1\n${canonicalJson(body)}`, 'utf8');
}

export function signCheckpoint(body: CheckpointBody, privateKey: KeyObject): string {
  return sign(null, checkpointMessage(body), privateKey).toString('base64');
}

export function verifyCheckpointSignature(body: CheckpointBody, signature: string, publicKey: KeyObject): boolean {
  try {
    return verify(null, checkpointMessage(body), publicKey, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}

/** A short id for a public key: the first 16 hex digits of SHA-256 over its SPKI DER encoding. */
export function publicKeyId(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256').update(pub.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

export async function loadPrivateKey(path: string): Promise<KeyObject> {
  const key = createPrivateKey(await readFile(path));
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${path}: not an Ed25519 private key`);
  return key;
}

export async function loadPublicKey(path: string): Promise<KeyObject> {
  const key = createPublicKey(await readFile(path));
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${path}: not an Ed25519 public key`);
  return key;
}

export interface GeneratedKey {
  publicKeyPem: string;
  keyId: string;
}

/** `mamori audit keygen`: a new Ed25519 pair; the private key is written 0600 and never overwritten. */
export async function generateSigningKey(privatePath: string, publicPath?: string): Promise<GeneratedKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  await mkdir(dirname(privatePath), { recursive: true, mode: 0o700 });
  await writeFile(privatePath, privatePem, { flag: 'wx', mode: 0o600 });
  if (publicPath) await writeFile(publicPath, publicKeyPem, { flag: 'wx', mode: 0o644 });
  return { publicKeyPem, keyId: publicKeyId(publicKey) };
}

/** Where checkpoints are also written (the second, independent copy). */
export interface CheckpointSink {
  append(record: AuditRecord): Promise<void>;
  close(): Promise<void>;
}

/**
 * An append-only JSON Lines file (put it on storage the DBAs and the host's admins cannot rewrite: another
 * host's mount, a WORM bucket sync, a log forwarder). Each write is synced: checkpoints are rare.
 */
export class CheckpointFileSink implements CheckpointSink {
  constructor(readonly path: string) {}

  async append(record: AuditRecord): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o750 });
    const fh = await open(this.path, 'a', 0o640);
    try {
      await fh.write(serializeRecord(record) + '\n');
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  async close(): Promise<void> {}
}

/** Checkpoints as JSON Lines on a stream (a log collector run by someone else). */
export class CheckpointStreamSink implements CheckpointSink {
  constructor(private readonly stream: Writable) {}

  append(record: AuditRecord): Promise<void> {
    return new Promise((resolve, reject) => this.stream.write(serializeRecord(record) + '\n', (e) => (e ? reject(e) : resolve())));
  }

  async close(): Promise<void> {}
}

/** Checkpoints inserted into a table (same layout as the postgres sink's) through a connection of their own. */
export class CheckpointPostgresSink implements CheckpointSink {
  private client: pg.Client | null = null;
  constructor(
    private readonly cfg: PostgresSinkConfig,
    private readonly password?: string,
  ) {}

  async append(record: AuditRecord): Promise<void> {
    try {
      if (!this.client) {
        const c = new pg.Client(pgClientConfig(this.cfg, this.password));
        c.on('error', () => undefined);
        await c.connect();
        this.client = c;
        await ensureAuditTable(c, this.cfg.table);
      }
      await insertRecords(this.client, this.cfg.table, [serializeRecord(record)]);
    } catch (e) {
      const c = this.client;
      this.client = null;
      await c?.end().catch(() => undefined);
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.client?.end().catch(() => undefined);
    this.client = null;
  }
}
