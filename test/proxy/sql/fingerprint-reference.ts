// The fingerprint scanner as it was before the one-pass rewrite (proxy/sql/fingerprint.ts, commit 18d3cf6), kept
// verbatim as the reference the new scanner must equal over generated statements (fingerprint.test.ts).

const SPACE = 1;
const IDENT = 2;

function charClass(c: number): number {
  if (c === 32 || c === 9 || c === 10 || c === 13 || c === 12 || c === 11) return SPACE;
  if ((c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c >= 128) return IDENT;
  return 0;
}
const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isIdentChar = (c: number): boolean => charClass(c) === IDENT || isDigit(c) || c === 36; /* $ */

/** Index just past a '…' literal starting at the quote `q`; backslash escapes only in E'' strings. */
function skipQuoted(s: string, q: number, backslash: boolean): number {
  let i = q + 1;
  const n = s.length;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (backslash && c === 92 /* \ */) {
      i += 2;
      continue;
    }
    if (c === 39 /* ' */) {
      if (s.charCodeAt(i + 1) === 39) {
        i += 2;
        continue;
      }
      return i + 1;
    }
    i++;
  }
  return n;
}

/** If a dollar-quote tag (`$$` or `$tag$`) starts at i, its length; else 0. */
function dollarTagLength(s: string, i: number): number {
  let j = i + 1;
  const n = s.length;
  if (j < n && s.charCodeAt(j) === 36) return 2;
  if (j >= n || charClass(s.charCodeAt(j)) !== IDENT) return 0;
  j++;
  while (j < n) {
    const c = s.charCodeAt(j);
    if (c === 36) return j - i + 1;
    if (!(charClass(c) === IDENT || isDigit(c))) return 0;
    j++;
  }
  return 0;
}

/** Index just past a numeric literal starting at i (digits, decimal point, exponent, 0x/0o/0b, underscores). */
function skipNumber(s: string, i: number): number {
  const n = s.length;
  let j = i;
  while (j < n) {
    const c = s.charCodeAt(j);
    if (isDigit(c) || c === 46 /* . */ || c === 95 /* _ */ || charClass(c) === IDENT) {
      // letters cover hex digits, 0x prefixes and exponents; a trailing identifier glued to a number is swallowed too
      if ((c === 101 || c === 69) && (s.charCodeAt(j + 1) === 43 || s.charCodeAt(j + 1) === 45)) j++; // e+ / e-
      j++;
      continue;
    }
    break;
  }
  return j;
}

const IN_LIST = /\bin ?\(\?(?:, \?)*\)/g;

/** The fingerprint of one SQL string (possibly several statements). Never contains literal or comment text. */
export function referenceFingerprint(sql: string | Buffer): string {
  const s = typeof sql === 'string' ? sql : sql.toString('utf8');
  const n = s.length;
  const out: string[] = [];
  let space = false;
  let i = 0;
  const emit = (t: string): void => {
    if (space && out.length > 0) out.push(' ');
    space = false;
    out.push(t);
  };
  while (i < n) {
    const c = s.charCodeAt(i);
    const cls = charClass(c);
    if (cls === SPACE) {
      space = true;
      i++;
      continue;
    }
    // comments: -- to end of line, /* nested */
    if (c === 45 && s.charCodeAt(i + 1) === 45) {
      const nl = s.indexOf('\n', i + 2);
      i = nl < 0 ? n : nl + 1;
      space = true;
      continue;
    }
    if (c === 47 && s.charCodeAt(i + 1) === 42) {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        const d = s.charCodeAt(i);
        if (d === 47 && s.charCodeAt(i + 1) === 42) {
          depth++;
          i += 2;
        } else if (d === 42 && s.charCodeAt(i + 1) === 47) {
          depth--;
          i += 2;
        } else i++;
      }
      space = true;
      continue;
    }
    if (c === 39 /* ' */) {
      i = skipQuoted(s, i, false);
      emit('?');
      continue;
    }
    if (c === 34 /* " */) {
      // quoted identifier: kept verbatim ("" doubles a quote); an unterminated one swallows the rest of the
      // text, which may hold literals, so only its place is kept
      let j = i + 1;
      let closed = false;
      while (j < n) {
        if (s.charCodeAt(j) === 34) {
          if (s.charCodeAt(j + 1) === 34) {
            j += 2;
            continue;
          }
          j++;
          closed = true;
          break;
        }
        j++;
      }
      emit(closed ? s.slice(i, j) : '"?"');
      i = j;
      continue;
    }
    if (cls === IDENT) {
      let j = i + 1;
      while (j < n && isIdentChar(s.charCodeAt(j))) j++;
      const next = s.charCodeAt(j);
      const len = j - i;
      if (next === 39 && len === 1) {
        // E'…' (backslash escapes), B'…', X'…', N'…'
        const p = c | 0x20;
        if (p === 101 || p === 98 || p === 120 || p === 110) {
          i = skipQuoted(s, j, p === 101);
          emit('?');
          continue;
        }
      }
      if (len === 1 && (c | 0x20) === 117 && next === 38 /* & */) {
        const q = s.charCodeAt(j + 1);
        if (q === 39) {
          i = skipQuoted(s, j + 1, false);
          emit('?');
          continue;
        }
        if (q === 34) {
          // U&"ident": keep the U& and let the quoted identifier branch take the rest
          emit('u&');
          i = j + 1;
          continue;
        }
      }
      emit(s.slice(i, j).toLowerCase());
      i = j;
      continue;
    }
    if (isDigit(c) || (c === 46 && isDigit(s.charCodeAt(i + 1)))) {
      i = skipNumber(s, i);
      emit('?');
      continue;
    }
    if (c === 36 /* $ */) {
      const d = s.charCodeAt(i + 1);
      if (isDigit(d)) {
        let j = i + 1;
        while (j < n && isDigit(s.charCodeAt(j))) j++;
        emit(s.slice(i, j));
        i = j;
        continue;
      }
      const tagLen = dollarTagLength(s, i);
      if (tagLen > 0) {
        const tag = s.slice(i, i + tagLen);
        const end = s.indexOf(tag, i + tagLen);
        i = end < 0 ? n : end + tagLen;
        emit('?');
        continue;
      }
    }
    // punctuation and operators, one character at a time (spacing inside operators is preserved by `space`)
    if (c === 44 /* , */ || c === 41 /* ) */ || c === 59 /* ; */) space = false;
    emit(s[i]!);
    if (c === 40 /* ( */) space = false;
    else if (c === 44 || c === 59) space = true;
    i++;
  }
  const text = out.join('');
  return text.includes('(?') ? text.replace(IN_LIST, 'in (...)') : text;
}
