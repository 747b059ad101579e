// Logical types a protected column may have, as policy files write them. The names, aliases and lexer are
// the keyring's (keyring/logical-types.ts: the canonical encodings exist for exactly these); policy files
// add two rules of their own: an unbounded varchar/bpchar is refused (text says that), and errors are values.
import { LOGICAL_TYPES, lengthProblem, lexLogicalType, type LogicalType as KeyringLogicalType } from '../keyring/logical-types.js';

export const LOGICAL_TYPE_NAMES = LOGICAL_TYPES;
export type LogicalTypeName = KeyringLogicalType;

export interface LogicalType {
  name: LogicalTypeName;
  /** Declared length for varchar(n) / char(n), in characters as PostgreSQL counts them. */
  length?: number;
}

export const TYPE_SYNTAX_HELP =
  'expected one of text, varchar(n), char(n), mynumber, corporate_number, int2, int4, int8, date, bytea';

export type ParsedType = { ok: true; type: LogicalType } | { ok: false; reason: string };

export function parseLogicalType(text: string): ParsedType {
  const lexed = lexLogicalType(text);
  if (lexed === null) return { ok: false, reason: `${TYPE_SYNTAX_HELP}, got ${JSON.stringify(text)}` };
  const { type: name, spelling, lengthText } = lexed;
  if (lengthText !== undefined) {
    const problem = lengthProblem(name, lengthText);
    return problem ? { ok: false, reason: problem } : { ok: true, type: { name, length: Number(lengthText) } };
  }
  if (name === 'varchar' || spelling === 'bpchar') {
    return { ok: false, reason: `${spelling} needs a length, e.g. ${spelling}(20); use text for unbounded strings` };
  }
  // char alone means char(1) in PostgreSQL.
  if (name === 'char') return { ok: true, type: { name, length: 1 } };
  return { ok: true, type: { name } };
}

export function formatLogicalType(t: LogicalType): string {
  return t.length === undefined ? t.name : `${t.name}(${t.length})`;
}

/**
 * Columns in one key domain must encode equal values to equal bytes, so they need the same canonical encoding:
 * text and varchar share UTF-8 as given; char(n) strips trailing spaces; the others are each their own.
 */
export function encodingFamily(t: LogicalType): string {
  return t.name === 'varchar' ? 'text' : t.name;
}
