// Small raw-socket helpers for startup-phase tests: a plain TCP probe that records every byte the server
// sends and whether it closed, and a full raw login that keeps the messages after AuthenticationOk
// (ParameterStatus, BackendKeyData) which RawClient.connect() discards.
import { connect as netConnect, type Socket } from 'node:net';
import { BE } from '../../proxy/wire/types.js';
import { decodeBackendKeyData, decodeDataRow, decodeNoticeFields } from '../../proxy/wire/backend.js';
import { encodeQuery } from '../../proxy/wire/frontend.js';
import { encodeStartupMessage } from '../../proxy/wire/startup.js';
import type { Frame } from '../../proxy/wire/framer.js';
import { RawClient, type RawConnectOptions } from './raw-client.js';

/** A plain socket that records what the server sends and when it closes. */
export class Probe {
  received: Buffer[] = [];
  closed = false;
  private waiters: Array<() => void> = [];

  private constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.received.push(d);
      this.wake();
    });
    const end = (): void => {
      this.closed = true;
      this.wake();
    };
    sock.on('close', end);
    sock.on('error', end);
  }

  static open(host: string, port: number): Promise<Probe> {
    return new Promise((resolve, reject) => {
      const s = netConnect({ host, port }, () => resolve(new Probe(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  get bytes(): Buffer {
    return Buffer.concat(this.received);
  }

  /** Waits until at least `n` bytes arrived, the socket closed, or the time ran out. */
  async waitBytes(n: number, ms: number): Promise<Buffer> {
    const deadline = Date.now() + ms;
    while (this.bytes.length < n && !this.closed && Date.now() < deadline) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.bytes;
  }

  async closedWithin(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.closed;
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface RawLogin {
  client: RawClient;
  /** Messages from AuthenticationOk's successor up to and including the first ReadyForQuery. */
  afterAuth: Frame[];
  /** NegotiateProtocolVersion, if the server sent one before authentication. */
  negotiate: Frame | null;
  pid: number;
  secret: Buffer;
}

/** Connects (optionally over an already negotiated socket), authenticates with SCRAM, and keeps the BackendKeyData. */
export async function rawLogin(host: string, port: number, o: RawConnectOptions): Promise<RawLogin> {
  const client = RawClient.wrap(await RawClient.socket(host, port, o.tls));
  client.send(encodeStartupMessage({
    protocol: o.protocol ?? 196608,
    params: [['user', o.user], ['database', o.database ?? 'postgres'], ...(o.params ?? [])],
  }));
  // Peek at the first message: a NegotiateProtocolVersion is kept for the caller.
  const first = await client.next();
  let negotiate: Frame | null = null;
  if (first.type === BE.NegotiateProtocolVersion) negotiate = first;
  else requeue(client, first);
  await client.authenticate(o.password);
  const afterAuth = await client.until(BE.ReadyForQuery);
  const k = afterAuth.find((f) => f.type === BE.BackendKeyData);
  if (!k) throw new Error('no BackendKeyData');
  const key = decodeBackendKeyData(k.body);
  return { client, afterAuth, negotiate, pid: key.pid, secret: Buffer.from(key.secret) };
}

function requeue(client: RawClient, f: Frame): void {
  // RawClient keeps its queue private; put the peeked message back at its head for authenticate().
  (client as unknown as { frames: Frame[] }).frames.unshift(f);
}

/** Runs one simple query and returns the first column of each row as text (throws on ErrorResponse). */
export async function simpleQuery(client: RawClient, sql: string): Promise<Array<string | null>> {
  client.send(encodeQuery(sql));
  const frames = await client.until(BE.ReadyForQuery);
  const err = frames.find((f) => f.type === BE.ErrorResponse);
  if (err) {
    const e = decodeNoticeFields(err.body);
    throw Object.assign(new Error(e.M ?? 'error'), { code: e.C });
  }
  return frames.filter((f) => f.type === BE.DataRow).map((f) => {
    const v = decodeDataRow(f.body).fields[0];
    return v == null ? null : Buffer.from(v).toString('utf8');
  });
}

/** The SQLSTATE and message of an ErrorResponse frame. */
export function errorOf(f: Pick<Frame, 'body'>): { code: string; message: string; severity: string } {
  const e = decodeNoticeFields(f.body);
  return { code: e.C ?? '', message: e.M ?? '', severity: e.V ?? e.S ?? '' };
}
