import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeDataRow, decodeRowDescription, encodeDataRow, encodeRowDescription } from '../../../proxy/wire/backend.js';
import type { Field, FieldDescription } from '../../../proxy/wire/types.js';
import {
  RowError,
  RowRewriter,
  StaticCellKeys,
  decodeByteaText,
  encodeByteaEscape,
  encodeByteaHex,
  logicalTypeOid,
  rewriteParameterDescription,
  rewriteRowDescription,
  type FieldAction,
  type FieldPlan,
} from '../../../proxy/results/index.js';
import { encodeParameterDescription } from '../../../proxy/wire/backend.js';
import { MamoriError } from '../../../proxy/errors.js';
import { clientCodec } from '../../../proxy/results/client-encoding.js';
import iconv from 'iconv-lite';
import { SAMPLES, byteaEscape, canonical, column, newKey, seal } from './fixtures.js';

type Wire = 'hex' | 'escape' | 'binary';
const WIRES: Wire[] = ['hex', 'escape', 'binary'];
const ACTIONS: FieldAction[] = ['plaintext', 'mask', 'null', 'ciphertext'];

/** The protected field as the server sends a bytea in the given format. */
function asSent(cell: Buffer, wire: Wire): Buffer {
  if (wire === 'binary') return cell;
  if (wire === 'hex') return Buffer.from('\\x' + cell.toString('hex'), 'latin1');
  return Buffer.from(byteaEscape(cell), 'latin1');
}

/** A 5-field row with the protected field at index 2, the rest unprotected. */
function row(protectedField: Field): Buffer {
  return encodeDataRow([Buffer.from('17'), Buffer.from('名前'), protectedField, null, Buffer.from([0, 1, 2])]).subarray(5);
}

function rewriter(plan: Omit<FieldPlan, 'index'>, wire: Wire, keys: StaticCellKeys, onShredded?: () => void): RowRewriter {
  const formats = [0, 1, wire === 'binary' ? 1 : 0, 0, 1];
  return new RowRewriter([{ ...plan, index: 2 }], formats, keys, {
    byteaOutput: wire === 'escape' ? 'escape' : 'hex',
    ...(onShredded ? { onShredded } : {}),
  });
}

function fieldsOf(msg: Buffer): Field[] {
  assert.equal(msg[0], 0x44);
  assert.equal(msg.readInt32BE(1), msg.length - 1);
  return decodeDataRow(msg.subarray(5)).fields;
}

describe('RowRewriter: every logical type × action × wire format', () => {
  for (const s of SAMPLES) {
    for (const mode of ['deterministic', 'randomized'] as const) {
      const k = newKey(mode, 40 + (mode === 'deterministic' ? 1 : 2));
      const keys = new StaticCellKeys().set(k.domainId, k.version, k.key);
      const col = column(s.type, mode);
      const cell = seal(k, canonical(s.type, s.input));
      for (const wire of WIRES) {
        for (const action of ACTIONS) {
          test(`${s.pgType} ${JSON.stringify(s.input)} ${mode} ${wire} ${action}`, () => {
            const sent = asSent(cell, wire);
            const body = row(sent);
            const out = fieldsOf(rewriter({ column: col, action, domainId: k.domainId }, wire, keys).rewrite(body));
            const before = decodeDataRow(body).fields;
            // Unprotected fields are untouched, byte for byte.
            for (const i of [0, 1, 3, 4]) assert.deepEqual(out[i], before[i]);
            const got = out[2]!;
            if (action === 'null') return assert.equal(got, null);
            if (action === 'ciphertext') return assert.deepEqual(got, sent);
            if (action === 'mask') {
              if (s.mask === null) return assert.equal(got, null);
              return assert.equal(got!.toString('utf8'), s.mask);
            }
            if (wire === 'binary') return assert.equal(got!.toString('hex'), s.binaryHex);
            const want = wire === 'escape' && s.escapeText !== undefined ? s.escapeText : s.text;
            assert.equal(got!.toString('utf8'), want);
          });
        }
      }
    }
  }
});

describe('RowRewriter: NULLs, shredding and failures', () => {
  const k = newKey('deterministic', 7);
  const col = column({ type: 'mynumber' }, 'deterministic', 'my_number');
  const cell = seal(k, canonical({ type: 'mynumber' }, '123456789018'));
  const keys = new StaticCellKeys().set(7, 1, k.key);

  test('a NULL stays NULL for every action', () => {
    for (const action of ACTIONS) {
      const out = fieldsOf(rewriter({ column: col, action, domainId: 7 }, 'hex', keys).rewrite(row(null)));
      assert.equal(out[2], null);
    }
  });

  test('a shredded version reads as NULL and is reported', () => {
    const shredded = new StaticCellKeys().set(7, 1, 'shredded');
    const seen: string[] = [];
    const rw = rewriter({ column: col, action: 'plaintext', domainId: 7 }, 'hex', shredded, () => seen.push('x'));
    assert.equal(fieldsOf(rw.rewrite(row(asSent(cell, 'hex'))))[2], null);
    assert.deepEqual(seen, ['x']);
  });

  const failures: Array<[string, () => Buffer, StaticCellKeys, string, Wire?]> = [
    ['a value that is not a cell', () => Buffer.from('\\x' + Buffer.from('123456789018').toString('hex')), keys, 'not_a_cell'],
    ['bytea text without \\x under hex output', () => Buffer.from('123456789018'), keys, 'not_a_cell'],
    ['malformed hex', () => Buffer.from('\\xff6d0g'), keys, 'not_a_cell'],
    ['a cell of another domain', () => asSent(seal(newKey('deterministic', 8), canonical({ type: 'mynumber' }, '123456789018')), 'hex'), keys, 'wrong_domain'],
    ['a tampered cell', () => { const t = Buffer.from(cell); t[t.length - 1]! ^= 1; return asSent(t, 'hex'); }, keys, 'undecryptable'],
    ['a cell under another key of the same domain and version', () => asSent(seal(newKey('deterministic', 7), canonical({ type: 'mynumber' }, '123456789018')), 'hex'), keys, 'undecryptable'],
    ['a randomized cell where the key is deterministic', () => asSent(seal(newKey('randomized', 7), canonical({ type: 'mynumber' }, '123456789018')), 'hex'), keys, 'undecryptable'],
    ['a version whose key is not loaded', () => asSent(seal({ ...k, version: 2 }, canonical({ type: 'mynumber' }, '123456789018')), 'hex'), keys, 'key_unavailable'],
    ['a binary field that is not a cell', () => Buffer.from('123456789018'), keys, 'not_a_cell', 'binary'],
  ];
  for (const [what, field, ks, reason, wire] of failures) {
    for (const action of ['plaintext', 'mask'] as const) {
      test(`${what} (${action}) → RowError ${reason} naming the column, no value`, () => {
        const rw = rewriter({ column: col, action, domainId: 7 }, wire ?? 'hex', ks);
        assert.throws(
          () => rw.rewrite(row(field())),
          (e: unknown) => {
            assert.ok(e instanceof RowError);
            assert.equal(e.reason, reason);
            assert.equal(e.column, 'public.people.my_number');
            assert.match(e.message, /public\.people\.my_number/);
            assert.doesNotMatch(e.message, /[0-9]/);
            return true;
          },
        );
      });
    }
  }

  test('ciphertext is handed out only when the stored value is a cell (hex, escape, binary); anything else fails closed', () => {
    for (const wire of WIRES) {
      const rw = rewriter({ column: col, action: 'ciphertext', domainId: 7 }, wire, keys);
      assert.deepEqual(fieldsOf(rw.rewrite(row(asSent(cell, wire))))[2], asSent(cell, wire));
      const notCells = wire === 'binary' ? [Buffer.from('123456789018'), cell.subarray(0, 8)] : [asSent(Buffer.from('123456789018'), wire), Buffer.from('123456789018')];
      for (const bad of notCells) {
        assert.throws(() => rw.rewrite(row(bad)), (e: unknown) => e instanceof RowError && e.reason === 'not_a_cell' && !/[0-9]/.test(e.message), wire);
      }
    }
  });

  test('a canonical value of the wrong shape is refused, not rendered', () => {
    const k4 = newKey('deterministic', 9);
    const bad = seal(k4, Buffer.from([1, 2, 3])); // three bytes are no int4
    const rw = new RowRewriter([{ index: 0, column: column({ type: 'int4' }), action: 'plaintext', domainId: 9 }], [1], new StaticCellKeys().set(9, 1, k4.key));
    assert.throws(() => rw.rewrite(encodeDataRow([bad]).subarray(5)), (e: unknown) => e instanceof RowError && e.reason === 'undecryptable');
  });

  test('several protected fields in one row, in any plan order, and rows of other shapes', () => {
    const kb = newKey('randomized', 11);
    const ks = new StaticCellKeys().set(7, 1, k.key).set(11, 1, kb.key);
    const dcol = column({ type: 'date' }, 'randomized', 'birth');
    const rw = new RowRewriter(
      [
        { index: 3, column: dcol, action: 'plaintext', domainId: 11 },
        { index: 0, column: col, action: 'mask', domainId: 7 },
      ],
      [0, 0, 0, 1],
      ks,
    );
    const dcell = seal(kb, canonical({ type: 'date' }, '2024-02-29'));
    const body = encodeDataRow([asSent(cell, 'hex'), Buffer.from(''), null, dcell]).subarray(5);
    const out = fieldsOf(rw.rewrite(body));
    assert.equal(out[0]!.toString(), '********9018');
    assert.deepEqual(out[1], Buffer.from(''));
    assert.equal(out[2], null);
    assert.equal(out[3]!.toString('hex'), '00002279');
    // A row with fewer fields than planned is a protocol error, not a silent pass.
    assert.throws(() => rw.rewrite(encodeDataRow([asSent(cell, 'hex')]).subarray(5)), /fewer fields/);
  });

  test('property: random int8 and date values render as PostgreSQL prints them', () => {
    const k8 = newKey('deterministic', 13);
    const ks = new StaticCellKeys().set(13, 1, k8.key);
    const icol = column({ type: 'int8' });
    const dcol = column({ type: 'date' });
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), fc.constantFrom(...WIRES), (v, wire) => {
        const c = seal(k8, canonical({ type: 'int8' }, v.toString()));
        const got = fieldsOf(rewriter({ column: icol, action: 'plaintext', domainId: 13 }, wire, ks).rewrite(row(asSent(c, wire))))[2]!;
        assert.equal(wire === 'binary' ? got.readBigInt64BE(0) : BigInt(got.toString()), v);
        if (wire !== 'binary') assert.equal(got.toString(), v.toString());
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.date({ min: new Date('0001-01-01T00:00:00Z'), max: new Date('9999-12-31T00:00:00Z'), noInvalidDate: true }), fc.constantFrom(...WIRES), (d, wire) => {
        const iso = d.toISOString().slice(0, 10);
        const c = seal(k8, canonical({ type: 'date' }, iso));
        const got = fieldsOf(rewriter({ column: dcol, action: 'plaintext', domainId: 13 }, wire, ks).rewrite(row(asSent(c, wire))))[2]!;
        if (wire === 'binary') assert.equal(got.readInt32BE(0), Math.floor(d.getTime() / 86400000) - 10957 /* days from 1970 to 2000 */);
        else assert.equal(got.toString(), iso);
      }),
      { numRuns: 300 },
    );
  });

  test('property: random text values round-trip through every wire format', () => {
    const kt = newKey('randomized', 12);
    const ks = new StaticCellKeys().set(12, 1, kt.key);
    const tcol = column({ type: 'text' }, 'randomized');
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }).filter((s) => !s.includes('\u0000')), fc.constantFrom(...WIRES), (s, wire) => {
        const c = seal(kt, Buffer.from(s, 'utf8'));
        const out = fieldsOf(rewriter({ column: tcol, action: 'plaintext', domainId: 12 }, wire, ks).rewrite(row(asSent(c, wire))));
        assert.equal(out[2]!.toString('utf8'), s);
      }),
      { numRuns: 500 },
    );
  });
});

describe('RowDescription and ParameterDescription', () => {
  const base = (name: string, i: number): FieldDescription => ({
    name, tableOid: 16384, attnum: i + 1, typeOid: 17, typlen: -1, typmod: -1, format: i % 2,
  });
  const fields: FieldDescription[] = [
    { name: 'id', tableOid: 16384, attnum: 1, typeOid: 23, typlen: 4, typmod: -1, format: 0 },
    base('番号', 1),
    base('masked', 2),
    base('backup', 3),
    base('hidden', 4),
    base('name', 5),
  ];
  const body = encodeRowDescription(fields).subarray(5);

  test('protected fields show the logical type; others are byte-identical', () => {
    const my = column({ type: 'mynumber' });
    const plans: FieldPlan[] = [
      { index: 1, column: column({ type: 'varchar', length: 12 }), action: 'plaintext', domainId: 1 },
      { index: 2, column: my, action: 'mask', domainId: 1 },
      { index: 3, column: my, action: 'ciphertext', domainId: 1 },
      { index: 4, column: column({ type: 'date' }), action: 'null', domainId: 1 },
    ];
    const out = rewriteRowDescription(body, plans);
    assert.equal(out[0], 0x54);
    assert.equal(out.readInt32BE(1), out.length - 1);
    const got = decodeRowDescription(out.subarray(5)).fields;
    assert.deepEqual(got[0], fields[0]);
    assert.deepEqual(got[1], { ...fields[1], typeOid: 1043, typlen: -1, typmod: 16 });
    assert.deepEqual(got[2], { ...fields[2], typeOid: 25, typlen: -1, typmod: -1 });
    assert.deepEqual(got[3], fields[3]);
    assert.deepEqual(got[4], { ...fields[4], typeOid: 1082, typlen: 4, typmod: -1 });
    assert.deepEqual(got[5], fields[5]);
    // Without plans the message is the original bytes.
    assert.deepEqual(rewriteRowDescription(body, []).subarray(5), body);
  });

  test('logicalTypeOid for every v1 type', () => {
    assert.deepEqual(logicalTypeOid({ type: 'text' }), { oid: 25, typlen: -1, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'varchar' }), { oid: 1043, typlen: -1, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'varchar', length: 12 }), { oid: 1043, typlen: -1, typmod: 16 });
    assert.deepEqual(logicalTypeOid({ type: 'char', length: 12 }), { oid: 1042, typlen: -1, typmod: 16 });
    assert.deepEqual(logicalTypeOid({ type: 'mynumber' }), { oid: 25, typlen: -1, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'mynumber', length: 12 }), { oid: 1042, typlen: -1, typmod: 16 });
    assert.deepEqual(logicalTypeOid({ type: 'corporate_number' }), { oid: 25, typlen: -1, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'int2' }), { oid: 21, typlen: 2, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'int4' }), { oid: 23, typlen: 4, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'int8' }), { oid: 20, typlen: 8, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'date' }), { oid: 1082, typlen: 4, typmod: -1 });
    assert.deepEqual(logicalTypeOid({ type: 'bytea' }), { oid: 17, typlen: -1, typmod: -1 });
    assert.throws(() => logicalTypeOid({ type: 'numeric' }), TypeError);
  });

  test('malformed RowDescription and out-of-range plans are protocol errors', () => {
    assert.throws(() => rewriteRowDescription(body.subarray(0, body.length - 1), []), /truncated|trailing/);
    assert.throws(() => rewriteRowDescription(body, [{ index: 6, column: column({ type: 'text' }), action: 'plaintext', domainId: 1 }]), /out of range/);
  });

  test('ParameterDescription shows logical types (arrays as arrays)', () => {
    const pd = encodeParameterDescription([23, 17, 1001]).subarray(5);
    const out = rewriteParameterDescription(pd, [
      { index: 1, column: column({ type: 'mynumber' }) },
      { index: 2, column: column({ type: 'int8' }), array: true },
    ]);
    assert.equal(out[0], 0x74);
    assert.deepEqual([out.readUInt32BE(7), out.readUInt32BE(11), out.readUInt32BE(15)], [23, 25, 1016]);
  });
});

describe('bytea text codecs', () => {
  test('hex: upper and lower case, whitespace between pairs; odd or bad digits refused', () => {
    assert.deepEqual(decodeByteaText(Buffer.from('\\xDEad be\nEF')), Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    assert.deepEqual(decodeByteaText(Buffer.from('\\x')), Buffer.alloc(0));
    assert.throws(() => decodeByteaText(Buffer.from('\\xabc')), /hexadecimal/);
    assert.throws(() => decodeByteaText(Buffer.from('\\xa b')), /hexadecimal/);
    assert.throws(() => decodeByteaText(Buffer.from('\\xzz')), /hexadecimal/);
  });
  test('escape: octal, doubled backslash, printable bytes; bad escapes refused', () => {
    assert.deepEqual(decodeByteaText(Buffer.from('a\\000\\377\\\\b'), true), Buffer.from([0x61, 0, 0xff, 0x5c, 0x62]));
    assert.throws(() => decodeByteaText(Buffer.from('\\400'), true), /bytea/);
    assert.throws(() => decodeByteaText(Buffer.from('\\12'), true), /bytea/);
    assert.throws(() => decodeByteaText(Buffer.from('\\'), true), /bytea/);
    assert.throws(() => decodeByteaText(Buffer.from('abc')), /must start/);
  });
  test('property: encoders match an independent rendering and decode back', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (a) => {
        const b = Buffer.from(a);
        assert.equal(encodeByteaHex(b).toString('latin1'), '\\x' + b.toString('hex'));
        assert.equal(encodeByteaEscape(b).toString('latin1'), byteaEscape(b));
        assert.deepEqual(decodeByteaText(encodeByteaHex(b)), b);
        assert.deepEqual(decodeByteaText(encodeByteaEscape(b), true), b);
      }),
      { numRuns: 1000 },
    );
  });
});


describe('RowRewriter: client encodings', () => {
  const k = newKey('deterministic', 61);
  const keys = new StaticCellKeys().set(k.domainId, k.version, k.key);
  const col = column({ type: 'text' });
  const JA = '山田ソ太郎ｱ';
  const cell = seal(k, Buffer.from(JA, 'utf8'));

  test('text and binary formats are both sent in the client encoding; the mask too; ASCII needs no codec', () => {
    for (const wire of ['hex', 'binary'] as const) {
      const r = new RowRewriter([{ index: 2, column: col, action: 'plaintext', domainId: k.domainId }], [0, 1, wire === 'binary' ? 1 : 0, 0, 1], keys,
        { codec: () => clientCodec('SJIS') });
      assert.deepEqual(fieldsOf(r.rewrite(row(asSent(cell, wire))))[2], iconv.encode(JA, 'shift_jis'));
    }
    const m = new RowRewriter([{ index: 2, column: col, action: 'mask', domainId: k.domainId }], [0, 1, 0, 0, 1], keys, { codec: () => clientCodec('LATIN1') });
    assert.deepEqual(fieldsOf(m.rewrite(row(asSent(cell, 'hex')))), [Buffer.from('17'), Buffer.from('名前'), Buffer.from('****'), null, Buffer.from([0, 1, 2])]);
  });

  test('a character with no equivalent is 22P05 naming the column; an encoding without a converter is 55000', () => {
    const plan = [{ index: 2, column: col, action: 'plaintext' as const, domainId: k.domainId }];
    const latin1 = new RowRewriter(plan, [0, 1, 0, 0, 1], keys, { codec: () => clientCodec('LATIN1') });
    assert.throws(() => latin1.rewrite(row(asSent(cell, 'hex'))), (e: unknown) => e instanceof MamoriError && e.sqlstate === '22P05'
      && e.message === 'a character in protected column public.people.c has no equivalent in encoding "LATIN1"');
    const big5 = new RowRewriter(plan, [0, 1, 0, 0, 1], keys, { codec: () => clientCodec('BIG5') });
    assert.throws(() => big5.rewrite(row(asSent(cell, 'hex'))), (e: unknown) => e instanceof MamoriError && e.sqlstate === '55000');
    const ascii = seal(k, Buffer.from('Sato', 'utf8'));
    assert.deepEqual(fieldsOf(big5.rewrite(row(asSent(ascii, 'hex'))))[2], Buffer.from('Sato'));
  });
});
