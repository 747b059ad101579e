// Statement fingerprints for the audit trail and `statements: all`: a single-pass lexer (no parse) that keeps the
// statement's shape and drops every value. Literals of any kind become `?`, comments vanish, whitespace collapses,
// unquoted words are lower-cased (PostgreSQL folds them anyway), `$n` parameters and quoted identifiers stay, and
// `IN (?, ?, ...)` becomes `in (...)` so lists of any length share one fingerprint.
// When in doubt the lexer swallows more (an unterminated string runs to the end), never less: a fingerprint must
// not carry a literal's content.

const SPACE = 1;
const IDENT = 2;

function charClass(c: number): number {
  if (c === 32 || c === 9 || c === 10 || c === 13 || c === 12 || c === 11) return SPACE;
  if ((c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c >= 128) return IDENT;
  return 0;
}
const isDigit = (c: number): boolean => c >= 48 && c <= 57;

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

/**
 * The fingerprint of one SQL string (possibly several statements). Never contains literal or comment text.
 * One pass that appends to the output string as it goes (no array of pieces, no per-token closure): this runs
 * for every statement under `statements: all`.
 */
export function fingerprint(sql: string | Buffer): string {
  const s = typeof sql === 'string' ? sql : sql.toString('utf8');
  const n = s.length;
  let out = '';
  // a separating space is owed before the next token (whitespace or a comment was skipped, or after , and ;)
  let space = false;
  let i = 0;
  while (i < n) {
    const c = s.charCodeAt(i);
    const cls = charClass(c);
    if (cls === SPACE) {
      space = true;
      i++;
      continue;
    }
    let token: string;
    if (cls === IDENT) {
      let j = i + 1;
      let upper = c < 97 || c >= 128; // A-Z, _ (harmless) or non-ASCII: lower-case the word
      while (j < n) {
        const d = s.charCodeAt(j);
        if ((d >= 97 && d <= 122) || (d >= 48 && d <= 57) || d === 95 || d === 36) j++;
        else if ((d >= 65 && d <= 90) || d >= 128) {
          upper = true;
          j++;
        } else break;
      }
      const next = s.charCodeAt(j);
      if (j === i + 1 && (next === 39 || next === 38)) {
        const p = c | 0x20;
        if (next === 39 && (p === 101 || p === 98 || p === 120 || p === 110)) {
          // E'…' (backslash escapes), B'…', X'…', N'…'
          i = skipQuoted(s, j, p === 101);
          token = '?';
        } else if (next === 38 && p === 117 && s.charCodeAt(j + 1) === 39) {
          i = skipQuoted(s, j + 1, false); // U&'…'
          token = '?';
        } else if (next === 38 && p === 117 && s.charCodeAt(j + 1) === 34) {
          // U&"ident": keep the U& and let the quoted identifier branch take the rest
          token = 'u&';
          i = j + 1;
        } else {
          token = upper ? s.slice(i, j).toLowerCase() : s.slice(i, j);
          i = j;
        }
      } else {
        token = upper ? s.slice(i, j).toLowerCase() : s.slice(i, j);
        i = j;
      }
    } else if (c === 45 && s.charCodeAt(i + 1) === 45) {
      // comments: -- to end of line, /* nested */
      const nl = s.indexOf('\n', i + 2);
      i = nl < 0 ? n : nl + 1;
      space = true;
      continue;
    } else if (c === 47 && s.charCodeAt(i + 1) === 42) {
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
    } else if (c === 39 /* ' */) {
      i = skipQuoted(s, i, false);
      token = '?';
    } else if (c === 34 /* " */) {
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
      token = closed ? s.slice(i, j) : '"?"';
      i = j;
    } else if (isDigit(c) || (c === 46 && isDigit(s.charCodeAt(i + 1)))) {
      i = skipNumber(s, i);
      token = '?';
    } else if (c === 36 /* $ */ && isDigit(s.charCodeAt(i + 1))) {
      let j = i + 2;
      while (j < n && isDigit(s.charCodeAt(j))) j++;
      token = s.slice(i, j);
      i = j;
    } else {
      const tagLen = c === 36 ? dollarTagLength(s, i) : 0;
      if (tagLen > 0) {
        const tag = s.slice(i, i + tagLen);
        const end = s.indexOf(tag, i + tagLen);
        i = end < 0 ? n : end + tagLen;
        token = '?';
      } else {
        // punctuation and operators, one character at a time (spacing inside operators is preserved by `space`)
        if (c === 44 /* , */ || c === 41 /* ) */ || c === 59 /* ; */) space = false;
        if (space && out.length > 0) out += ' ';
        out += s[i]!;
        space = c === 44 || c === 59; // `(` and everything else: no space owed
        i++;
        continue;
      }
    }
    if (space && out.length > 0) out += ' ';
    space = false;
    out += token;
  }
  return out.includes('(?') ? out.replace(IN_LIST, 'in (...)') : out;
}
