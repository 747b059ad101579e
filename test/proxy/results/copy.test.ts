import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  CopyError,
  CopyInRewriter,
  CopyOptionError,
  CopyOutRewriter,
  copyFormat,
  decodeCsvField,
  decodeTextField,
  encodeCsvField,
  encodeTextField,
  rewriteCopyIn,
  type CopyFormat,
  type CopyOptions,
  type CopyValue,
} from '../../../proxy/results/copy.js';
import { RowError, StaticCellKeys, type FieldAction } from '../../../proxy/results/index.js';
import { MamoriError } from '../../../proxy/errors.js';
import iconv from 'iconv-lite';
import { canonical, column, newKey, seal } from './fixtures.js';

const MYNUMBER = column({ type: 'mynumber' }, 'deterministic', 'my_number');
const NAMES = ['id', 'my_number', 'name'];
const COLUMNS = [null, MYNUMBER, null];

/** A stand-in cipher for the COPY FROM tests: any injective function of the value will do. */
const fakeCell = (v: CopyValue): Buffer => Buffer.concat([Buffer.from('cell:', 'latin1'), v.canonical]);

/** Feeds `input` in the given chunk sizes (cycled) and returns everything emitted, CopyDone included. */
function runIn(fmt: CopyFormat, input: Buffer, sizes: readonly number[], columns = COLUMNS): { out: Buffer; maxPending: number } {
  const r = new CopyInRewriter(fmt, columns);
  const parts: Buffer[] = [];
  let maxPending = 0;
  for (let i = 0, k = 0; i < input.length; k++) {
    const n = Math.max(1, sizes[k % sizes.length]!);
    parts.push(rewriteCopyIn(r, input.subarray(i, i + n), fakeCell));
    maxPending = Math.max(maxPending, r.pending);
    i += n;
  }
  parts.push(rewriteCopyIn(r, null, fakeCell));
  return { out: Buffer.concat(parts), maxPending };
}

/** Reference splitter for server-written streams (ours only ever produces well-formed ones): rows of fields. */
function parseStream(fmt: CopyFormat, s: Buffer): (Buffer | null)[][] {
  const rows: (Buffer | null)[][] = [];
  let i = 0;
  while (i < s.length) {
    const fields: (Buffer | null)[] = [];
    for (;;) {
      const start = i;
      let quoted = false;
      let inQ = false;
      while (i < s.length) {
        const c = s[i]!;
        if (fmt.csv) {
          if (inQ) {
            if (c === fmt.escape && (s[i + 1] === fmt.quote || s[i + 1] === fmt.escape) && i + 1 < s.length) { i += 2; continue; }
            if (c === fmt.quote) inQ = false;
            i++;
            continue;
          }
          if (c === fmt.quote) { inQ = true; quoted = true; i++; continue; }
        } else if (c === 0x5c) { i += 2; continue; }
        if (c === fmt.delimiter || c === 0x0a || c === 0x0d) break;
        i++;
      }
      const raw = s.subarray(start, i);
      const isNull = !quoted && raw.equals(fmt.null);
      fields.push(isNull ? null : fmt.csv ? decodeCsvField(raw, 0, raw.length, fmt) : decodeTextField(raw, 0, raw.length));
      if (s[i] === fmt.delimiter) { i++; continue; }
      i += s[i] === 0x0d && s[i + 1] === 0x0a ? 2 : 1; // line terminator
      break;
    }
    rows.push(fields);
  }
  return rows;
}

function encodeRow(fmt: CopyFormat, row: (string | null)[], forceQuote: boolean[] = []): string {
  return row
    .map((v, k) => (v === null ? fmt.null.toString('utf8') : (fmt.csv ? encodeCsvField(Buffer.from(v), fmt, forceQuote[k] === true, row.length === 1) : encodeTextField(Buffer.from(v), fmt.delimiter)).toString('utf8')))
    .join(String.fromCharCode(fmt.delimiter));
}

const hexCell = (mn: string): string => '\\x' + fakeCell({ column: MYNUMBER, canonical: canonical({ type: 'mynumber' }, mn) }).toString('hex');

describe('copyFormat', () => {
  test('defaults follow PostgreSQL: text tab and \\N, csv comma, empty null, double quote', () => {
    const t = copyFormat({ format: 'text' }, NAMES);
    assert.equal(t.delimiter, 0x09);
    assert.equal(t.null.toString(), '\\N');
    const c = copyFormat({ format: 'csv', quote: "'" }, NAMES);
    assert.equal(c.delimiter, 0x2c);
    assert.equal(c.null.length, 0);
    assert.equal(c.quote, 0x27);
    assert.equal(c.escape, 0x27, 'ESCAPE defaults to QUOTE');
    const f = copyFormat({ format: 'csv', forceQuote: '*', forceNotNull: ['name'], forceNull: ['my_number'], header: 'match' }, NAMES);
    assert.deepEqual(f.forceQuote, [true, true, true]);
    assert.deepEqual(f.forceNotNull, [false, false, true]);
    assert.deepEqual(f.forceNull, [false, true, false]);
    assert.equal(f.header, true);
  });

  test('binary, non-UTF8 encodings, multi-byte delimiters and CSV-only options in text are refused', () => {
    const bad: CopyOptions[] = [
      { format: 'binary' },
      { format: 'text', encoding: 'SJIS' },
      { format: 'csv', delimiter: '、' },
      { format: 'text', delimiter: '\\' },
      { format: 'text', quote: '"' },
      { format: 'csv', delimiter: '"' },
      { format: 'csv', forceQuote: ['nope'] },
      { format: 'text', null: 'X', default: 'X' },
    ];
    for (const o of bad) assert.throws(() => copyFormat(o, NAMES), CopyOptionError, JSON.stringify(o));
    assert.equal(copyFormat({ format: 'text', encoding: 'utf-8' }, NAMES).csv, false);
  });
});

describe('CopyInRewriter', () => {
  test('text: the protected field becomes \\\\x<hex> (bytea input, backslash escaped), the rest is byte-identical', () => {
    const fmt = copyFormat({ format: 'text' }, NAMES);
    const input = Buffer.from('1\t1234-5678-9018\tSato\\tTaro\n2\t\\N\t\\N\n3\t000000000019\ta\\\\b\n');
    const { out } = runIn(fmt, input, [1000]);
    assert.equal(
      out.toString(),
      `1\t\\${hexCell('123456789018')}\tSato\\tTaro\n2\t\\N\t\\N\n3\t\\${hexCell('000000000019')}\ta\\\\b\n`,
    );
  });

  test('csv: the protected field becomes \\x<hex>, quoted fields with delimiters, quotes and newlines stay intact', () => {
    const fmt = copyFormat({ format: 'csv' }, NAMES);
    const input = Buffer.from('1,"1234-5678-9018","a,""b""\nc"\r\n2,,x\r\n');
    const { out } = runIn(fmt, input, [1000]);
    assert.equal(out.toString(), `1,${hexCell('123456789018')},"a,""b""\nc"\r\n2,,x\r\n`);
  });

  test('every chunking gives the same output (one byte per CopyData included)', () => {
    for (const opts of [{ format: 'text' }, { format: 'csv', header: true }] as CopyOptions[]) {
      const fmt = copyFormat(opts, NAMES);
      const rows = Array.from({ length: 40 }, (_, i) => encodeRow(fmt, [String(i), i % 7 === 0 ? null : '123456789018', `名前 "${i}",\t\\\n`])).join('\n') + '\n';
      const input = Buffer.from((fmt.header ? 'id,my_number,name\n' : '') + rows);
      const whole = runIn(fmt, input, [input.length]).out;
      assert.deepEqual(runIn(fmt, input, [1]).out, whole);
      assert.deepEqual(runIn(fmt, input, [3, 1, 17, 2]).out, whole);
      const parsed = parseStream(fmt, whole);
      assert.equal(parsed.length, 40 + (fmt.header ? 1 : 0));
    }
  });

  test('property: random rows, options and chunkings; unprotected fields unchanged, protected ones are their cells', () => {
    const value = fc.string({ unit: fc.constantFrom('a', 'Z', ',', '\t', '\n', '\r', '"', "'", '\\', '|', '.', 'N', 'é', '山', ' ', '0') , maxLength: 8 });
    const mn = fc.constantFrom('123456789018', '0000-0000-0019', ' 000000000027 ');
    const rowArb = fc.tuple(fc.option(value, { nil: null }), fc.option(mn, { nil: null }), fc.option(value, { nil: null }));
    const optsArb = fc.oneof(
      fc.record({ format: fc.constant('text' as const), delimiter: fc.constantFrom('\t', '|', ','), null: fc.constantFrom('\\N', 'NULL', '') }),
      fc.record({
        format: fc.constant('csv' as const),
        delimiter: fc.constantFrom(',', '\t', '|', ';'),
        null: fc.constantFrom('', 'NULL', '\\N'),
        quote: fc.constantFrom('"', "'"),
        escape: fc.constantFrom('"', "'", '\\'),
        header: fc.boolean(),
      }),
    );
    fc.assert(
      fc.property(optsArb, fc.array(rowArb, { minLength: 1, maxLength: 12 }), fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 5 }), fc.boolean(), fc.boolean(), (opts, rows, sizes, crlf, fq) => {
        let fmt: CopyFormat;
        try {
          fmt = copyFormat(opts, NAMES);
        } catch {
          return; // option combinations PostgreSQL rejects too
        }
        const eol = crlf ? '\r\n' : '\n';
        const header = fmt.header ? 'id,my_number,name' + eol : '';
        // A NULL marker that is also a value cannot round trip unquoted: skip values equal to it in text.
        const norm = rows.map((r) => r.map((v) => (v !== null && !fmt.csv && v === fmt.null.toString() ? null : v)));
        const input = Buffer.from(header + norm.map((r) => encodeRow(fmt, r, [fq, fq, fq])).join(eol) + eol);
        const whole = runIn(fmt, input, [input.length]).out;
        assert.deepEqual(runIn(fmt, input, sizes).out, whole);
        const parsed = parseStream(fmt, whole);
        const data = fmt.header ? parsed.slice(1) : parsed;
        assert.equal(data.length, norm.length);
        data.forEach((got, i) => {
          const want = norm[i]!;
          // a lone empty-string field equal to the null marker reads back as NULL, as it would on the server
          assert.deepEqual(got[0]?.toString() ?? null, want[0]);
          assert.deepEqual(got[2]?.toString() ?? null, want[2]);
          assert.equal(got[1]?.toString('latin1') ?? null, want[1] === null ? null : hexCell(want[1].replace(/[- ]/g, '')));
        });
      }),
      { numRuns: 400 },
    );
  });

  test('an invalid My Number names the line (header counted) and the column, never the value', () => {
    const fmt = copyFormat({ format: 'csv', header: true }, NAMES);
    const input = Buffer.from('id,my_number,name\n1,123456789018,a\n2,000000000019,b\n3,123456789012,c\n4,000000000027,d\n');
    for (const sizes of [[input.length], [1]]) {
      const r = new CopyInRewriter(fmt, COLUMNS);
      let err: unknown;
      try {
        for (let i = 0; i < input.length; i += sizes[0]!) rewriteCopyIn(r, input.subarray(i, i + sizes[0]!), fakeCell);
        rewriteCopyIn(r, null, fakeCell);
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof CopyError);
      assert.equal(err.line, 4);
      assert.equal(err.column, 'my_number');
      assert.equal(err.sqlstate, '22P02');
      assert.match(err.message, /^COPY line 4, column my_number: invalid value for protected column public\.people\.my_number/);
      assert.doesNotMatch(err.message, /123456789012/);
    }
  });

  test('embedded newlines in quoted CSV fields are one line each; field counts are checked', () => {
    const fmt = copyFormat({ format: 'csv' }, NAMES);
    const r = new CopyInRewriter(fmt, COLUMNS);
    assert.throws(() => rewriteCopyIn(r, Buffer.from('1,123456789018,"a\nb\nc"\n2,12,x\n'), fakeCell), (e: CopyError) => e.line === 2 && e.column === 'my_number');
    const r2 = new CopyInRewriter(fmt, COLUMNS);
    assert.throws(() => rewriteCopyIn(r2, Buffer.from('1,123456789018\n'), fakeCell), (e: CopyError) => e.line === 1 && /missing data/.test(e.message));
    const r3 = new CopyInRewriter(fmt, COLUMNS);
    rewriteCopyIn(r3, Buffer.from('1,123456789018,"open'), fakeCell);
    assert.throws(() => rewriteCopyIn(r3, null, fakeCell), /unterminated CSV quoted field/);
  });

  test('end-of-data marker: text and csv stop at \\. (the rest is dropped); text `row\\.` keeps the row', () => {
    const t = copyFormat({ format: 'text' }, NAMES);
    assert.equal(runIn(t, Buffer.from('1\t123456789018\ta\n\\.\nignored\n'), [1]).out.toString(), `1\t\\${hexCell('123456789018')}\ta\n`);
    assert.equal(runIn(t, Buffer.from('1\t123456789018\ta\\.\n'), [2]).out.toString(), `1\t\\${hexCell('123456789018')}\ta\n`);
    assert.throws(() => runIn(t, Buffer.from('1\t123456789018\ta\\.x\n'), [100]), /end-of-copy marker corrupt/);
    const c = copyFormat({ format: 'csv' }, NAMES);
    assert.equal(runIn(c, Buffer.from('1,123456789018,a\r\n\\.\r\n2,bad,b\n'), [1]).out.toString(), `1,${hexCell('123456789018')},a\r\n`);
    // `"\."` quoted is data, and so is `\.` that is not alone on its line
    assert.equal(runIn(c, Buffer.from('\\.x,123456789018,"\\."\n'), [1]).out.toString(), `\\.x,${hexCell('123456789018')},"\\."\n`);
    // the last line may lack its newline
    assert.equal(runIn(c, Buffer.from('1,123456789018,a'), [1]).out.toString(), `1,${hexCell('123456789018')},a`);
  });

  test('DEFAULT, FORCE_NOT_NULL and FORCE_NULL on the protected column', () => {
    const d = copyFormat({ format: 'csv', default: 'DEF' }, NAMES);
    assert.equal(runIn(d, Buffer.from('1,DEF,a\n2,"DEF",b\n'), [100], [null, null, null]).out.toString(), '1,DEF,a\n2,"DEF",b\n');
    assert.equal(runIn(d, Buffer.from('1,DEF,a\n'), [100]).out.toString(), '1,DEF,a\n', 'the default is left to the server');
    const nn = copyFormat({ format: 'csv', forceNotNull: ['my_number'] }, NAMES);
    assert.throws(() => runIn(nn, Buffer.from('1,,a\n'), [100]), (e: CopyError) => e.line === 1 && e.column === 'my_number');
    const fn = copyFormat({ format: 'csv', null: 'NULL', forceNull: ['my_number'] }, NAMES);
    assert.equal(runIn(fn, Buffer.from('1,"NULL",a\n2,NULL,b\n'), [1]).out.toString(), '1,"NULL",a\n2,NULL,b\n');
    // a text column takes the empty string under FORCE_NOT_NULL: it is encrypted
    const textCol = column({ type: 'text' }, 'randomized', 'name');
    const out = runIn(nn, Buffer.from('1,123456789018,\n'), [100], [null, MYNUMBER, textCol]).out.toString();
    assert.equal(out, `1,${hexCell('123456789018')},\n`, 'name is not in FORCE_NOT_NULL, so empty is NULL');
    const nn2 = copyFormat({ format: 'csv', forceNotNull: ['name'] }, NAMES);
    assert.equal(runIn(nn2, Buffer.from('1,,\n'), [100], [null, null, textCol]).out.toString(), `1,,\\x${Buffer.from('cell:').toString('hex')}\n`);
  });

  test('a delimiter or quote that could appear in \\x<hex> makes the cell quoted', () => {
    const fmt = copyFormat({ format: 'csv', delimiter: 'x' }, NAMES);
    const out = runIn(fmt, Buffer.from('1x123456789018xa\n'), [100]).out.toString();
    assert.equal(out, `1x"${hexCell('123456789018')}"xa\n`);
  });

  test('memory: 100 000 rows in 64 KiB chunks hold at most one partial row', () => {
    const fmt = copyFormat({ format: 'text' }, NAMES);
    const row = '12345\t123456789018\tsome name here\n';
    const input = Buffer.from(row.repeat(100_000));
    const t0 = process.hrtime.bigint();
    const { out, maxPending } = runIn(fmt, input, [65536]);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    assert.ok(maxPending < row.length, `pending ${maxPending}`);
    assert.equal(out.toString().split('\n').length - 1, 100_000);
    assert.ok(ms < 10_000, `${ms} ms`);
  });
});

describe('CopyOutRewriter', () => {
  const k = newKey('deterministic', 7);
  const keys = new StaticCellKeys().set(7, 1, k.key);
  const cellText = (mn: string): string => '\\x' + seal(k, canonical({ type: 'mynumber' }, mn)).toString('hex');

  function runOut(opts: CopyOptions, input: string, action: FieldAction, sizes: number[], escape = false): string {
    const fmt = copyFormat(opts, NAMES);
    const r = new CopyOutRewriter(fmt, 3, [{ index: 1, column: MYNUMBER, action, domainId: 7 }], keys, escape ? { byteaOutput: 'escape' } : {});
    const b = Buffer.from(input);
    const parts: Buffer[] = [];
    for (let i = 0, j = 0; i < b.length; j++) {
      const n = sizes[j % sizes.length]!;
      parts.push(r.push(b.subarray(i, i + n)));
      i += n;
    }
    parts.push(r.end());
    return Buffer.concat(parts).toString();
  }

  test('text and csv, each action, any chunking', () => {
    const text = `1\t\\${cellText('123456789018')}\ta\\tb\n2\t\\N\tc\n`;
    const csv = `id,my_number,name\n1,${cellText('123456789018')},"a,b"\n2,,c\n`;
    for (const sizes of [[1], [5, 2], [10_000]]) {
      assert.equal(runOut({ format: 'text' }, text, 'plaintext', sizes), '1\t123456789018\ta\\tb\n2\t\\N\tc\n');
      assert.equal(runOut({ format: 'text' }, text, 'mask', sizes), '1\t********9018\ta\\tb\n2\t\\N\tc\n');
      assert.equal(runOut({ format: 'text' }, text, 'null', sizes), '1\t\\N\ta\\tb\n2\t\\N\tc\n');
      assert.equal(runOut({ format: 'text' }, text, 'ciphertext', sizes), text);
      assert.equal(runOut({ format: 'csv', header: true }, csv, 'plaintext', sizes), 'id,my_number,name\n1,123456789018,"a,b"\n2,,c\n');
      assert.equal(runOut({ format: 'csv', header: true }, csv, 'null', sizes), 'id,my_number,name\n1,,"a,b"\n2,,c\n');
    }
    const fq = `1,"${cellText('123456789018')}","a"\n`;
    assert.equal(runOut({ format: 'csv', forceQuote: '*' }, fq, 'mask', [3]), '1,"********9018","a"\n');
  });

  test('ciphertext: a field that is not a cell fails closed instead of passing (text and csv)', () => {
    for (const [opts, input] of [
      [{ format: 'text' }, '1\t123456789018\tx\n'],
      [{ format: 'text' }, `1\t\\\\x${Buffer.from('123456789018').toString('hex')}\tx\n`],
      [{ format: 'csv' }, '1,123456789018,x\n'],
    ] as const) {
      assert.throws(() => runOut(opts, input, 'ciphertext', [100]), (e: RowError) => e.reason === 'not_a_cell' && !/123456789018/.test(e.message));
    }
    const csv = `1,${cellText('123456789018')},x\n`;
    assert.equal(runOut({ format: 'csv' }, csv, 'ciphertext', [7]), csv);
  });

  test('bytea_output = escape, a foreign cell, and a shredded key', () => {
    const cell = seal(k, canonical({ type: 'mynumber' }, '000000000019'));
    let esc = '';
    for (const x of cell) esc += x === 0x5c ? '\\\\' : x < 0x20 || x > 0x7e ? '\\' + x.toString(8).padStart(3, '0') : String.fromCharCode(x);
    const textStream = `1\t${encodeTextField(Buffer.from(esc, 'latin1'), 9).toString('latin1')}\tx\n`;
    const fmt = copyFormat({ format: 'text' }, NAMES);
    const r = new CopyOutRewriter(fmt, 3, [{ index: 1, column: MYNUMBER, action: 'plaintext', domainId: 7 }], keys, { byteaOutput: 'escape' });
    assert.equal(r.push(Buffer.from(textStream, 'latin1')).toString(), '1\t000000000019\tx\n');
    const other = newKey('deterministic', 8);
    const foreign = `1\t\\\\x${seal(other, canonical({ type: 'mynumber' }, '000000000019')).toString('hex')}\tx\n`;
    assert.throws(() => runOut({ format: 'text' }, foreign, 'plaintext', [100]), (e: RowError) => e.reason === 'wrong_domain');
    const shreddedKeys = new StaticCellKeys().set(7, 1, 'shredded');
    let shredded = 0;
    const r2 = new CopyOutRewriter(fmt, 3, [{ index: 1, column: MYNUMBER, action: 'plaintext', domainId: 7 }], shreddedKeys, { onShredded: () => shredded++ });
    assert.equal(r2.push(Buffer.from(`1\t\\${cellText('000000000019')}\tx\n`)).toString(), '1\t\\N\tx\n');
    assert.equal(shredded, 1);
  });
});

describe('COPY in other client encodings', () => {
  const NAME = column({ type: 'text' }, 'deterministic', 'name');
  const k = newKey('deterministic', 9);
  const keys = new StaticCellKeys().set(9, 1, k.key);
  const JA = '山田ソ太郎ｱ';

  test('EUC_JP data: protected fields decoded before normalization, other bytes untouched; an SJIS COPY is refused', () => {
    const fmt = copyFormat({ format: 'text', encoding: 'EUC_JP' }, ['id', 'name', 'note']);
    assert.equal(fmt.codec.name, 'EUC_JP');
    const euc = iconv.encode(JA, 'euc-jp');
    const input = Buffer.concat([Buffer.from('1\t'), euc, Buffer.from('\t'), euc, Buffer.from('\n')]);
    const values: CopyValue[] = [];
    const out = rewriteCopyIn(new CopyInRewriter(fmt, [null, NAME, null]), input, (v) => {
      values.push(v);
      return Buffer.from([1, 2]);
    });
    assert.deepEqual(values.map((v) => v.canonical.toString('utf8')), [JA]);
    assert.deepEqual(out, Buffer.concat([Buffer.from('1\t\\\\x0102\t'), euc, Buffer.from('\n')]));
    const bad = new CopyInRewriter(fmt, [null, NAME, null]);
    assert.throws(() => rewriteCopyIn(bad, Buffer.from([0x31, 0x09, 0xa4, 0x09, 0x78, 0x0a]), fakeCell),
      (e: unknown) => e instanceof CopyError && e.sqlstate === '22021' && /invalid byte sequence for encoding "EUC_JP"/.test(e.message));
    assert.throws(() => copyFormat({ format: 'text', encoding: 'SJIS' }, NAMES), /multibyte characters can contain ASCII bytes/);
    assert.throws(() => copyFormat({ format: 'text' }, NAMES, () => null), /mamori has no converter for it/);
  });

  test('COPY TO renders plaintext in the COPY encoding; a character with no equivalent is 22P05 naming the column', () => {
    const cell = '\\\\x' + seal(k, Buffer.from(JA, 'utf8')).toString('hex');
    const plans = [{ index: 1, column: NAME, action: 'plaintext' as const, domainId: 9 }];
    const euc = new CopyOutRewriter(copyFormat({ format: 'text', encoding: 'euc-jp' }, ['id', 'name']), 2, plans, keys);
    assert.deepEqual(euc.push(Buffer.from(`1\t${cell}\n`)), Buffer.concat([Buffer.from('1\t'), iconv.encode(JA, 'euc-jp'), Buffer.from('\n')]));
    const latin1 = new CopyOutRewriter(copyFormat({ format: 'text', encoding: 'LATIN1' }, ['id', 'name']), 2, plans, keys);
    assert.throws(() => latin1.push(Buffer.from(`1\t${cell}\n`)), (e: unknown) => e instanceof MamoriError && e.sqlstate === '22P05'
      && e.message === 'a character in protected column public.people.name has no equivalent in encoding "LATIN1"');
  });
});
