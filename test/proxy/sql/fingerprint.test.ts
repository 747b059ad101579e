// Fingerprints keep a statement's shape and drop every value: a property test over random statements with
// random literal and comment contents in every literal syntax, a corpus of realistic statements, a speed floor, and
// equality with the scanner it replaced (fingerprint-reference.ts) over generated statements and raw SQL-ish text.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { fingerprint } from '../../../proxy/sql/fingerprint.js';
import { referenceFingerprint } from './fingerprint-reference.js';

type Piece = { text: string; secret?: string };

const ident = fc.constantFrom('select', 'from', 'where', 'and', 'or', 'people', 'my_number', 'id', 'name', 'insert', 'into', 'values', 'update', 'set', 'in', 'like', '"Person"', 'p.id', 't', 'x');
const punct = fc.constantFrom('=', '<>', ',', '(', ')', '::text', '||', ';', '*', '+', '$1', '$2', '.');
const content = fc.oneof(fc.string({ minLength: 0, maxLength: 24 }), fc.string({ minLength: 0, maxLength: 24, unit: 'binary' }), fc.string({ minLength: 4, maxLength: 12, unit: fc.constantFrom('\\', "'", '$', '*', '/', '-', '\n', 'a', '1', 'E', '"') }));

// Comment content without comment delimiters: removing one can make another (two stars then two slashes).
function noCommentMarks(c: string): string {
  let out = c;
  for (let prev = ''; prev !== out;) {
    prev = out;
    out = out.replace(/\*\//g, '').replace(/\/\*/g, '');
  }
  return out;
}

const literal: fc.Arbitrary<Piece> = fc.oneof(
  content.map((c) => ({ text: `'${c.replace(/'/g, "''")}'`, secret: c })),
  content.map((c) => ({ text: `E'${c.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`, secret: c })),
  content.map((c) => ({ text: `e'${c.replace(/'/g, "''").replace(/\\/g, '\\\\')}'`, secret: c })),
  content.map((c) => ({ text: `U&'${c.replace(/'/g, "''")}'`, secret: c })),
  content.map((c) => ({ text: `N'${c.replace(/'/g, "''")}'`, secret: c })),
  fc.tuple(content, fc.constantFrom('', 'q', 'tag_1')).map(([c, tag]) => {
    const body = c.split(`$${tag}$`).join('');
    return { text: `$${tag}$${body}$${tag}$`, secret: body };
  }),
  fc.stringMatching(/^[01]{4,20}$/).map((c) => ({ text: `B'${c}'`, secret: c })),
  fc.stringMatching(/^[0-9a-fA-F]{4,20}$/).map((c) => ({ text: `X'${c}'`, secret: c })),
  fc.stringMatching(/^[0-9]{4,15}(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,2})?$/).map((c) => ({ text: c, secret: c })),
  content.map(noCommentMarks).map((c) => ({ text: `/* ${c} */`, secret: c })),
  content.map((c) => ({ text: `-- ${c.replace(/[\n\r]/g, '')}\n`, secret: c.replace(/[\n\r]/g, '') })),
);

const statement = fc.array(fc.oneof({ weight: 3, arbitrary: ident.map((t) => ({ text: t }) as Piece) }, { weight: 2, arbitrary: punct.map((t) => ({ text: t }) as Piece) }, { weight: 2, arbitrary: literal }), {
  minLength: 1,
  maxLength: 25,
});

/** Statements of a generated text are joined by `;` (with the spacing of the first part). */
const s0 = (parts: ReadonlyArray<readonly [unknown, string]>): string => ';' + (parts[0]?.[1] ?? '');

describe('fingerprint', () => {
  test('never contains a literal or comment content (property, every literal syntax)', () => {
    let checked = 0;
    fc.assert(
      fc.property(statement, (pieces) => {
        const sql = pieces.map((p) => p.text).join(' ');
        const fp = fingerprint(sql).toLowerCase();
        // characters the fingerprint can legitimately contain: those of the non-literal pieces, and its own
        const skeleton = pieces
          .filter((p) => p.secret === undefined)
          .map((p) => p.text)
          .join(' ')
          .toLowerCase();
        const allowed = new Set([...skeleton, '?', ' ', '.', '(', ')']);
        for (const p of pieces) {
          if (p.secret === undefined) continue;
          const s = p.secret.toLowerCase();
          if ([...s].length < 4 || [...s].every((ch) => allowed.has(ch))) continue;
          checked++;
          assert.ok(!fp.includes(s), `fingerprint ${JSON.stringify(fp)} contains literal ${JSON.stringify(s)} of ${JSON.stringify(sql)}`);
        }
      }),
      { numRuns: 3000 },
    );
    assert.ok(checked > 2000, `only ${checked} literal contents were checked`);
  });

  test('equals the previous scanner over generated statements (every literal syntax, odd spacing)', () => {
    const sep = fc.constantFrom(' ', '', '\n', '\t ', '  ', '\r\n');
    fc.assert(
      fc.property(fc.array(fc.tuple(statement, sep)), (parts) => {
        const sql = parts.map(([pieces, s]) => pieces.map((p) => p.text).join(s)).join(s0(parts));
        assert.equal(fingerprint(sql), referenceFingerprint(sql), JSON.stringify(sql));
      }),
      { numRuns: 3000 },
    );
  });

  test('equals the previous scanner over raw text made of SQL lexer characters and any unicode', () => {
    const chars = fc.constantFrom(...'aEbBxXnNuU&_$1.9eE+-\'"*/()[],;: \n\t\\?=<>|%$0xé日İ'.split(''), 'in (', ' IN(', '$$', '$q$', '--', '/*', '*/', "''", '""', '1e+5', '0x1F', 'U&"', "U&'", '$1');
    const raw = fc.oneof(
      fc.array(chars, { maxLength: 60 }).map((a) => a.join('')),
      fc.string({ maxLength: 60, unit: 'grapheme' }),
      fc.string({ maxLength: 60, unit: 'binary' }),
    );
    fc.assert(
      fc.property(raw, (sql) => {
        assert.equal(fingerprint(sql), referenceFingerprint(sql), JSON.stringify(sql));
        assert.equal(fingerprint(Buffer.from(sql, 'utf8')), referenceFingerprint(Buffer.from(sql, 'utf8')));
      }),
      { numRuns: 20000 },
    );
  });

  test('a corpus of statements with My Numbers: no value survives, shapes are as documented', () => {
    const n = '123456789018';
    const corpus: Array<[string, string]> = [
      [`SELECT name FROM people WHERE my_number = '${n}'`, 'select name from people where my_number = ?'],
      [`select * from people where my_number in ('${n}', '000000000019', E'\\'${n}')`, 'select * from people where my_number in (...)'],
      [`INSERT INTO people (name, my_number) VALUES ('Sato', '1234 5678 9018'), ('Suzuki', '000000000019')`, 'insert into people (name, my_number) values (?, ?), (?, ?)'],
      [`UPDATE people SET my_number = $body$${n}$body$ WHERE id = 42 -- fix ${n}`, 'update people set my_number = ? where id = ?'],
      [`/* user asked for ${n} */ DELETE FROM people WHERE my_number = U&'\\0031${n.slice(1)}'`, 'delete from people where my_number = ?'],
      [`SELECT id FROM people WHERE id IN (1, 2, 3) AND my_number LIKE '%9018'`, 'select id from people where id in (...) and my_number like ?'],
      [`SELECT $1::text, $2 FROM people WHERE note = e'it''s ${n}' AND flags = B'1010' AND raw = X'DEADBEEF'`, 'select $1::text, $2 from people where note = ? and flags = ? and raw = ?'],
      [`COPY (SELECT my_number FROM people WHERE id = 7) TO STDOUT`, 'copy (select my_number from people where id = ?) to stdout'],
      [`select "MyNumber" from "People" where "MyNumber" = '${n}'`, 'select "MyNumber" from "People" where "MyNumber" = ?'],
      [`select 1.5e10, .25, 0x1F, 1_000_000`, 'select ?, ?, ?, ?'],
      [`select 'unterminated ${n}`, 'select ?'],
      [`select $$ unterminated ${n}`, 'select ?'],
      [`select "unterminated ident where x = '${n}'`, 'select "?"'],
      [`SELECT  a ,b\n\tFROM   t\r\nWHERE a=1;SELECT 2`, 'select a, b from t where a=?; select ?'],
    ];
    for (const [sql, expected] of corpus) {
      const fp = fingerprint(sql);
      assert.equal(fp, expected, sql);
      for (const secret of [n, '000000000019', '1234 5678 9018', '9018', 'Sato', 'DEADBEEF', 'user asked']) assert.ok(!fp.includes(secret), `${fp} leaks ${secret}`);
    }
    assert.equal(fingerprint(Buffer.from(corpus[0]![0])), corpus[0]![1], 'Buffer input');
  });

  test('fast: well over 1 M short statements per minute', () => {
    const sqls = [
      "SELECT name, my_number FROM people WHERE id = $1",
      "select * from people where my_number = '123456789018' and deleted_at is null",
      "INSERT INTO people (name, my_number) VALUES ('Sato', '123456789018')",
      "UPDATE people SET name = 'x' WHERE id IN (1, 2, 3, 4)",
    ];
    const n = 100_000;
    const t0 = process.hrtime.bigint();
    let len = 0;
    for (let i = 0; i < n; i++) len += fingerprint(sqls[i & 3]!).length;
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const perMinute = (n / seconds) * 60;
    assert.ok(len > 0);
    assert.ok(perMinute > 1_000_000, `${Math.round(perMinute)} statements/min`);
    console.log(`fingerprint: ${Math.round(n / seconds)} statements/s (${(perMinute / 1e6).toFixed(1)} M/min)`);
  });
});
