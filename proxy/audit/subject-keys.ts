// Subject keys from the keyring: a key domain of purpose `subject` (default `mamori.subjects`), created on first
// start. Its current version hashes new subjects; every readable version is tried when searching, so a search
// covers all retention periods still held. One version per retention period: rotate the domain at the period
// boundary (`mamori keys rotate mamori.subjects`) and shred a version when its period's retention ends, which
// makes that period's hashes unlinkable. Hash keys never leave the process; auditors never hold them.
import type { KeyObject } from 'node:crypto';
import type { Keyring, KeyEvent } from '../../keyring/index.js';
import type { SubjectKeySource } from './trail.js';
import { normalizeSubject, subjectHash } from './subject.js';

export const SUBJECT_DOMAIN = 'mamori.subjects';

function keyIdOf(domain: string, version: number): string {
  return `${domain}:v${version}`;
}

async function keyFor(keyring: Keyring, domain: string, version: number): Promise<KeyObject | null> {
  const info = keyring.domain(domain);
  const k = await keyring.cellKeyFor({ mode: info.mode, domainId: info.id, version });
  if (k === 'shredded' || k.mode !== 'randomized') return null;
  return k.key;
}

/** The current subject key, kept unwrapped for the synchronous hash path and reloaded when the domain changes. */
export class KeyringSubjectKeys implements SubjectKeySource {
  private current: { id: string; key: KeyObject } | null = null;
  private version = 0;
  private checkedAt = 0;
  private readonly onKey = (ev: KeyEvent): void => {
    if (ev.domain === this.domain && ev.type !== 'unwrap') void this.load().catch(() => undefined);
  };

  private constructor(
    private readonly keyring: Keyring,
    readonly domain: string,
  ) {}

  /** Creates the domain if missing (randomized, purpose subject) and unwraps its current version. */
  static async open(keyring: Keyring, domain = SUBJECT_DOMAIN): Promise<KeyringSubjectKeys> {
    if (!keyring.hasDomain(domain)) await keyring.ensureDomain(domain, 'randomized', 'subject');
    const s = new KeyringSubjectKeys(keyring, domain);
    await s.load();
    keyring.events.on('key', s.onKey);
    return s;
  }

  async load(): Promise<void> {
    const info = this.keyring.domain(this.domain);
    const key = await keyFor(this.keyring, this.domain, info.current);
    this.current = key ? { id: keyIdOf(this.domain, info.current), key } : null;
    this.version = info.current;
  }

  subjectKey(): { id: string; key: KeyObject } {
    // `mamori keys rotate mamori.subjects` in another process reaches this one through the keyring's reload,
    // which emits no event here: look at the current version at most once a second and move to it
    const now = Date.now();
    if (now - this.checkedAt > 1000) {
      this.checkedAt = now;
      try {
        if (this.keyring.domain(this.domain).current !== this.version) void this.load().catch(() => undefined);
      } catch {
        // keyring closed or domain gone: keep the key held until a load succeeds
      }
    }
    if (!this.current) throw new Error('no usable subject key');
    return this.current;
  }

  close(): void {
    this.keyring.events.off('key', this.onKey);
  }
}

/**
 * For `mamori audit search --subject`: normalizes the value (My Number or corporate number, check digit
 * verified) and hashes it under every readable version of the subject domain.
 */
export async function keyringSubjectHasher(keyring: Keyring, domain = SUBJECT_DOMAIN): Promise<(value: string) => string[]> {
  if (!keyring.hasDomain(domain)) return () => [];
  const keys: KeyObject[] = [];
  for (const v of keyring.domain(domain).versions) {
    if (v.status !== 'active') continue; // shredded and retired versions cannot be unwrapped
    const k = await keyFor(keyring, domain, v.version).catch(() => null);
    if (k) keys.push(k);
  }
  return (value) => {
    const s = normalizeSubject(value);
    return keys.map((k) => subjectHash(k, s.logicalType, s.canonical));
  };
}
