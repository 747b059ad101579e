import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Framer, FramingError, type Frame } from '../../../proxy/wire/framer.js';

function typed(type: number, body: Buffer): Buffer {
  const b = Buffer.alloc(5 + body.length);
  b[0] = type;
  b.writeInt32BE(4 + body.length, 1);
  body.copy(b, 5);
  return b;
}

function collect(opts: Partial<ConstructorParameters<typeof Framer>[1]> = {}) {
  const frames: Frame[] = [];
  const streamed: { type: number; header: Buffer; len: number; chunks: Buffer[]; ended: boolean }[] = [];
  const framer = new Framer(
    {
      frame: (f) => frames.push({ type: f.type, body: Buffer.from(f.body), raw: Buffer.from(f.raw) }),
      streamStart: (type, header, len) => streamed.push({ type, header: Buffer.from(header), len, chunks: [], ended: false }),
      streamChunk: (c) => streamed.at(-1)!.chunks.push(Buffer.from(c)),
      streamEnd: () => { streamed.at(-1)!.ended = true; },
    },
    { maxBufferedBytes: 1 << 20, maxMessageBytes: 1 << 24, ...opts },
  );
  return { framer, frames, streamed };
}

test('frames survive any chunking of the stream, byte for byte', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ type: fc.integer({ min: 0x20, max: 0x7e }), body: fc.uint8Array({ maxLength: 300 }) }), { maxLength: 20 }),
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 50 }),
      (msgs, cuts) => {
        const stream = Buffer.concat(msgs.map((m) => typed(m.type, Buffer.from(m.body))));
        const { framer, frames } = collect();
        let off = 0;
        let i = 0;
        while (off < stream.length) {
          const n = cuts[i++ % cuts.length]!;
          framer.push(stream.subarray(off, off + n));
          off += n;
        }
        assert.equal(frames.length, msgs.length);
        frames.forEach((f, k) => {
          assert.equal(f.type, msgs[k]!.type);
          assert.deepEqual(f.body, Buffer.from(msgs[k]!.body));
          assert.deepEqual(f.raw, typed(msgs[k]!.type, Buffer.from(msgs[k]!.body)));
        });
        assert.equal(framer.buffered, 0);
      },
    ),
    { numRuns: 500 },
  );
});

test('untyped startup packets, then typed messages in the same chunk', () => {
  const startup = Buffer.alloc(8);
  startup.writeInt32BE(8, 0);
  startup.writeInt32BE(80877103, 4);
  const { framer, frames } = collect({ startup: true });
  framer.push(Buffer.concat([startup, typed(0x51, Buffer.from('select 1\0'))]));
  assert.equal(frames.length, 2);
  assert.equal(frames[0]!.type, 0);
  assert.equal(frames[0]!.body.readInt32BE(0), 80877103);
  assert.equal(frames[1]!.type, 0x51);
});

test('invalid lengths are refused, not waited on', () => {
  for (const len of [0, 3, -1, -2147483648]) {
    const b = Buffer.alloc(5);
    b[0] = 0x51;
    b.writeInt32BE(len, 1);
    const { framer } = collect();
    assert.throws(() => framer.push(b), FramingError);
  }
  const huge = Buffer.alloc(5);
  huge[0] = 0x51;
  huge.writeInt32BE(2 ** 31 - 1, 1);
  assert.throws(() => collect().framer.push(huge), /exceeds the limit/);
  const tiny = Buffer.alloc(4);
  tiny.writeInt32BE(4, 0);
  assert.throws(() => collect({ startup: true }).framer.push(tiny), FramingError);
});

test('large streamable messages pass in pieces; others above the buffered limit are refused', () => {
  const body = Buffer.alloc(300_000, 7);
  const msg = typed(0x64, body); // CopyData
  const { framer, frames, streamed } = collect({ maxBufferedBytes: 100_000, streamThresholdBytes: 50_000, streamable: (t) => t === 0x64 });
  for (let off = 0; off < msg.length; off += 70_000) framer.push(msg.subarray(off, off + 70_000));
  framer.push(typed(0x63, Buffer.alloc(0)));
  assert.equal(streamed.length, 1);
  assert.equal(streamed[0]!.len, body.length);
  assert.ok(streamed[0]!.ended);
  assert.deepEqual(Buffer.concat(streamed[0]!.chunks), body);
  assert.deepEqual(streamed[0]!.header, msg.subarray(0, 5));
  assert.equal(frames.length, 1);
  assert.equal(frames[0]!.type, 0x63);
  const q = typed(0x51, Buffer.alloc(300_000, 0x41));
  const other = collect({ maxBufferedBytes: 100_000, streamThresholdBytes: 50_000, streamable: (t) => t === 0x64 });
  assert.throws(() => other.framer.push(q.subarray(0, 1000)), /limit for messages mamori must inspect/);
});
