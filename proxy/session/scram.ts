// SCRAM-SHA-256 (RFC 5802, RFC 7677) for both legs of a session, without ever knowing a password:
// - ScramServerExchange authenticates a client against the user's stored verifier and recovers the
//   ClientKey from the client's proof (ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage));
// - ScramClientWithKey logs in upstream as the same user with that ClientKey, since the upstream
//   holds the same verifier (same salt and iteration count).
// Channel binding is tls-server-end-point (RFC 5929). Everything here is pure: no I/O, no logging.
// Messages are handled as latin1 strings so that every byte round-trips exactly into the AuthMessage.
import { X509Certificate, createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
export const SCRAM_SHA_256_PLUS = 'SCRAM-SHA-256-PLUS';
export const CHANNEL_BINDING_TYPE = 'tls-server-end-point';

const KEY_LEN = 32; // SHA-256 output
const DEFAULT_NONCE_BYTES = 18; // as PostgreSQL and libpq
const MOCK_ITERATIONS = 4096; // PostgreSQL's default scram_iterations
const MOCK_SALT_LEN = 16;

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** Why an exchange failed; for logs only (never shown to the client beyond the usual auth error). */
export type ScramFailure =
  | 'bad_message' // malformed message, wrong nonce, or a call out of order
  | 'unsupported_mechanism'
  | 'channel_binding' // binding flag/type inconsistent with the mechanism or the connection
  | 'channel_binding_mismatch' // the client bound to a different certificate (a TLS man in the middle)
  | 'channel_binding_downgrade' // client sent 'y' although the server offered -PLUS
  | 'bad_proof'
  | 'unknown_user'; // no usable SCRAM verifier (unknown, NOLOGIN, expired, md5/plain): a mock exchange ran

export type ScramServerFirstResult = { ok: true; serverFirst: Buffer } | { ok: false; reason: ScramFailure; detail: string };
export type ScramServerFinalResult =
  | { ok: true; serverFinal: Buffer; clientKey: Buffer }
  | { ok: false; reason: ScramFailure; detail: string };

// ---------------------------------------------------------------------------------------------
// Primitives

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 decode: null unless the text is canonical padded base64 (no stray trailing bits). */
function decodeBase64(text: string): Buffer | null {
  if (!B64_RE.test(text)) return null;
  const out = Buffer.from(text, 'base64');
  return out.toString('base64') === text ? out : null;
}

function hmac(key: Buffer, data: Buffer | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

function safeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Overwrite secret bytes (a recovered ClientKey) once they are no longer needed. */
export function wipeSecret(...buffers: (Buffer | null | undefined)[]): void {
  for (const b of buffers) b?.fill(0);
}

/** printable = %x21-2B / %x2D-7E (RFC 5802 §7): the nonce alphabet. */
function isPrintable(text: string): boolean {
  if (text.length === 0) return false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x21 || c > 0x7e || c === 0x2c) return false;
  }
  return true;
}

function defaultNonce(bytes: number): string {
  return randomBytes(bytes).toString('base64');
}

// ---------------------------------------------------------------------------------------------
// Verifiers

/**
 * Parses PostgreSQL's rolpassword form `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
 * Returns null for md5 hashes, plaintext passwords and anything malformed.
 */
export function parseScramVerifier(rolpassword: string): ScramVerifier | null {
  const m = /^SCRAM-SHA-256\$([0-9]{1,10}):([^$:]+)\$([^$:]+):([^$:]+)$/.exec(rolpassword);
  if (!m) return null;
  const iterations = Number(m[1]);
  if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > 0x7fffffff) return null;
  const salt = decodeBase64(m[2]!);
  const storedKey = decodeBase64(m[3]!);
  const serverKey = decodeBase64(m[4]!);
  if (!salt || salt.length === 0 || !storedKey || !serverKey) return null;
  if (storedKey.length !== KEY_LEN || serverKey.length !== KEY_LEN) return null;
  return { iterations, salt, storedKey, serverKey };
}

/** The inverse of parseScramVerifier. */
export function formatScramVerifier(v: ScramVerifier): string {
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

/**
 * Keys derived from a password (SaltedPassword = PBKDF2-HMAC-SHA-256). For tests and tooling only: the
 * proxy never sees passwords. The password is used as given; callers apply SASLprep if they need it.
 */
export function scramKeysFromPassword(
  password: string,
  salt: Buffer,
  iterations: number,
): { clientKey: Buffer; verifier: ScramVerifier } {
  const salted = pbkdf2Sync(Buffer.from(password, 'utf8'), salt, iterations, KEY_LEN, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const serverKey = hmac(salted, 'Server Key');
  wipeSecret(salted);
  return { clientKey, verifier: { iterations, salt: Buffer.from(salt), storedKey: sha256(clientKey), serverKey } };
}

/**
 * Deterministic salt for the mock exchange run for users without a verifier, so the same unknown user
 * always sees the same salt (as PostgreSQL does), while the salt cannot be predicted without the secret.
 */
export function mockScramSalt(user: string, secret: Buffer = processMockSecret): Buffer {
  return hmac(secret, Buffer.concat([Buffer.from('mamori scram mock salt\0'), Buffer.from(user, 'utf8')])).subarray(0, MOCK_SALT_LEN);
}

const processMockSecret = randomBytes(32);

function mockVerifier(user: string, secret: Buffer | undefined, iterations: number): ScramVerifier {
  // Keys are random: no proof can match them, and the exchange fails as 'unknown_user' at the end.
  return { iterations, salt: mockScramSalt(user, secret), storedKey: randomBytes(KEY_LEN), serverKey: randomBytes(KEY_LEN) };
}

// ---------------------------------------------------------------------------------------------
// tls-server-end-point (RFC 5929 §4.1)

const SIG_HASHES: Record<string, string> = {
  '1.2.840.113549.1.1.4': 'md5', // md5WithRSAEncryption
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.2.840.113549.1.1.14': 'sha224',
  '1.2.840.113549.1.1.15': 'sha512-224',
  '1.2.840.113549.1.1.16': 'sha512-256',
  '1.2.840.10045.4.1': 'sha1', // ecdsa-with-SHA1
  '1.2.840.10045.4.3.1': 'sha224',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.2.840.10040.4.3': 'sha1', // dsa-with-sha1
  '2.16.840.1.101.3.4.3.1': 'sha224', // dsa-with-sha224
  '2.16.840.1.101.3.4.3.2': 'sha256',
};

const HASH_OIDS: Record<string, string> = {
  '1.2.840.113549.2.5': 'md5',
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
  '2.16.840.1.101.3.4.2.4': 'sha224',
  '2.16.840.1.101.3.4.2.5': 'sha512-224',
  '2.16.840.1.101.3.4.2.6': 'sha512-256',
};

const RSASSA_PSS = '1.2.840.113549.1.1.10';

interface Tlv {
  tag: number;
  start: number; // first content byte
  end: number; // one past the last content byte
}

function readTlv(buf: Buffer, off: number, limit: number): Tlv {
  if (off + 2 > limit) throw new Error('truncated DER');
  const tag = buf[off]!;
  let len = buf[off + 1]!;
  let p = off + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || p + n > limit) throw new Error('bad DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p++]!;
  }
  if (p + len > limit) throw new Error('truncated DER');
  return { tag, start: p, end: p + len };
}

function decodeOid(buf: Buffer, t: Tlv): string {
  if (t.tag !== 0x06 || t.end === t.start) throw new Error('expected an OID');
  const first = buf[t.start]!;
  const parts = [Math.min(2, Math.floor(first / 40)), first - 40 * Math.min(2, Math.floor(first / 40))];
  let v = 0;
  for (let i = t.start + 1; i < t.end; i++) {
    v = v * 128 + (buf[i]! & 0x7f);
    if ((buf[i]! & 0x80) === 0) {
      parts.push(v);
      v = 0;
    }
  }
  return parts.join('.');
}

/** The hash algorithm named by a certificate's signatureAlgorithm (node hash name), or null if none applies. */
export function certificateSignatureHash(certDer: Buffer): string | null {
  const cert = readTlv(certDer, 0, certDer.length);
  if (cert.tag !== 0x30) throw new Error('not a DER certificate');
  const tbs = readTlv(certDer, cert.start, cert.end);
  const alg = readTlv(certDer, tbs.end, cert.end);
  if (tbs.tag !== 0x30 || alg.tag !== 0x30) throw new Error('not a DER certificate');
  const oidTlv = readTlv(certDer, alg.start, alg.end);
  const oid = decodeOid(certDer, oidTlv);
  if (oid !== RSASSA_PSS) return SIG_HASHES[oid] ?? null;
  // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] EXPLICIT AlgorithmIdentifier DEFAULT sha1, ... }
  if (oidTlv.end >= alg.end) return 'sha1';
  const params = readTlv(certDer, oidTlv.end, alg.end);
  if (params.tag !== 0x30 || params.start === params.end) return 'sha1';
  const first = readTlv(certDer, params.start, params.end);
  if (first.tag !== 0xa0) return 'sha1';
  const hashAlg = readTlv(certDer, first.start, first.end);
  return HASH_OIDS[decodeOid(certDer, readTlv(certDer, hashAlg.start, hashAlg.end))] ?? null;
}

/**
 * RFC 5929 §4.1 tls-server-end-point channel-binding data: the certificate (DER) hashed with its
 * signature's hash function, or SHA-256 when that is MD5 or SHA-1. Throws for signature algorithms
 * with no single hash (Ed25519, Ed448) — PostgreSQL and libpq cannot bind those either, so a
 * listener with such a certificate must not offer SCRAM-SHA-256-PLUS.
 */
export function tlsServerEndPointHash(certDer: Buffer): Buffer {
  const h = certificateSignatureHash(certDer);
  if (h === null) throw new Error('no tls-server-end-point hash is defined for this certificate signature algorithm');
  const algo = h === 'md5' || h === 'sha1' ? 'sha256' : h;
  return createHash(algo).update(certDer).digest();
}

/** tlsServerEndPointHash for a PEM certificate (the first one in the text, i.e. the leaf). */
export function tlsServerEndPointHashFromPem(pem: string | Buffer): Buffer {
  return tlsServerEndPointHash(new X509Certificate(pem).raw);
}

// ---------------------------------------------------------------------------------------------
// Server side

/** The FATAL error a client gets for a failure, worded and coded as PostgreSQL 15's server does. */
export function scramFailureError(reason: ScramFailure, user: string): { code: string; message: string; detail?: string } {
  switch (reason) {
    case 'bad_proof':
    case 'unknown_user': // indistinguishable from a wrong password, on purpose
      return { code: '28P01', message: `password authentication failed for user "${user}"` };
    case 'channel_binding_mismatch':
      return { code: '28000', message: 'SCRAM channel binding check failed' };
    case 'channel_binding_downgrade':
      return {
        code: '08P01',
        message: 'SCRAM channel binding negotiation error',
        detail: 'The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.',
      };
    case 'unsupported_mechanism':
      return { code: '08P01', message: 'client selected an invalid SASL authentication mechanism' };
    case 'channel_binding':
    case 'bad_message':
      return { code: '08P01', message: 'malformed SCRAM message' };
  }
}

type ServerState = 'initial' | 'first' | 'done';

export interface ScramServerOptions {
  /** The user's verifier; null for an unknown user (or one without a usable SCRAM secret). */
  verifier: ScramVerifier | null;
  /** tls-server-end-point data of mamori's certificate when the client leg is TLS; null otherwise. */
  channelBinding: Buffer | null;
  /** Random bytes in the server nonce (default 18, as PostgreSQL). */
  nonceBytes?: number;
  /** Source of the server's nonce part (printable, no ','); for tests with fixed vectors. */
  nonceSource?: () => string;
  /** The login name, to derive the mock salt for unknown users deterministically. */
  user?: string;
  /** Secret keying the mock salt; defaults to a per-process random secret. */
  mockSecret?: Buffer;
  /** Iteration count shown for unknown users (default 4096, PostgreSQL's default). */
  mockIterations?: number;
}

/**
 * One SCRAM-SHA-256 / -PLUS exchange with a client, following PostgreSQL's server rules (auth-scram.c):
 * no authzid, no mandatory extensions, 'y' refused when -PLUS was offered, 'p' refused without TLS.
 */
export class ScramServerExchange {
  private readonly verifier: ScramVerifier;
  private readonly doomed: boolean;
  private readonly channelBinding: Buffer | null;
  private readonly nonceBytes: number;
  private readonly nonceSource: (() => string) | undefined;
  private state: ServerState = 'initial';
  private gs2Header = '';
  private usesBinding = false;
  private clientFirstBare = '';
  private serverFirstMsg = '';
  private fullNonce = '';

  constructor(opts: ScramServerOptions) {
    this.doomed = opts.verifier === null;
    this.verifier = opts.verifier ?? mockVerifier(opts.user ?? '', opts.mockSecret, opts.mockIterations ?? MOCK_ITERATIONS);
    this.channelBinding = opts.channelBinding;
    this.nonceBytes = opts.nonceBytes ?? DEFAULT_NONCE_BYTES;
    this.nonceSource = opts.nonceSource;
  }

  mechanisms(): string[] {
    return this.channelBinding ? [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] : [SCRAM_SHA_256];
  }

  clientFirst(mechanism: string, data: Buffer): ScramServerFirstResult {
    if (this.state !== 'initial') return this.fail('bad_message', 'client-first-message out of order');
    this.state = 'done'; // until proven otherwise
    if (!this.mechanisms().includes(mechanism)) return this.fail('unsupported_mechanism', 'mechanism not offered');
    const plus = mechanism === SCRAM_SHA_256_PLUS;
    const msg = data.toString('latin1');

    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let p: number;
    const flag = msg[0];
    if (flag === 'p') {
      const comma = msg.indexOf(',');
      if (comma < 0 || msg[1] !== '=') return this.fail('bad_message', 'malformed gs2 header');
      if (!this.channelBinding) return this.fail('channel_binding', "client requested channel binding ('p') on a connection without TLS");
      if (!plus) return this.fail('channel_binding', 'client selected SCRAM-SHA-256 without binding but sent binding data');
      if (msg.slice(2, comma) !== CHANNEL_BINDING_TYPE) return this.fail('channel_binding', 'unsupported channel-binding type');
      this.usesBinding = true;
      p = comma;
    } else if (flag === 'y' || flag === 'n') {
      if (plus) return this.fail('channel_binding', 'client selected SCRAM-SHA-256-PLUS without channel-binding data');
      // 'y': the client supports binding but thinks we do not. We offered -PLUS, so someone removed it.
      if (flag === 'y' && this.channelBinding) {
        return this.fail('channel_binding_downgrade', "client sent 'y' although SCRAM-SHA-256-PLUS was offered");
      }
      p = 1;
    } else {
      return this.fail('bad_message', 'malformed gs2 header');
    }
    if (msg[p] !== ',') return this.fail('bad_message', 'malformed gs2 header');
    p++;
    if (msg.startsWith('a=', p)) return this.fail('bad_message', 'authorization identity is not supported');
    if (msg[p] !== ',') return this.fail('bad_message', 'malformed gs2 header');
    p++;
    this.gs2Header = msg.slice(0, p);

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    const bare = msg.slice(p);
    const attrs = bare.split(',');
    if (attrs[0]?.startsWith('m=')) return this.fail('bad_message', 'mandatory extensions are not supported');
    // The username is ignored, as PostgreSQL does: the startup message's user is authoritative.
    if (attrs.length < 2 || !attrs[0]!.startsWith('n=') || !attrs[1]!.startsWith('r=')) {
      return this.fail('bad_message', 'malformed client-first-message');
    }
    const clientNonce = attrs[1]!.slice(2);
    if (!isPrintable(clientNonce)) return this.fail('bad_message', 'malformed client nonce');
    for (const ext of attrs.slice(2)) {
      if (!/^[A-Za-z]=/.test(ext)) return this.fail('bad_message', 'malformed client-first-message');
    }

    const serverNonce = this.nonceSource ? this.nonceSource() : defaultNonce(this.nonceBytes);
    if (!isPrintable(serverNonce)) throw new Error('server nonce source produced a non-printable nonce');
    this.clientFirstBare = bare;
    this.fullNonce = clientNonce + serverNonce;
    this.serverFirstMsg = `r=${this.fullNonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'first';
    return { ok: true, serverFirst: Buffer.from(this.serverFirstMsg, 'latin1') };
  }

  clientFinal(data: Buffer): ScramServerFinalResult {
    if (this.state !== 'first') return this.fail('bad_message', 'client-final-message out of order');
    this.state = 'done';
    const msg = data.toString('latin1');

    // client-final-message = channel-binding "," nonce ["," extensions] "," proof
    const proofAt = msg.lastIndexOf(',p=');
    if (proofAt < 0) return this.fail('bad_message', 'client-final-message without proof');
    const withoutProof = msg.slice(0, proofAt);
    const attrs = withoutProof.split(',');
    if (attrs.length < 2 || !attrs[0]!.startsWith('c=') || !attrs[1]!.startsWith('r=')) {
      return this.fail('bad_message', 'malformed client-final-message');
    }
    for (const ext of attrs.slice(2)) {
      if (!/^[A-Za-z]=/.test(ext)) return this.fail('bad_message', 'malformed client-final-message');
    }
    const proof = decodeBase64(msg.slice(proofAt + 3));
    if (!proof || proof.length !== KEY_LEN) return this.fail('bad_message', 'malformed client proof');

    // c= must repeat the gs2 header, followed by the binding data when 'p' was used.
    const cbind = decodeBase64(attrs[0]!.slice(2));
    if (!cbind) return this.fail('bad_message', 'malformed channel-binding attribute');
    const header = Buffer.from(this.gs2Header, 'latin1');
    const expected = this.usesBinding ? Buffer.concat([header, this.channelBinding!]) : header;
    if (!safeEqual(cbind, expected)) {
      return this.usesBinding
        ? this.fail('channel_binding_mismatch', 'channel-binding data mismatch')
        : this.fail('channel_binding', 'unexpected channel-binding attribute');
    }
    if (attrs[1]!.slice(2) !== this.fullNonce) return this.fail('bad_message', 'nonce mismatch');

    const authMessage = Buffer.from(`${this.clientFirstBare},${this.serverFirstMsg},${withoutProof}`, 'latin1');
    const clientSignature = hmac(this.verifier.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    // Same work for unknown users as for known ones, so timing does not tell them apart.
    const proofOk = safeEqual(sha256(clientKey), this.verifier.storedKey);
    if (this.doomed || !proofOk) {
      wipeSecret(clientKey);
      return this.doomed ? this.fail('unknown_user', 'no SCRAM verifier for this user') : this.fail('bad_proof', 'client proof does not match');
    }
    const serverSignature = hmac(this.verifier.serverKey, authMessage);
    return { ok: true, serverFinal: Buffer.from(`v=${serverSignature.toString('base64')}`, 'latin1'), clientKey };
  }

  private fail(reason: ScramFailure, detail: string): { ok: false; reason: ScramFailure; detail: string } {
    this.state = 'done';
    return { ok: false, reason, detail };
  }
}

// ---------------------------------------------------------------------------------------------
// Client side (upstream)

export interface ScramClientOptions {
  /** The ClientKey recovered from the client's proof. Wiped by serverFinal() and dispose(). */
  clientKey: Buffer;
  /** The same verifier the server holds: its salt and iterations must be what the server sends. */
  verifier: ScramVerifier;
  /** tls-server-end-point data of the upstream's certificate when the upstream leg is TLS; null otherwise. */
  channelBinding: Buffer | null;
  /** Refuse to log in unless the server offers SCRAM-SHA-256-PLUS (requires channelBinding). */
  requireChannelBinding?: boolean;
  /** Username sent in the SCRAM message; PostgreSQL ignores it (libpq sends an empty one). */
  username?: string;
  nonceBytes?: number;
  /** Source of the client nonce (printable, no ','); for tests with fixed vectors. */
  nonceSource?: () => string;
}

function saslName(name: string): string {
  return name.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/** Logs in to a SCRAM server with a ClientKey instead of a password (no PBKDF2 needed). */
export class ScramClientWithKey {
  private readonly clientKey: Buffer;
  private readonly verifier: ScramVerifier;
  private readonly channelBinding: Buffer | null;
  private readonly requireBinding: boolean;
  private readonly username: string;
  private readonly nonceBytes: number;
  private readonly nonceSource: (() => string) | undefined;
  private mechanism: string | null = null;
  private gs2Header = '';
  private clientFirstBare = '';
  private clientNonce = '';
  private expectedServerSignature: Buffer | null = null;
  private step: 'initial' | 'first' | 'final' | 'done' = 'initial';

  constructor(opts: ScramClientOptions) {
    if (opts.clientKey.length !== KEY_LEN) throw new Error('ClientKey must be 32 bytes');
    this.clientKey = opts.clientKey;
    this.verifier = opts.verifier;
    this.channelBinding = opts.channelBinding;
    this.requireBinding = opts.requireChannelBinding ?? false;
    this.username = opts.username ?? '';
    this.nonceBytes = opts.nonceBytes ?? DEFAULT_NONCE_BYTES;
    this.nonceSource = opts.nonceSource;
  }

  /** Picks from the server's AuthenticationSASL list; throws when no acceptable mechanism is offered. */
  chooseMechanism(offered: string[]): string {
    if (this.channelBinding && offered.includes(SCRAM_SHA_256_PLUS)) this.mechanism = SCRAM_SHA_256_PLUS;
    else if (this.requireBinding) throw new Error('upstream does not offer SCRAM-SHA-256-PLUS but channel binding is required');
    else if (offered.includes(SCRAM_SHA_256)) this.mechanism = SCRAM_SHA_256;
    else throw new Error('upstream offers no supported SASL mechanism');
    return this.mechanism;
  }

  /** The SASLInitialResponse data. */
  clientFirst(): Buffer {
    if (this.mechanism === null) throw new Error('chooseMechanism() must be called first');
    if (this.step !== 'initial') throw new Error('clientFirst() called twice');
    // 'y': we could bind but the server did not offer it; 'n': this leg has no TLS, so we cannot.
    this.gs2Header = this.mechanism === SCRAM_SHA_256_PLUS ? `p=${CHANNEL_BINDING_TYPE},,` : this.channelBinding ? 'y,,' : 'n,,';
    this.clientNonce = this.nonceSource ? this.nonceSource() : defaultNonce(this.nonceBytes);
    if (!isPrintable(this.clientNonce)) throw new Error('client nonce source produced a non-printable nonce');
    this.clientFirstBare = `n=${saslName(this.username)},r=${this.clientNonce}`;
    this.step = 'first';
    return Buffer.from(this.gs2Header + this.clientFirstBare, 'utf8');
  }

  /** Takes AuthenticationSASLContinue data; returns the SASLResponse data. */
  serverFirst(data: Buffer): { ok: true; clientFinal: Buffer } | { ok: false; reason: string } {
    if (this.step !== 'first') return this.failClient('server-first-message out of order');
    this.step = 'done';
    const msg = data.toString('latin1');
    const m = /^r=([^,]+),s=([^,]+),i=([0-9]+)(?:,.*)?$/s.exec(msg);
    if (!m) return this.failClient('malformed server-first-message');
    const nonce = m[1]!;
    if (!isPrintable(nonce) || !nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) {
      return this.failClient('server nonce does not extend the client nonce');
    }
    const salt = decodeBase64(m[2]!);
    if (!salt || !salt.equals(this.verifier.salt)) return this.failClient('server salt differs from the verifier (password changed?)');
    if (Number(m[3]) !== this.verifier.iterations) return this.failClient('server iteration count differs from the verifier');

    const header = Buffer.from(this.gs2Header, 'latin1');
    const cbind = this.mechanism === SCRAM_SHA_256_PLUS ? Buffer.concat([header, this.channelBinding!]) : header;
    const withoutProof = `c=${cbind.toString('base64')},r=${nonce}`;
    const authMessage = Buffer.concat([Buffer.from(this.clientFirstBare, 'utf8'), Buffer.from(`,${msg},${withoutProof}`, 'latin1')]);
    const proof = xor(this.clientKey, hmac(this.verifier.storedKey, authMessage));
    this.expectedServerSignature = hmac(this.verifier.serverKey, authMessage);
    this.step = 'final';
    return { ok: true, clientFinal: Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'latin1') };
  }

  /** Takes AuthenticationSASLFinal data; verifies the server's signature. Wipes the ClientKey either way. */
  serverFinal(data: Buffer): { ok: true } | { ok: false; reason: string } {
    if (this.step !== 'final') return this.failClient('server-final-message out of order');
    this.step = 'done';
    this.dispose();
    const msg = data.toString('latin1');
    if (msg.startsWith('e=')) return { ok: false, reason: `server error: ${msg.slice(2, 64).replace(/[^\x20-\x7e]/g, '?')}` };
    const m = /^v=([^,]+)(?:,.*)?$/s.exec(msg);
    const sig = m ? decodeBase64(m[1]!) : null;
    if (!sig) return { ok: false, reason: 'malformed server-final-message' };
    if (!safeEqual(sig, this.expectedServerSignature!)) return { ok: false, reason: 'server signature does not match' };
    return { ok: true };
  }

  /** Wipes the ClientKey (idempotent); call on any path that abandons the login. */
  dispose(): void {
    wipeSecret(this.clientKey);
  }

  private failClient(reason: string): { ok: false; reason: string } {
    this.step = 'done';
    this.dispose();
    return { ok: false, reason };
  }
}
