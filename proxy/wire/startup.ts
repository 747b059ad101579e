// Untyped startup-phase messages: StartupMessage (3.0 / 3.2), SSLRequest, GSSENCRequest, CancelRequest.
// Decoders take the body after the 4-byte length; encoders return the whole message.
import { Reader, Writer, cstringSize } from './bytes.js';
import {
  CANCEL_KEY_MAX,
  CANCEL_KEY_MIN,
  ProtocolError,
  STARTUP,
  type CancelRequest,
  type StartupMessage,
  type StartupPacket,
} from './types.js';

/** PostgreSQL refuses startup packets larger than this (MAX_STARTUP_PACKET_LENGTH); the framer enforces it. */
export const MAX_STARTUP_PACKET_LENGTH = 10000;

export function protocolMajor(code: number): number {
  return code >>> 16;
}
export function protocolMinor(code: number): number {
  return code & 0xffff;
}

export function decodeStartupPacket(body: Buffer): StartupPacket {
  const r = new Reader(body, 'startup packet');
  const code = r.uint32();
  switch (code) {
    case STARTUP.SSLRequest:
      r.end();
      return { kind: 'SSLRequest' };
    case STARTUP.GSSENCRequest:
      r.end();
      return { kind: 'GSSENCRequest' };
    case STARTUP.CancelRequest:
      return decodeCancelBody(r);
  }
  const major = protocolMajor(code);
  const minor = protocolMinor(code);
  // Any 3.x is parsed (the server negotiates the minor down); other majors get a FATAL from the session.
  if (major !== 3) return { kind: 'UnsupportedProtocol', protocol: code, major, minor };
  const params: Array<[string, string]> = [];
  for (;;) {
    if (r.remaining() === 0) throw new ProtocolError('startup packet: missing terminator');
    const name = r.cstring();
    if (name === '') break;
    params.push([name, r.cstring()]);
  }
  r.end();
  return { kind: 'StartupMessage', protocol: code, params };
}

function decodeCancelBody(r: Reader): CancelRequest {
  const pid = r.int32();
  const secret = r.rest();
  if (secret.length < CANCEL_KEY_MIN || secret.length > CANCEL_KEY_MAX) {
    throw new ProtocolError('CancelRequest: invalid cancel key length');
  }
  return { kind: 'CancelRequest', pid, secret };
}

export function encodeStartupMessage(msg: Omit<StartupMessage, 'kind'>): Buffer {
  let size = 4 + 1;
  for (const [k, v] of msg.params) size += cstringSize(k) + cstringSize(v);
  const w = new Writer(null, size).uint32(msg.protocol);
  for (const [k, v] of msg.params) {
    if (k === '') throw new ProtocolError('StartupMessage: empty parameter name');
    w.cstring(k).cstring(v);
  }
  return w.uint8(0).finish();
}

function requestOnly(code: number): Buffer {
  return new Writer(null, 4).uint32(code).finish();
}

export function encodeSSLRequest(): Buffer {
  return requestOnly(STARTUP.SSLRequest);
}
export function encodeGSSENCRequest(): Buffer {
  return requestOnly(STARTUP.GSSENCRequest);
}

export function encodeCancelRequest(msg: { pid: number; secret: Buffer }): Buffer {
  if (msg.secret.length < CANCEL_KEY_MIN || msg.secret.length > CANCEL_KEY_MAX) {
    throw new ProtocolError('CancelRequest: invalid cancel key length');
  }
  return new Writer(null, 8 + msg.secret.length).uint32(STARTUP.CancelRequest).int32(msg.pid).bytes(msg.secret).finish();
}

export function encodeStartupPacket(p: StartupPacket): Buffer {
  switch (p.kind) {
    case 'StartupMessage':
      return encodeStartupMessage(p);
    case 'SSLRequest':
      return encodeSSLRequest();
    case 'GSSENCRequest':
      return encodeGSSENCRequest();
    case 'CancelRequest':
      return encodeCancelRequest(p);
    case 'UnsupportedProtocol':
      return requestOnly(p.protocol);
  }
}
