// The keyring the proxy uses: key domains and versions from the keystore, data keys unwrapped on first use
// and cached as KeyObjects, encryption counting and automatic rotation, rotation / retire / shred / rewrap,
// escrow, purge hooks and key events. Key bytes never leave this module except as KeyObjects.
import { EventEmitter } from 'node:events';
import { createSecretKey, randomBytes, randomUUID, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, unlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import pg from 'pg';
import {
  CellDecryptError,
  cellKeyFromBytes,
  decryptCell,
  encryptCell,
  forgetCellKey,
  parseCellHeader,
  type CellHeader,
  type CellKey,
  type CellMode,
} from './cells/index.js';
import { DEFAULT_CACHE_TTL_SECONDS, DEFAULT_ROTATE_AFTER, type KeyringConfig } from './config-types.js';
import type { KeyPurpose, WrapContext } from './context.js';
import { fsyncDir, pollFile, shredFile, writeFileDurable } from './fsutil.js';
import {
  entryKey,
  KEYSTORE_FORMAT,
  KeystoreIntegrityError,
  seal,
  verify,
  type DomainRecord,
  type KeystoreDoc,
  type VersionRecord,
  type VersionStatus,
} from './keystore.js';
import { checkAndPin } from './pin.js';
import {
  createLocalRootKey,
  EscrowRootProvider,
  loadEscrow,
  localRootIdentity,
  openRootProvider,
  readLocalRootKey,
  type Escrow,
  type KmsProviderOptions,
  type RootKeyProvider,
} from './providers/index.js';
import { FileKeystore } from './store/file.js';
import { NOTIFY_CHANNEL, PostgresKeystore } from './store/postgres.js';
import { KeystoreConflictError, type KeystoreBackend, type Loaded } from './store/types.js';

export type KeyEventType = 'init' | 'rotate' | 'reencrypt' | 'retire' | 'shred' | 'rewrap' | 'escrow' | 'unwrap';

export interface KeyEvent {
  type: KeyEventType;
  keystoreId: string;
  domain?: string;
  domainId?: number;
  version?: number;
  /** Human-readable, never secret. */
  detail?: string;
}

/** A pino-compatible subset. */
export interface KeyringLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface KeyringOptions {
  /** Bound into every key's encryption context; required by init, checked against the keystore on open. */
  databaseIdentity?: string;
  /** For the postgres keystore: a pool or a connection string. */
  pg?: pg.Pool | string;
  logger?: KeyringLogger;
  /** KMS client injection (tests) and the key-deletion waiting period. */
  kms?: KmsProviderOptions;
}

export type KeyringErrorCode = 'unknown-domain' | 'unknown-version' | 'retired' | 'unwrap' | 'frozen' | 'refused' | 'not-initialised';

export class KeyringError extends Error {
  constructor(readonly code: KeyringErrorCode, message: string) {
    super(`mamori keyring: ${message}`);
    this.name = 'KeyringError';
  }
}

export interface VersionInfo {
  version: number;
  status: VersionStatus;
  current: boolean;
  encryptions: number;
  escrowed: boolean;
  createdAt: string;
}

export interface DomainInfo {
  id: number;
  name: string;
  mode: CellMode;
  purpose: DomainRecord['purpose'];
  current: number;
  rotating: DomainRecord['rotating'];
  versions: VersionInfo[];
}

export interface PurgeNotice {
  domain?: string;
  version?: number;
  /** True when the purge came from another instance (do not broadcast it again). */
  remote: boolean;
}

/** A new root for rewrap / shred: a new local key file is created at `keyFile`'s place; KMS needs a new key ARN. */
export interface NewRoot {
  keyArn?: string;
}

interface CacheEntry {
  expires: number;
  promise: Promise<CellKey>;
  /** The key once the promise has resolved (encryptNow() uses it without waiting). */
  key?: CellKey;
}

const INTEGRITY_DOMAIN = 0;
const INTEGRITY_VERSION = 1;

export function stateFilePath(cfg: KeyringConfig): string {
  if (cfg.stateFile) return cfg.stateFile;
  if (cfg.provider === 'local' && cfg.keyFile) return join(dirname(cfg.keyFile), 'keyring.state');
  if (cfg.store.type === 'file') return join(dirname(cfg.store.path), 'keyring.state');
  return resolve('.mamori', 'keyring.state');
}

function backendFor(cfg: KeyringConfig, opts: KeyringOptions): KeystoreBackend {
  if (cfg.store.type === 'file') return new FileKeystore(cfg.store.path);
  if (!opts.pg) throw new KeyringError('refused', 'the postgres keystore needs a database connection');
  return new PostgresKeystore(opts.pg, cfg.store.table, cfg.keystoreId);
}

/** After a root replacement crashed between saving the keystore and renaming `<keyFile>.next`, finish it. */
function finishLocalRootSwap(cfg: KeyringConfig, root: string): void {
  if (cfg.provider !== 'local' || !cfg.keyFile) return;
  const next = `${cfg.keyFile}.next`;
  if (!existsSync(next)) return;
  const nextKey = readLocalRootKey(next);
  const nextId = localRootIdentity(nextKey);
  nextKey.fill(0);
  if (nextId !== root) return;
  shredFile(cfg.keyFile); // the old root must not survive a crashed shred
  renameSync(next, cfg.keyFile);
  fsyncDir(dirname(cfg.keyFile));
}

export class Keyring {
  readonly events = new EventEmitter();
  private doc!: KeystoreDoc;
  private integrityKey: KeyObject | null = null;
  private integrityWrapped = '';
  private readonly cache = new Map<string, CacheEntry>();
  private readonly allowance = new Map<number, { version: number; left: number }>();
  private readonly purgeHooks = new Set<(n: PurgeNotice) => void>();
  private readonly domainLocks = new Map<number, Promise<unknown>>();
  private serialTail: Promise<unknown> = Promise.resolve();
  private readonly ttlMs: number;
  private readonly rotateAfter: number;
  private readonly statePath: string;
  private stopWatch: (() => Promise<void>) | null = null;

  private constructor(
    readonly cfg: KeyringConfig,
    private provider: RootKeyProvider,
    private readonly escrow: Escrow | undefined,
    private readonly backend: KeystoreBackend,
    private readonly opts: KeyringOptions,
  ) {
    this.ttlMs = (cfg.cacheTtlSeconds ?? DEFAULT_CACHE_TTL_SECONDS) * 1000;
    this.rotateAfter = cfg.rotateAfterEncryptions ?? DEFAULT_ROTATE_AFTER;
    this.statePath = stateFilePath(cfg);
  }

  // ---- lifecycle -------------------------------------------------------------------------------------

  /** Creates the keystore (and, for a local root, the root key file when missing). Refuses if one exists. */
  static async init(cfg: KeyringConfig, opts: KeyringOptions & { databaseIdentity: string }): Promise<Keyring> {
    const backend = backendFor(cfg, opts);
    if (await backend.load()) {
      await backend.close();
      throw new KeyringError('refused', `${backend.description} already holds a keystore`);
    }
    if (cfg.provider === 'local' && cfg.keyFile && !existsSync(cfg.keyFile)) createLocalRootKey(cfg.keyFile);
    const escrow = loadEscrow(cfg);
    const provider = openRootProvider(cfg, escrow, { kms: opts.kms });
    const kr = new Keyring(cfg, provider, escrow, backend, opts);
    const keystoreId = cfg.keystoreId ?? randomUUID();
    const ikRaw = randomBytes(32);
    const ctx = kr.integrityContext(keystoreId, opts.databaseIdentity);
    const wrapped = (await provider.wrap(ikRaw, ctx)).toString('base64');
    kr.integrityKey = createSecretKey(ikRaw);
    ikRaw.fill(0);
    kr.integrityWrapped = wrapped;
    const doc: KeystoreDoc = {
      header: {
        format: KEYSTORE_FORMAT,
        keystoreId,
        databaseIdentity: opts.databaseIdentity,
        root: provider.identity,
        integrity: { wrapped, escrow: escrow?.keyId ?? null },
        generation: 1,
        nextDomainId: 1,
        domains: [],
        mac: '',
      },
      versions: {},
    };
    seal(kr.integrityKey, doc);
    await backend.save(doc, null);
    kr.install(doc);
    checkAndPin(kr.statePath, keystoreId, doc.header.generation);
    kr.emit({ type: 'init', detail: `keystore ${keystoreId} created in ${backend.description} under ${provider.identity}` });
    return kr;
  }

  /** Opens and verifies the keystore; refuses (KeystoreIntegrityError / KeyringError) on any failed check. */
  static async open(cfg: KeyringConfig, opts: KeyringOptions = {}): Promise<Keyring> {
    const backend = backendFor(cfg, opts);
    try {
      const loaded = await backend.load();
      if (!loaded) throw new KeyringError('not-initialised', `${backend.description} holds no keystore (run \`mamori keys init\`)`);
      finishLocalRootSwap(cfg, loaded.doc.header.root);
      const escrow = loadEscrow(cfg);
      const provider = openRootProvider(cfg, escrow, { kms: opts.kms });
      const kr = new Keyring(cfg, provider, escrow, backend, opts);
      await kr.accept(loaded);
      return kr;
    } catch (err) {
      await backend.close();
      throw err;
    }
  }

  /**
   * The restore drill's other half: the root is lost, the escrow private key holder unwraps every key and
   * rewraps it under a new root (a new local key file at keyFile, or `newRoot.keyArn`).
   */
  static async recoverWithEscrow(cfg: KeyringConfig, privateKeyPem: string, opts: KeyringOptions = {}, newRoot: NewRoot = {}): Promise<Keyring> {
    const backend = backendFor(cfg, opts);
    const loaded = await backend.load();
    if (!loaded) {
      await backend.close();
      throw new KeyringError('not-initialised', `${backend.description} holds no keystore`);
    }
    const kr = new Keyring(cfg, new EscrowRootProvider(privateKeyPem), loadEscrow(cfg), backend, opts);
    try {
      await kr.accept(loaded);
      if (cfg.provider === 'local' && cfg.keyFile && existsSync(cfg.keyFile)) {
        throw new KeyringError('refused', `root key file ${cfg.keyFile} exists; move it away before recovering into a new root`);
      }
      await kr.replaceRoot(newRoot, null, 'recover');
      return kr;
    } catch (err) {
      await kr.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.stopWatch) await this.stopWatch();
    this.stopWatch = null;
    for (const k of this.cache.keys()) this.dropCached(k);
    await this.backend.close();
  }

  get keystoreId(): string {
    return this.doc.header.keystoreId;
  }

  get databaseIdentity(): string {
    return this.doc.header.databaseIdentity;
  }

  get rootIdentity(): string {
    return this.doc.header.root;
  }

  get generation(): number {
    return this.doc.header.generation;
  }

  /** Re-reads the keystore (new versions, retirements, tombstones, rotation flags); verifies it like open. */
  reload(): Promise<void> {
    return this.serial(async () => {
      const loaded = await this.backend.load();
      if (!loaded) throw new KeyringError('not-initialised', `${this.backend.description} no longer holds a keystore`);
      await this.accept(loaded);
    });
  }

  /**
   * Reloads whenever the keystore changes: the file store is polled (pollFile), the table store
   * LISTENs on `mamori_keystore` (every save NOTIFYs). Returns a function that stops watching.
   */
  async watch(intervalMs = 1000): Promise<() => Promise<void>> {
    if (this.stopWatch) return this.stopWatch;
    const onChange = (): void => {
      this.reload().catch((err: unknown) => this.opts.logger?.warn({ err: (err as Error).message }, 'keystore reload failed; keeping the previous state'));
    };
    if (this.cfg.store.type === 'file') {
      const path = this.cfg.store.path;
      const stop = pollFile(path, intervalMs, onChange);
      this.stopWatch = async () => stop();
    } else {
      const pool = this.backend instanceof PostgresKeystore ? this.backend.pool : null;
      if (!pool) throw new KeyringError('refused', 'no connection to LISTEN on');
      const client = await pool.connect();
      client.on('error', (err: Error) => this.opts.logger?.warn({ err: err.message }, 'keystore LISTEN connection failed; call reload() or watch() again'));
      client.on('notification', (n) => {
        if (n.channel === NOTIFY_CHANNEL && n.payload === this.keystoreId) onChange();
      });
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
      this.stopWatch = async () => {
        await client.query(`UNLISTEN ${NOTIFY_CHANNEL}`).catch(() => undefined);
        client.release();
      };
    }
    return this.stopWatch;
  }

  // ---- domains ---------------------------------------------------------------------------------------

  /** Creates the domain (version 1) if missing; refuses a mode or purpose mismatch with the existing one. */
  async ensureDomain(name: string, mode: CellMode, purpose: DomainRecord['purpose'] = 'data'): Promise<DomainInfo> {
    const have = this.findDomain(name);
    if (have) {
      this.checkShape(have, mode, purpose);
      return this.info(have);
    }
    await this.mutate(async (doc) => {
      const existing = doc.header.domains.find((d) => d.name === name);
      if (existing) return this.checkShape(existing, mode, purpose);
      const dom: DomainRecord = {
        id: doc.header.nextDomainId,
        name,
        mode,
        purpose,
        current: 0,
        rotating: null,
        createdAt: new Date().toISOString(),
      };
      doc.header.nextDomainId += 1;
      doc.header.domains.push(dom);
      await this.addVersion(doc, dom);
    });
    const dom = this.requireDomain(name);
    this.emit({ type: 'rotate', domain: name, domainId: dom.id, version: dom.current, detail: 'domain created' });
    return this.info(dom);
  }

  private checkShape(d: DomainRecord, mode: CellMode, purpose: string): void {
    if (d.mode !== mode || d.purpose !== purpose) {
      throw new KeyringError('refused', `key domain ${d.name} exists as ${d.mode}/${d.purpose}, not ${mode}/${purpose}`);
    }
  }

  domainId(name: string): number {
    return this.requireDomain(name).id;
  }

  hasDomain(name: string): boolean {
    return this.findDomain(name) !== undefined;
  }

  list(): DomainInfo[] {
    return this.doc.header.domains.map((d) => this.info(d));
  }

  domain(name: string): DomainInfo {
    return this.info(this.requireDomain(name));
  }

  /** True while a deterministic domain rotates: the proxy must refuse writes to its columns. */
  isWriteFrozen(name: string): boolean {
    return this.requireDomain(name).rotating !== null;
  }

  private info(d: DomainRecord): DomainInfo {
    const versions: VersionInfo[] = Object.values(this.doc.versions)
      .filter((e) => e.domainId === d.id)
      .sort((a, b) => a.version - b.version)
      .map((e) => ({
        version: e.version,
        status: e.status,
        current: e.version === d.current,
        encryptions: e.encryptions,
        escrowed: e.escrow !== null,
        createdAt: e.createdAt,
      }));
    return { id: d.id, name: d.name, mode: d.mode, purpose: d.purpose, current: d.current, rotating: d.rotating, versions };
  }

  private findDomain(name: string): DomainRecord | undefined {
    return this.doc.header.domains.find((d) => d.name === name);
  }

  private requireDomain(name: string): DomainRecord {
    const d = this.findDomain(name);
    if (!d) throw new KeyringError('unknown-domain', `unknown key domain ${name}`);
    return d;
  }

  private domainById(id: number): DomainRecord | undefined {
    return this.doc.header.domains.find((d) => d.id === id);
  }

  // ---- cells -----------------------------------------------------------------------------------------

  /**
   * The header and key for one new cell of the domain's current version. Each call counts one encryption
   * (reserved from the keystore in blocks); a randomized domain rotates when its version reaches the
   * threshold. Does not check the write freeze: callers that write use encrypt() or isWriteFrozen().
   */
  async currentCellKey(name: string): Promise<{ header: CellHeader; key: CellKey }> {
    let d = this.requireDomain(name);
    const a = this.allowance.get(d.id);
    if (a && a.version === d.current && a.left > 0) {
      a.left -= 1;
    } else {
      await this.reserve(d.id);
      d = this.requireDomain(name);
    }
    const header: CellHeader = { mode: d.mode, domainId: d.id, version: d.current };
    return { header, key: await this.unwrapCached(d, d.current) };
  }

  /** The key for a cell header: a CellKey, or 'shredded' for a tombstoned version. Unknown → KeyringError. */
  async cellKeyFor(header: CellHeader): Promise<CellKey | 'shredded'> {
    const d = this.domainById(header.domainId);
    if (!d) throw new KeyringError('unknown-domain', `no key domain with id ${header.domainId}`);
    if (d.mode !== header.mode) throw new CellDecryptError();
    const e = this.doc.versions[entryKey(d.id, header.version)];
    if (!e) throw new KeyringError('unknown-version', `key domain ${d.name} has no version ${header.version}`);
    if (e.status === 'shredded') return 'shredded';
    if (e.status === 'retired') throw new KeyringError('retired', `key domain ${d.name} version ${header.version} is retired`);
    return this.unwrapCached(d, header.version);
  }

  /** Encrypts one value under the domain's current version; refused while the domain's writes are frozen. */
  async encrypt(name: string, plaintext: Uint8Array): Promise<Buffer> {
    if (this.isWriteFrozen(name)) {
      throw new KeyringError('frozen', `key domain ${name} is rotating; writes are refused until the rotation finishes`);
    }
    const { header, key } = await this.currentCellKey(name);
    return encryptCell(header, key, plaintext);
  }

  /**
   * encrypt() without waiting, for the query path: possible when the domain has encryptions reserved and its
   * current key is unwrapped and unexpired (the same count and cache encrypt() uses). Null: call encrypt().
   */
  encryptNow(name: string, plaintext: Uint8Array): Buffer | null {
    if (this.isWriteFrozen(name)) {
      throw new KeyringError('frozen', `key domain ${name} is rotating; writes are refused until the rotation finishes`);
    }
    const d = this.requireDomain(name);
    const a = this.allowance.get(d.id);
    if (!a || a.version !== d.current || a.left <= 0) return null;
    const hit = this.cache.get(entryKey(d.id, d.current));
    if (!hit?.key || hit.expires <= Date.now()) return null;
    a.left -= 1;
    return encryptCell({ mode: d.mode, domainId: d.id, version: d.current }, hit.key, plaintext);
  }

  /**
   * encryptNow() for several values of one domain, with one look at the freeze, the reserved count and the
   * key cache (bulk writes: COPY). All of them, or null when fewer encryptions are reserved (nothing counted);
   * with `prefix`, as many as are reserved (maybe none). Null when the key is not at hand.
   */
  encryptManyNow(name: string, plaintexts: readonly Uint8Array[], prefix = false): Buffer[] | null {
    if (this.isWriteFrozen(name)) {
      throw new KeyringError('frozen', `key domain ${name} is rotating; writes are refused until the rotation finishes`);
    }
    const d = this.requireDomain(name);
    const hit = this.cache.get(entryKey(d.id, d.current));
    if (!hit?.key || hit.expires <= Date.now()) return null;
    const a = this.allowance.get(d.id);
    const n = a && a.version === d.current ? Math.min(Math.max(a.left, 0), plaintexts.length) : 0;
    if (n < plaintexts.length && !prefix) return null;
    if (a) a.left -= n;
    const header: CellHeader = { mode: d.mode, domainId: d.id, version: d.current };
    const out = new Array<Buffer>(n);
    for (let i = 0; i < n; i++) out[i] = encryptCell(header, hit.key, plaintexts[i]!);
    return out;
  }

  /**
   * Decrypts a cell; null when its version was shredded. With `expectDomain`, a cell of any other domain
   * is refused (CellDecryptError), so cells cannot be moved between columns.
   */
  async decrypt(cell: Uint8Array, expectDomain?: string): Promise<Buffer | null> {
    const header = parseCellHeader(cell);
    if (!header) throw new CellDecryptError();
    if (expectDomain !== undefined && header.domainId !== this.domainId(expectDomain)) throw new CellDecryptError();
    const key = await this.cellKeyFor(header);
    if (key === 'shredded') return null;
    return decryptCell(cell, key, { domainId: header.domainId });
  }

  private blockSize(): number {
    return Math.max(1, Math.min(10_000, Math.floor(this.rotateAfter / 100)));
  }

  /** Reserves a block of encryptions for the domain's current version, rotating first if it is used up. */
  private reserve(domainId: number): Promise<void> {
    const prev = this.domainLocks.get(domainId) ?? Promise.resolve();
    const run = prev.then(async () => {
      const d = this.domainById(domainId);
      const a = this.allowance.get(domainId);
      if (d && a && a.version === d.current && a.left > 0) {
        a.left -= 1; // another waiter reserved meanwhile
        return;
      }
      let rotated = false;
      const got = await this.mutate(async (doc) => {
        rotated = false;
        const dom = doc.header.domains.find((x) => x.id === domainId);
        if (!dom) throw new KeyringError('unknown-domain', `no key domain with id ${domainId}`);
        let e = doc.versions[entryKey(dom.id, dom.current)]!;
        if (dom.mode === 'randomized' && dom.rotating === null && e.encryptions >= this.rotateAfter) {
          e = await this.addVersion(doc, dom);
          rotated = true;
        }
        const grant = dom.mode === 'randomized' ? Math.max(1, Math.min(this.blockSize(), this.rotateAfter - e.encryptions)) : this.blockSize();
        e.encryptions += grant;
        return { version: dom.current, grant, name: dom.name };
      });
      this.allowance.set(domainId, { version: got.version, left: got.grant - 1 });
      if (rotated) {
        this.emit({ type: 'rotate', domain: got.name, domainId, version: got.version, detail: `automatic: ${this.rotateAfter} encryptions reached` });
      }
    });
    this.domainLocks.set(domainId, run.catch(() => undefined));
    return run;
  }

  private unwrapCached(d: DomainRecord, version: number): Promise<CellKey> {
    const k = entryKey(d.id, version);
    const now = Date.now();
    const hit = this.cache.get(k);
    if (hit && hit.expires > now) return hit.promise;
    if (hit) this.dropCached(k);
    const promise = (async () => {
      const e = this.doc.versions[k];
      if (!e || e.status !== 'active' || !e.wrapped) throw new KeyringError('unknown-version', `key domain ${d.name} version ${version} is not active`);
      let raw: Buffer;
      try {
        raw = await this.provider.unwrap(Buffer.from(e.wrapped, 'base64'), this.context(d, version));
      } catch (err) {
        throw new KeyringError('unwrap', `key domain ${d.name} version ${version} cannot be unwrapped (${(err as Error).message}); refusing reads and writes of it`);
      }
      try {
        const key = cellKeyFromBytes(d.mode, raw);
        this.emit({ type: 'unwrap', domain: d.name, domainId: d.id, version });
        return key;
      } finally {
        raw.fill(0);
      }
    })();
    const entry: CacheEntry = { expires: now + this.ttlMs, promise };
    this.cache.set(k, entry);
    promise.then((key) => {
      entry.key = key;
    }, () => {
      if (this.cache.get(k)?.promise === promise) this.cache.delete(k);
    });
    return promise;
  }

  private dropCached(k: string): void {
    const hit = this.cache.get(k);
    if (!hit) return;
    this.cache.delete(k);
    hit.promise.then(forgetCellKey, () => undefined);
  }

  // ---- purge -----------------------------------------------------------------------------------------

  /** Registers a hook called on every purge (the proxy broadcasts local purges to other instances). */
  onPurge(cb: (n: PurgeNotice) => void): () => void {
    this.purgeHooks.add(cb);
    return () => this.purgeHooks.delete(cb);
  }

  /** Drops cached keys (all, a domain's, or one version's) and calls the purge hooks. */
  purge(domain?: string, version?: number, opts: { remote?: boolean } = {}): void {
    const id = domain === undefined ? undefined : this.findDomain(domain)?.id;
    for (const k of [...this.cache.keys()]) {
      const [d, v] = k.split(':').map(Number);
      if (domain !== undefined && d !== id) continue;
      if (version !== undefined && v !== version) continue;
      this.dropCached(k);
    }
    if (domain === undefined) this.allowance.clear();
    else if (id !== undefined) this.allowance.delete(id);
    const notice: PurgeNotice = { remote: opts.remote ?? false };
    if (domain !== undefined) notice.domain = domain;
    if (version !== undefined) notice.version = version;
    for (const cb of this.purgeHooks) cb(notice);
  }

  // ---- rotation, retirement ----------------------------------------------------------------------------

  /**
   * Adds a version. Randomized: new writes use it at once. Deterministic: it also sets the domain's
   * `rotating` flag (writes frozen) until finishRotation(); calling it again while rotating returns the
   * version being rotated to.
   */
  async rotate(name: string): Promise<number> {
    const d0 = this.requireDomain(name);
    const v = await this.mutate(async (doc) => {
      const dom = doc.header.domains.find((x) => x.id === d0.id)!;
      if (dom.rotating) return dom.rotating.to;
      const from = dom.current;
      const e = await this.addVersion(doc, dom);
      if (dom.mode === 'deterministic') dom.rotating = { from, to: e.version, startedAt: new Date().toISOString() };
      return e.version;
    });
    this.allowance.delete(d0.id);
    this.emit({ type: 'rotate', domain: name, domainId: d0.id, version: v, detail: d0.mode === 'deterministic' ? 'writes frozen until reencrypted' : 'new writes use this version' });
    return v;
  }

  /** Clears a deterministic domain's rotating flag (after its rows were reencrypted). */
  async finishRotation(name: string): Promise<void> {
    const d0 = this.requireDomain(name);
    if (!d0.rotating) return;
    await this.mutate((doc) => {
      doc.header.domains.find((x) => x.id === d0.id)!.rotating = null;
    });
    this.emit({ type: 'reencrypt', domain: name, domainId: d0.id, version: d0.current, detail: 'rotation finished; writes allowed' });
  }

  /** Marks a version retired and drops its key. The caller (rotation.ts) has checked no row uses it. */
  async retire(name: string, version: number): Promise<void> {
    const d0 = this.requireDomain(name);
    await this.mutate((doc) => {
      const dom = doc.header.domains.find((x) => x.id === d0.id)!;
      const e = doc.versions[entryKey(dom.id, version)];
      if (!e) throw new KeyringError('unknown-version', `key domain ${name} has no version ${version}`);
      if (dom.current === version) throw new KeyringError('refused', `version ${version} is the current version of ${name}; rotate first`);
      if (dom.rotating && dom.rotating.from === version) throw new KeyringError('refused', `${name} is still rotating away from version ${version}`);
      if (e.status !== 'active') throw new KeyringError('refused', `${name} version ${version} is already ${e.status}`);
      e.status = 'retired';
      e.wrapped = null;
      e.escrow = null;
      e.changedAt = new Date().toISOString();
    });
    this.purge(name, version);
    this.emit({ type: 'retire', domain: name, domainId: d0.id, version });
  }

  /** Rewraps every data key (and the integrity key) under a new root without touching rows. */
  async rewrap(newRoot: NewRoot = {}): Promise<string> {
    return this.replaceRoot(newRoot, null, 'rewrap');
  }

  /** Rewraps every key with the current root again: adds escrow copies to keys made before escrow was configured. */
  async escrowBackfill(): Promise<number> {
    if (!this.escrow) throw new KeyringError('refused', 'no escrow key is configured (keyring.escrow.publicKeyFile)');
    let n = 0;
    await this.mutate(async (doc) => {
      n = await this.rewrapAll(doc, this.provider, this.provider);
    });
    this.emit({ type: 'escrow', detail: `escrow copies written for ${n} keys` });
    return n;
  }

  /**
   * Destroys one version for good: rewraps every surviving key under a new root, writes a MACed tombstone
   * for the version, destroys the old root (and the version's exported escrow copy). Cells of the version
   * then decrypt to null.
   */
  async shred(name: string, version: number, newRoot: NewRoot = {}): Promise<string> {
    const d = this.requireDomain(name);
    const e = this.doc.versions[entryKey(d.id, version)];
    if (!e) throw new KeyringError('unknown-version', `key domain ${name} has no version ${version}`);
    if (e.status === 'shredded') throw new KeyringError('refused', `${name} version ${version} is already shredded`);
    if (d.current === version) throw new KeyringError('refused', `version ${version} is the current version of ${name}; rotate first`);
    if (d.rotating) throw new KeyringError('refused', `${name} is rotating; finish the rotation first`);
    const detail = await this.replaceRoot(newRoot, { domainId: d.id, version }, 'shred');
    const exportDir = this.cfg.escrow?.exportDir;
    if (exportDir) {
      const f = escrowCohortPath(exportDir, this.keystoreId, d.id, version);
      if (existsSync(f)) unlinkSync(f);
    }
    this.purge(name, version);
    this.emit({ type: 'shred', domain: name, domainId: d.id, version, detail });
    return detail;
  }

  private async replaceRoot(newRoot: NewRoot, tombstone: { domainId: number; version: number } | null, why: 'rewrap' | 'shred' | 'recover'): Promise<string> {
    const old = this.provider;
    let next: RootKeyProvider;
    let nextPath: string | null = null;
    if (this.cfg.provider === 'local') {
      const keyFile = this.cfg.keyFile;
      if (!keyFile) throw new KeyringError('refused', 'keyring.keyFile is not set');
      nextPath = `${keyFile}.next`;
      if (existsSync(nextPath)) unlinkSync(nextPath); // a leftover from a run that never saved
      createLocalRootKey(nextPath);
      next = openRootProvider(this.cfg, this.escrow, { keyFile: nextPath });
    } else {
      if (!newRoot.keyArn) throw new KeyringError('refused', `${why} needs a new KMS key (--new-key-arn)`);
      next = openRootProvider(this.cfg, this.escrow, { keyArn: newRoot.keyArn, kms: this.opts.kms });
    }
    let count = 0;
    await this.mutate(async (doc) => {
      if (tombstone) {
        const e = doc.versions[entryKey(tombstone.domainId, tombstone.version)]!;
        e.status = 'shredded';
        e.wrapped = null;
        e.escrow = null;
        e.changedAt = new Date().toISOString();
      }
      count = await this.rewrapAll(doc, old, next);
      doc.header.root = next.identity;
    });
    this.provider = next;
    const parts = [`${count} keys rewrapped under ${next.identity}`];
    if (nextPath && this.cfg.keyFile) {
      // Old root first (overwrite + unlink), then the new key takes its path; open() finishes a crashed swap.
      if (old.kind === 'local') parts.push(await old.destroy());
      renameSync(nextPath, this.cfg.keyFile);
      fsyncDir(dirname(this.cfg.keyFile));
      this.provider = openRootProvider(this.cfg, this.escrow);
    } else if (why === 'shred') {
      parts.push(await old.destroy());
    } else if (old.kind === 'aws-kms') {
      parts.push(`the old KMS key ${old.identity.slice('aws-kms:'.length)} is no longer needed by this keystore; update keyring.kms.keyArn`);
    }
    if (why !== 'shred') this.emit({ type: why === 'recover' ? 'escrow' : 'rewrap', detail: parts.join('; ') });
    return parts.join('; ');
  }

  private async rewrapAll(doc: KeystoreDoc, from: RootKeyProvider, to: RootKeyProvider): Promise<number> {
    let n = 0;
    const h = doc.header;
    const ictx = this.integrityContext(h.keystoreId, h.databaseIdentity);
    const ik = await from.unwrap(Buffer.from(h.integrity.wrapped, 'base64'), ictx);
    try {
      h.integrity = { wrapped: (await to.wrap(ik, ictx)).toString('base64'), escrow: this.escrow?.keyId ?? null };
    } finally {
      ik.fill(0);
    }
    for (const e of Object.values(doc.versions)) {
      if (e.status !== 'active' || !e.wrapped) continue;
      const dom = doc.header.domains.find((x) => x.id === e.domainId)!;
      const ctx = this.context(dom, e.version, h);
      const raw = await from.unwrap(Buffer.from(e.wrapped, 'base64'), ctx);
      try {
        e.wrapped = (await to.wrap(raw, ctx)).toString('base64');
      } finally {
        raw.fill(0);
      }
      e.escrow = this.escrow?.keyId ?? null;
      e.changedAt = new Date().toISOString();
      n += 1;
    }
    this.integrityWrapped = h.integrity.wrapped;
    return n;
  }

  // ---- escrow ------------------------------------------------------------------------------------------

  /**
   * Writes one file per cohort (domain version) with its escrowed wrapped key and context, for the offline
   * escrow holder. Returns the files written.
   */
  escrowExport(dir = this.cfg.escrow?.exportDir): string[] {
    if (!this.escrow) throw new KeyringError('refused', 'no escrow key is configured (keyring.escrow.publicKeyFile)');
    if (!dir) throw new KeyringError('refused', 'no escrow export directory (keyring.escrow.exportDir or --out)');
    const out: string[] = [];
    mkdirSync(join(dir, this.keystoreId), { recursive: true, mode: 0o700 });
    for (const e of Object.values(this.doc.versions)) {
      if (e.status !== 'active' || !e.wrapped || !e.escrow) continue;
      const d = this.domainById(e.domainId)!;
      const f = escrowCohortPath(dir, this.keystoreId, d.id, e.version);
      const body = {
        keystoreId: this.keystoreId,
        databaseIdentity: this.databaseIdentity,
        domain: d.name,
        domainId: d.id,
        mode: d.mode,
        purpose: d.purpose,
        version: e.version,
        escrowKeyId: e.escrow,
        wrapped: e.wrapped,
      };
      writeFileDurable(f, JSON.stringify(body, null, 2) + '\n', 0o600);
      out.push(f);
    }
    this.emit({ type: 'escrow', detail: `exported ${out.length} cohort copies to ${dir}` });
    return out;
  }

  /** Checks with the escrow private key that every active key is recoverable; returns what was checked. */
  async escrowVerify(privateKeyPem: string): Promise<{ recoverable: number; missing: string[] }> {
    const esc = new EscrowRootProvider(privateKeyPem);
    const missing: string[] = [];
    let recoverable = 0;
    for (const e of Object.values(this.doc.versions)) {
      if (e.status !== 'active' || !e.wrapped) continue;
      const d = this.domainById(e.domainId)!;
      try {
        const raw = await esc.unwrap(Buffer.from(e.wrapped, 'base64'), this.context(d, e.version));
        raw.fill(0);
        recoverable += 1;
      } catch {
        missing.push(`${d.name} v${e.version}`);
      }
    }
    this.emit({ type: 'escrow', detail: `verified ${recoverable} escrow copies, ${missing.length} missing` });
    return { recoverable, missing };
  }

  // ---- internals ---------------------------------------------------------------------------------------

  private context(d: DomainRecord, version: number, h = this.doc.header): WrapContext {
    return { purpose: d.purpose, domainId: d.id, version, keystoreId: h.keystoreId, databaseIdentity: h.databaseIdentity };
  }

  private integrityContext(keystoreId: string, databaseIdentity: string): WrapContext {
    const purpose: KeyPurpose = 'integrity';
    return { purpose, domainId: INTEGRITY_DOMAIN, version: INTEGRITY_VERSION, keystoreId, databaseIdentity };
  }

  private async addVersion(doc: KeystoreDoc, dom: DomainRecord): Promise<VersionRecord> {
    const existing = Object.values(doc.versions).filter((e) => e.domainId === dom.id).map((e) => e.version);
    const version = existing.length ? Math.max(...existing) + 1 : 1;
    if (version > 0xffffffff) throw new KeyringError('refused', `key domain ${dom.name} has no versions left`);
    const raw = randomBytes(dom.mode === 'randomized' ? 32 : 64);
    let wrapped: string;
    try {
      wrapped = (await this.provider.wrap(raw, this.context(dom, version, doc.header))).toString('base64');
    } finally {
      raw.fill(0);
    }
    const now = new Date().toISOString();
    const e: VersionRecord = { domainId: dom.id, version, status: 'active', wrapped, escrow: this.escrow?.keyId ?? null, encryptions: 0, createdAt: now, changedAt: now, mac: '' };
    doc.versions[entryKey(dom.id, version)] = e;
    dom.current = version;
    return e;
  }

  /** Verifies a loaded document (root, integrity key, MACs, database identity, generation pin) and installs it. */
  private async accept(loaded: Loaded): Promise<void> {
    const doc = loaded.doc;
    const h = doc.header;
    if (!h || typeof h !== 'object' || !h.integrity) throw new KeystoreIntegrityError(`${this.backend.description} has no valid header`);
    if (this.opts.databaseIdentity !== undefined && this.opts.databaseIdentity !== h.databaseIdentity) {
      throw new KeystoreIntegrityError(`it belongs to database ${h.databaseIdentity}, not ${this.opts.databaseIdentity}`);
    }
    if (this.provider.kind !== 'escrow' && h.root !== this.provider.identity) {
      throw new KeystoreIntegrityError(`its keys are wrapped under root ${h.root}, but the configured root is ${this.provider.identity}`);
    }
    if (!this.integrityKey || h.integrity.wrapped !== this.integrityWrapped) {
      let raw: Buffer;
      try {
        raw = await this.provider.unwrap(Buffer.from(h.integrity.wrapped, 'base64'), this.integrityContext(h.keystoreId, h.databaseIdentity));
      } catch (err) {
        throw new KeystoreIntegrityError(`the integrity key cannot be unwrapped (${(err as Error).message})`);
      }
      const key = createSecretKey(raw);
      raw.fill(0);
      // A new integrity blob must still hold the same key, or entries could be re-MACed by whoever planted it.
      if (this.integrityKey && !this.integrityKey.equals(key)) throw new KeystoreIntegrityError('the integrity key changed');
      this.integrityKey = key;
      this.integrityWrapped = h.integrity.wrapped;
    }
    verify(this.integrityKey, doc);
    checkAndPin(this.statePath, h.keystoreId, h.generation);
    this.install(doc);
  }

  private install(doc: KeystoreDoc): void {
    const before = this.doc;
    this.doc = doc;
    if (!before) return;
    for (const [k, e] of Object.entries(before.versions)) {
      const now = doc.versions[k];
      if (e.status === 'active' && (!now || now.status !== 'active')) {
        const d = this.domainById(e.domainId) ?? before.header.domains.find((x) => x.id === e.domainId);
        this.purge(d?.name, e.version, { remote: true });
      }
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serialTail.then(fn);
    this.serialTail = run.catch(() => undefined);
    return run;
  }

  /** Load, verify, change, re-MAC, save with optimistic concurrency; retried on conflict. */
  private mutate<T>(fn: (doc: KeystoreDoc) => Promise<T> | T): Promise<T> {
    return this.serial(async () => {
      for (let attempt = 0; attempt < 20; attempt++) {
        const loaded = await this.backend.load();
        if (!loaded) throw new KeyringError('not-initialised', `${this.backend.description} no longer holds a keystore`);
        await this.accept(loaded);
        const doc = structuredClone(loaded.doc);
        const out = await fn(doc);
        doc.header.generation += 1;
        seal(this.integrityKey!, doc);
        try {
          await this.backend.save(doc, loaded.rev);
        } catch (err) {
          if (err instanceof KeystoreConflictError) continue;
          throw err;
        }
        checkAndPin(this.statePath, doc.header.keystoreId, doc.header.generation);
        this.install(doc);
        return out;
      }
      throw new KeyringError('refused', 'the keystore kept changing concurrently; try again');
    });
  }

  private emit(e: Omit<KeyEvent, 'keystoreId'>): void {
    const ev: KeyEvent = { keystoreId: this.doc?.header.keystoreId ?? '', ...e };
    this.opts.logger?.info({ keyEvent: ev }, `key event: ${ev.type}`);
    this.events.emit(ev.type, ev);
    this.events.emit('key', ev);
  }
}

export function escrowCohortPath(dir: string, keystoreId: string, domainId: number, version: number): string {
  return join(dir, keystoreId, `domain-${domainId}-v${version}.escrow.json`);
}
