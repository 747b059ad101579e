// A raw protocol client for tests: sends exactly the bytes a test asks for and hands back every backend
// message, so the same sequence can be replayed against PostgreSQL directly and through mamori.
// Authenticates with SCRAM-SHA-256 (its own small client, as libpq does).
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { Framer, type Frame } from '../../proxy/wire/framer.js';
import { encodeStartupMessage, encodeSSLRequest } from '../../proxy/wire/startup.js';
import { encodeSASLInitialResponse, encodeSASLResponse } from '../../proxy/wire/frontend.js';
import { decodeAuthentication, decodeNoticeFields } from '../../proxy/wire/backend.js';
import { BE } from '../../proxy/wire/types.js';

export interface RawConnectOptions {
  user: string;
  password: string;
  database?: string;
  tls?: { ca: Buffer; servername?: string };
  protocol?: number;
  params?: Array<[string, string]>;
}

export class RawClient {
  private frames: Frame[] = [];
  private waiters: Array<() => void> = [];
  closed = false;
  readonly framer: Framer;

  private constructor(readonly sock: Socket | TLSSocket) {
    this.framer = new Framer(
      { frame: (f) => this.frames.push({ type: f.type, body: Buffer.from(f.body), raw: Buffer.from(f.raw) }) },
      { maxBufferedBytes: 1 << 30, maxMessageBytes: 1 << 30 },
    );
    sock.on('data', (c: Buffer) => {
      this.framer.push(c);
      this.wake();
    });
    const end = (): void => {
      this.closed = true;
      this.wake();
    };
    sock.on('close', end);
    sock.on('error', end);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static async socket(host: string, port: number, tls?: RawConnectOptions['tls']): Promise<Socket | TLSSocket> {
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = netConnect({ host, port }, () => resolve(s));
      s.once('error', reject);
    });
    if (!tls) return sock;
    sock.write(encodeSSLRequest());
    const answer = await new Promise<Buffer>((resolve) => sock.once('data', resolve));
    if (answer.toString() !== 'S') throw new Error('server refused TLS');
    return new Promise((resolve, reject) => {
      const t = tlsConnect({ socket: sock, ca: tls.ca, servername: tls.servername ?? 'localhost' }, () => resolve(t));
      t.once('error', reject);
    });
  }

  static wrap(sock: Socket | TLSSocket): RawClient {
    return new RawClient(sock);
  }

  /** Connects, authenticates and waits for the first ReadyForQuery. Throws with the server's message on error. */
  static async connect(host: string, port: number, o: RawConnectOptions): Promise<RawClient> {
    const c = new RawClient(await RawClient.socket(host, port, o.tls));
    c.send(encodeStartupMessage({
      protocol: o.protocol ?? 196608,
      params: [['user', o.user], ['database', o.database ?? 'postgres'], ...(o.params ?? [])],
    }));
    await c.authenticate(o.password);
    await c.until(BE.ReadyForQuery);
    return c;
  }

  async authenticate(password: string): Promise<void> {
    let nonce = '';
    let clientFirstBare = '';
    let expectedServerSig = '';
    for (;;) {
      const m = await this.next();
      if (m.type === BE.ErrorResponse) throw new Error(decodeNoticeFields(m.body).M ?? 'error');
      if (m.type === BE.NegotiateProtocolVersion) continue;
      if (m.type !== BE.Authentication) throw new Error(`unexpected ${String.fromCharCode(m.type)} during auth`);
      const a = decodeAuthentication(m.body);
      if (a.kind === 'AuthenticationOk') return;
      if (a.kind === 'AuthenticationSASL') {
        nonce = randomBytes(18).toString('base64');
        clientFirstBare = `n=,r=${nonce}`;
        this.send(encodeSASLInitialResponse({ mechanism: 'SCRAM-SHA-256', data: Buffer.from(`n,,${clientFirstBare}`) }));
      } else if (a.kind === 'AuthenticationSASLContinue') {
        const serverFirst = a.data.toString();
        const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
        const salted = pbkdf2Sync(password, Buffer.from(attrs.s!, 'base64'), Number(attrs.i), 32, 'sha256');
        const clientKey = createHmac('sha256', salted).update('Client Key').digest();
        const storedKey = createHash('sha256').update(clientKey).digest();
        const withoutProof = `c=biws,r=${attrs.r}`;
        const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
        const sig = createHmac('sha256', storedKey).update(authMessage).digest();
        const proof = Buffer.from(clientKey.map((b, i) => b ^ sig[i]!));
        const serverKey = createHmac('sha256', salted).update('Server Key').digest();
        expectedServerSig = createHmac('sha256', serverKey).update(authMessage).digest('base64');
        this.send(encodeSASLResponse(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));
      } else if (a.kind === 'AuthenticationSASLFinal') {
        if (a.data.toString() !== `v=${expectedServerSig}`) throw new Error('bad server signature');
      } else {
        throw new Error(`unsupported auth ${a.kind}`);
      }
    }
  }

  send(...bufs: Buffer[]): void {
    this.sock.write(bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs));
  }

  async next(timeoutMs = 10_000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a backend message');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Messages up to and including the first of `type` (asynchronous ParameterStatus/Notice kept). */
  async until(type: number, timeoutMs = 10_000): Promise<Frame[]> {
    const out: Frame[] = [];
    for (;;) {
      const f = await this.next(timeoutMs);
      out.push(f);
      if (f.type === type) return out;
    }
  }

  /** True if the server closes the connection within the time (draining anything it sends). */
  async closedWithin(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.closed;
  }

  close(): void {
    this.sock.destroy();
  }
}
