// Property tests: random messages survive encode → decode unchanged, and random, truncated or corrupted bodies
// either decode or throw ProtocolError — never another exception, never an out-of-bounds read or a hang.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { dataRowField, decodeBackend, decodeDataRow, encodeBackend, scanDataRow } from '../../../proxy/wire/backend.js';
import {
  decodeFrontend,
  decodePassword,
  decodeSASLInitialResponse,
  decodeSASLResponse,
  encodeFrontend,
} from '../../../proxy/wire/frontend.js';
import { decodeStartupPacket, encodeStartupPacket } from '../../../proxy/wire/startup.js';
import { BE, FE, ProtocolError, STARTUP, type BackendMessage, type FrontendMessage, type StartupPacket } from '../../../proxy/wire/types.js';

const RUNS = 3000;

/** Records with an ordinary prototype, so they compare deep-equal to what the decoders build. */
function rec<T extends Record<string, fc.Arbitrary<unknown>>>(model: T): fc.Arbitrary<{ [K in keyof T]: T[K] extends fc.Arbitrary<infer U> ? U : never }> {
  return fc.record(model, { noNullPrototype: true }) as fc.Arbitrary<{ [K in keyof T]: T[K] extends fc.Arbitrary<infer U> ? U : never }>;
}

const str = fc.string({ unit: 'grapheme', maxLength: 24 }).map((s) => s.replaceAll('\0', ''));
const bytes = fc.uint8Array({ maxLength: 48 }).map((a) => Buffer.from(a));
const field = fc.option(bytes, { nil: null, freq: 4 });
const int16 = fc.integer({ min: -0x8000, max: 0x7fff });
const int32 = fc.integer({ min: -0x80000000, max: 0x7fffffff });
const uint32 = fc.integer({ min: 0, max: 0xffffffff });
const format = fc.constantFrom(0, 1);
const target = fc.constantFrom('S' as const, 'P' as const);

const frontendArb: fc.Arbitrary<FrontendMessage> = fc.oneof(
  rec({ kind: fc.constant('Query' as const), sql: str }),
  rec({ kind: fc.constant('Parse' as const), name: str, sql: str, paramTypes: fc.array(uint32, { maxLength: 8 }) }),
  rec({
    kind: fc.constant('Bind' as const),
    portal: str,
    statement: str,
    paramFormats: fc.array(int16, { maxLength: 6 }),
    params: fc.array(field, { maxLength: 8 }),
    resultFormats: fc.array(format, { maxLength: 6 }),
  }),
  rec({ kind: fc.constant('Describe' as const), target, name: str }),
  rec({ kind: fc.constant('Execute' as const), portal: str, maxRows: int32 }),
  rec({ kind: fc.constant('Close' as const), target, name: str }),
  fc.constantFrom<FrontendMessage>({ kind: 'Sync' }, { kind: 'Flush' }, { kind: 'Terminate' }, { kind: 'CopyDone' }),
  rec({ kind: fc.constant('CopyData' as const), data: bytes }),
  rec({ kind: fc.constant('CopyFail' as const), message: str }),
  rec({
    kind: fc.constant('FunctionCall' as const),
    functionOid: uint32,
    argFormats: fc.array(format, { maxLength: 4 }),
    args: fc.array(field, { maxLength: 4 }),
    resultFormat: format,
  }),
  rec({ kind: fc.constant('AuthResponse' as const), data: bytes }),
);

const fieldCode = fc.integer({ min: 1, max: 255 }).map((c) => String.fromCharCode(c));
const noticeFields = fc.dictionary(fieldCode, str, { maxKeys: 10, noNullPrototype: true });
const copyBody = { format, columnFormats: fc.array(format, { maxLength: 6 }) };

const backendArb: fc.Arbitrary<BackendMessage> = fc.oneof(
  fc.constantFrom<BackendMessage>(
    { kind: 'AuthenticationOk' },
    { kind: 'AuthenticationCleartextPassword' },
    { kind: 'EmptyQueryResponse' },
    { kind: 'ParseComplete' },
    { kind: 'BindComplete' },
    { kind: 'CloseComplete' },
    { kind: 'NoData' },
    { kind: 'PortalSuspended' },
    { kind: 'CopyDone' },
  ),
  rec({ kind: fc.constant('AuthenticationMD5Password' as const), salt: fc.uint8Array({ minLength: 4, maxLength: 4 }).map((a) => Buffer.from(a)) }),
  rec({ kind: fc.constant('AuthenticationSASL' as const), mechanisms: fc.array(str.filter((s) => s !== ''), { maxLength: 3 }) }),
  rec({ kind: fc.constant('AuthenticationSASLContinue' as const), data: bytes }),
  rec({ kind: fc.constant('AuthenticationSASLFinal' as const), data: bytes }),
  rec({ kind: fc.constant('AuthenticationOther' as const), code: fc.constantFrom(2, 4, 6, 7, 8, 9, 13, -1), data: bytes }),
  rec({
    kind: fc.constant('BackendKeyData' as const),
    pid: int32,
    secret: fc.uint8Array({ minLength: 4, maxLength: 256 }).map((a) => Buffer.from(a)),
  }),
  rec({ kind: fc.constant('ParameterStatus' as const), name: str, value: str }),
  rec({ kind: fc.constant('ReadyForQuery' as const), status: fc.constantFrom('I' as const, 'T' as const, 'E' as const) }),
  rec({
    kind: fc.constant('RowDescription' as const),
    fields: fc.array(
      rec({ name: str, tableOid: uint32, attnum: int16, typeOid: uint32, typlen: int16, typmod: int32, format }),
      { maxLength: 6 },
    ),
  }),
  rec({ kind: fc.constant('DataRow' as const), fields: fc.array(field, { maxLength: 10 }) }),
  rec({ kind: fc.constant('CommandComplete' as const), tag: str }),
  rec({ kind: fc.constant('ErrorResponse' as const), fields: noticeFields }),
  rec({ kind: fc.constant('NoticeResponse' as const), fields: noticeFields }),
  rec({ kind: fc.constant('ParameterDescription' as const), typeOids: fc.array(uint32, { maxLength: 8 }) }),
  rec({ kind: fc.constant('NotificationResponse' as const), pid: int32, channel: str, payload: str }),
  rec({ kind: fc.constant('CopyInResponse' as const), ...copyBody }),
  rec({ kind: fc.constant('CopyOutResponse' as const), ...copyBody }),
  rec({ kind: fc.constant('CopyBothResponse' as const), ...copyBody }),
  rec({ kind: fc.constant('CopyData' as const), data: bytes }),
  rec({ kind: fc.constant('NegotiateProtocolVersion' as const), version: int32, unrecognized: fc.array(str, { maxLength: 4 }) }),
  rec({ kind: fc.constant('FunctionCallResponse' as const), result: field }),
);

const startupArb: fc.Arbitrary<StartupPacket> = fc.oneof(
  rec({
    kind: fc.constant('StartupMessage' as const),
    protocol: fc.constantFrom(STARTUP.Protocol30, STARTUP.Protocol32, 0x30005),
    params: fc.array(fc.tuple(str.filter((s) => s !== ''), str), { maxLength: 6 }),
  }),
  fc.constantFrom<StartupPacket>({ kind: 'SSLRequest' }, { kind: 'GSSENCRequest' }),
  rec({ kind: fc.constant('CancelRequest' as const), pid: int32, secret: fc.uint8Array({ minLength: 4, maxLength: 256 }).map((a) => Buffer.from(a)) }),
);

/** Runs `f`; passes if it returns or throws ProtocolError, fails on any other exception. */
function decodesOrRefuses(f: () => unknown): boolean {
  try {
    f();
    return true;
  } catch (e) {
    if (e instanceof ProtocolError) return true;
    throw e;
  }
}

const FE_TYPES = Object.values(FE);
const BE_TYPES = Object.values(BE);
const anyType = fc.oneof(fc.constantFrom(...FE_TYPES, ...BE_TYPES), fc.integer({ min: 0, max: 255 }));

describe('codec properties', () => {
  test('frontend: encode → decode is the identity', () => {
    fc.assert(
      fc.property(frontendArb, (m) => {
        const wire = encodeFrontend(m);
        assert.equal(wire.readInt32BE(1), wire.length - 1);
        assert.deepEqual(decodeFrontend(wire[0]!, wire.subarray(5)), m);
      }),
      { numRuns: RUNS },
    );
  });

  test('backend: encode → decode is the identity', () => {
    fc.assert(
      fc.property(backendArb, (m) => {
        const wire = encodeBackend(m);
        assert.equal(wire.readInt32BE(1), wire.length - 1);
        assert.deepEqual(decodeBackend(wire[0]!, wire.subarray(5)), m);
      }),
      { numRuns: RUNS },
    );
  });

  test('startup: encode → decode is the identity', () => {
    fc.assert(
      fc.property(startupArb, (p) => {
        const wire = encodeStartupPacket(p);
        assert.equal(wire.readInt32BE(0), wire.length);
        assert.deepEqual(decodeStartupPacket(wire.subarray(4)), p);
      }),
      { numRuns: RUNS },
    );
  });

  test('random bodies: decode or ProtocolError, and what decodes re-encodes to the same value', () => {
    fc.assert(
      fc.property(anyType, fc.uint8Array({ maxLength: 64 }), (type, arr) => {
        const body = Buffer.from(arr);
        for (const [decode, encode] of [
          [decodeFrontend, encodeFrontend],
          [decodeBackend, encodeBackend],
        ] as const) {
          let m: FrontendMessage | BackendMessage;
          try {
            m = decode(type, body);
          } catch (e) {
            if (e instanceof ProtocolError) continue;
            throw e;
          }
          const again = (encode as (x: typeof m) => Buffer)(m);
          assert.deepEqual(decode(again[0]!, again.subarray(5)), m);
        }
        assert.ok(decodesOrRefuses(() => decodePassword(body)));
        assert.ok(decodesOrRefuses(() => decodeSASLInitialResponse(body)));
        assert.ok(decodesOrRefuses(() => decodeSASLResponse(body)));
      }),
      { numRuns: RUNS * 2 },
    );
  });

  test('random startup bodies (with real request codes mixed in): decode or ProtocolError', () => {
    const code = fc.constantFrom(STARTUP.Protocol30, STARTUP.Protocol32, STARTUP.CancelRequest, STARTUP.SSLRequest, STARTUP.GSSENCRequest);
    const prefixed = fc.tuple(code, fc.uint8Array({ maxLength: 300 })).map(([c, rest]) => {
      const b = Buffer.alloc(4 + rest.length);
      b.writeUInt32BE(c, 0);
      b.set(rest, 4);
      return b;
    });
    fc.assert(
      fc.property(fc.oneof(prefixed, fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a))), (body) =>
        decodesOrRefuses(() => decodeStartupPacket(body)),
      ),
      { numRuns: RUNS },
    );
  });

  test('truncated or corrupted valid messages: decode or ProtocolError, never another exception', () => {
    const mutated = <T>(arb: fc.Arbitrary<T>, enc: (m: T) => Buffer) =>
      fc.tuple(arb, fc.nat(), fc.nat(), fc.integer({ min: 1, max: 255 }), fc.boolean()).map(([m, cut, at, xor, truncate]) => {
        const wire = enc(m);
        const body = Buffer.from(wire.subarray(5)); // a copy, so mutation cannot touch shared pools
        if (truncate || body.length === 0) return { type: wire[0]!, body: body.subarray(0, body.length === 0 ? 0 : cut % body.length) };
        body[at % body.length]! ^= xor;
        return { type: wire[0]!, body };
      });
    fc.assert(
      fc.property(mutated(frontendArb, encodeFrontend), ({ type, body }) => decodesOrRefuses(() => decodeFrontend(type, body))),
      { numRuns: RUNS },
    );
    fc.assert(
      fc.property(mutated(backendArb, encodeBackend), ({ type, body }) => decodesOrRefuses(() => decodeBackend(type, body))),
      { numRuns: RUNS },
    );
    fc.assert(
      fc.property(startupArb, fc.nat(), (p, cut) => {
        const body = encodeStartupPacket(p).subarray(4);
        return decodesOrRefuses(() => decodeStartupPacket(body.subarray(0, cut % (body.length + 1))));
      }),
      { numRuns: RUNS },
    );
  });

  test('scanDataRow agrees with decodeDataRow on every body, valid or not', () => {
    const rowBodies = fc.oneof(
      fc.array(field, { maxLength: 10 }).map((fields) => encodeBackend({ kind: 'DataRow', fields }).subarray(5)),
      fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
      fc.tuple(fc.array(field, { minLength: 1, maxLength: 6 }), fc.nat()).map(([fields, cut]) => {
        const b = encodeBackend({ kind: 'DataRow', fields }).subarray(5);
        return b.subarray(0, cut % b.length);
      }),
    );
    fc.assert(
      fc.property(rowBodies, (body) => {
        let decoded: Array<Buffer | null> | 'refused';
        try {
          decoded = decodeDataRow(body).fields;
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
          decoded = 'refused';
        }
        if (decoded === 'refused') {
          assert.throws(() => scanDataRow(body), ProtocolError);
        } else {
          const off = scanDataRow(body);
          assert.equal(off.length, 2 * decoded.length);
          decoded.forEach((f, i) => assert.deepEqual(dataRowField(body, off, i), f));
        }
      }),
      { numRuns: RUNS },
    );
  });

  test('a valid message truncated by at least one byte is refused when its body has structure', () => {
    // Messages whose whole body is opaque (CopyData, SASL data, AuthResponse) are valid at any length;
    // every other non-empty body must be rejected when cut short.
    const opaque = new Set(['CopyData', 'AuthResponse', 'AuthenticationSASLContinue', 'AuthenticationSASLFinal', 'AuthenticationOther', 'BackendKeyData']);
    fc.assert(
      fc.property(fc.oneof(frontendArb.map((m) => ({ m, wire: encodeFrontend(m), dec: decodeFrontend as (t: number, b: Buffer) => unknown })),
        backendArb.map((m) => ({ m, wire: encodeBackend(m), dec: decodeBackend as (t: number, b: Buffer) => unknown }))), fc.nat(), ({ m, wire, dec }, cut) => {
        const body = wire.subarray(5);
        if (opaque.has(m.kind) || body.length === 0) return;
        assert.throws(() => dec(wire[0]!, body.subarray(0, cut % body.length)), ProtocolError, m.kind);
      }),
      { numRuns: RUNS },
    );
  });
});
