// Logical types: parsing, canonical encodings and their round trips, refusals (whose reasons never contain
// the value), masks — and a differential check of the conversions against a real PostgreSQL.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  DATE_MAX,
  DATE_MIN,
  binaryFromCanonical,
  canonicalFromBinary,
  canonicalFromText,
  formatLogicalType,
  maskCanonical,
  parseLogicalType,
  textFromCanonical,
  type CanonicalResult,
  type LogicalTypeSpec,
} from '../../keyring/logical-types.js';
import { startCluster, type Cluster } from '../harness/cluster.js';

const T = (s: string): LogicalTypeSpec => parseLogicalType(s);
function value(r: CanonicalResult): Buffer {
  if (!r.ok) assert.fail(`expected ok, got: ${r.reason}`);
  return r.value;
}
function reason(r: CanonicalResult): string {
  if (r.ok) assert.fail('expected a refusal');
  return r.reason;
}

describe('parseLogicalType', () => {
  test('names, aliases and lengths', () => {
    assert.deepEqual(T('text'), { type: 'text' });
    assert.deepEqual(T('varchar(12)'), { type: 'varchar', length: 12 });
    assert.deepEqual(T(' Character  Varying ( 12 ) '), { type: 'varchar', length: 12 });
    assert.deepEqual(T('varchar'), { type: 'varchar' });
    assert.deepEqual(T('char(3)'), { type: 'char', length: 3 });
    assert.deepEqual(T('character'), { type: 'char', length: 1 });
    assert.deepEqual(T('char'), { type: 'char', length: 1 });
    assert.deepEqual(T('bpchar'), { type: 'char' });
    assert.deepEqual(T('mynumber'), { type: 'mynumber' });
    assert.deepEqual(T('corporate_number'), { type: 'corporate_number' });
    assert.deepEqual(T('smallint'), { type: 'int2' });
    assert.deepEqual(T('integer'), { type: 'int4' });
    assert.deepEqual(T('int'), { type: 'int4' });
    assert.deepEqual(T('BIGINT'), { type: 'int8' });
    assert.deepEqual(T('date'), { type: 'date' });
    assert.deepEqual(T('bytea'), { type: 'bytea' });
    assert.equal(formatLogicalType(T('character varying(7)')), 'varchar(7)');
    assert.equal(formatLogicalType(T('int')), 'int4');
  });
  test('refusals', () => {
    for (const bad of ['numeric', 'int4(3)', 'varchar(0)', 'varchar(10485761)', 'varchar(', 'text[]', '', 'date(2)']) {
      assert.throws(() => parseLogicalType(bad), TypeError, bad);
    }
  });
});

describe('canonical encodings', () => {
  test('text and varchar: UTF-8 as given, no Unicode normalization', () => {
    assert.deepEqual(value(canonicalFromText(T('text'), 'é')), Buffer.from([0xc3, 0xa9]));
    assert.deepEqual(value(canonicalFromText(T('text'), 'e\u0301')), Buffer.from([0x65, 0xcc, 0x81]));
    assert.deepEqual(value(canonicalFromText(T('text'), 'ab  ')), Buffer.from('ab  '));
    assert.equal(value(canonicalFromText(T('text'), '')).length, 0);
    assert.match(reason(canonicalFromText(T('text'), 'a\u0000b')), /NUL/);
    assert.match(reason(canonicalFromText(T('text'), 'a\ud800b')), /not valid Unicode/);
    assert.deepEqual(value(canonicalFromText(T('text'), '😀')), Buffer.from('😀'));
  });

  test('varchar(n) counts characters; excess spaces are cut, other excess refused', () => {
    const v3 = T('varchar(3)');
    assert.deepEqual(value(canonicalFromText(v3, 'あいう')), Buffer.from('あいう'));
    assert.deepEqual(value(canonicalFromText(v3, '😀😀😀')), Buffer.from('😀😀😀'));
    assert.deepEqual(value(canonicalFromText(v3, 'ab   ')), Buffer.from('ab '));
    assert.deepEqual(value(canonicalFromText(v3, 'abc  ')), Buffer.from('abc'));
    assert.equal(reason(canonicalFromText(v3, 'あいうえ')), 'value too long for type varchar(3)');
    assert.equal(reason(canonicalFromText(v3, 'abc d')), 'value too long for type varchar(3)');
  });

  test('char(n): trailing spaces stripped (equal values, equal bytes), padded back on output', () => {
    const c5 = T('char(5)');
    const a = value(canonicalFromText(c5, 'ab'));
    assert.deepEqual(a, Buffer.from('ab'));
    assert.deepEqual(value(canonicalFromText(c5, 'ab   ')), a);
    assert.deepEqual(value(canonicalFromText(c5, 'ab        ')), a);
    assert.deepEqual(value(canonicalFromText(c5, ' ab')), Buffer.from(' ab'));
    assert.equal(textFromCanonical(c5, a), 'ab   ');
    assert.deepEqual(binaryFromCanonical(c5, a), Buffer.from('ab   '));
    assert.equal(textFromCanonical(c5, value(canonicalFromText(c5, 'あい'))), 'あい   ');
    assert.equal(reason(canonicalFromText(c5, 'abcdef')), 'value too long for type char(5)');
    assert.equal(textFromCanonical(T('bpchar'), a), 'ab');
  });

  test('mynumber and corporate_number: every accepted form gives the same 12 / 13 ASCII digits', () => {
    const m = T('mynumber');
    const canon = value(canonicalFromText(m, '123456789018'));
    assert.deepEqual(canon, Buffer.from('123456789018'));
    for (const form of ['１２３４ ５６７８ ９０１８', '1234-5678-9018', '1234ー5678ー9018', ' 1234\u30005678\u30009018 ']) {
      assert.deepEqual(value(canonicalFromText(m, form)), canon, form);
      assert.deepEqual(value(canonicalFromBinary(m, Buffer.from(form))), canon, form);
    }
    assert.equal(reason(canonicalFromText(m, '123456789012')), 'My Number check digit does not match');
    assert.equal(reason(canonicalFromText(m, '12345678901')), 'My Number must have 12 digits, not 11');
    assert.equal(textFromCanonical(m, canon), '123456789018');
    const c = T('corporate_number');
    assert.deepEqual(value(canonicalFromText(c, '7-1234-5678-9012')), Buffer.from('7123456789012'));
    assert.match(reason(canonicalFromText(c, '8123456789012')), /check digit does not match/);
  });

  test('integers: big-endian of their width, PostgreSQL ranges and syntax', () => {
    const cases: [string, string, string][] = [
      ['int2', '-32768', '8000'],
      ['int2', '32767', '7fff'],
      ['int2', ' +12 ', '000c'],
      ['int4', '-1', 'ffffffff'],
      ['int4', '-0', '00000000'],
      ['int4', '2147483647', '7fffffff'],
      ['int4', '007', '00000007'],
      ['int8', '-9223372036854775808', '8000000000000000'],
      ['int8', '9223372036854775807', '7fffffffffffffff'],
    ];
    for (const [type, text, hex] of cases) {
      const c = value(canonicalFromText(T(type), text));
      assert.equal(c.toString('hex'), hex, `${type} ${text}`);
    }
    assert.equal(reason(canonicalFromText(T('int2'), '32768')), 'value out of range for type int2');
    assert.equal(reason(canonicalFromText(T('int4'), '-2147483649')), 'value out of range for type int4');
    assert.equal(reason(canonicalFromText(T('int8'), '9223372036854775808')), 'value out of range for type int8');
    for (const bad of ['', ' ', '1.5', '0x10', '1_000', '1e3', '--1', '12a', '１２']) {
      assert.equal(reason(canonicalFromText(T('int4'), bad)), 'invalid input syntax for type int4', bad);
    }
    assert.equal(reason(canonicalFromBinary(T('int4'), Buffer.alloc(8))), 'binary int4 must be 4 bytes');
  });

  test('dates: int32 days since 2000-01-01, calendar checked, specials refused', () => {
    const d = T('date');
    const days = (s: string): number => value(canonicalFromText(d, s)).readInt32BE(0);
    assert.equal(days('2000-01-01'), 0);
    assert.equal(days('1999-12-31'), -1);
    assert.equal(days('2000-03-01'), 60);
    assert.equal(days(' 2024-2-29 '), days('2024-02-29'));
    assert.equal(days('1970-01-01'), -10957);
    assert.equal(days('0001-01-01'), DATE_MIN);
    assert.equal(days('5874897-12-31'), DATE_MAX);
    // PostgreSQL's own limit: DATE_END_JULIAN (2147483494) - POSTGRES_EPOCH_JDATE (2451545) - 1
    assert.equal(DATE_MAX, 2147483494 - 2451545 - 1);
    assert.equal(textFromCanonical(d, value(canonicalFromText(d, '2024-2-9'))), '2024-02-09');
    assert.equal(reason(canonicalFromText(d, '2023-02-29')), 'date day out of range');
    assert.equal(reason(canonicalFromText(d, '1900-02-29')), 'date day out of range');
    assert.ok(canonicalFromText(d, '2000-02-29').ok);
    assert.equal(reason(canonicalFromText(d, '2023-13-01')), 'date month out of range');
    assert.equal(reason(canonicalFromText(d, '5874898-01-01')), 'date out of range (0001-01-01 to 5874897-12-31)');
    for (const special of ['infinity', '-infinity', 'today', 'epoch', 'now']) {
      assert.match(reason(canonicalFromText(d, special)), /special date values/);
    }
    for (const bad of ['2024/01/01', '01-02-2024', '2024-01-01 10:00', '20240101', '']) {
      assert.match(reason(canonicalFromText(d, bad)), /invalid input syntax for type date/, bad);
    }
    const inf = Buffer.alloc(4);
    inf.writeInt32BE(0x7fffffff);
    assert.match(reason(canonicalFromBinary(d, inf)), /special date values/);
    inf.writeInt32BE(-0x80000000);
    assert.match(reason(canonicalFromBinary(d, inf)), /special date values/);
  });

  test('dates: property — every day in range survives text and binary round trips', () => {
    const d = T('date');
    fc.assert(
      fc.property(fc.integer({ min: DATE_MIN, max: DATE_MAX }), (n) => {
        const c = Buffer.alloc(4);
        c.writeInt32BE(n);
        assert.deepEqual(value(canonicalFromBinary(d, c)), c);
        const text = textFromCanonical(d, c);
        assert.match(text, /^\d{4,7}-\d\d-\d\d$/);
        assert.deepEqual(value(canonicalFromText(d, text)), c);
      }),
      { numRuns: 3000 },
    );
  });

  test('bytea: hex and escape input, \\x hex output', () => {
    const b = T('bytea');
    assert.deepEqual(value(canonicalFromText(b, '\\x0aFF')), Buffer.from([0x0a, 0xff]));
    assert.deepEqual(value(canonicalFromText(b, '\\x0a ff\n10')), Buffer.from([0x0a, 0xff, 0x10]));
    assert.deepEqual(value(canonicalFromText(b, '\\x')), Buffer.alloc(0));
    assert.deepEqual(value(canonicalFromText(b, 'a\\\\b\\001\\377')), Buffer.from([0x61, 0x5c, 0x62, 0x01, 0xff]));
    assert.deepEqual(value(canonicalFromText(b, 'é')), Buffer.from([0xc3, 0xa9]));
    assert.match(reason(canonicalFromText(b, '\\x0')), /invalid hexadecimal/);
    assert.match(reason(canonicalFromText(b, '\\x0 a')), /invalid hexadecimal/);
    assert.match(reason(canonicalFromText(b, 'a\\q')), /invalid input syntax for type bytea/);
    assert.match(reason(canonicalFromText(b, '\\400')), /invalid input syntax for type bytea/);
    assert.equal(textFromCanonical(b, Buffer.from([0, 0xab])), '\\x00ab');
    assert.deepEqual(value(canonicalFromBinary(b, Buffer.from([0, 1, 2]))), Buffer.from([0, 1, 2]));
  });

  test('every v1 type round-trips text → canonical → text → canonical and canonical → binary → canonical', () => {
    const samples: [string, string[]][] = [
      ['text', ['', 'hello', 'あいう', 'ab  ', '😀']],
      ['varchar(4)', ['', 'abcd', 'あいうえ']],
      ['char(4)', ['a', 'abcd', 'あ']],
      ['bpchar', ['x y']],
      ['mynumber', ['000000000019', '１２３４ ５６７８ ９０１８']],
      ['corporate_number', ['7123456789012']],
      ['int2', ['0', '-32768', '32767']],
      ['int4', ['42', '-2147483648']],
      ['int8', ['-9223372036854775808', '1']],
      ['date', ['2000-01-01', '0001-01-01', '2024-02-29', '5874897-12-31']],
      ['bytea', ['\\x', '\\xdeadbeef', 'abc']],
    ];
    for (const [typeName, texts] of samples) {
      const t = T(typeName);
      for (const text of texts) {
        const c = value(canonicalFromText(t, text));
        const out = textFromCanonical(t, c);
        assert.deepEqual(value(canonicalFromText(t, out)), c, `${typeName} text ${JSON.stringify(text)}`);
        assert.deepEqual(value(canonicalFromBinary(t, binaryFromCanonical(t, c))), c, `${typeName} binary`);
      }
    }
  });

  test('refusal reasons never contain the value', () => {
    const types = ['mynumber', 'corporate_number', 'int2', 'int4', 'int8', 'date', 'varchar(2)', 'char(2)'];
    fc.assert(
      // A marker inside the input: any echo of the value would carry it into the reason.
      fc.property(fc.constantFrom(...types), fc.string({ maxLength: 12 }), fc.string({ maxLength: 12 }), (typeName, a, b) => {
        const r = canonicalFromText(T(typeName), `${a}Qz7${b}`);
        assert.equal(r.ok, false);
        if (!r.ok) assert.ok(!r.reason.includes('Qz7'), `${typeName}: ${r.reason}`);
      }),
      { numRuns: 3000 },
    );
  });

  test('textFromCanonical refuses canonical bytes of the wrong size', () => {
    assert.throws(() => textFromCanonical(T('int4'), Buffer.alloc(2)), RangeError);
    assert.throws(() => textFromCanonical(T('mynumber'), Buffer.from('12345')), RangeError);
  });
});

describe('maskCanonical', () => {
  test('numbers show the last four, text a fixed mask, other types null', () => {
    assert.equal(maskCanonical(T('mynumber'), Buffer.from('123456789018')), '********9018');
    assert.equal(maskCanonical(T('corporate_number'), Buffer.from('7123456789012')), '*********9012');
    assert.equal(maskCanonical(T('text'), Buffer.from('山田太郎')), '****');
    assert.equal(maskCanonical(T('varchar(20)'), Buffer.from('a')), '****');
    assert.equal(maskCanonical(T('char(2)'), Buffer.from('ab')), '****');
    assert.equal(maskCanonical(T('int4'), Buffer.alloc(4)), null);
    assert.equal(maskCanonical(T('int8'), Buffer.alloc(8)), null);
    assert.equal(maskCanonical(T('date'), Buffer.alloc(4)), null);
    assert.equal(maskCanonical(T('bytea'), Buffer.from('x')), null);
  });
});

describe('agrees with PostgreSQL', () => {
  let pg: Cluster;
  before(async () => {
    pg = await startCluster({ tls: false });
  });
  after(async () => {
    await pg?.stop();
  });

  test('date text output and days since 2000-01-01, both directions', async () => {
    const days = [DATE_MIN, DATE_MAX, 0, -1, 59, 60, -10957, 366, -730119, 3000000];
    const rnd = fc.sample(fc.integer({ min: DATE_MIN, max: DATE_MAX }), { numRuns: 400, seed: 3 });
    const all = [...days, ...rnd];
    // the cluster's default DateStyle is ISO, which is what textFromCanonical produces
    const r = await pg.query<{ n: number; t: string }>(
      `SELECT n, ('2000-01-01'::date + n)::text AS t FROM unnest($1::int[]) AS n`,
      [all],
    );
    assert.equal(r.rows.length, all.length);
    for (const row of r.rows) {
      const c = Buffer.alloc(4);
      c.writeInt32BE(row.n);
      assert.equal(textFromCanonical(T('date'), c), row.t);
      assert.equal(value(canonicalFromText(T('date'), row.t)).readInt32BE(0), row.n);
    }
  });

  test('date input: what PostgreSQL accepts as ISO we accept with the same day; its refusals we refuse', async () => {
    const inputs = ['2024-02-29', '2023-02-29', '2024-2-9', ' 2024-01-01 ', '2000-13-01', '1900-02-29', '0001-01-01', '10000-01-01'];
    for (const s of inputs) {
      const ours = canonicalFromText(T('date'), s);
      let theirs: number | null;
      try {
        const r = await pg.query<{ n: number }>(`SELECT ($1::date - '2000-01-01'::date) AS n`, [s]);
        theirs = r.rows[0]!.n;
      } catch {
        theirs = null;
      }
      assert.equal(ours.ok ? ours.value.readInt32BE(0) : null, theirs, s);
    }
  });

  test('integers: our canonical bytes equal int2send/int4send/int8send', async () => {
    for (const [type, arb] of [
      ['int2', fc.integer({ min: -32768, max: 32767 }).map(String)],
      ['int4', fc.integer().map(String)],
      ['int8', fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String)],
    ] as const) {
      const texts = [...fc.sample(arb as fc.Arbitrary<string>, { numRuns: 100, seed: 5 }), ' +7 ', '-0', '0010'];
      const r = await pg.query<{ b: Buffer }>(`SELECT ${type}send(v::${type}) AS b FROM unnest($1::text[]) AS v`, [texts]);
      texts.forEach((t, i) => assert.deepEqual(value(canonicalFromText(T(type), t)), r.rows[i]!.b, `${type} ${t}`));
    }
  });

  test('varchar(n) and char(n) on assignment: same acceptance, same stored value, same output', async () => {
    await pg.query('CREATE TABLE lt_chars (v varchar(3), c char(5))');
    const inputs = ['ab', 'abc', 'abc  ', 'abcd', 'ab d', 'あいう', 'あいうえ', '', ' a', 'a  b', '😀😀😀 '];
    for (const s of inputs) {
      for (const [col, type] of [['v', 'varchar(3)'], ['c', 'char(5)']] as const) {
        const ours = canonicalFromText(T(type), s);
        let stored: string | null;
        try {
          const r = await pg.query<{ x: string }>(`INSERT INTO lt_chars (${col}) VALUES ($1) RETURNING ${col} AS x`, [s]);
          stored = r.rows[0]!.x;
        } catch {
          stored = null;
        }
        assert.equal(ours.ok ? textFromCanonical(T(type), ours.value) : null, stored, `${type} ${JSON.stringify(s)}`);
      }
    }
    // bpchar equality ignores trailing spaces, and so do our canonical bytes
    const eq = await pg.query<{ e: boolean }>(`SELECT 'ab'::char(5) = 'ab   '::char(5) AS e`);
    assert.equal(eq.rows[0]!.e, true);
    assert.deepEqual(value(canonicalFromText(T('char(5)'), 'ab')), value(canonicalFromText(T('char(5)'), 'ab   ')));
  });

  test('bytea text input (hex and escape) and text output', async () => {
    const inputs = ['\\x0aff', '\\x0a ff', '\\xDEADbeef', '\\x', 'abc', 'a\\\\b', 'x\\001y\\377', 'é', '\\x0', 'a\\q', '\\400'];
    for (const s of inputs) {
      const ours = canonicalFromText(T('bytea'), s);
      let theirs: { b: Buffer; t: string } | null;
      try {
        const r = await pg.query<{ b: Buffer; t: string }>(`SELECT $1::bytea AS b, $1::bytea::text AS t`, [s]);
        theirs = r.rows[0]!;
      } catch {
        theirs = null;
      }
      if (theirs === null) {
        assert.equal(ours.ok, false, s);
      } else {
        assert.deepEqual(value(ours), theirs.b, s);
        assert.equal(textFromCanonical(T('bytea'), value(ours)), theirs.t, s);
      }
    }
  });
});
