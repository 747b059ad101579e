import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeBackend,
  dataRowField,
  decodeDataRow,
  scanDataRow,
  decodeNoticeFields,
  encodeBackend,
  encodeDataRow,
  encodeErrorResponse,
  encodeCommandComplete,
  commandRows,
  errorSqlstate,
  encodeReadyForQuery,
  encodeRowDescription,
} from '../../../proxy/wire/backend.js';
import { BE, ProtocolError, type BackendMessage } from '../../../proxy/wire/types.js';

function split(msg: Buffer): { type: number; body: Buffer } {
  assert.equal(msg.readInt32BE(1), msg.length - 1, 'length field excludes only the type byte');
  return { type: msg[0]!, body: msg.subarray(5) };
}

function roundTrip(m: BackendMessage): Buffer {
  const wire = encodeBackend(m);
  const { type, body } = split(wire);
  assert.deepEqual(decodeBackend(type, body), m, m.kind);
  return wire;
}

describe('backend messages', () => {
  test('every message kind round-trips', () => {
    const msgs: BackendMessage[] = [
      { kind: 'AuthenticationOk' },
      { kind: 'AuthenticationCleartextPassword' },
      { kind: 'AuthenticationMD5Password', salt: Buffer.from([1, 2, 3, 4]) },
      { kind: 'AuthenticationSASL', mechanisms: ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'] },
      { kind: 'AuthenticationSASLContinue', data: Buffer.from('r=abc,s=c2FsdA==,i=4096') },
      { kind: 'AuthenticationSASLFinal', data: Buffer.from('v=c2ln') },
      { kind: 'AuthenticationOther', code: 7, data: Buffer.alloc(0) },
      { kind: 'AuthenticationOther', code: 8, data: Buffer.from([9, 9]) },
      { kind: 'BackendKeyData', pid: 12345, secret: Buffer.from([0xde, 0xad, 0xbe, 0xef]) },
      { kind: 'BackendKeyData', pid: 1, secret: Buffer.alloc(32, 0xab) },
      { kind: 'ParameterStatus', name: 'client_encoding', value: 'UTF8' },
      { kind: 'ReadyForQuery', status: 'I' },
      { kind: 'ReadyForQuery', status: 'T' },
      { kind: 'ReadyForQuery', status: 'E' },
      {
        kind: 'RowDescription',
        fields: [
          { name: 'my_number', tableOid: 16384, attnum: 2, typeOid: 25, typlen: -1, typmod: -1, format: 0 },
          { name: '名前', tableOid: 0xfffffff0, attnum: 0, typeOid: 1043, typlen: -1, typmod: 68, format: 1 },
        ],
      },
      { kind: 'RowDescription', fields: [] },
      { kind: 'DataRow', fields: [Buffer.from('123456789018'), null, Buffer.alloc(0)] },
      { kind: 'DataRow', fields: [] },
      { kind: 'CommandComplete', tag: 'SELECT 3' },
      { kind: 'EmptyQueryResponse' },
      { kind: 'ErrorResponse', fields: { S: 'ERROR', V: 'ERROR', C: '23505', M: 'duplicate key', D: 'Key (a)=(1) already exists.', s: 'public', t: 'people', n: 'people_pkey', F: 'nbtinsert.c', L: '666', R: '_bt_check_unique' } },
      { kind: 'NoticeResponse', fields: { S: 'WARNING', V: 'WARNING', C: '01000', M: 'careful', Z: 'unknown code kept' } },
      { kind: 'ParseComplete' },
      { kind: 'BindComplete' },
      { kind: 'CloseComplete' },
      { kind: 'NoData' },
      { kind: 'PortalSuspended' },
      { kind: 'ParameterDescription', typeOids: [23, 25, 4294967295] },
      { kind: 'NotificationResponse', pid: 99, channel: 'ch', payload: '{"x":1}' },
      { kind: 'CopyInResponse', format: 0, columnFormats: [0, 0] },
      { kind: 'CopyOutResponse', format: 1, columnFormats: [1] },
      { kind: 'CopyBothResponse', format: 0, columnFormats: [] },
      { kind: 'CopyData', data: Buffer.from('row\n') },
      { kind: 'CopyDone' },
      { kind: 'NegotiateProtocolVersion', version: 196608, unrecognized: ['_pq_.compression'] },
      { kind: 'NegotiateProtocolVersion', version: 196610, unrecognized: [] },
      { kind: 'FunctionCallResponse', result: Buffer.from([0, 0, 0, 7]) },
      { kind: 'FunctionCallResponse', result: null },
    ];
    for (const m of msgs) roundTrip(m);
  });

  test('known wire bytes', () => {
    assert.deepEqual(encodeReadyForQuery('I'), Buffer.from('5a0000000549', 'hex'));
    assert.deepEqual(encodeBackend({ kind: 'AuthenticationOk' }), Buffer.from('520000000800000000', 'hex'));
    assert.deepEqual(encodeBackend({ kind: 'ParseComplete' }), Buffer.from('3100000004', 'hex'));
    assert.deepEqual(encodeDataRow([Buffer.from('1'), null]), Buffer.from('440000000f00020000000131ffffffff', 'hex'));
    assert.deepEqual(
      encodeBackend({ kind: 'AuthenticationSASL', mechanisms: ['SCRAM-SHA-256'] }),
      Buffer.concat([Buffer.from('52000000170000000a', 'hex'), Buffer.from('SCRAM-SHA-256\0\0')]),
    );
    assert.deepEqual(encodeErrorResponse({ S: 'ERROR', C: 'XX000', M: 'x' }), Buffer.from('4500000016534552524f5200435858303030004d780000', 'hex'));
  });

  test('DataRow fields are subarrays of the body (zero-copy)', () => {
    const wire = encodeDataRow([Buffer.from('abc'), null, Buffer.from('123456789018')]);
    const body = wire.subarray(5);
    const row = decodeDataRow(body);
    assert.equal(row.fields[0]!.buffer, body.buffer);
    assert.equal(row.fields[2]!.byteOffset, body.byteOffset + 2 + 4 + 3 + 4 + 4);
    assert.equal(row.fields[1], null);
  });

  test('scanDataRow gives field offsets without subarrays; dataRowField reads one', () => {
    const wire = encodeDataRow([Buffer.from('abc'), null, Buffer.alloc(0), Buffer.from('123456789018')]);
    const body = wire.subarray(5);
    const off = scanDataRow(body);
    assert.deepEqual([...off], [6, 3, 13, -1, 17, 0, 21, 12]);
    assert.deepEqual(dataRowField(body, off, 0), Buffer.from('abc'));
    assert.equal(dataRowField(body, off, 1), null);
    assert.deepEqual(dataRowField(body, off, 2), Buffer.alloc(0));
    assert.deepEqual(dataRowField(body, off, 3), Buffer.from('123456789018'));
    assert.throws(() => dataRowField(body, off, 4), ProtocolError);
    assert.throws(() => scanDataRow(body.subarray(0, body.length - 1)), ProtocolError);
    assert.throws(() => scanDataRow(Buffer.from([0, 1, 0xff, 0xff, 0xff, 0xfe])), ProtocolError);
  });

  test('RowDescription keeps unsigned OIDs and signed typlen/typmod', () => {
    const wire = encodeRowDescription([{ name: 'c', tableOid: 4294967295, attnum: -1, typeOid: 4000000000, typlen: -2, typmod: -1, format: 1 }]);
    const m = decodeBackend(wire[0]!, wire.subarray(5));
    assert.deepEqual(m, { kind: 'RowDescription', fields: [{ name: 'c', tableOid: 4294967295, attnum: -1, typeOid: 4000000000, typlen: -2, typmod: -1, format: 1 }] });
  });

  test('notice fields keep wire order and unknown codes', () => {
    const body = Buffer.from('SERROR\0VERROR\0C42501\0Mpermission denied\0Xfuture\0\0');
    const f = decodeNoticeFields(body);
    assert.deepEqual(Object.keys(f), ['S', 'V', 'C', 'M', 'X']);
    assert.equal(f.X, 'future');
    assert.deepEqual(encodeErrorResponse(f).subarray(5), body);
  });

  test('malformed bodies throw ProtocolError', () => {
    const bad: Array<[number, Buffer]> = [
      [BE.Authentication, Buffer.from([0, 0, 0])],
      [BE.Authentication, Buffer.from([0, 0, 0, 0, 1])], // Ok with trailing byte
      [BE.Authentication, Buffer.from([0, 0, 0, 5, 1, 2, 3])], // short salt
      [BE.Authentication, Buffer.from('\0\0\0\x0aSCRAM-SHA-256\0', 'latin1')], // list not terminated
      [BE.BackendKeyData, Buffer.from([0, 0, 0, 1, 1, 2, 3])], // 3-byte key
      [BE.BackendKeyData, Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.alloc(257)])],
      [BE.ParameterStatus, Buffer.from('a\0b')],
      [BE.ReadyForQuery, Buffer.from('X')],
      [BE.ReadyForQuery, Buffer.from('II')],
      [BE.ReadyForQuery, Buffer.alloc(0)],
      [BE.RowDescription, Buffer.from([0, 1, 0x61, 0, 0, 0])],
      [BE.RowDescription, Buffer.from([0xff, 0xff])], // 65535 fields in 0 bytes: refused before allocating
      [BE.DataRow, Buffer.from([0])],
      [BE.DataRow, Buffer.from([0, 1, 0, 0, 0, 5, 1, 2])],
      [BE.DataRow, Buffer.from([0, 1, 0xff, 0xff, 0xff, 0xfe])], // length -2
      [BE.DataRow, Buffer.from([0, 1, 0x80, 0, 0, 0])], // length -2^31
      [BE.DataRow, Buffer.from([0, 1, 0x7f, 0xff, 0xff, 0xff])], // length 2^31-1
      [BE.DataRow, Buffer.from([0, 0, 9])], // trailing
      [BE.CommandComplete, Buffer.from('SELECT 1')],
      [BE.EmptyQueryResponse, Buffer.from([0])],
      [BE.ErrorResponse, Buffer.from('SERROR\0')], // no final zero
      [BE.ErrorResponse, Buffer.from('SERROR')],
      [BE.ErrorResponse, Buffer.alloc(0)],
      [BE.NoticeResponse, Buffer.from('M\0\0x')],
      [BE.ParameterDescription, Buffer.from([0, 2, 0, 0, 0, 23])],
      [BE.NotificationResponse, Buffer.from([0, 0, 0, 1, 0x61, 0])],
      [BE.CopyInResponse, Buffer.from([2, 0, 0])], // bad overall format
      [BE.CopyOutResponse, Buffer.from([0, 0, 1, 0])],
      [BE.NegotiateProtocolVersion, Buffer.from([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])],
      [BE.NegotiateProtocolVersion, Buffer.from([0, 0, 0, 0, 0, 0, 0, 2, 0x61, 0])],
      [BE.FunctionCallResponse, Buffer.from([0, 0, 0, 4, 1])],
      [BE.ParseComplete, Buffer.from([1])],
      [BE.PortalSuspended, Buffer.from([1])],
      [0x7a, Buffer.alloc(0)],
    ];
    for (const [type, body] of bad) {
      assert.throws(() => decodeBackend(type, body), ProtocolError, `type ${String.fromCharCode(type)} ${body.toString('hex')}`);
    }
  });

  test('encoders refuse what the wire cannot carry', () => {
    assert.throws(() => encodeBackend({ kind: 'AuthenticationMD5Password', salt: Buffer.alloc(3) }), ProtocolError);
    assert.throws(() => encodeBackend({ kind: 'BackendKeyData', pid: 1, secret: Buffer.alloc(2) }), ProtocolError);
    assert.throws(() => encodeBackend({ kind: 'AuthenticationSASL', mechanisms: [''] }), ProtocolError);
    assert.throws(() => encodeErrorResponse({ SS: 'x' }), ProtocolError);
    assert.throws(() => encodeErrorResponse({ M: 'a\0b' }), ProtocolError);
    assert.throws(() => encodeBackend({ kind: 'CopyInResponse', format: 2, columnFormats: [] }), ProtocolError);
    assert.throws(() => encodeDataRow(new Array<null>(65536).fill(null)), ProtocolError);
  });
});

describe('commandRows / errorSqlstate (audit completion fields)', () => {
  test('the row count a command tag ends with, or null', () => {
    assert.equal(commandRows(encodeCommandComplete('SELECT 5').subarray(5)), 5);
    assert.equal(commandRows(encodeCommandComplete('INSERT 0 12').subarray(5)), 12);
    assert.equal(commandRows(encodeCommandComplete('COPY 1000000').subarray(5)), 1000000);
    assert.equal(commandRows(encodeCommandComplete('BEGIN').subarray(5)), null);
  });

  test('read from the bytes, it agrees with the decoded tag\'s last word for any tag; a malformed body still throws', () => {
    const byTag = (tag: string): number | null => {
      const n = Number(tag.split(' ').at(-1));
      return Number.isFinite(n) ? n : null;
    };
    for (const tag of ['SELECT 5', 'INSERT 0 12', 'BEGIN', 'CREATE TABLE', '', 'X ', ' 3', 'SELECT  7', 'MOVE 0x10', 'FETCH 1e3', 'SELECT Infinity', 'SELECT ５', 'SELECT \u00a05', 'é 4'])
      assert.equal(commandRows(encodeCommandComplete(tag).subarray(5)), byTag(tag), JSON.stringify(tag));
    assert.throws(() => commandRows(Buffer.from('SELECT 5', 'latin1')), ProtocolError);
    assert.throws(() => commandRows(Buffer.from('SELECT 5\0x', 'latin1')), ProtocolError);
  });

  test('the SQLSTATE of an ErrorResponse, wherever field C stands; null without one or when truncated', () => {
    assert.equal(errorSqlstate(encodeErrorResponse({ S: 'ERROR', C: '42501', M: 'x' }).subarray(5)), '42501');
    assert.equal(errorSqlstate(encodeErrorResponse({ S: 'ERROR', M: 'x', C: '23505' }).subarray(5)), '23505');
    assert.equal(errorSqlstate(encodeErrorResponse({ S: 'ERROR', M: 'x' }).subarray(5)), null);
    assert.equal(errorSqlstate(Buffer.from('SERROR', 'latin1')), null);
  });
});
