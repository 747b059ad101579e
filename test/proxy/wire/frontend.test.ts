import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import {
  decodeBind,
  decodeFrontend,
  decodePassword,
  decodeSASLInitialResponse,
  decodeSASLResponse,
  encodeBind,
  encodeClose,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeDescribe,
  encodeExecute,
  encodeFlush,
  encodeFrontend,
  encodeParse,
  encodePassword,
  encodeQuery,
  encodeSASLInitialResponse,
  encodeSASLResponse,
  encodeSync,
  encodeTerminate,
  expandFormats,
} from '../../../proxy/wire/frontend.js';
import { FE, ProtocolError, type FrontendMessage } from '../../../proxy/wire/types.js';

/** Splits a typed message into type and body, checking the length field. */
function split(msg: Buffer): { type: number; body: Buffer } {
  assert.equal(msg.readInt32BE(1), msg.length - 1, 'length field excludes only the type byte');
  return { type: msg[0]!, body: msg.subarray(5) };
}

function roundTrip(m: FrontendMessage): Buffer {
  const wire = encodeFrontend(m);
  const { type, body } = split(wire);
  assert.deepEqual(decodeFrontend(type, body), m);
  return wire;
}

describe('frontend messages', () => {
  test('every message kind round-trips', () => {
    const msgs: FrontendMessage[] = [
      { kind: 'Query', sql: "select 'マイナンバー'" },
      { kind: 'Query', sql: '' },
      { kind: 'Parse', name: 's1', sql: 'select $1::int8, $2', paramTypes: [20, 0, 0xffffffff] },
      {
        kind: 'Bind',
        portal: 'p1',
        statement: 's1',
        paramFormats: [0, 1],
        params: [Buffer.from('42'), null],
        resultFormats: [1],
      },
      { kind: 'Bind', portal: '', statement: '', paramFormats: [], params: [Buffer.alloc(0)], resultFormats: [] },
      { kind: 'Describe', target: 'S', name: 's1' },
      { kind: 'Describe', target: 'P', name: '' },
      { kind: 'Execute', portal: 'p1', maxRows: 10 },
      { kind: 'Execute', portal: '', maxRows: 0 },
      { kind: 'Close', target: 'S', name: 'mamori_1' },
      { kind: 'Close', target: 'P', name: 'p1' },
      { kind: 'Sync' },
      { kind: 'Flush' },
      { kind: 'Terminate' },
      { kind: 'CopyData', data: Buffer.from('1\t123456789018\n') },
      { kind: 'CopyDone' },
      { kind: 'CopyFail', message: 'aborted by user' },
      { kind: 'FunctionCall', functionOid: 2147483648 + 5, argFormats: [1], args: [Buffer.from([0, 0, 0, 1]), null], resultFormat: 1 },
      { kind: 'AuthResponse', data: Buffer.from('c=biws,r=abc,p=xyz') },
    ];
    for (const m of msgs) roundTrip(m);
  });

  test('byte-identical to node-postgres (pg-protocol) for the messages it sends', () => {
    assert.deepEqual(encodeQuery('select 1'), serialize.query('select 1'));
    assert.deepEqual(encodeParse({ name: 'n', sql: 'select $1', paramTypes: [23] }), serialize.parse({ name: 'n', text: 'select $1', types: [23] }));
    assert.deepEqual(
      encodeBind({ portal: 'p', statement: 's', paramFormats: [0, 0], params: [Buffer.from('a'), null], resultFormats: [0] }),
      serialize.bind({ portal: 'p', statement: 's', values: ['a', null] }),
    );
    // node-postgres writes one format code per value; decoding keeps the codes as sent, so re-encoding is exact
    const pgBinaryWire = serialize.bind({ values: [Buffer.from([1, 2]), 'x'], binary: true });
    const decoded = decodeBind(split(pgBinaryWire).body);
    assert.deepEqual(decoded.paramFormats, [1, 0]);
    assert.deepEqual(expandFormats(decoded.paramFormats, decoded.params.length), [1, 0]);
    assert.deepEqual(decoded.resultFormats, [1]);
    assert.deepEqual(encodeBind(decoded), pgBinaryWire);
    assert.deepEqual(encodeExecute({ portal: '', maxRows: 0 }), serialize.execute());
    assert.deepEqual(encodeExecute({ portal: 'c', maxRows: 100 }), serialize.execute({ portal: 'c', rows: 100 }));
    assert.deepEqual(encodeDescribe({ target: 'P', name: '' }), serialize.describe({ type: 'P' }));
    assert.deepEqual(encodeDescribe({ target: 'S', name: 'st' }), serialize.describe({ type: 'S', name: 'st' }));
    assert.deepEqual(encodeClose({ target: 'P', name: 'x' }), serialize.close({ type: 'P', name: 'x' }));
    assert.deepEqual(encodeSync(), serialize.sync());
    assert.deepEqual(encodeFlush(), serialize.flush());
    assert.deepEqual(encodeTerminate(), serialize.end());
    assert.deepEqual(encodeCopyData(Buffer.from('abc')), serialize.copyData(Buffer.from('abc')));
    assert.deepEqual(encodeCopyDone(), serialize.copyDone());
    assert.deepEqual(encodeCopyFail('nope'), serialize.copyFail('nope'));
    assert.deepEqual(encodePassword('md5abc'), serialize.password('md5abc'));
    assert.deepEqual(
      encodeSASLInitialResponse({ mechanism: 'SCRAM-SHA-256', data: Buffer.from('n,,n=,r=nonce') }),
      serialize.sendSASLInitialResponseMessage('SCRAM-SHA-256', 'n,,n=,r=nonce'),
    );
    assert.deepEqual(encodeSASLResponse(Buffer.from('c=biws,r=x,p=y')), serialize.sendSCRAMClientFinalMessage('c=biws,r=x,p=y'));
  });

  test("the three readings of 'p'", () => {
    const pw = split(encodePassword('secret'));
    assert.equal(pw.type, FE.AuthResponse);
    assert.deepEqual(decodePassword(pw.body), { kind: 'PasswordMessage', password: 'secret' });
    const init = split(encodeSASLInitialResponse({ mechanism: 'SCRAM-SHA-256-PLUS', data: Buffer.from('p=tls-server-end-point,,n=,r=abc') }));
    assert.deepEqual(decodeSASLInitialResponse(init.body), {
      kind: 'SASLInitialResponse',
      mechanism: 'SCRAM-SHA-256-PLUS',
      data: Buffer.from('p=tls-server-end-point,,n=,r=abc'),
    });
    const none = split(encodeSASLInitialResponse({ mechanism: 'SCRAM-SHA-256', data: null }));
    assert.deepEqual(decodeSASLInitialResponse(none.body), { kind: 'SASLInitialResponse', mechanism: 'SCRAM-SHA-256', data: null });
    const resp = split(encodeSASLResponse(Buffer.from('c=biws')));
    assert.deepEqual(decodeSASLResponse(resp.body), { kind: 'SASLResponse', data: Buffer.from('c=biws') });
    assert.throws(() => decodePassword(Buffer.from('no-nul')), ProtocolError);
    assert.throws(() => decodeSASLInitialResponse(Buffer.from('SCRAM-SHA-256\0\0\0\0\x09short', 'latin1')), ProtocolError);
    assert.throws(() => decodeSASLInitialResponse(Buffer.from('SCRAM-SHA-256\0\xff\xff\xff\xfe', 'latin1')), ProtocolError);
  });

  test('Bind parameters are zero-copy subarrays of the body', () => {
    const { body } = split(encodeBind({ portal: '', statement: 's', paramFormats: [], params: [Buffer.from('123456789018')], resultFormats: [] }));
    const b = decodeBind(body);
    const p = b.params[0]!;
    assert.equal(p.buffer, body.buffer);
    assert.equal(p.byteOffset, body.byteOffset + body.indexOf('123456789018'));
  });

  test('expandFormats: none, one for all, one per value, mismatch', () => {
    assert.deepEqual(expandFormats([], 3), [0, 0, 0]);
    assert.deepEqual(expandFormats([1], 3), [1, 1, 1]);
    assert.deepEqual(expandFormats([0, 1, 0], 3), [0, 1, 0]);
    assert.deepEqual(expandFormats([1], 1), [1]);
    assert.deepEqual(expandFormats([], 0), []);
    assert.deepEqual(expandFormats([1], 0), []);
    assert.throws(() => expandFormats([0, 1], 3), ProtocolError);
    assert.throws(() => expandFormats([0, 1], 0), ProtocolError);
  });

  test('malformed bodies throw ProtocolError', () => {
    const bad: Array<[number, Buffer]> = [
      [FE.Query, Buffer.from('select 1')], // no NUL
      [FE.Query, Buffer.from('select 1\0\0')], // trailing
      [FE.Parse, Buffer.from('s\0select 1\0\x00\x02\0\0\0\x17', 'latin1')], // count 2, one OID
      [FE.Bind, Buffer.from('\0\0\0\0\0\x01\xff\xff\xff\xfd\0\0', 'latin1')], // length -3
      [FE.Bind, Buffer.from('\0\0\0\0\0\x01\x00\x00\x00\x09ab\0\0', 'latin1')], // length overruns
      [FE.Describe, Buffer.from('X\0')], // bad target
      [FE.Describe, Buffer.alloc(0)],
      [FE.Close, Buffer.from('S')],
      [FE.Execute, Buffer.from('\0\0\0')],
      [FE.Sync, Buffer.from([0])],
      [FE.Flush, Buffer.from([0])],
      [FE.Terminate, Buffer.from([0])],
      [FE.CopyDone, Buffer.from([0])],
      [FE.CopyFail, Buffer.from('x')],
      [FE.FunctionCall, Buffer.from([0, 0, 0, 1, 0, 0, 0, 0])], // missing result format
      [0x7a, Buffer.alloc(0)], // unknown type
    ];
    for (const [type, body] of bad) {
      assert.throws(() => decodeFrontend(type, body), ProtocolError, `type ${String.fromCharCode(type)}`);
    }
  });

  test('encoders refuse values that cannot go on the wire', () => {
    assert.throws(() => encodeQuery('a\0b'), ProtocolError);
    assert.throws(() => encodeParse({ name: '', sql: 'x', paramTypes: new Array<number>(65536).fill(0) }), ProtocolError);
    assert.throws(() => encodeParse({ name: '', sql: 'x', paramTypes: [-1] }), ProtocolError);
    assert.throws(() => encodeExecute({ portal: '', maxRows: 2 ** 31 }), ProtocolError);
  });

  test('65535 parameters (PostgreSQL reads counts unsigned)', () => {
    const params = new Array<Buffer | null>(65535).fill(null);
    const m = roundTrip({ kind: 'Bind', portal: '', statement: '', paramFormats: [], params, resultFormats: [] });
    assert.equal(m.length, 5 + 2 + 2 + 2 + 65535 * 4 + 2);
  });
});
