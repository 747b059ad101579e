import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import {
  decodeStartupPacket,
  encodeCancelRequest,
  encodeGSSENCRequest,
  encodeSSLRequest,
  encodeStartupMessage,
  encodeStartupPacket,
  protocolMajor,
  protocolMinor,
} from '../../../proxy/wire/startup.js';
import { ProtocolError, STARTUP, type StartupPacket } from '../../../proxy/wire/types.js';

/** Untyped messages: the body is everything after the 4-byte length. */
function body(msg: Buffer): Buffer {
  assert.equal(msg.readInt32BE(0), msg.length, 'length field covers the whole message');
  return msg.subarray(4);
}

function roundTrip(p: StartupPacket): void {
  assert.deepEqual(decodeStartupPacket(body(encodeStartupPacket(p))), p);
}

describe('startup packets', () => {
  test('SSLRequest and GSSENCRequest have their fixed 8-byte forms', () => {
    assert.deepEqual(encodeSSLRequest(), Buffer.from('0000000804d2162f', 'hex'));
    assert.deepEqual(encodeGSSENCRequest(), Buffer.from('0000000804d21630', 'hex'));
    assert.deepEqual(encodeSSLRequest(), serialize.requestSsl());
    assert.deepEqual(decodeStartupPacket(Buffer.from('04d2162f', 'hex')), { kind: 'SSLRequest' });
    assert.deepEqual(decodeStartupPacket(Buffer.from('04d21630', 'hex')), { kind: 'GSSENCRequest' });
    assert.throws(() => decodeStartupPacket(Buffer.from('04d2162f00', 'hex')), ProtocolError);
  });

  test('StartupMessage 3.0 decodes exactly what node-postgres sends, params in order', () => {
    const wire = serialize.startup({ user: 'alice', database: 'app', options: '-c search_path=kojin -c role=clerk', application_name: 'ア' });
    const p = decodeStartupPacket(body(wire));
    assert.deepEqual(p, {
      kind: 'StartupMessage',
      protocol: STARTUP.Protocol30,
      params: [
        ['user', 'alice'],
        ['database', 'app'],
        ['options', '-c search_path=kojin -c role=clerk'],
        ['application_name', 'ア'],
        ['client_encoding', 'UTF8'],
      ],
    });
    assert.deepEqual(encodeStartupPacket(p), wire);
  });

  test('StartupMessage 3.2 with _pq_ options and replication round-trips', () => {
    const p: StartupPacket = {
      kind: 'StartupMessage',
      protocol: STARTUP.Protocol32,
      params: [
        ['user', 'u'],
        ['replication', 'database'],
        ['_pq_.test_option', 'on'],
        ['empty', ''],
      ],
    };
    roundTrip(p);
    assert.equal(protocolMajor(STARTUP.Protocol32), 3);
    assert.equal(protocolMinor(STARTUP.Protocol32), 2);
    roundTrip({ kind: 'StartupMessage', protocol: STARTUP.Protocol30, params: [] });
  });

  test('other majors and unknown 1234.x codes are reported, not parsed', () => {
    assert.deepEqual(decodeStartupPacket(Buffer.from('00020000', 'hex')), { kind: 'UnsupportedProtocol', protocol: 0x20000, major: 2, minor: 0 });
    assert.deepEqual(decodeStartupPacket(Buffer.from('04d21631', 'hex')), {
      kind: 'UnsupportedProtocol',
      protocol: 80877105,
      major: 1234,
      minor: 5681,
    });
    roundTrip({ kind: 'UnsupportedProtocol', protocol: 0x40001, major: 4, minor: 1 });
  });

  test('CancelRequest: 4-byte key (3.0), 32- and 256-byte keys (3.2); other lengths refused', () => {
    const legacy = encodeCancelRequest({ pid: 4242, secret: Buffer.from([1, 2, 3, 4]) });
    assert.deepEqual(legacy, Buffer.from('0000001004d2162e0000109201020304', 'hex'));
    assert.deepEqual(legacy, serialize.cancel(4242, 0x01020304));
    for (const n of [4, 32, 256]) roundTrip({ kind: 'CancelRequest', pid: 77, secret: Buffer.alloc(n, n) });
    assert.throws(() => encodeCancelRequest({ pid: 1, secret: Buffer.alloc(3) }), ProtocolError);
    assert.throws(() => encodeCancelRequest({ pid: 1, secret: Buffer.alloc(257) }), ProtocolError);
    const long = Buffer.concat([Buffer.from('04d2162e00000001', 'hex'), Buffer.alloc(257)]);
    assert.throws(() => decodeStartupPacket(long), ProtocolError);
    assert.throws(() => decodeStartupPacket(Buffer.from('04d2162e0000000101', 'hex')), ProtocolError);
  });

  test('malformed StartupMessages throw ProtocolError', () => {
    const ok = body(encodeStartupMessage({ protocol: STARTUP.Protocol30, params: [['user', 'u']] }));
    assert.throws(() => decodeStartupPacket(ok.subarray(0, ok.length - 1)), ProtocolError, 'no terminator');
    assert.throws(() => decodeStartupPacket(ok.subarray(0, ok.length - 2)), ProtocolError, 'value not terminated');
    assert.throws(() => decodeStartupPacket(Buffer.concat([ok, Buffer.from([0x41])])), ProtocolError, 'bytes after terminator');
    assert.throws(() => decodeStartupPacket(Buffer.from([0, 3, 0])), ProtocolError, 'short code');
    assert.throws(() => decodeStartupPacket(Buffer.alloc(0)), ProtocolError);
    assert.throws(() => encodeStartupMessage({ protocol: STARTUP.Protocol30, params: [['', 'x']] }), ProtocolError);
    assert.throws(() => encodeStartupMessage({ protocol: STARTUP.Protocol30, params: [['user', 'a\0b']] }), ProtocolError);
  });
});
