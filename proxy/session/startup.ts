// The client's startup phase up to the StartupMessage: SSLRequest → 'S' + TLS (or 'N'), PostgreSQL 17
// direct TLS (first byte 0x16, ALPN "postgresql" required), GSSENCRequest → 'N', CancelRequest.
// Bytes sent after SSLRequest and before the handshake completes abort the connection
// (CVE-2021-23214 class): they would otherwise be read as if they had come over TLS.
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { Framer, FramingError, type Frame } from '../wire/framer.js';
import { decodeStartupPacket, MAX_STARTUP_PACKET_LENGTH } from '../wire/startup.js';
import type { CancelRequest, StartupMessage, UnsupportedProtocol } from '../wire/types.js';
import { ProtocolError } from '../wire/types.js';

export interface ClientTlsSettings {
  /** Current context (replaced on certificate reload); null when the client leg has no TLS. */
  context(): SecureContext | null;
  /** Ask for a client certificate (clientCa configured). */
  requestCert: boolean;
}

export type StartupOutcome =
  | { kind: 'startup'; socket: Socket | TLSSocket; message: StartupMessage; tls: boolean }
  | { kind: 'cancel'; request: CancelRequest; raw: Buffer }
  | { kind: 'unsupported'; socket: Socket | TLSSocket; packet: UnsupportedProtocol }
  | { kind: 'closed'; reason: string };

const ALPN = ['postgresql'];

/** Wraps an accepted socket in server-side TLS and waits for the handshake. */
function serverTls(sock: Socket, ctx: SecureContext, settings: ClientTlsSettings, alpn: boolean): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const tls = new TLSSocket(sock, {
      isServer: true,
      secureContext: ctx,
      requestCert: settings.requestCert,
      rejectUnauthorized: false, // checked after the handshake so the error can be clear (see session)
      ...(alpn ? { ALPNProtocols: ALPN } : {}),
    });
    const onError = (err: Error): void => {
      tls.destroy();
      reject(err);
    };
    tls.once('secure', () => {
      tls.off('error', onError);
      resolve(tls);
    });
    tls.once('error', onError);
  });
}

/**
 * Reads startup-phase packets until a StartupMessage or CancelRequest, negotiating TLS on the way.
 * The socket is paused and its data listeners removed before returning, so the caller owns it cleanly.
 */
export async function readStartup(raw: Socket, tls: ClientTlsSettings): Promise<StartupOutcome> {
  let sock: Socket | TLSSocket = raw;
  let secured = false;
  let gssAnswered = false;

  // Direct TLS: the first byte of a TLS ClientHello is 0x16, never the start of a startup packet length.
  const first = await nextChunk(raw);
  if (first === null) return { kind: 'closed', reason: 'client closed before startup' };
  let pendingChunk: Buffer | null = first;
  if (first[0] === 0x16) {
    const ctx = tls.context();
    if (!ctx) {
      raw.destroy();
      return { kind: 'closed', reason: 'direct TLS attempted but the client leg has no TLS configured' };
    }
    raw.unshift(first);
    pendingChunk = null;
    try {
      sock = await serverTls(raw, ctx, tls, true);
    } catch (err) {
      return { kind: 'closed', reason: `direct TLS handshake failed: ${(err as Error).message}` };
    }
    if ((sock as TLSSocket).alpnProtocol !== 'postgresql') {
      sock.destroy();
      return { kind: 'closed', reason: 'direct TLS connection without ALPN "postgresql"' };
    }
    secured = true;
  }

  for (;;) {
    const got = await readOnePacket(sock, pendingChunk);
    pendingChunk = null;
    if (got.kind === 'closed') return got;
    const { frame, rest } = got;
    let packet;
    try {
      packet = decodeStartupPacket(frame.body);
    } catch (err) {
      sock.destroy();
      return { kind: 'closed', reason: `invalid startup packet: ${(err as ProtocolError).message}` };
    }
    switch (packet.kind) {
      case 'SSLRequest': {
        if (rest) {
          sock.destroy();
          return { kind: 'closed', reason: 'data received after SSLRequest before the TLS handshake' };
        }
        const ctx = tls.context();
        if (secured || !ctx) {
          // Already on TLS (PostgreSQL answers 'N' then too) or no TLS configured.
          sock.write('N');
          continue;
        }
        sock.write('S');
        try {
          sock = await serverTls(sock as Socket, ctx, tls, false);
        } catch (err) {
          return { kind: 'closed', reason: `TLS handshake failed: ${(err as Error).message}` };
        }
        secured = true;
        continue;
      }
      case 'GSSENCRequest':
        if (rest || gssAnswered) {
          sock.destroy();
          return { kind: 'closed', reason: 'unexpected data after GSSENCRequest' };
        }
        gssAnswered = true;
        sock.write('N');
        continue;
      case 'CancelRequest':
        sock.destroy();
        return { kind: 'cancel', request: packet, raw: Buffer.from(frame.raw) };
      case 'UnsupportedProtocol':
        return { kind: 'unsupported', socket: sock, packet };
      case 'StartupMessage':
        if (rest) {
          // Clients wait for the authentication request before sending anything else.
          sock.destroy();
          return { kind: 'closed', reason: 'data received after the StartupMessage before authentication' };
        }
        return { kind: 'startup', socket: sock, message: packet, tls: secured };
    }
  }
}

function nextChunk(sock: Socket): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const onData = (c: Buffer): void => {
      done();
      sock.pause();
      resolve(c);
    };
    const onEnd = (): void => {
      done();
      resolve(null);
    };
    const done = (): void => {
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onEnd);
    };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.once('error', onEnd);
    sock.resume();
  });
}

type PacketResult = { kind: 'packet'; frame: Frame; rest: Buffer | null } | { kind: 'closed'; reason: string };

/** Reads exactly one untyped packet; anything after it in the same read is returned as `rest`. */
function readOnePacket(sock: Socket | TLSSocket, initial: Buffer | null): Promise<PacketResult> {
  return new Promise((resolve) => {
    let frame: Frame | null = null;
    let rest: Buffer | null = null;
    const framer = new Framer(
      {
        frame: (f) => {
          if (frame === null) frame = { type: f.type, body: Buffer.from(f.body), raw: Buffer.from(f.raw) };
          else rest = rest ? Buffer.concat([rest, f.raw]) : Buffer.from(f.raw);
        },
      },
      { startup: true, maxBufferedBytes: MAX_STARTUP_PACKET_LENGTH, maxMessageBytes: MAX_STARTUP_PACKET_LENGTH },
    );
    const feed = (c: Buffer): boolean => {
      try {
        framer.push(c);
      } catch (err) {
        finish({ kind: 'closed', reason: `invalid startup packet: ${(err as FramingError).message}` });
        sock.destroy();
        return true;
      }
      if (frame) {
        const leftover = framer.buffered > 0 ? Buffer.from('pending') : null;
        if (leftover && !rest) rest = leftover; // a partial second message also counts as "more data"
        finish({ kind: 'packet', frame, rest });
        return true;
      }
      return false;
    };
    const onData = (c: Buffer): void => {
      sock.pause();
      if (!feed(c)) sock.resume();
    };
    const onEnd = (): void => finish({ kind: 'closed', reason: 'client closed during startup' });
    let finished = false;
    const finish = (r: PacketResult): void => {
      if (finished) return;
      finished = true;
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onEnd);
      resolve(r);
    };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.once('error', onEnd);
    if (initial && feed(initial)) return;
    sock.resume();
  });
}
