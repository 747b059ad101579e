import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decryptCell } from '../../../keyring/cells/index.js';
import { decodeBind, decodeParse, encodeBind, encodeParse } from '../../../proxy/wire/frontend.js';
import type { Field } from '../../../proxy/wire/types.js';
import type { ProtectedColumn } from '../../../proxy/sql/types.js';
import {
  ParamError,
  encryptBindParams,
  encryptLiteral,
  parseArrayText,
  rewriteParseTypes,
  type ParamPlan,
} from '../../../proxy/results/index.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import { SAMPLES, canonical, column, newKey, seal } from './fixtures.js';

const det = newKey('deterministic', 21);
const rnd = newKey('randomized', 22);
const encrypt = (col: ProtectedColumn, c: Buffer): Buffer => seal(col.mode === 'deterministic' ? det : rnd, c);
const open = (cell: Buffer, mode: 'deterministic' | 'randomized' = 'deterministic'): Buffer =>
  decryptCell(cell, mode === 'deterministic' ? det.key : rnd.key);

const myNumber = column({ type: 'mynumber' }, 'deterministic', 'my_number');

function bind(params: Field[], paramFormats: number[], resultFormats: number[] = []): Buffer {
  return encodeBind({ portal: 'p1', statement: 's1', paramFormats, params, resultFormats }).subarray(5);
}

function decoded(msg: Buffer): ReturnType<typeof decodeBind> {
  assert.equal(msg[0], 0x42);
  assert.equal(msg.readInt32BE(1), msg.length - 1);
  return decodeBind(msg.subarray(5));
}

/** Reads a binary one-dimensional array (as PostgreSQL's array_recv would). */
function readArray(b: Buffer): { elemType: number; items: Field[] } {
  const ndim = b.readInt32BE(0);
  const elemType = b.readUInt32BE(8);
  if (ndim === 0) return { elemType, items: [] };
  assert.equal(ndim, 1);
  assert.equal(b.readInt32BE(16), 1, 'lower bound 1');
  const n = b.readInt32BE(12);
  const items: Field[] = [];
  let pos = 20;
  for (let i = 0; i < n; i++) {
    const len = b.readInt32BE(pos);
    pos += 4;
    if (len === -1) items.push(null);
    else {
      items.push(b.subarray(pos, pos + len));
      pos += len;
    }
  }
  assert.equal(pos, b.length);
  assert.equal(b.readInt32BE(4), items.includes(null) ? 1 : 0, 'has-null flag');
  return { elemType, items };
}

/** A binary array as a driver sends it. */
function binaryArray(elemType: number, items: Field[]): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(20);
  head.writeInt32BE(1, 0);
  head.writeInt32BE(items.includes(null) ? 1 : 0, 4);
  head.writeUInt32BE(elemType, 8);
  head.writeInt32BE(items.length, 12);
  head.writeInt32BE(1, 16);
  parts.push(head);
  for (const it of items) {
    const len = Buffer.alloc(4);
    len.writeInt32BE(it === null ? -1 : it.length);
    parts.push(len);
    if (it !== null) parts.push(it);
  }
  return Buffer.concat(parts);
}

describe('encryptBindParams', () => {
  test('every sample type in text format, and in binary format as PostgreSQL sends it', () => {
    for (const s of SAMPLES) {
      for (const mode of ['deterministic', 'randomized'] as const) {
        const col = column(s.type, mode);
        const want = canonical(s.type, s.input);
        for (const binary of [false, true]) {
          const value = binary ? Buffer.from(s.binaryHex, 'hex') : Buffer.from(s.input, 'utf8');
          const out = decoded(encryptBindParams(bind([Buffer.from('x'), value], [0, binary ? 1 : 0]), [{ index: 2, column: col, purpose: 'write' }], encrypt));
          assert.deepEqual(out.paramFormats, [0, 1]);
          assert.deepEqual(out.params[0], Buffer.from('x'));
          assert.deepEqual(open(out.params[1]!, mode), want, `${s.pgType} ${s.input} ${mode} ${binary}`);
        }
      }
    }
  });

  test('unprotected parameters keep their format and bytes; formats are expanded; NULL stays NULL', () => {
    const params: Field[] = [Buffer.from([0, 0, 0, 5]), Buffer.from('1234 5678 9018'), null, Buffer.from([1, 2])];
    const msg = encryptBindParams(bind(params, [1], [1, 0]), [
      { index: 2, column: myNumber, purpose: 'write' },
      { index: 3, column: myNumber, purpose: 'write' },
    ], encrypt);
    const out = decoded(msg);
    assert.equal(out.portal, 'p1');
    assert.equal(out.statement, 's1');
    assert.deepEqual(out.paramFormats, [1, 1, 1, 1]);
    assert.deepEqual(out.params[0], params[0]);
    assert.deepEqual(out.params[3], params[3]);
    assert.equal(out.params[2], null);
    assert.equal(open(out.params[1]!).toString(), '123456789018');
    assert.deepEqual(out.resultFormats, [1, 0]);

    const textOnly = decoded(encryptBindParams(bind([Buffer.from('a'), Buffer.from('123456789018')], []), [{ index: 2, column: myNumber, purpose: 'search' }], encrypt));
    assert.deepEqual(textOnly.paramFormats, [0, 1]);
  });

  test('every accepted My Number spelling gives the same deterministic cell', () => {
    const spellings = ['123456789018', '1234-5678-9018', '1234 5678 9018', '１２３４ ５６７８ ９０１８', '1234ー5678ー9018'];
    const cells = spellings.map((v) => decoded(encryptBindParams(bind([Buffer.from(v)], []), [{ index: 1, column: myNumber, purpose: 'search' }], encrypt)).params[0]);
    for (const c of cells) assert.deepEqual(c, cells[0]);
    assert.deepEqual(cells[0], seal(det, Buffer.from('123456789018')));
  });

  test('property: random valid My Numbers in random spellings and formats give the canonical cell', () => {
    const fullWidth = (d: string): string => String.fromCharCode(0xff10 + d.charCodeAt(0) - 0x30);
    fc.assert(
      fc.property(
        fc.stringMatching(/^[0-9]{11}$/),
        fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }),
        fc.constantFrom('', ' ', '-', '\u3000', '\u2212', '\uff0d', '\u30fc'),
        fc.boolean(),
        (first11, wide, sep, binary) => {
          const digits = first11 + String(myNumberCheckDigit(first11));
          const chars = [...digits].map((d, i) => (wide[i] ? fullWidth(d) : d));
          const spelled = [chars.slice(0, 4), chars.slice(4, 8), chars.slice(8)].map((g) => g.join('')).join(sep);
          const out = decoded(encryptBindParams(bind([Buffer.from(spelled)], [binary ? 1 : 0]), [{ index: 1, column: myNumber, purpose: 'search' }], encrypt));
          assert.deepEqual(out.params[0], seal(det, Buffer.from(digits)));
        },
      ),
      { numRuns: 500 },
    );
  });

  test('a parameter declared bytea is decoded first (text hex, text escape, binary)', () => {
    const plan: ParamPlan[] = [{ index: 1, column: myNumber, purpose: 'write' }];
    const hex = Buffer.from('\\x' + Buffer.from('1234-5678-9018').toString('hex'));
    const esc = Buffer.from('1234-5678-9018');
    for (const [v, fmt] of [[hex, 0], [esc, 0], [Buffer.from('123456789018'), 1]] as const) {
      const out = decoded(encryptBindParams(bind([v], [fmt]), plan, encrypt, [17]));
      assert.equal(open(out.params[0]!).toString(), '123456789018');
    }
    // Without the declared type a \x value is just text: not a My Number.
    assert.throws(() => encryptBindParams(bind([hex], []), plan, encrypt), ParamError);
    // A bytea column itself takes bytea text directly.
    const bcol = column({ type: 'bytea' });
    const out = decoded(encryptBindParams(bind([Buffer.from('\\x00ff')], []), [{ index: 1, column: bcol, purpose: 'write' }], encrypt, [17]));
    assert.deepEqual(open(out.params[0]!), Buffer.from([0, 0xff]));
  });

  test('binary integers are read at the declared width and range-checked for the column', () => {
    const i8 = column({ type: 'int8' });
    const i2 = column({ type: 'int2' });
    const four = Buffer.alloc(4);
    four.writeInt32BE(-7);
    let out = decoded(encryptBindParams(bind([four], [1]), [{ index: 1, column: i8, purpose: 'search' }], encrypt, [23]));
    assert.equal(open(out.params[0]!).readBigInt64BE(0), -7n);
    four.writeInt32BE(40000);
    assert.throws(
      () => encryptBindParams(bind([four], [1]), [{ index: 1, column: i2, purpose: 'write' }], encrypt, [23]),
      (e: unknown) => e instanceof ParamError && e.sqlstate === '22P02' && /out of range/.test(e.message),
    );
    assert.throws(
      () => encryptBindParams(bind([Buffer.alloc(3)], [1]), [{ index: 1, column: i8, purpose: 'write' }], encrypt),
      (e: unknown) => e instanceof ParamError && e.sqlstate === '22P03',
    );
    assert.throws(
      () => encryptBindParams(bind([Buffer.from([0xff, 0xfe])], [1]), [{ index: 1, column: myNumber, purpose: 'write' }], encrypt),
      // PostgreSQL's textrecv: 22021, "invalid byte sequence for encoding" (the bytes themselves are not printed)
      (e: unknown) => e instanceof ParamError && e.sqlstate === '22021' && /invalid byte sequence for encoding "UTF8"/.test(e.message) && !/0xff|fffe/i.test(e.message),
    );
    out = decoded(encryptBindParams(bind([Buffer.from([0x30, 0x39])], [1]), [{ index: 1, column: i2, purpose: 'write' }], encrypt));
    assert.equal(open(out.params[0]!).readInt16BE(0), 0x3039);
  });

  test('an invalid My Number is refused with 22P02 naming the column and the check digit, no digits of the value', () => {
    for (const [v, fmt] of [['123456789012', 0], ['1234-5678-9012', 0], ['123456789012', 1]] as const) {
      assert.throws(
        () => encryptBindParams(bind([Buffer.from(v)], [fmt]), [{ index: 1, column: myNumber, purpose: 'write' }], encrypt),
        (e: unknown) => {
          assert.ok(e instanceof ParamError);
          assert.equal(e.sqlstate, '22P02');
          assert.equal(e.column, 'public.people.my_number');
          assert.match(e.message, /public\.people\.my_number/);
          assert.match(e.message, /check digit does not match/);
          assert.doesNotMatch(e.message, /[0-9]/);
          return true;
        },
      );
    }
  });

  test('other invalid values: 22P02 with the reason, nothing of the value', () => {
    const cases: Array<[ProtectedColumn, string, RegExp]> = [
      [column({ type: 'date' }), '2023-02-29', /day out of range/],
      [column({ type: 'int4' }), '12abc', /invalid input syntax/],
      [column({ type: 'varchar', length: 3 }), 'abcd', /too long/],
      [column({ type: 'corporate_number' }), '1234567890123', /check digit/],
    ];
    for (const [col, v, why] of cases) {
      assert.throws(
        () => encryptBindParams(bind([Buffer.from(v)], []), [{ index: 1, column: col, purpose: 'write' }], encrypt),
        (e: unknown) => e instanceof ParamError && e.sqlstate === '22P02' && why.test(e.message) && !e.message.includes(v),
      );
    }
  });

  test('arrays in text format → binary bytea[] of cells (NULL elements kept)', () => {
    const v = Buffer.from('{123456789018, "1234-5678-9018" ,NULL,"null",000000000019}');
    assert.throws(() => encryptBindParams(bind([v], []), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt), ParamError, '"null" quoted is a string, not NULL, and not a My Number');
    const ok = Buffer.from('{123456789018, "1234-5678-9018" ,NULL,000000000019}');
    const out = decoded(encryptBindParams(bind([ok], []), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt, [1009]));
    assert.deepEqual(out.paramFormats, [1]);
    const arr = readArray(out.params[0]!);
    assert.equal(arr.elemType, 17);
    assert.deepEqual(arr.items.map((c) => (c === null ? null : open(c).toString())), ['123456789018', '123456789018', null, '000000000019']);
    const empty = readArray(decoded(encryptBindParams(bind([Buffer.from('{}')], []), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt)).params[0]!);
    assert.deepEqual(empty, { elemType: 17, items: [] });
  });

  test('arrays in binary format (text[], int4[] for an int8 column, declared bytea[])', () => {
    const t = binaryArray(25, [Buffer.from('123456789018'), null]);
    let arr = readArray(decoded(encryptBindParams(bind([t], [1]), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt)).params[0]!);
    assert.deepEqual(arr.items.map((c) => (c === null ? null : open(c).toString())), ['123456789018', null]);
    const ints = binaryArray(23, [Buffer.from([0, 0, 0, 9]), Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    arr = readArray(decoded(encryptBindParams(bind([ints], [1]), [{ index: 1, column: column({ type: 'int8' }), purpose: 'search', array: true }], encrypt)).params[0]!);
    assert.deepEqual(arr.items.map((c) => open(c!).readBigInt64BE(0)), [9n, -1n]);
    const byteaArr = binaryArray(17, [Buffer.from('1234 5678 9018')]);
    arr = readArray(decoded(encryptBindParams(bind([byteaArr], [1]), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt, [1001])).params[0]!);
    assert.equal(open(arr.items[0]!).toString(), '123456789018');
    const textByteaArr = Buffer.from('{"\\\\x313233343536373839303138"}');
    arr = readArray(decoded(encryptBindParams(bind([textByteaArr], [0]), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt, [1001])).params[0]!);
    assert.equal(open(arr.items[0]!).toString(), '123456789018');
    // Multidimensional and truncated arrays are refused.
    const two = Buffer.alloc(28);
    two.writeInt32BE(2, 0);
    assert.throws(() => encryptBindParams(bind([two], [1]), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt), (e: unknown) => e instanceof ParamError && e.sqlstate === '22P03');
    assert.throws(() => encryptBindParams(bind([t.subarray(0, t.length - 2)], [1]), [{ index: 1, column: myNumber, purpose: 'search', array: true }], encrypt), (e: unknown) => e instanceof ParamError && e.sqlstate === '22P03');
  });

  test('one $n planned twice for the same column is encrypted once; for two columns it is refused', () => {
    const plans: ParamPlan[] = [
      { index: 1, column: myNumber, purpose: 'search' },
      { index: 1, column: myNumber, purpose: 'search' },
    ];
    const out = decoded(encryptBindParams(bind([Buffer.from('123456789018')], []), plans, encrypt));
    assert.equal(open(out.params[0]!).toString(), '123456789018');
    const other = column({ type: 'mynumber' }, 'deterministic', 'other_number');
    assert.throws(() => encryptBindParams(bind([Buffer.from('123456789018')], []), [plans[0]!, { index: 1, column: other, purpose: 'search' }], encrypt), TypeError);
  });

  test('malformed Bind messages are protocol errors', () => {
    const b = bind([Buffer.from('1')], [0, 0]);
    assert.throws(() => encryptBindParams(b, [{ index: 1, column: myNumber, purpose: 'write' }], encrypt), /format codes/);
  });
});

describe('parseArrayText', () => {
  test('PostgreSQL array text forms', () => {
    const ok = (s: string): (string | null)[] => {
      const r = parseArrayText(s);
      assert.ok(r.ok, s);
      return r.items;
    };
    assert.deepEqual(ok('{}'), []);
    assert.deepEqual(ok(' { } '), []);
    assert.deepEqual(ok('{a,b}'), ['a', 'b']);
    assert.deepEqual(ok('{ a b , "c,d" }'), ['a b', 'c,d']);
    assert.deepEqual(ok('{"a\\"b","x\\\\y",\\N}'), ['a"b', 'x\\y', 'N']);
    assert.deepEqual(ok('{NULL,null,"NULL",\\NULL}'), [null, null, 'NULL', 'NULL']);
    assert.deepEqual(ok('{""}'), ['']);
    for (const bad of ['', 'a', '{', '{a', '{a,}', '{,a}', '{{a}}', '[1:2]={a,b}', '{a}x', '{"a}', '{a"b}']) {
      assert.equal(parseArrayText(bad).ok, false, bad);
    }
  });

  test('property: any list of strings survives array text quoting', () => {
    const quote = (s: string | null): string => (s === null ? 'NULL' : '"' + s.replace(/[\\"]/g, (c) => '\\' + c) + '"');
    fc.assert(
      fc.property(fc.array(fc.option(fc.string({ maxLength: 12 }), { nil: null }), { maxLength: 8 }), (items) => {
        const r = parseArrayText('{' + items.map(quote).join(',') + '}');
        assert.ok(r.ok);
        assert.deepEqual(r.items, items);
      }),
      { numRuns: 500 },
    );
  });
});

describe('rewriteParseTypes', () => {
  const sql = "insert into t (id, n) values ($1, $2) -- ✓ 名前";
  test('declared types of protected parameters become bytea / bytea[]; name and text are copied', () => {
    const body = encodeParse({ name: 'stmt', sql, paramTypes: [23, 25] }).subarray(5);
    const out = rewriteParseTypes(body, [{ index: 2, column: myNumber, purpose: 'write' }]);
    assert.equal(out[0], 0x50);
    assert.equal(out.readInt32BE(1), out.length - 1);
    assert.deepEqual(decodeParse(out.subarray(5)), { kind: 'Parse', name: 'stmt', sql, paramTypes: [23, 17] });
    const arr = rewriteParseTypes(body, [{ index: 1, column: myNumber, purpose: 'search', array: true }]);
    assert.deepEqual(decodeParse(arr.subarray(5)).paramTypes, [1001, 25]);
  });
  test('fewer declared types than parameters: extended with 0 (unspecified)', () => {
    const body = encodeParse({ name: '', sql, paramTypes: [] }).subarray(5);
    const out = rewriteParseTypes(body, [{ index: 3, column: myNumber, purpose: 'write' }]);
    assert.deepEqual(decodeParse(out.subarray(5)).paramTypes, [0, 0, 17]);
    assert.deepEqual(rewriteParseTypes(body, []).subarray(5), body);
  });
  test('malformed Parse is a protocol error', () => {
    const body = encodeParse({ name: '', sql, paramTypes: [23] }).subarray(5);
    assert.throws(() => rewriteParseTypes(body.subarray(0, body.length - 1), []), /Parse/);
  });
});

describe('encryptLiteral', () => {
  test('a valid value becomes E\'\\\\x…\'::bytea of its cell', () => {
    const r = encryptLiteral(myNumber, '1234 5678 9018', encrypt);
    assert.ok(r.ok);
    const m = /^E'\\\\x([0-9a-f]+)'::bytea$/.exec(r.replacement.toString('latin1'));
    assert.ok(m, r.replacement.toString('latin1'));
    assert.equal(open(Buffer.from(m[1]!, 'hex')).toString(), '123456789018');
  });
  test('an invalid value gives the reason, without the value', () => {
    const r = encryptLiteral(myNumber, '123456789012', encrypt);
    assert.equal(r.ok, false);
    assert.ok(!r.ok && /check digit/.test(r.reason) && !/[0-9]/.test(r.reason));
  });
});
