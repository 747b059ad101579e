// The keystore document and its integrity: every version entry carries an HMAC-SHA-256, and the header's
// HMAC covers the domains, the generation counter and the set of entries (their keys and MACs), all under
// the integrity key (wrapped by the root). A generation lower than the one pinned locally means an older
// copy was restored. Pure functions; storage lives in store/.
import { createHmac, timingSafeEqual, type KeyObject } from 'node:crypto';
import type { CellMode } from './cells/format.js';
import type { KeyPurpose } from './context.js';

export const KEYSTORE_FORMAT = 1;

export type VersionStatus = 'active' | 'retired' | 'shredded';

export interface DomainRecord {
  id: number;
  name: string;
  mode: CellMode;
  purpose: Exclude<KeyPurpose, 'integrity'>;
  current: number;
  /** Set while a deterministic domain rotates and reencrypts: writes to it are refused meanwhile. */
  rotating: { from: number; to: number; startedAt: string } | null;
  createdAt: string;
}

export interface VersionRecord {
  domainId: number;
  version: number;
  status: VersionStatus;
  /** base64 of the SDK message wrapping the data key; null once retired or shredded (the tombstone). */
  wrapped: string | null;
  /** Escrow key id when the wrapped message also carries an escrow copy. */
  escrow: string | null;
  /** Encryptions reserved under this version (reserved in blocks, so never under-counted). */
  encryptions: number;
  createdAt: string;
  changedAt: string;
  mac: string;
}

export interface KeystoreHeader {
  format: number;
  keystoreId: string;
  databaseIdentity: string;
  /** Identity of the root the keys are wrapped under. */
  root: string;
  integrity: { wrapped: string; escrow: string | null };
  generation: number;
  nextDomainId: number;
  domains: DomainRecord[];
  mac: string;
}

export interface KeystoreDoc {
  header: KeystoreHeader;
  versions: Record<string, VersionRecord>;
}

export class KeystoreIntegrityError extends Error {
  constructor(message: string) {
    super(`keystore refused: ${message}`);
    this.name = 'KeystoreIntegrityError';
  }
}

export const entryKey = (domainId: number, version: number): string => `${domainId}:${version}`;

/** JSON with object keys sorted at every level, so the MAC does not depend on storage (jsonb reorders keys). */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(',')}}`;
}

function hmac(key: KeyObject, label: string, body: unknown): string {
  return createHmac('sha256', key).update(label).update('\0').update(canonicalJson(body)).digest('base64');
}

function macEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'base64');
  const y = Buffer.from(b, 'base64');
  return x.length === y.length && x.length === 32 && timingSafeEqual(x, y);
}

export function entryMac(key: KeyObject, keystoreId: string, e: VersionRecord): string {
  const { mac: _mac, ...body } = e;
  return hmac(key, 'mamori-keystore-entry-v1', { keystoreId, body });
}

export function headerMac(key: KeyObject, doc: KeystoreDoc): string {
  const { mac: _mac, ...header } = doc.header;
  const live = Object.keys(doc.versions)
    .sort()
    .map((k) => [k, doc.versions[k]!.mac]);
  return hmac(key, 'mamori-keystore-header-v1', { header, live });
}

/** Recomputes every MAC (call after changing the document, before saving). */
export function seal(key: KeyObject, doc: KeystoreDoc): void {
  for (const e of Object.values(doc.versions)) e.mac = entryMac(key, doc.header.keystoreId, e);
  doc.header.mac = headerMac(key, doc);
}

/** Checks structure and every MAC; throws KeystoreIntegrityError naming the entry and the reason. */
export function verify(key: KeyObject, doc: KeystoreDoc): void {
  const h = doc.header;
  if (h.format !== KEYSTORE_FORMAT) throw new KeystoreIntegrityError(`unsupported keystore format ${String(h.format)}`);
  const byId = new Map<number, DomainRecord>();
  for (const d of h.domains) byId.set(d.id, d);
  for (const [k, e] of Object.entries(doc.versions)) {
    const d = byId.get(e.domainId);
    const what = `entry ${k}${d ? ` (${d.name} version ${e.version})` : ''}`;
    if (typeof e.mac !== 'string' || !macEqual(e.mac, entryMac(key, h.keystoreId, e))) {
      throw new KeystoreIntegrityError(`${what}: MAC mismatch (the entry was changed or planted outside mamori)`);
    }
    if (k !== entryKey(e.domainId, e.version)) throw new KeystoreIntegrityError(`${what}: stored under the wrong key (entries were swapped)`);
    if (!d) throw new KeystoreIntegrityError(`${what}: belongs to no known key domain`);
    if (e.status === 'active' && !e.wrapped) throw new KeystoreIntegrityError(`${what}: active but holds no wrapped key`);
  }
  if (typeof h.mac !== 'string' || !macEqual(h.mac, headerMac(key, doc))) {
    throw new KeystoreIntegrityError(
      'header MAC mismatch (the domains, the set of key versions or the generation were changed outside mamori)',
    );
  }
  for (const d of h.domains) {
    if (!doc.versions[entryKey(d.id, d.current)]) {
      throw new KeystoreIntegrityError(`domain ${d.name}: current version ${d.current} has no entry`);
    }
  }
}
