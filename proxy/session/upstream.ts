// The upstream leg: a TCP connection to PostgreSQL, upgraded to TLS per the configured mode.
// disable: plain; require: TLS, certificate not checked; verify-ca: chain checked; verify-full: chain and
// host name. Bytes the server sends after its 'S' and before the handshake are an injection attempt
// (CVE-2021-23222 class): the connection is aborted.
import { connect as netConnect, type Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, type TLSSocket, type ConnectionOptions } from 'node:tls';
import { encodeSSLRequest } from '../wire/startup.js';

export type UpstreamTlsMode = 'disable' | 'require' | 'verify-ca' | 'verify-full';

export interface UpstreamTarget {
  host: string;
  port: number;
  tls: { mode: UpstreamTlsMode; ca?: Buffer | undefined; servername?: string | undefined };
  connectTimeoutMs?: number;
}

export type UpstreamSocket = Socket | TLSSocket;

export class UpstreamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UpstreamError';
  }
}

function tcp(target: UpstreamTarget): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host: target.host, port: target.port, noDelay: true });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new UpstreamError(`connection to upstream ${target.host}:${target.port} timed out`));
    }, target.connectTimeoutMs ?? 10_000);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new UpstreamError(`cannot connect to upstream ${target.host}:${target.port}: ${err.code ?? err.message}`));
    });
  });
}

function readSslAnswer(sock: Socket): Promise<number> {
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      cleanup();
      if (chunk.length !== 1) {
        sock.destroy();
        reject(new UpstreamError('upstream sent unexpected data before the TLS handshake'));
        return;
      }
      resolve(chunk[0]!);
    };
    const onEnd = (): void => {
      cleanup();
      reject(new UpstreamError('upstream closed the connection during TLS negotiation'));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new UpstreamError(`upstream TLS negotiation failed: ${err.message}`));
    };
    const cleanup = (): void => {
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('error', onError);
    };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('error', onError);
  });
}

export function tlsOptionsFor(target: UpstreamTarget): ConnectionOptions {
  const mode = target.tls.mode;
  const opts: ConnectionOptions = {
    rejectUnauthorized: mode === 'verify-ca' || mode === 'verify-full',
    servername: target.tls.servername ?? (isIp(target.host) ? undefined : target.host),
  };
  if (target.tls.ca) opts.ca = target.tls.ca;
  if (mode === 'verify-ca') opts.checkServerIdentity = () => undefined;
  if (mode === 'verify-full') {
    const expected = target.tls.servername ?? target.host;
    opts.checkServerIdentity = (_host, cert) => checkServerIdentity(expected, cert);
  }
  return opts;
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

/** Opens the upstream connection and, unless disabled, negotiates TLS. */
export async function openUpstream(target: UpstreamTarget): Promise<UpstreamSocket> {
  const sock = await tcp(target);
  if (target.tls.mode === 'disable') return sock;
  try {
    sock.write(encodeSSLRequest());
    const answer = await readSslAnswer(sock);
    if (answer !== 0x53 /* S */) {
      throw new UpstreamError(`upstream does not support TLS but upstream.tls.mode is ${target.tls.mode}`);
    }
    const tls = tlsConnect({ ...tlsOptionsFor(target), socket: sock });
    await new Promise<void>((resolve, reject) => {
      tls.once('secureConnect', () => {
        tls.removeAllListeners('error');
        resolve();
      });
      tls.once('error', (err) => reject(new UpstreamError(`upstream TLS handshake failed: ${err.message}`)));
    });
    tls.setNoDelay(true);
    return tls;
  } catch (err) {
    sock.destroy();
    throw err;
  }
}
