// My Number (個人番号) and corporate number (法人番号): input normalization and check digits, exactly as
// ../shared/MYNUMBER.md states them. Pure functions; reasons never contain the input (it is personal data).

export type NormalizeResult = { ok: true; value: string } | { ok: false; reason: string };

// Separators people type between digit groups: ASCII space, U+3000 ideographic space, hyphen-minus,
// U+2010–U+2015 dashes, U+2212 minus, U+FF0D full-width hyphen-minus, U+30FC (ー, a keyboard substitute).
const SEPARATORS = new Set<number>([
  0x20, 0x3000, 0x2d, 0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xff0d, 0x30fc,
]);
// Only spaces may surround the number (pasted values); dashes at either end are refused.
const EDGE_SPACES = new Set<number>([0x20, 0x3000]);

/**
 * Folds full-width digits to ASCII and drops separators that sit between digits.
 * Returns the ASCII digit string, or a reason when anything else appears.
 */
function digitsOf(input: string, what: string): NormalizeResult {
  if (/^[0-9]+$/.test(input)) return { ok: true, value: input }; // the common, already-canonical case
  const cps = Array.from(input, (ch) => ch.codePointAt(0)!);
  let start = 0;
  let end = cps.length;
  while (start < end && EDGE_SPACES.has(cps[start]!)) start++;
  while (end > start && EDGE_SPACES.has(cps[end - 1]!)) end--;
  if (start === end) return { ok: false, reason: `${what} is empty` };
  // After trimming spaces the value must start and end with a digit; separators (runs tolerated,
  // e.g. "1234 - 5678") may only sit between digits.
  if (SEPARATORS.has(cps[start]!) || SEPARATORS.has(cps[end - 1]!)) {
    return { ok: false, reason: `${what} starts or ends with a separator` };
  }
  let digits = '';
  for (let i = start; i < end; i++) {
    const cp = cps[i]!;
    if (cp >= 0x30 && cp <= 0x39) digits += String.fromCharCode(cp);
    else if (cp >= 0xff10 && cp <= 0xff19) digits += String.fromCharCode(cp - 0xff10 + 0x30);
    else if (!SEPARATORS.has(cp)) {
      return { ok: false, reason: `${what} contains a character that is neither a digit nor an accepted separator` };
    }
  }
  return { ok: true, value: digits };
}

/** Check digit of a My Number from its first 11 ASCII digits (MYNUMBER.md: weights n+1 for n ≤ 6, n−5 above). */
export function myNumberCheckDigit(first11: string): number {
  if (!/^[0-9]{11}$/.test(first11)) throw new RangeError('myNumberCheckDigit needs exactly 11 ASCII digits');
  let sum = 0;
  for (let n = 1; n <= 11; n++) {
    const p = first11.charCodeAt(11 - n) - 0x30; // P1 is the 11th digit
    const q = n <= 6 ? n + 1 : n - 5;
    sum += p * q;
  }
  const r = sum % 11;
  return r <= 1 ? 0 : 11 - r;
}

/** Normalizes any accepted input form to 12 ASCII digits and verifies the check digit. */
export function normalizeMyNumber(input: string): NormalizeResult {
  const d = digitsOf(input, 'My Number');
  if (!d.ok) return d;
  if (d.value.length !== 12) return { ok: false, reason: `My Number must have 12 digits, not ${d.value.length}` };
  if (myNumberCheckDigit(d.value.slice(0, 11)) !== d.value.charCodeAt(11) - 0x30) {
    return { ok: false, reason: 'My Number check digit does not match' };
  }
  return d;
}

export function isValidMyNumber(input: string): boolean {
  return normalizeMyNumber(input).ok;
}

/** Check digit (the FIRST digit) of a corporate number from its last 12 ASCII digits. */
export function corporateNumberCheckDigit(last12: string): number {
  if (!/^[0-9]{12}$/.test(last12)) throw new RangeError('corporateNumberCheckDigit needs exactly 12 ASCII digits');
  let sum = 0;
  for (let n = 1; n <= 12; n++) {
    const p = last12.charCodeAt(12 - n) - 0x30; // P1 is the last digit
    sum += p * (n % 2 === 1 ? 1 : 2);
  }
  return 9 - (sum % 9);
}

/** Normalizes any accepted input form to 13 ASCII digits and verifies the leading check digit. */
export function normalizeCorporateNumber(input: string): NormalizeResult {
  const d = digitsOf(input, 'corporate number');
  if (!d.ok) return d;
  if (d.value.length !== 13) {
    return { ok: false, reason: `corporate number must have 13 digits, not ${d.value.length}` };
  }
  if (corporateNumberCheckDigit(d.value.slice(1)) !== d.value.charCodeAt(0) - 0x30) {
    return { ok: false, reason: 'corporate number check digit does not match' };
  }
  return d;
}

export function isValidCorporateNumber(input: string): boolean {
  return normalizeCorporateNumber(input).ok;
}
