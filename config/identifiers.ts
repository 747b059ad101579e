// PostgreSQL identifier syntax for names written in the config (column keys, qualified function and table
// names). Parsed the way the server reads them: unquoted parts fold ASCII letters to lower case, quoted parts
// are taken verbatim with "" as an escaped quote.

/** NAMEDATALEN - 1: the server truncates longer names, so a longer name in the config could never match. */
export const MAX_IDENTIFIER_BYTES = 63;

export type ParsedName = { ok: true; parts: string[] } | { ok: false; reason: string };

const UNQUOTED_START = /[A-Za-z_\u0080-\uffff]/u;
const UNQUOTED_REST = /[A-Za-z0-9_$\u0080-\uffff]/u;

/** Parses `a.b.c` (any part may be "quoted"); no whitespace is allowed outside quotes. */
export function parseQualifiedName(text: string): ParsedName {
  const parts: string[] = [];
  let i = 0;
  for (;;) {
    if (i >= text.length) return { ok: false, reason: parts.length === 0 ? 'empty name' : 'name ends with "."' };
    let part: string;
    if (text[i] === '"') {
      let j = i + 1;
      let acc = '';
      for (;;) {
        if (j >= text.length) return { ok: false, reason: 'unterminated quoted identifier' };
        if (text[j] === '"') {
          if (text[j + 1] === '"') {
            acc += '"';
            j += 2;
            continue;
          }
          break;
        }
        acc += text[j];
        j++;
      }
      if (acc.length === 0) return { ok: false, reason: 'zero-length quoted identifier' };
      part = acc;
      i = j + 1;
    } else {
      if (!UNQUOTED_START.test(text[i]!)) {
        return { ok: false, reason: `unexpected character ${JSON.stringify(text[i])} at position ${i + 1}` };
      }
      let j = i + 1;
      while (j < text.length && UNQUOTED_REST.test(text[j]!)) j++;
      // The server folds only ASCII letters in UTF-8 databases.
      part = text.slice(i, j).replace(/[A-Z]/g, (c) => c.toLowerCase());
      i = j;
    }
    if (Buffer.byteLength(part, 'utf8') > MAX_IDENTIFIER_BYTES) {
      return { ok: false, reason: `identifier longer than ${MAX_IDENTIFIER_BYTES} bytes` };
    }
    parts.push(part);
    if (i === text.length) return { ok: true, parts };
    if (text[i] !== '.') {
      return { ok: false, reason: `unexpected character ${JSON.stringify(text[i])} at position ${i + 1}` };
    }
    i++;
  }
}

/**
 * The shortest form that parses back to the same part: bare when it is a plain lower-case name, quoted otherwise.
 * For display and canonical keys only — SQL built by mamori must quote every identifier itself.
 */
export function quoteIdentifierIfNeeded(part: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(part) ? part : `"${part.replace(/"/g, '""')}"`;
}

export function canonicalName(parts: readonly string[]): string {
  return parts.map(quoteIdentifierIfNeeded).join('.');
}
