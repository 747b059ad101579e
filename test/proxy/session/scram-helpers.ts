// Shared by the scram*.test.ts files: throwaway certificates (openssl), node-postgres's own SASL client
// (an independent SCRAM implementation to drive mamori's server half), and a minimal PostgreSQL
// startup/SASL framing to drive the client half against a real server.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { ScramClientWithKey, tlsServerEndPointHash, type ScramVerifier } from '../../../proxy/session/scram.js';

// ---- certificates -------------------------------------------------------------------------------

export interface TestCert {
  der: Buffer;
  pem: string;
  keyPem: string;
}

/** A self-signed certificate made by openssl; `keyArgs` pick the key type, `digest` the signature hash. */
export function makeCert(keyArgs: string[], digest: string | null, extra: string[] = []): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-scram-cert-'));
  try {
    const key = join(dir, 'k.pem');
    const crt = join(dir, 'c.pem');
    execFileSync('openssl', ['genpkey', ...keyArgs, '-out', key], { stdio: 'pipe' });
    const args = ['req', '-x509', '-new', '-key', key, '-out', crt, '-days', '1', '-subj', '/CN=localhost', ...extra];
    if (digest) args.push(`-${digest}`);
    execFileSync('openssl', args, { stdio: 'pipe' });
    const pem = readFileSync(crt, 'utf8');
    return { der: new X509Certificate(pem).raw, pem, keyPem: readFileSync(key, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- node-postgres's SASL client ----------------------------------------------------------------

export interface PgSaslSession {
  mechanism: string;
  response: string;
}
interface PgSasl {
  startSession(mechanisms: string[], stream?: unknown): PgSaslSession;
  continueSession(session: PgSaslSession, password: string, serverData: string, stream?: unknown): Promise<void>;
  finalizeSession(session: PgSaslSession, serverData: string): void;
}
interface PgCertSignatures {
  signatureAlgorithmHashFromCertificate(der: Buffer): string;
}
const require = createRequire(import.meta.url);
export const pgSasl = require('pg/lib/crypto/sasl.js') as PgSasl;
export const pgCertSignatures = require('pg/lib/crypto/cert-signatures.js') as PgCertSignatures;

/** What pg's SASL code reads from a TLS socket: only the peer certificate. */
export function peerCertStream(der: Buffer): { getPeerCertificate(): { raw: Buffer } } {
  return { getPeerCertificate: () => ({ raw: der }) };
}

// ---- minimal PostgreSQL framing for the upstream login --------------------------------------------

export class MessageReader {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private ended = false;
  private readonly onData = (d: Buffer): void => {
    this.buf = Buffer.concat([this.buf, d]);
    this.wake();
  };
  constructor(private readonly sock: Socket | TLSSocket) {
    sock.on('data', this.onData);
    sock.on('close', () => {
      this.ended = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error('connection closed');
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Stops reading; returns what was buffered but not consumed. */
  detach(): Buffer {
    this.sock.off('data', this.onData);
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }
  /** An untyped (startup-phase) message: int32 length including itself, then the body. */
  async untyped(): Promise<Buffer> {
    const len = (await this.read(4)).readInt32BE(0);
    return Buffer.from(await this.read(len - 4));
  }
  async message(): Promise<{ type: string; body: Buffer }> {
    const head = await this.read(5);
    const body = await this.read(head.readInt32BE(1) - 4);
    return { type: String.fromCharCode(head[0]!), body: Buffer.from(body) };
  }
}

function startupMessage(params: Record<string, string>): Buffer {
  const parts = [Buffer.alloc(8)];
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`));
  parts.push(Buffer.from([0]));
  const msg = Buffer.concat(parts);
  msg.writeInt32BE(msg.length, 0);
  msg.writeInt32BE(196608, 4);
  return msg;
}

export function typed(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function errorText(body: Buffer): string {
  const fields: string[] = [];
  let p = 0;
  while (p < body.length && body[p] !== 0) {
    const end = body.indexOf(0, p + 1);
    fields.push(`${String.fromCharCode(body[p]!)}:${body.toString('utf8', p + 1, end)}`);
    p = end + 1;
  }
  return fields.filter((f) => /^[CM]:/.test(f)).join(' ');
}

export interface UpstreamLoginResult {
  ok: boolean;
  mechanism: string | null;
  /** Why it failed (an ErrorResponse's SQLSTATE and message, or the SCRAM client's reason). */
  error?: string;
}

/** A logged-in upstream connection kept open (keepOpen), with bytes already received after AuthenticationOk. */
export interface OpenUpstream {
  socket: Socket | TLSSocket;
  pending: Buffer;
}

export interface UpstreamLoginOptions {
  host: string;
  port: number;
  user: string;
  database: string;
  clientKey: Buffer;
  verifier: ScramVerifier;
  tls: boolean;
  /** Offer channel binding over TLS (default true); false sends 'n' like a client without binding support. */
  bind?: boolean;
  /** Tamper with the binding data (to see the real server refuse it). */
  corruptBinding?: boolean;
  /** Verify the server certificate against this CA (name: localhost); unverified when absent. */
  ca?: Buffer;
  /** Hand the logged-in connection to this callback instead of closing it. */
  keepOpen?: (up: OpenUpstream) => void;
}

/**
 * Logs in to a real PostgreSQL with ScramClientWithKey over a raw socket (optionally after SSLRequest),
 * stopping at AuthenticationOk or the first ErrorResponse. Returns which mechanism was used.
 */
export async function upstreamLogin(o: UpstreamLoginOptions): Promise<UpstreamLoginResult> {
  const raw = netConnect({ host: o.host, port: o.port });
  await new Promise<void>((resolve, reject) => raw.once('connect', resolve).once('error', reject));
  let sock: Socket | TLSSocket = raw;
  let binding: Buffer | null = null;
  let kept = false;
  try {
    if (o.tls) {
      const req = Buffer.alloc(8);
      req.writeInt32BE(8, 0);
      req.writeInt32BE(80877103, 4);
      raw.write(req);
      const answer = await new Promise<Buffer>((r) => raw.once('data', r));
      if (answer.toString('latin1') !== 'S') throw new Error('server refused SSL');
      const t = tlsConnect(o.ca ? { socket: raw, ca: o.ca, servername: 'localhost' } : { socket: raw, rejectUnauthorized: false });
      await new Promise<void>((resolve, reject) => t.once('secureConnect', resolve).once('error', reject));
      sock = t;
      if (o.bind !== false) {
        binding = tlsServerEndPointHash(t.getPeerCertificate().raw);
        if (o.corruptBinding) binding[0] = binding[0]! ^ 1;
      }
    }
    const reader = new MessageReader(sock);
    sock.write(startupMessage({ user: o.user, database: o.database }));
    const client = new ScramClientWithKey({ clientKey: o.clientKey, verifier: o.verifier, channelBinding: binding });
    let mechanism: string | null = null;
    for (;;) {
      const m = await reader.message();
      if (m.type === 'E') return { ok: false, mechanism, error: errorText(m.body) };
      if (m.type !== 'R') return { ok: false, mechanism, error: `unexpected message ${m.type}` };
      const code = m.body.readInt32BE(0);
      if (code === 0) {
        if (o.keepOpen) {
          o.keepOpen({ socket: sock, pending: reader.detach() });
          kept = true;
        }
        return { ok: true, mechanism };
      }
      if (code === 10) {
        const offered = m.body.subarray(4).toString('utf8').split('\0').filter((s) => s.length > 0);
        mechanism = client.chooseMechanism(offered);
        const data = client.clientFirst();
        const len = Buffer.alloc(4);
        len.writeInt32BE(data.length, 0);
        sock.write(typed('p', Buffer.concat([Buffer.from(`${mechanism}\0`), len, data])));
      } else if (code === 11) {
        const r = client.serverFirst(m.body.subarray(4));
        if (!r.ok) return { ok: false, mechanism, error: r.reason };
        sock.write(typed('p', r.clientFinal));
      } else if (code === 12) {
        const r = client.serverFinal(m.body.subarray(4));
        if (!r.ok) return { ok: false, mechanism, error: r.reason };
      } else {
        return { ok: false, mechanism, error: `unexpected authentication request ${code}` };
      }
    }
  } finally {
    if (!kept) {
      sock.destroy();
      raw.destroy();
    }
  }
}
