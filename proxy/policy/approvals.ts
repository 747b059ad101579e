// The security officer's approvals: which (role, member) pairs may use a plaintext/search/write/export grant
// through membership, and which verifier of each login is the approved one. Kept outside the database in a
// JSON file MACed under a keyring key, so whoever administers the database cannot approve himself.
import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { MamoriConfig } from '../../config/schema.js';
import type { Keyring } from '../../keyring/index.js';
import { pollFile, writeFileDurable } from '../../keyring/fsutil.js';
import type { GrantView } from './decide.js';
import type { Identity } from './membership.js';

export const APPROVALS_FORMAT = 'mamori-approvals-v1';
/** The keyring domain (purpose `audit`) whose version-1 key the approvals MAC key is derived from. */
export const APPROVALS_KEY_DOMAIN = 'mamori.approvals';

export class ApprovalsIntegrityError extends Error {
  override readonly name = 'ApprovalsIntegrityError';
}

interface ApprovalsDoc {
  format: typeof APPROVALS_FORMAT;
  /** [role, member] pairs, sorted. */
  members: [string, string][];
  /** login → SHA-256 (hex) of its approved stored secret, keys sorted. */
  verifiers: Record<string, string>;
  updatedAt: string;
  mac: string;
}

/** `<directory of keyring.keyFile>/approvals.json` (nothing in the config schema names it). */
export function approvalsPath(cfg: Pick<MamoriConfig, 'keyring'>): string {
  return join(dirname(cfg.keyring.keyFile), 'approvals.json');
}

/**
 * The MAC key: HMAC-SHA-256 of a fixed label under version 1 of the `mamori.approvals` keyring domain
 * (randomized, purpose audit; created on first use). Version 1 is used whatever the current version is,
 * so rotating the domain does not invalidate the file; the label keeps the derived key apart from any
 * other use of that key.
 */
export async function approvalsMacKey(keyring: Keyring): Promise<KeyObject> {
  const info = keyring.hasDomain(APPROVALS_KEY_DOMAIN)
    ? keyring.domain(APPROVALS_KEY_DOMAIN)
    : await keyring.ensureDomain(APPROVALS_KEY_DOMAIN, 'randomized', 'audit');
  if (info.purpose !== 'audit' || info.mode !== 'randomized') {
    throw new ApprovalsIntegrityError(`key domain ${APPROVALS_KEY_DOMAIN} is ${info.mode}/${info.purpose}, expected randomized/audit`);
  }
  const key = await keyring.cellKeyFor({ mode: 'randomized', domainId: info.id, version: 1 });
  if (key === 'shredded' || key.mode !== 'randomized') throw new ApprovalsIntegrityError('the approvals key has been shredded');
  return createSecretKey(createHmac('sha256', key.key).update('mamori approvals mac v1').digest());
}

/** The MACed bytes: a fixed field order, sorted pairs and keys, so one state has one encoding. */
function macInput(doc: Omit<ApprovalsDoc, 'mac'>): string {
  const verifiers = Object.keys(doc.verifiers).sort().map((k) => [k, doc.verifiers[k]]);
  return `${APPROVALS_FORMAT}\u0000${JSON.stringify([doc.format, doc.members, verifiers, doc.updatedAt])}`;
}

function macOf(key: KeyObject, doc: Omit<ApprovalsDoc, 'mac'>): string {
  return createHmac('sha256', key).update(macInput(doc), 'utf8').digest('base64url');
}

const pairKey = (role: string, member: string): string => JSON.stringify([role, member]);

function isStringPair(x: unknown): x is [string, string] {
  return Array.isArray(x) && x.length === 2 && typeof x[0] === 'string' && typeof x[1] === 'string';
}

function parseDoc(text: string): ApprovalsDoc {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ApprovalsIntegrityError('approvals file is not JSON');
  }
  const d = raw as Partial<ApprovalsDoc> | null;
  if (
    typeof d !== 'object' || d === null || d.format !== APPROVALS_FORMAT || !Array.isArray(d.members) ||
    !d.members.every(isStringPair) || typeof d.verifiers !== 'object' || d.verifiers === null ||
    !Object.values(d.verifiers).every((v) => typeof v === 'string') || typeof d.updatedAt !== 'string' || typeof d.mac !== 'string'
  ) {
    throw new ApprovalsIntegrityError(`approvals file is not in ${APPROVALS_FORMAT} format`);
  }
  return d as ApprovalsDoc;
}

export class Approvals {
  private readonly members = new Map<string, [string, string]>();
  private readonly verifiers = new Map<string, string>();
  private updatedAt = '';

  private constructor(
    readonly path: string,
    private readonly macKey: KeyObject,
  ) {}

  /** An empty state (nothing approved), saved to `path` only on save(). */
  static empty(path: string, macKey: KeyObject): Approvals {
    return new Approvals(path, macKey);
  }

  /**
   * Reads and verifies the file; a missing file is an empty state. A file whose MAC does not verify (edited,
   * or written under another key) is refused with ApprovalsIntegrityError: callers then approve nothing.
   */
  static load(path: string, macKey: KeyObject): Approvals {
    const a = new Approvals(path, macKey);
    if (!existsSync(path)) return a;
    const doc = parseDoc(readFileSync(path, 'utf8'));
    const want = Buffer.from(macOf(macKey, doc));
    const got = Buffer.from(doc.mac);
    if (want.length !== got.length || !timingSafeEqual(want, got)) {
      throw new ApprovalsIntegrityError(`approvals file ${path} failed its integrity check (edited, or MACed under another key); no approvals are in effect`);
    }
    for (const [role, member] of doc.members) a.members.set(pairKey(role, member), [role, member]);
    for (const [login, hash] of Object.entries(doc.verifiers)) a.verifiers.set(login, hash);
    a.updatedAt = doc.updatedAt;
    return a;
  }

  isApproved(role: string, member: string): boolean {
    return this.members.has(pairKey(role, member));
  }

  /** True when `hash` is the verifier approved for `login`. */
  isVerifierApproved(login: string, hash: string | null | undefined): boolean {
    return typeof hash === 'string' && this.verifiers.get(login) === hash;
  }

  approvedVerifier(login: string): string | undefined {
    return this.verifiers.get(login);
  }

  approve(role: string, member: string): void {
    this.members.set(pairKey(role, member), [role, member]);
  }

  /** Withdraws an approval (e.g. the membership was revoked, so a later re-grant waits again). */
  revoke(role: string, member: string): boolean {
    return this.members.delete(pairKey(role, member));
  }

  approveVerifier(login: string, hash: string): void {
    this.verifiers.set(login, hash);
  }

  /** Approved pairs, sorted. */
  pairs(): [string, string][] {
    return [...this.members.values()].sort((a, b) => (pairKey(...a) < pairKey(...b) ? -1 : 1));
  }

  get lastUpdated(): string {
    return this.updatedAt;
  }

  /** Writes the state atomically (temp file + rename), MACed, mode 0600. */
  save(now = new Date()): void {
    const verifiers: Record<string, string> = {};
    for (const k of [...this.verifiers.keys()].sort()) verifiers[k] = this.verifiers.get(k)!;
    const body = { format: APPROVALS_FORMAT, members: this.pairs(), verifiers, updatedAt: now.toISOString() } as const;
    const doc: ApprovalsDoc = { ...body, members: body.members, mac: macOf(this.macKey, body) };
    writeFileDurable(this.path, JSON.stringify(doc, null, 2) + '\n', 0o600);
    this.updatedAt = doc.updatedAt;
  }
}

/**
 * The decision's view of the approvals for one identity: pairs as approved, and, with `passwords: held`, the
 * login's verifier held unless its current hash is the approved one (an unknown hash is held: fail closed).
 * `approvals` null (missing key, refused file) approves nothing.
 */
export function grantView(approvals: Approvals | null, passwords: 'held' | 'allowed', id: Identity): GrantView {
  return {
    isApproved: (role, member) => approvals?.isApproved(role, member) ?? false,
    verifierHeld: (login) => passwords === 'held' && !(approvals?.isVerifierApproved(login, id.verifierHash) ?? false),
  };
}

/**
 * Re-reads the file whenever it changes (polled, like the file keystore) and hands over the new state, or null
 * with the reason when it is refused (fail closed: the caller then approves nothing). Call it before the first
 * Approvals.load: every change after this returns is reported. Returns a stop function.
 */
export function watchApprovals(
  path: string,
  macKey: KeyObject,
  onLoad: (approvals: Approvals | null, err?: Error) => void,
  intervalMs = 1000,
): () => void {
  const listener = (): void => {
    try {
      onLoad(Approvals.load(path, macKey));
    } catch (err) {
      onLoad(null, err as Error);
    }
  };
  return pollFile(path, intervalMs, listener);
}
