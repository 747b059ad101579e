// The bridge between the analyser's column description (type as a string) and the keyring's logical types,
// and the PostgreSQL type a client sees for each.
import type { LogicalType, LogicalTypeSpec as KeyringTypeSpec } from '../../keyring/logical-types.js';
import type { LogicalTypeSpec, ProtectedColumn } from '../sql/types.js';

const LOGICAL_TYPES: ReadonlySet<string> = new Set<LogicalType>([
  'text', 'varchar', 'char', 'mynumber', 'corporate_number', 'int2', 'int4', 'int8', 'date', 'bytea',
]);

export const OID = {
  bytea: 17,
  int8: 20,
  int2: 21,
  int4: 23,
  text: 25,
  bpchar: 1042,
  varchar: 1043,
  date: 1082,
  byteaArray: 1001,
  textArray: 1009,
  varcharArray: 1015,
  bpcharArray: 1014,
  int2Array: 1005,
  int4Array: 1007,
  int8Array: 1016,
  dateArray: 1182,
} as const;

/** The keyring's spec for a column's type; throws TypeError on a type mamori does not know (a config bug). */
export function toLogicalType(t: LogicalTypeSpec): KeyringTypeSpec {
  if (!LOGICAL_TYPES.has(t.type)) throw new TypeError(`unknown logical type "${t.type}"`);
  const type = t.type as LogicalType;
  return t.length === undefined ? { type } : { type, length: t.length };
}

/** "schema.table.column", the name errors use. */
export function columnName(c: ProtectedColumn): string {
  return `${c.schema}.${c.table}.${c.column}`;
}

/**
 * The type a client sees for a protected column: OID, typlen and typmod as RowDescription carries them.
 * mynumber / corporate_number are text unless a length is configured (then char(n), the usual storage).
 */
export function logicalTypeOid(t: LogicalTypeSpec): { oid: number; typlen: number; typmod: number } {
  const lt = toLogicalType(t);
  const withLen = (oid: number): { oid: number; typlen: number; typmod: number } => ({
    oid,
    typlen: -1,
    typmod: lt.length === undefined ? -1 : lt.length + 4,
  });
  switch (lt.type) {
    case 'text':
      return { oid: OID.text, typlen: -1, typmod: -1 };
    case 'mynumber':
    case 'corporate_number':
      return lt.length === undefined ? { oid: OID.text, typlen: -1, typmod: -1 } : withLen(OID.bpchar);
    case 'varchar':
      return withLen(OID.varchar);
    case 'char':
      return withLen(OID.bpchar);
    case 'int2':
      return { oid: OID.int2, typlen: 2, typmod: -1 };
    case 'int4':
      return { oid: OID.int4, typlen: 4, typmod: -1 };
    case 'int8':
      return { oid: OID.int8, typlen: 8, typmod: -1 };
    case 'date':
      return { oid: OID.date, typlen: 4, typmod: -1 };
    case 'bytea':
      return { oid: OID.bytea, typlen: -1, typmod: -1 };
  }
}

const TEXT_LIKE: ReadonlySet<string> = new Set(['text', 'varchar', 'char', 'mynumber', 'corporate_number']);
const TEXT_OIDS: ReadonlySet<number> = new Set([OID.text, OID.varchar, OID.bpchar]);

/**
 * The type a client sees for a protected column whose original type `mamori protect` recorded: that type when
 * the logical type renders as it (any of text / varchar(n) / char(n) for the text-like types, the same type for
 * the others), else null (the logical type's default applies). Values are rendered the same either way.
 */
export function recordedDisplayType(t: LogicalTypeSpec, original: { oid: number; typmod: number }): { oid: number; typlen: number; typmod: number } | null {
  const dflt = logicalTypeOid(t);
  if (TEXT_LIKE.has(t.type) && TEXT_OIDS.has(original.oid)) return { oid: original.oid, typlen: -1, typmod: original.typmod };
  if (original.oid === dflt.oid) return { ...dflt, typmod: original.typmod };
  return null;
}
