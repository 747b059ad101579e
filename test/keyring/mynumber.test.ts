// My Number and corporate number rules of ../shared/MYNUMBER.md: the doc's examples, every accepted input
// form, refusals with reasons that never echo the input, and property tests over generated numbers.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  corporateNumberCheckDigit,
  isValidCorporateNumber,
  isValidMyNumber,
  myNumberCheckDigit,
  normalizeCorporateNumber,
  normalizeMyNumber,
} from '../../keyring/mynumber.js';

const digits = (n: number) => fc.array(fc.integer({ min: 0, max: 9 }), { minLength: n, maxLength: n }).map((a) => a.join(''));
const fullWidth = (s: string): string => s.replace(/[0-9]/g, (d) => String.fromCharCode(0xff10 + Number(d)));

/** The MYNUMBER.md formula written out a second way (weights as a table, P read from the left). */
function referenceMyNumberCheck(first11: string): number {
  const weights = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2]; // Q for the 1st … 11th digit (P11 … P1)
  const s = [...first11].reduce((acc, ch, i) => acc + Number(ch) * weights[i]!, 0);
  const r = s % 11;
  return r <= 1 ? 0 : 11 - r;
}

describe('My Number', () => {
  test("the doc's examples", () => {
    assert.equal(myNumberCheckDigit('12345678901'), 8);
    assert.equal(myNumberCheckDigit('00000000001'), 9);
    assert.ok(isValidMyNumber('123456789018'));
    assert.ok(isValidMyNumber('000000000019'));
    assert.equal(isValidMyNumber('123456789012'), false);
    assert.deepEqual(normalizeMyNumber('123456789012'), { ok: false, reason: 'My Number check digit does not match' });
  });

  test('every accepted separator and full-width digits normalize to 12 ASCII digits', () => {
    const seps = [' ', '\u3000', '-', '\u2010', '\u2011', '\u2012', '\u2013', '\u2014', '\u2015', '\u2212', '\uff0d', '\u30fc'];
    for (const sep of seps) {
      for (const body of ['1234' + sep + '5678' + sep + '9018', fullWidth('1234') + sep + fullWidth('5678') + sep + '9018']) {
        assert.deepEqual(normalizeMyNumber(body), { ok: true, value: '123456789018' }, JSON.stringify(sep));
      }
    }
    assert.deepEqual(normalizeMyNumber('１２３４ ５６７８ ９０１８'), { ok: true, value: '123456789018' });
    assert.deepEqual(normalizeMyNumber('  1234 - 5678 - 9018\u3000'), { ok: true, value: '123456789018' });
  });

  test('refusals say what is wrong without the value or the expected check digit', () => {
    const cases: [string, RegExp][] = [
      ['12345678901', /12 digits, not 11/],
      ['1234567890180', /12 digits, not 13/],
      ['1234567890l8', /neither a digit nor an accepted separator/],
      ['1234.5678.9018', /neither a digit nor an accepted separator/],
      ['１２３４５６７８９０１Ａ', /neither a digit nor an accepted separator/],
      ['-123456789018', /starts or ends with a separator/],
      ['123456789018-', /starts or ends with a separator/],
      ['', /empty/],
      ['\u3000 ', /empty/],
      ['123456789017', /check digit does not match/],
    ];
    for (const [input, re] of cases) {
      const r = normalizeMyNumber(input);
      assert.equal(r.ok, false, input);
      if (r.ok) continue;
      assert.match(r.reason, re, input);
      const digitsOnly = input.replace(/\D/g, '');
      if (digitsOnly.length >= 4) assert.ok(!r.reason.includes(digitsOnly.slice(-4)), 'reason echoes input');
      assert.ok(!/should be|expected \d/.test(r.reason));
    }
  });

  test('property: generated 11 digits + computed check digit validate; the formula matches a second reading', () => {
    fc.assert(
      fc.property(digits(11), (d11) => {
        const c = myNumberCheckDigit(d11);
        assert.equal(c, referenceMyNumberCheck(d11));
        assert.ok(c >= 0 && c <= 9);
        assert.ok(isValidMyNumber(d11 + c));
        assert.deepEqual(normalizeMyNumber(fullWidth(d11.slice(0, 4)) + '-' + d11.slice(4, 8) + ' ' + d11.slice(8) + c), {
          ok: true,
          value: d11 + c,
        });
      }),
      { numRuns: 2000 },
    );
  });

  test('property: a single-digit change is detected, except the one blind spot of the rule', () => {
    // r moves by Q×delta mod 11 ≠ 0, so r always changes; but r = 0 and r = 1 both give check digit 0, so a
    // change that moves r between 0 and 1 keeps the number valid. Exactly that case, and no other, passes.
    const r11 = (d11: string): number =>
      [...d11].reduce((acc, ch, i) => acc + Number(ch) * [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2][i]!, 0) % 11;
    let blind = 0;
    fc.assert(
      fc.property(digits(11), fc.integer({ min: 0, max: 11 }), fc.integer({ min: 1, max: 9 }), (d11, pos, delta) => {
        const good = d11 + myNumberCheckDigit(d11);
        const changed = good.slice(0, pos) + ((Number(good[pos]) + delta) % 10) + good.slice(pos + 1);
        assert.notEqual(changed, good);
        const undetectable = pos < 11 && r11(d11) <= 1 && r11(changed.slice(0, 11)) <= 1;
        if (undetectable) blind++;
        assert.equal(isValidMyNumber(changed), undetectable);
      }),
      { numRuns: 5000, seed: 7 },
    );
    // Both branches ran; about 2/11 × 1/9 of random changes hit the blind spot.
    assert.ok(blind > 0 && blind < 250, `blind-spot cases: ${blind} of 5000`);
  });

  test('myNumberCheckDigit refuses anything but 11 ASCII digits', () => {
    for (const bad of ['1234567890', '123456789012', '1234567890a', '１２３４５６７８９０１']) {
      assert.throws(() => myNumberCheckDigit(bad), RangeError);
    }
  });
});

describe('corporate number', () => {
  /** Made-up numbers: check digit computed by hand from the MYNUMBER.md rule. */
  test('hand-computed examples', () => {
    // 000012050003: from the right P1=3, P5=5, P7=2 (×1) and P8=1 (×2) → 12; 12 mod 9 = 3 → 9 − 3 = 6
    assert.equal(corporateNumberCheckDigit('000012050003'), 6);
    assert.ok(isValidCorporateNumber('6000012050003'));
    // 123456789012: odd positions from the right 2+0+8+6+4+2 = 22, even 1+9+7+5+3+1 = 26 ×2 = 52 → 74 mod 9 = 2 → 7
    assert.equal(corporateNumberCheckDigit('123456789012'), 7);
    assert.ok(isValidCorporateNumber('7123456789012'));
    assert.equal(isValidCorporateNumber('6123456789012'), false);
    // all zeros: sum 0 → 9
    assert.equal(corporateNumberCheckDigit('000000000000'), 9);
  });

  test('accepted forms and refusals', () => {
    assert.deepEqual(normalizeCorporateNumber('7-1234-5678-9012'), { ok: true, value: '7123456789012' });
    assert.deepEqual(normalizeCorporateNumber(fullWidth('7123456789012')), { ok: true, value: '7123456789012' });
    const r12 = normalizeCorporateNumber('123456789012');
    assert.ok(!r12.ok && /13 digits, not 12/.test(r12.reason));
    const bad = normalizeCorporateNumber('8123456789012');
    assert.ok(!bad.ok && bad.reason === 'corporate number check digit does not match');
    const letter = normalizeCorporateNumber('T7123456789012'); // invoice registration numbers carry a T
    assert.ok(!letter.ok && /neither a digit/.test(letter.reason));
  });

  test('property: computed check digits validate and any single-digit change is detected', () => {
    fc.assert(
      fc.property(digits(12), fc.integer({ min: 0, max: 12 }), fc.integer({ min: 1, max: 9 }), (d12, pos, delta) => {
        const good = String(corporateNumberCheckDigit(d12)) + d12;
        assert.ok(isValidCorporateNumber(good));
        const changed = good.slice(0, pos) + ((Number(good[pos]) + delta) % 10) + good.slice(pos + 1);
        // Q×delta ≡ 0 (mod 9) only for delta = ±9, so 0↔9 outside the check digit is the one undetectable
        // change (the check digit itself is 1..9 and any change of it is caught).
        const from = Number(good[pos]);
        const to = Number(changed[pos]);
        const undetectable = pos > 0 && ((from === 0 && to === 9) || (from === 9 && to === 0));
        assert.equal(isValidCorporateNumber(changed), undetectable);
      }),
      { numRuns: 3000 },
    );
  });
});
