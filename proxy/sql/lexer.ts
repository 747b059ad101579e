// A byte-level SQL lexer that follows PostgreSQL's scan.l closely enough to find token boundaries:
// used by the fast path (which must never mistake SQL for string or comment content) and to find the
// end byte of literal / parameter tokens whose start the parser reports. Works on the raw UTF-8 bytes.

export type TokenKind =
  | 'ident' // unquoted identifier or keyword; `text` is folded to lower case (ASCII only, as the server does for UTF8)
  | 'qident' // "quoted" identifier; `text` is the content with "" undoubled
  | 'uident' // U&"..." identifier (escapes not decoded)
  | 'string' // '...', E'...', N'...', B'...', X'...', U&'...' and $tag$...$tag$
  | 'number'
  | 'param' // $n
  | 'op' // operators and punctuation, one token per run of operator characters or one punctuation byte
  | 'typecast'; // ::

export interface Token {
  kind: TokenKind;
  start: number;
  end: number;
  text: string; // for identifiers only (otherwise '')
  nonAscii: boolean; // identifier contains a byte >= 0x80
}

export interface LexOptions {
  // With standard_conforming_strings off, backslash escapes in plain '...' strings too.
  standardConformingStrings?: boolean;
}

const isSpace = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0c || c === 0x0b;
const isIdentStart = (c: number) => (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || c >= 0x80;
const isIdentCont = (c: number) => isIdentStart(c) || (c >= 0x30 && c <= 0x39) || c === 0x24;
const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const OP_CHARS = new Set([...'+-*/<>=~!@#%^&|`?'].map((c) => c.charCodeAt(0)));

export class LexError extends Error {}

// Skips whitespace and comments (nested /* */, --). Returns the next significant position.
export function skipTrivia(b: Buffer, i: number): number {
  const n = b.length;
  for (;;) {
    while (i < n && isSpace(b[i]!)) i++;
    if (i + 1 < n && b[i] === 0x2d && b[i + 1] === 0x2d) {
      while (i < n && b[i] !== 0x0a && b[i] !== 0x0d) i++;
      continue;
    }
    if (i + 1 < n && b[i] === 0x2f && b[i + 1] === 0x2a) {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (b[i] === 0x2f && b[i + 1] === 0x2a) {
          depth++;
          i += 2;
        } else if (b[i] === 0x2a && b[i + 1] === 0x2f) {
          depth--;
          i += 2;
        } else i++;
      }
      if (depth > 0) throw new LexError('unterminated block comment');
      continue;
    }
    return i;
  }
}

// End of a quoted string whose opening quote is at q. `backslash`: backslash escapes the next byte.
function quotedEnd(b: Buffer, q: number, backslash: boolean): number {
  let i = q + 1;
  const n = b.length;
  for (;;) {
    if (i >= n) throw new LexError('unterminated quoted string');
    const c = b[i]!;
    if (backslash && c === 0x5c) {
      i += 2;
      continue;
    }
    if (c === 0x27) {
      if (b[i + 1] === 0x27) {
        i += 2;
        continue;
      }
      i++;
      // A string continues after whitespace that contains a newline ('a'\n'b' is one constant).
      let j = i;
      let newline = false;
      while (j < n && isSpace(b[j]!)) {
        if (b[j] === 0x0a || b[j] === 0x0d) newline = true;
        j++;
      }
      if (newline && b[j] === 0x27) {
        i = j + 1;
        continue;
      }
      return i;
    }
    i++;
  }
}

// Dollar-quote tag at i ("$tag$"), or -1 when i does not start one.
function dollarTagEnd(b: Buffer, i: number): number {
  let j = i + 1;
  if (j < b.length && b[j] === 0x24) return j + 1;
  if (j >= b.length || !isIdentStart(b[j]!)) return -1;
  while (j < b.length && isIdentCont(b[j]!) && b[j] !== 0x24) j++;
  return j < b.length && b[j] === 0x24 ? j + 1 : -1;
}

// Reads one token starting at i (i must be at a significant byte).
// `wanted`: when given, identifier text is only built for byte lengths flagged in it (index 255: 255 and longer).
export function readToken(b: Buffer, i: number, opts: LexOptions = {}, wanted?: Uint8Array): Token {
  const n = b.length;
  const c = b[i]!;
  const scs = opts.standardConformingStrings !== false;
  const next = b[i + 1];
  // String prefixes: E'', N'', B'', X'', U&'' / U&"".
  if ((c === 0x45 || c === 0x65) && next === 0x27) return mk(i, 'string', quotedEnd(b, i + 1, true));
  if ((c === 0x4e || c === 0x6e || c === 0x42 || c === 0x62 || c === 0x58 || c === 0x78) && next === 0x27)
    return mk(i, 'string', quotedEnd(b, i + 1, !scs && (c === 0x4e || c === 0x6e)));
  if ((c === 0x55 || c === 0x75) && next === 0x26 && (b[i + 2] === 0x27 || b[i + 2] === 0x22)) {
    if (b[i + 2] === 0x27) return mk(i, 'string', quotedEnd(b, i + 2, false));
    return mk(i, 'uident', quotedIdentEnd(b, i + 2), '', true);
  }
  if (c === 0x27) return mk(i, 'string', quotedEnd(b, i, !scs));
  if (c === 0x22) {
    const end = quotedIdentEnd(b, i);
    let nonAscii = false;
    for (let k = i + 1; k < end - 1; k++) if (b[k]! >= 0x80) nonAscii = true;
    const len = end - i - 2;
    const want = !wanted || wanted[Math.min(len, 255)] === 1 || lastQuotedHadDoubled;
    return mk(i, 'qident', end, want ? b.toString('utf8', i + 1, end - 1).replaceAll('""', '"') : '', nonAscii);
  }
  if (c === 0x24) {
    if (next !== undefined && isDigit(next)) {
      let j = i + 1;
      while (j < n && isDigit(b[j]!)) j++;
      return mk(i, 'param', j);
    }
    const tagEnd = dollarTagEnd(b, i);
    if (tagEnd > 0) {
      const tag = b.subarray(i, tagEnd);
      const close = b.indexOf(tag, tagEnd);
      if (close < 0) throw new LexError('unterminated dollar-quoted string');
      return mk(i, 'string', close + tag.length);
    }
    return mk(i, 'op', i + 1);
  }
  if (isIdentStart(c)) {
    let j = i;
    let nonAscii = false;
    while (j < n && isIdentCont(b[j]!)) {
      if (b[j]! >= 0x80) nonAscii = true;
      j++;
    }
    const want = !wanted || wanted[Math.min(j - i, 255)] === 1;
    return mk(i, 'ident', j, want ? asciiLower(b, i, j) : '', nonAscii);
  }
  if (isDigit(c) || (c === 0x2e && next !== undefined && isDigit(next))) {
    let j = i;
    while (j < n && (isIdentCont(b[j]!) || b[j] === 0x2e || ((b[j] === 0x2b || b[j] === 0x2d) && (b[j - 1] === 0x65 || b[j - 1] === 0x45)))) {
      if (b[j] === 0x2e && b[j + 1] === 0x2e) break; // 1..2 in array slices
      j++;
    }
    return mk(i, 'number', j);
  }
  if (c === 0x3a && next === 0x3a) return mk(i, 'typecast', i + 2);
  if (OP_CHARS.has(c)) {
    let j = i;
    while (j < n && OP_CHARS.has(b[j]!)) {
      if ((b[j] === 0x2d && b[j + 1] === 0x2d) || (b[j] === 0x2f && b[j + 1] === 0x2a)) break;
      j++;
    }
    return mk(i, 'op', Math.max(j, i + 1));
  }
  return mk(i, 'op', i + 1);
}

// (A module-level constructor rather than a closure: tsx's keepNames wraps closures in a costly __name call.)
function mk(start: number, kind: TokenKind, end: number, text = '', nonAscii = false): Token {
  return { kind, start, end, text, nonAscii };
}

let lastQuotedHadDoubled = false;

// End of a "quoted" identifier (byte loop: Buffer.indexOf with a string argument allocates).
function quotedIdentEnd(b: Buffer, q: number): number {
  lastQuotedHadDoubled = false;
  for (let i = q + 1; i < b.length; i++) {
    if (b[i] !== 0x22) continue;
    if (b[i + 1] === 0x22) {
      lastQuotedHadDoubled = true;
      i++;
      continue;
    }
    return i + 1;
  }
  throw new LexError('unterminated quoted identifier');
}

function asciiLower(b: Buffer, s: number, e: number): string {
  let out = '';
  for (let k = s; k < e; k++) {
    const x = b[k]!;
    if (x >= 0x80) return b.subarray(s, e).toString('utf8').replace(/[A-Z]/g, (m) => m.toLowerCase());
    out += String.fromCharCode(x >= 0x41 && x <= 0x5a ? x + 32 : x);
  }
  return out;
}

// Iterates the significant tokens of b from `from`.
export function* tokens(b: Buffer, opts: LexOptions = {}, from = 0): Generator<Token> {
  let i = skipTrivia(b, from);
  while (i < b.length) {
    const t = readToken(b, i, opts);
    yield t;
    i = skipTrivia(b, t.end);
  }
}
