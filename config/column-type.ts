// Logical types a protected column may have (issue 3's canonical encodings exist for exactly these).

export const LOGICAL_TYPE_NAMES = [
  'text',
  'varchar',
  'char',
  'mynumber',
  'corporate_number',
  'int2',
  'int4',
  'int8',
  'date',
  'bytea',
] as const;
export type LogicalTypeName = (typeof LOGICAL_TYPE_NAMES)[number];

export interface LogicalType {
  name: LogicalTypeName;
  /** Declared length for varchar(n) / char(n), in characters as PostgreSQL counts them. */
  length?: number;
}

/** PostgreSQL's limit for varchar(n) and char(n). */
export const MAX_TYPE_LENGTH = 10_485_760;

// SQL spellings accepted as aliases, mapped to the names above.
const ALIASES: Record<string, LogicalTypeName> = {
  text: 'text',
  varchar: 'varchar',
  'character varying': 'varchar',
  char: 'char',
  character: 'char',
  bpchar: 'char',
  mynumber: 'mynumber',
  corporate_number: 'corporate_number',
  int2: 'int2',
  smallint: 'int2',
  int4: 'int4',
  int: 'int4',
  integer: 'int4',
  int8: 'int8',
  bigint: 'int8',
  date: 'date',
  bytea: 'bytea',
};

export const TYPE_SYNTAX_HELP =
  'expected one of text, varchar(n), char(n), mynumber, corporate_number, int2, int4, int8, date, bytea';

export type ParsedType = { ok: true; type: LogicalType } | { ok: false; reason: string };

export function parseLogicalType(text: string): ParsedType {
  const m = /^\s*([a-z_0-9]+(?:\s+varying)?)\s*(?:\(\s*(-?\d+)\s*\))?\s*$/i.exec(text);
  const name = m ? ALIASES[m[1]!.toLowerCase().replace(/\s+/g, ' ')] : undefined;
  if (!m || !name) return { ok: false, reason: `${TYPE_SYNTAX_HELP}, got ${JSON.stringify(text)}` };
  const lenText = m[2];
  if (name === 'varchar' || name === 'char') {
    if (lenText === undefined) {
      // char alone means char(1) in PostgreSQL; varchar alone is unbounded, which is what text is for.
      if (name === 'char') return { ok: true, type: { name, length: 1 } };
      return { ok: false, reason: 'varchar needs a length, e.g. varchar(20); use text for unbounded strings' };
    }
    const length = Number(lenText);
    if (!Number.isSafeInteger(length) || length < 1 || length > MAX_TYPE_LENGTH) {
      return { ok: false, reason: `length of ${name}(n) must be between 1 and ${MAX_TYPE_LENGTH}, got ${lenText}` };
    }
    return { ok: true, type: { name, length } };
  }
  if (lenText !== undefined) return { ok: false, reason: `${name} takes no length` };
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
