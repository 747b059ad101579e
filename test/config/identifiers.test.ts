import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { canonicalName, parseQualifiedName } from '../../config/identifiers.js';

describe('qualified names', () => {
  test('parse as the server reads them', () => {
    assert.deepEqual(parseQualifiedName('public.employees.my_number'), { ok: true, parts: ['public', 'employees', 'my_number'] });
    assert.deepEqual(parseQualifiedName('Public.EMPLOYEES.My_Number'), { ok: true, parts: ['public', 'employees', 'my_number'] });
    assert.deepEqual(parseQualifiedName('"Public"."a.b"."say ""hi"""'), { ok: true, parts: ['Public', 'a.b', 'say "hi"'] });
    assert.deepEqual(parseQualifiedName('社員.番号$1'), { ok: true, parts: ['社員', '番号$1'] });
    assert.deepEqual(parseQualifiedName('a..b'), { ok: false, reason: 'unexpected character "." at position 3' });
    assert.deepEqual(parseQualifiedName(''), { ok: false, reason: 'empty name' });
    assert.deepEqual(parseQualifiedName('a."b'), { ok: false, reason: 'unterminated quoted identifier' });
    assert.deepEqual(parseQualifiedName('a."b"c'), { ok: false, reason: 'unexpected character "c" at position 6' });
  });

  test('canonicalName round-trips any valid parts', () => {
    const part = fc
      .string({ minLength: 1, maxLength: 20, unit: 'grapheme' })
      .filter((s) => Buffer.byteLength(s) <= 63);
    fc.assert(
      fc.property(fc.array(part, { minLength: 1, maxLength: 3 }), (parts) => {
        assert.deepEqual(parseQualifiedName(canonicalName(parts)), { ok: true, parts });
      }),
      { numRuns: 2000 },
    );
  });

  test('canonicalName leaves plain lower-case names bare and quotes the rest', () => {
    assert.equal(canonicalName(['public', 'employees', 'my_number']), 'public.employees.my_number');
    assert.equal(canonicalName(['hr', 'Staff', 'a b']), 'hr."Staff"."a b"');
  });
});
