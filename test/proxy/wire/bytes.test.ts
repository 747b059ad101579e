import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Reader, Writer, readCString, emptyMessage } from '../../../proxy/wire/bytes.js';
import { ProtocolError } from '../../../proxy/wire/types.js';

describe('readCString', () => {
  test('reads UTF-8 up to the NUL and returns the offset after it', () => {
    const buf = Buffer.from('ab\0マイナンバー\0', 'utf8');
    assert.deepEqual(readCString(buf, 0), { value: 'ab', end: 3 });
    const second = readCString(buf, 3);
    assert.equal(second.value, 'マイナンバー');
    assert.equal(second.end, buf.length);
    assert.deepEqual(readCString(buf, 2), { value: '', end: 3 });
  });
  test('missing terminator and bad offsets throw ProtocolError', () => {
    const buf = Buffer.from('abc');
    assert.throws(() => readCString(buf, 0), ProtocolError);
    assert.throws(() => readCString(buf, 3), ProtocolError);
    assert.throws(() => readCString(buf, -1), ProtocolError);
    assert.throws(() => readCString(buf, 4), ProtocolError);
    assert.throws(() => readCString(buf, 0.5), ProtocolError);
  });
});

describe('Reader', () => {
  test('reads big-endian integers, strings, fields and subarrays', () => {
    const body = Buffer.from([0xff, 0xfe, 0xff, 0xff, 0xff, 0xfe, 0x41, 0x00, 0, 0, 0, 2, 7, 8, 0xff, 0xff, 0xff, 0xff]);
    const r = new Reader(body, 'Test');
    assert.equal(r.int16(), -2);
    assert.equal(r.uint32(), 0xfffffffe);
    assert.equal(r.cstring(), 'A');
    const f = r.field();
    assert.deepEqual(f, Buffer.from([7, 8]));
    assert.equal(f!.buffer, body.buffer, 'field is a view of the input, not a copy');
    assert.equal(r.field(), null);
    r.end();
  });
  test('overruns, negative lengths and trailing bytes throw ProtocolError without echoing bytes', () => {
    const secret = Buffer.from('123456789018');
    const r = new Reader(Buffer.concat([Buffer.from([0, 0, 0, 99]), secret]), 'DataRow');
    assert.throws(() => r.field(), (e: unknown) => e instanceof ProtocolError && !e.message.includes('1234') && e.message.startsWith('DataRow'));
    assert.throws(() => new Reader(Buffer.from([0xff, 0xff, 0xff, 0xfe]), 'X').field(), /negative field length/);
    assert.throws(() => new Reader(Buffer.from([1]), 'X').int16(), ProtocolError);
    assert.throws(() => new Reader(Buffer.from([1]), 'X').end(), /trailing/);
    assert.throws(() => new Reader(Buffer.from([1, 2, 3]), 'X').expectItems(1, 4), ProtocolError);
  });
});

describe('Writer', () => {
  test('writes the typed header with the length excluding the type byte', () => {
    const m = new Writer(0x51, 4).cstring('x').finish();
    assert.deepEqual(m, Buffer.from([0x51, 0, 0, 0, 6, 0x78, 0]));
  });
  test('writes untyped messages and grows past a short hint', () => {
    const w = new Writer(null, 1);
    for (let i = 0; i < 100; i++) w.int32(i);
    const m = w.finish();
    assert.equal(m.length, 404);
    assert.equal(m.readInt32BE(0), 404);
    assert.equal(m.readInt32BE(400), 99);
  });
  test('an exact hint allocates once: a large message is its own exact-size allocation', () => {
    // Larger than half of Buffer's pool on every Node version (8 KiB on 20, 64 KiB on 24), so allocUnsafe
    // gives a fresh ArrayBuffer of exactly the requested size.
    const payload = Buffer.alloc(100_000, 7);
    const m = new Writer(0x64, payload.length).bytes(payload).finish();
    assert.equal(m.byteOffset, 0);
    assert.equal(m.buffer.byteLength, 100_005);
    assert.equal(m.readInt32BE(1), 100_004);
    const small = new Writer(0x44, 6).uint16(1).int32(-1).finish();
    assert.deepEqual(small, Buffer.from([0x44, 0, 0, 0, 10, 0, 1, 0xff, 0xff, 0xff, 0xff]));
  });
  test('refuses NUL in strings and out-of-range integers with ProtocolError', () => {
    assert.throws(() => new Writer(0x51).cstring('a\0b'), ProtocolError);
    assert.throws(() => new Writer(0x51).int16(0x8000), ProtocolError);
    assert.throws(() => new Writer(0x51).uint16(-1), ProtocolError);
    assert.throws(() => new Writer(0x51).uint16(65536), ProtocolError);
    assert.throws(() => new Writer(0x51).int32(2 ** 31), ProtocolError);
    assert.throws(() => new Writer(0x51).uint32(1.5), ProtocolError);
    assert.throws(() => new Writer(0x51).uint8(256), ProtocolError);
  });
  test('emptyMessage builds a 5-byte message', () => {
    assert.deepEqual(emptyMessage(0x53), Buffer.from([0x53, 0, 0, 0, 4]));
  });
});
