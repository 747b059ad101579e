// libpg-query (PostgreSQL's own parser in WASM): load once, parse a UTF-8 query buffer.
import { loadModule, parseSync } from 'libpg-query';

// The parser's JSON AST. Its shape is PostgreSQL's parse-node tree; the analysis walks it defensively.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AstNode = Record<string, any>;

let loaded = false;

export async function loadParser(): Promise<void> {
  if (!loaded) {
    await loadModule();
    loaded = true;
  }
}

export function parserLoaded(): boolean {
  return loaded;
}

// ignoreBOM keeps a leading U+FEFF (otherwise it would be dropped and every byte offset would shift by 3).
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export class SqlDecodeError extends Error {}

export class SqlSyntaxError extends Error {
  constructor(
    message: string,
    readonly cursor: number,
  ) {
    super(message);
  }
}

// Decodes strictly: a buffer that is not valid UTF-8, or holds a NUL byte (the server stops reading there),
// cannot be parsed the way the server reads it.
export function decodeSql(sql: Buffer): string {
  if (sql.includes(0)) throw new SqlDecodeError('query text contains a NUL byte');
  try {
    return strictUtf8.decode(sql);
  } catch {
    throw new SqlDecodeError('query text is not valid UTF-8');
  }
}

/**
 * The last text parsed and its tree: verifying a splice parses the original statement again right after
 * the analysis parsed it (the same text gives the same tree; the parser takes no settings). The tree is
 * shared, so it is read-only for every caller (the analysis and the splice verifier only read it).
 */
let lastParsed: { text: string; stmts: AstNode[] } | null = null;

export function parseText(text: string): AstNode[] {
  if (!loaded) throw new Error('libpg-query is not loaded: call loadParser() first');
  if (text.trim() === '') return [];
  if (lastParsed?.text === text) return lastParsed.stmts;
  try {
    const r = parseSync(text) as unknown as { stmts?: AstNode[] };
    const stmts = r.stmts ?? [];
    lastParsed = { text, stmts };
    return stmts;
  } catch (e) {
    const details = (e as { sqlDetails?: { cursorPosition?: number } }).sqlDetails;
    throw new SqlSyntaxError((e as Error).message, details?.cursorPosition ?? -1);
  }
}
