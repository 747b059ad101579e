// v1 logical types of protected columns and their canonical plaintext encodings: values PostgreSQL calls
// equal get equal bytes, so equal deterministic cells (docs/ciphertext-format.md §Canonical encodings).
// Pure functions. Reasons for refusing a value never contain the value (it may be personal data).
import { normalizeCorporateNumber, normalizeMyNumber } from './mynumber.js';

/** The v1 logical types, in the order docs list them; also the names of the guard domains `mamori.<type>`. */
export const LOGICAL_TYPES = [
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
export type LogicalType = (typeof LOGICAL_TYPES)[number];

/** `length` is the typmod of varchar(n) / char(n), in characters; absent means unlimited. */
export type LogicalTypeSpec = { type: LogicalType; length?: number };

export type CanonicalResult = { ok: true; value: Buffer } | { ok: false; reason: string };

/** PostgreSQL's limit for varchar(n) / char(n). */
export const MAX_TYPMOD_LENGTH = 10485760;

// SQL spellings accepted as aliases, mapped to the names above.
const ALIASES: Record<string, LogicalType> = {
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

/** A type name split into its logical type, the spelling used and the length as written (not yet checked). */
export type LexedLogicalType = { type: LogicalType; spelling: string; lengthText?: string };

/** The one lexer for type names (policy files and the keyring CLI); each caller applies its own rules. */
export function lexLogicalType(s: string): LexedLogicalType | null {
  const m = /^\s*([a-z_][a-z0-9_]*(?:\s+varying)?)\s*(?:\(\s*(-?\d+)\s*\))?\s*$/i.exec(s);
  const spelling = m?.[1]?.toLowerCase().replace(/\s+/g, ' ');
  const type = spelling !== undefined ? ALIASES[spelling] : undefined;
  if (m === null || spelling === undefined || type === undefined) return null;
  return m[2] === undefined ? { type, spelling } : { type, spelling, lengthText: m[2] };
}

/** Checks a written length of varchar(n) / char(n); null when it is one PostgreSQL accepts. */
export function lengthProblem(type: LogicalType, lengthText: string): string | null {
  if (type !== 'varchar' && type !== 'char') return `${type} takes no length`;
  const len = Number(lengthText);
  if (!Number.isSafeInteger(len) || len < 1 || len > MAX_TYPMOD_LENGTH) {
    return `length of ${type}(n) must be between 1 and ${MAX_TYPMOD_LENGTH}, got ${lengthText}`;
  }
  return null;
}

/**
 * Parses a type name: `text`, `varchar(12)`, `character varying(12)`, `char(3)`, `bpchar`, `mynumber`,
 * `corporate_number`, `int2|smallint`, `int4|int|integer`, `int8|bigint`, `date`, `bytea`. Like PostgreSQL,
 * `char`/`character` without a length means char(1); `bpchar` means unlimited. Throws TypeError on anything else.
 */
export function parseLogicalType(s: string): LogicalTypeSpec {
  const lexed = lexLogicalType(s);
  if (lexed === null) throw new TypeError(`unknown logical type "${s}"`);
  const { type, spelling, lengthText } = lexed;
  if (lengthText !== undefined) {
    const problem = lengthProblem(type, lengthText);
    if (problem) throw new TypeError(problem);
    return { type, length: Number(lengthText) };
  }
  if (type === 'char' && spelling !== 'bpchar') return { type, length: 1 };
  return { type };
}

export function formatLogicalType(t: LogicalTypeSpec): string {
  return t.length !== undefined && (t.type === 'varchar' || t.type === 'char') ? `${t.type}(${t.length})` : t.type;
}

/** OID of the PostgreSQL type clients see for the plaintext (mynumber / corporate_number are text). */
export function plaintextTypeOid(t: LogicalTypeSpec): number {
  switch (t.type) {
    case 'text':
    case 'mynumber':
    case 'corporate_number':
      return 25;
    case 'varchar':
      return 1043;
    case 'char':
      return 1042;
    case 'int2':
      return 21;
    case 'int4':
      return 23;
    case 'int8':
      return 20;
    case 'date':
      return 1082;
    case 'bytea':
      return 17;
  }
}

const fail = (reason: string): CanonicalResult => ({ ok: false, reason });
const ok = (value: Buffer): CanonicalResult => ({ ok: true, value });

// ---- text family -------------------------------------------------------------------------------------

// With the u flag a surrogate class matches only unpaired surrogates, which UTF-8 cannot carry.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function codePointLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) i++; // a valid pair (lone ones were refused)
    n++;
  }
  return n;
}

/** The first n code points of s. */
function codePointPrefix(s: string, n: number): string {
  let i = 0;
  for (let k = 0; k < n && i < s.length; k++) {
    const c = s.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff ? 2 : 1;
  }
  return s.slice(0, i);
}

function textLike(t: LogicalTypeSpec, s: string): CanonicalResult {
  if (s.includes('\u0000')) return fail(`${formatLogicalType(t)} value contains a NUL character`);
  if (LONE_SURROGATE.test(s)) return fail(`${formatLogicalType(t)} value is not valid Unicode`);
  if (t.type === 'char') {
    // bpchar equality ignores trailing spaces, and PostgreSQL drops excess trailing spaces on assignment.
    const stripped = s.replace(/ +$/, '');
    if (t.length !== undefined && codePointLength(stripped) > t.length) {
      return fail(`value too long for type ${formatLogicalType(t)}`);
    }
    return ok(Buffer.from(stripped, 'utf8'));
  }
  if (t.type === 'varchar' && t.length !== undefined) {
    const len = codePointLength(s);
    if (len > t.length) {
      // As on assignment in PostgreSQL: excess characters that are all spaces are cut, anything else refused.
      const head = codePointPrefix(s, t.length);
      if (!/^ *$/.test(s.slice(head.length))) return fail(`value too long for type ${formatLogicalType(t)}`);
      return ok(Buffer.from(head, 'utf8'));
    }
  }
  return ok(Buffer.from(s, 'utf8'));
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(b: Buffer): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

// ---- integers ----------------------------------------------------------------------------------------

const INT_WIDTH = { int2: 2, int4: 4, int8: 8 } as const;
type IntType = keyof typeof INT_WIDTH;
const INT_RANGE: Record<IntType, [bigint, bigint]> = {
  int2: [-32768n, 32767n],
  int4: [-2147483648n, 2147483647n],
  int8: [-9223372036854775808n, 9223372036854775807n],
};

function intFromText(type: IntType, s: string): CanonicalResult {
  // PostgreSQL accepts surrounding whitespace and a sign; mamori takes decimal only (PostgreSQL 16's
  // underscores and 0x/0o/0b forms are refused rather than guessed).
  const m = /^[ \t\n\r\v\f]*([+-]?[0-9]+)[ \t\n\r\v\f]*$/.exec(s);
  if (m === null) return fail(`invalid input syntax for type ${type}`);
  const v = BigInt(m[1]!);
  const [lo, hi] = INT_RANGE[type];
  if (v < lo || v > hi) return fail(`value out of range for type ${type}`);
  const b = Buffer.alloc(INT_WIDTH[type]);
  if (type === 'int2') b.writeInt16BE(Number(v));
  else if (type === 'int4') b.writeInt32BE(Number(v));
  else b.writeBigInt64BE(v);
  return ok(b);
}

function intToText(type: IntType, b: Buffer): string {
  if (type === 'int2') return String(b.readInt16BE(0));
  if (type === 'int4') return String(b.readInt32BE(0));
  return b.readBigInt64BE(0).toString();
}

// ---- dates -------------------------------------------------------------------------------------------

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
function daysFromCivil(y: number, m: number, d: number): number {
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

function civilFromDays(z0: number): [number, number, number] {
  const z = z0 + 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

const PG_EPOCH_DAYS = daysFromCivil(2000, 1, 1); // 10957
/** Supported range: 0001-01-01 (AD) to PostgreSQL's last date, 5874897-12-31. */
export const DATE_MIN = daysFromCivil(1, 1, 1) - PG_EPOCH_DAYS;
export const DATE_MAX = daysFromCivil(5874897, 12, 31) - PG_EPOCH_DAYS;

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
const isLeap = (y: number): boolean => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;

const DATE_SPECIALS = /^\s*(infinity|-infinity|\+infinity|epoch|now|today|tomorrow|yesterday|allballs)\s*$/i;

function dateFromText(s: string): CanonicalResult {
  if (DATE_SPECIALS.test(s)) {
    return fail('special date values (infinity, epoch, today, ...) are not supported for protected dates');
  }
  const m = /^[ \t\n\r\v\f]*([0-9]{4,7})-([0-9]{1,2})-([0-9]{1,2})[ \t\n\r\v\f]*$/.exec(s);
  if (m === null) return fail('invalid input syntax for type date (use ISO YYYY-MM-DD)');
  const y = Number(m[1]);
  const mo = Number(m[2]);
  const d = Number(m[3]);
  if (mo < 1 || mo > 12) return fail('date month out of range');
  const dim = mo === 2 && isLeap(y) ? 29 : DAYS_IN_MONTH[mo - 1]!;
  if (d < 1 || d > dim) return fail('date day out of range');
  return dateFromDays(daysFromCivil(y, mo, d) - PG_EPOCH_DAYS);
}

function dateFromDays(days: number): CanonicalResult {
  if (days === -0x80000000 || days === 0x7fffffff) {
    return fail('special date values (infinity, epoch, today, ...) are not supported for protected dates');
  }
  if (days < DATE_MIN || days > DATE_MAX) return fail('date out of range (0001-01-01 to 5874897-12-31)');
  const b = Buffer.alloc(4);
  b.writeInt32BE(days);
  return ok(b);
}

function dateToText(days: number): string {
  const [y, m, d] = civilFromDays(days + PG_EPOCH_DAYS);
  return `${String(y).padStart(4, '0')}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`;
}

// ---- bytea -------------------------------------------------------------------------------------------

function byteaFromText(s: string): CanonicalResult {
  if (s.startsWith('\\x')) {
    // Hex format: pairs of hex digits, whitespace allowed between pairs (not inside one).
    const hex = s.slice(2);
    const out: number[] = [];
    let i = 0;
    while (i < hex.length) {
      const c = hex[i]!;
      if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
        i++;
        continue;
      }
      const pair = hex.slice(i, i + 2);
      if (!/^[0-9a-fA-F]{2}$/.test(pair)) return fail('invalid hexadecimal data for type bytea');
      out.push(parseInt(pair, 16));
      i += 2;
    }
    return ok(Buffer.from(out));
  }
  // Escape format: \\ is a backslash, \ooo an octal byte; other characters stand for their UTF-8 bytes.
  if (LONE_SURROGATE.test(s)) return fail('bytea value is not valid Unicode text');
  const parts: Buffer[] = [];
  let run = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c !== '\\') {
      run += c;
      continue;
    }
    if (s[i + 1] === '\\') {
      run += '\\';
      i++;
      continue;
    }
    const oct = s.slice(i + 1, i + 4);
    if (!/^[0-3][0-7]{2}$/.test(oct)) return fail('invalid input syntax for type bytea');
    parts.push(Buffer.from(run, 'utf8'), Buffer.of(parseInt(oct, 8)));
    run = '';
    i += 3;
  }
  parts.push(Buffer.from(run, 'utf8'));
  return ok(Buffer.concat(parts));
}

// ---- the four conversions ----------------------------------------------------------------------------

/** Canonical plaintext from PostgreSQL text input of the column's type, validated. */
export function canonicalFromText(t: LogicalTypeSpec, text: string): CanonicalResult {
  switch (t.type) {
    case 'text':
    case 'varchar':
    case 'char':
      return textLike(t, text);
    case 'mynumber': {
      const r = normalizeMyNumber(text);
      return r.ok ? ok(Buffer.from(r.value, 'latin1')) : r;
    }
    case 'corporate_number': {
      const r = normalizeCorporateNumber(text);
      return r.ok ? ok(Buffer.from(r.value, 'latin1')) : r;
    }
    case 'int2':
    case 'int4':
    case 'int8':
      return intFromText(t.type, text);
    case 'date':
      return dateFromText(text);
    case 'bytea':
      return byteaFromText(text);
  }
}

/**
 * Canonical plaintext from PostgreSQL binary input of the storage type: text-like types (and the
 * numbers) as UTF-8 bytes of text, int2/4/8 big-endian, date int32 big-endian days since 2000-01-01,
 * bytea raw.
 */
export function canonicalFromBinary(t: LogicalTypeSpec, bytes: Buffer): CanonicalResult {
  switch (t.type) {
    case 'text':
    case 'varchar':
    case 'char':
    case 'mynumber':
    case 'corporate_number': {
      const s = decodeUtf8(bytes);
      if (s === null) return fail(`${formatLogicalType(t)} value is not valid UTF-8`);
      return canonicalFromText(t, s);
    }
    case 'int2':
    case 'int4':
    case 'int8':
      if (bytes.length !== INT_WIDTH[t.type]) return fail(`binary ${t.type} must be ${INT_WIDTH[t.type]} bytes`);
      return ok(Buffer.from(bytes));
    case 'date':
      if (bytes.length !== 4) return fail('binary date must be 4 bytes');
      return dateFromDays(bytes.readInt32BE(0));
    case 'bytea':
      return ok(Buffer.from(bytes));
  }
}

function checkCanonical(t: LogicalTypeSpec, c: Buffer): void {
  const want =
    t.type === 'int2' || t.type === 'int4' || t.type === 'int8'
      ? INT_WIDTH[t.type]
      : t.type === 'date'
        ? 4
        : t.type === 'mynumber'
          ? 12
          : t.type === 'corporate_number'
            ? 13
            : -1;
  if (want !== -1 && c.length !== want) throw new RangeError(`canonical ${t.type} must be ${want} bytes`);
}

/** Pads a char(n) value back to n characters, as PostgreSQL stores and prints it. */
function padChar(t: LogicalTypeSpec, s: string): string {
  if (t.type !== 'char' || t.length === undefined) return s;
  const len = codePointLength(s);
  return len < t.length ? s + ' '.repeat(t.length - len) : s;
}

/** PostgreSQL's text output: date ISO YYYY-MM-DD, bytea \x hex (bytea_output = hex), char(n) padded. */
export function textFromCanonical(t: LogicalTypeSpec, canonical: Buffer): string {
  checkCanonical(t, canonical);
  switch (t.type) {
    case 'text':
    case 'varchar':
    case 'char':
      return padChar(t, canonical.toString('utf8'));
    case 'mynumber':
    case 'corporate_number':
      return canonical.toString('latin1');
    case 'int2':
    case 'int4':
    case 'int8':
      return intToText(t.type, canonical);
    case 'date':
      return dateToText(canonical.readInt32BE(0));
    case 'bytea':
      return '\\x' + canonical.toString('hex');
  }
}

/** PostgreSQL's binary output of the plaintext type (char(n) padded back to n). */
export function binaryFromCanonical(t: LogicalTypeSpec, canonical: Buffer): Buffer {
  checkCanonical(t, canonical);
  if (t.type === 'char' && t.length !== undefined) return Buffer.from(padChar(t, canonical.toString('utf8')), 'utf8');
  return canonical;
}

/**
 * Masked text for the `mask` read policy, or null where no mask is a valid value of the type.
 *  - mynumber: 8 asterisks + last 4 digits (`********9018`), per MYNUMBER.md;
 *  - corporate_number: 9 asterisks + last 4 (same 13-character shape);
 *  - text / varchar / char: always `****` — a fixed mask, so the mask does not reveal the length;
 *  - int2/4/8, date, bytea: null (`****` is not a valid value of those types); the caller decides
 *    (e.g. NULL, or refusing the mask policy for such columns at policy-check time).
 */
export function maskCanonical(t: LogicalTypeSpec, canonical: Buffer): string | null {
  checkCanonical(t, canonical);
  switch (t.type) {
    case 'mynumber':
      return '********' + canonical.toString('latin1', 8);
    case 'corporate_number':
      return '*********' + canonical.toString('latin1', 9);
    case 'text':
    case 'varchar':
    case 'char':
      return '****';
    default:
      return null;
  }
}
