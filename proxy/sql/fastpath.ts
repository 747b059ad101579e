// The fast path: a single lexer pass that says "this statement certainly cannot reach a protected object"
// so it can be forwarded untouched without a full parse. Anything unusual answers true (parse it).
import { LexError, readToken, skipTrivia, type LexOptions } from './lexer.js';

export interface ProtectedNameIndex {
  // Relation names (protected tables, their partitions/children and dependent views) and schema names whose
  // objects guard protected data (e.g. `mamori`), exactly as stored in the catalog (case-sensitive).
  names: ReadonlySet<string>;
}

// Words that start statements whose effect cannot be judged from the names they mention, or that change the
// session state the analysis depends on (settings, role, prepared statements, cursors). Lower case.
export const OPAQUE_WORDS: ReadonlySet<string> = new Set([
  'execute', // EXECUTE of a prepared statement: its arguments may be bound for protected columns
  'prepare', // creates a prepared statement the session must track
  'deallocate',
  'declare', // cursors
  'fetch',
  'move',
  'do', // anonymous code blocks: the body is a string
  'call', // procedures
  'copy',
  'set', // SET ROLE / search_path / client_encoding / standard_conforming_strings …
  'reset',
  'discard',
  'set_config', // set_config('role' | 'search_path' …) inside any statement
  'schema', // DROP/ALTER SCHEMA … CASCADE reaches tables it does not name
  'owned', // DROP OWNED / REASSIGN OWNED
  'domain', // the guard domains
  'extension',
  'load',
  'import',
]);

export function buildNameIndex(names: Iterable<string>): ProtectedNameIndex {
  return { names: new Set(names) };
}

// Identifier text as the server sees it: unquoted identifiers are folded to lower case by the lexer, quoted ones
// are kept. A protected relation stored as `Employees` can therefore only be reached through `"Employees"`, while
// `employees` is reached by any unquoted spelling; both forms are compared against the stored names.
// Text is only materialised for identifiers whose length matches a watched word (the common case allocates nothing).
export function mayTouchProtected(sql: Buffer, index: ProtectedNameIndex, opts: LexOptions = {}): boolean {
  const lengths = lengthsOf(index);
  try {
    let i = skipTrivia(sql, 0);
    while (i < sql.length) {
      const t = readToken(sql, i, opts, lengths);
      switch (t.kind) {
        case 'ident':
          if (t.nonAscii) return true;
          if (t.text !== '' && (OPAQUE_WORDS.has(t.text) || index.names.has(t.text))) return true;
          break;
        case 'qident':
          if (t.nonAscii) return true;
          if (t.text !== '' && (index.names.has(t.text) || t.text === 'set_config')) return true;
          break;
        case 'uident':
          return true;
        default:
          break;
      }
      i = skipTrivia(sql, t.end);
    }
    return false;
  } catch (e) {
    if (e instanceof LexError) return true; // unterminated string/comment: let the parser decide
    throw e;
  }
}

const lengthCache = new WeakMap<ProtectedNameIndex, Uint8Array>();

// Byte lengths worth materialising: those of protected names and opaque words (quoted names may be longer in
// bytes than in characters, so lengths are taken in UTF-8 bytes plus doubled quotes are handled by the lexer).
function lengthsOf(index: ProtectedNameIndex): Uint8Array {
  let l = lengthCache.get(index);
  if (l) return l;
  l = new Uint8Array(256);
  for (const w of [...index.names, ...OPAQUE_WORDS]) {
    const n = Buffer.byteLength(w, 'utf8');
    if (n < 255) l[n] = 1;
    else l[255] = 1;
  }
  lengthCache.set(index, l);
  return l;
}
