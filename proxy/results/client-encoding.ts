// PostgreSQL client encodings for protected text (docs/results.md, "Client encodings"). Mamori keeps the
// canonical plaintext of text-family columns in UTF-8; a session whose client_encoding differs sends its
// literals, parameters and COPY data in that encoding and expects results in it, exactly as PostgreSQL
// converts them for an unprotected column. The converters are iconv-lite's, corrected where PostgreSQL's own
// conversion tables differ (client-encoding-tables.ts, generated from a PostgreSQL server and re-checked
// against one by the tests); encodings without a faithful converter have no codec and stay refused.
import iconv from 'iconv-lite';
import { ENCODE_OVERRIDES, DECODE_SUBSTITUTIONS } from './client-encoding-tables.js';

/** A client encoding mamori can convert protected text to and from, faithfully to PostgreSQL. */
export interface ClientCodec {
  /** PostgreSQL's name for it (UTF8, EUC_JP, SJIS, LATIN1 …). */
  readonly name: string;
  /** True when the bytes are UTF-8 (no conversion). */
  readonly utf8: boolean;
  /**
   * True when no byte of a multibyte character is below 0x80, so a byte-level scan for quotes, backslashes
   * and delimiters reads the text as PostgreSQL does (false for SJIS, BIG5, GBK, UHC, GB18030, JOHAB).
   */
  readonly asciiSafe: boolean;
  /**
   * Client bytes → text, or null when they are invalid or would not read back byte for byte. Bytes below
   * 0x80 always read as the same code points (COPY FROM relies on it to skip decoding ASCII fields).
   */
  decode(bytes: Uint8Array): string | null;
  /** Text → client bytes, or null when a character has no equivalent in the encoding. */
  encode(text: string): Buffer | null;
}

// PostgreSQL's encoding names and aliases (encnames.c), keyed as clean_encoding_name() leaves them:
// lower case, everything but letters and digits removed.
const ALIASES: Record<string, string> = {
  abc: 'WIN1258', alt: 'WIN866', big5: 'BIG5', euccn: 'EUC_CN', eucjis2004: 'EUC_JIS_2004', eucjp: 'EUC_JP',
  euckr: 'EUC_KR', euctw: 'EUC_TW', gb18030: 'GB18030', gbk: 'GBK', iso88591: 'LATIN1', iso885910: 'LATIN6',
  iso885913: 'LATIN7', iso885914: 'LATIN8', iso885915: 'LATIN9', iso885916: 'LATIN10', iso88592: 'LATIN2',
  iso88593: 'LATIN3', iso88594: 'LATIN4', iso88595: 'ISO_8859_5', iso88596: 'ISO_8859_6', iso88597: 'ISO_8859_7',
  iso88598: 'ISO_8859_8', iso88599: 'LATIN5', johab: 'JOHAB', koi8: 'KOI8R', koi8r: 'KOI8R', koi8u: 'KOI8U',
  latin1: 'LATIN1', latin2: 'LATIN2', latin3: 'LATIN3', latin4: 'LATIN4', latin5: 'LATIN5', latin6: 'LATIN6',
  latin7: 'LATIN7', latin8: 'LATIN8', latin9: 'LATIN9', latin10: 'LATIN10', mskanji: 'SJIS',
  muleinternal: 'MULE_INTERNAL', shiftjis: 'SJIS', shiftjis2004: 'SHIFT_JIS_2004', sjis: 'SJIS',
  sqlascii: 'SQL_ASCII', tcvn: 'WIN1258', tcvn5712: 'WIN1258', uhc: 'UHC', unicode: 'UTF8', utf8: 'UTF8',
  vscii: 'WIN1258', win: 'WIN1251', win1250: 'WIN1250', win1251: 'WIN1251', win1252: 'WIN1252', win1253: 'WIN1253',
  win1254: 'WIN1254', win1255: 'WIN1255', win1256: 'WIN1256', win1257: 'WIN1257', win1258: 'WIN1258',
  win866: 'WIN866', win874: 'WIN874', win932: 'SJIS', win936: 'GBK', win949: 'UHC', win950: 'BIG5',
  windows1250: 'WIN1250', windows1251: 'WIN1251', windows1252: 'WIN1252', windows1253: 'WIN1253',
  windows1254: 'WIN1254', windows1255: 'WIN1255', windows1256: 'WIN1256', windows1257: 'WIN1257',
  windows1258: 'WIN1258', windows866: 'WIN866', windows874: 'WIN874', windows932: 'SJIS', windows936: 'GBK',
  windows949: 'UHC', windows950: 'BIG5',
};

/** PostgreSQL's canonical name for an encoding name or alias (any case, any punctuation), or null. */
export function canonicalEncodingName(name: string): string | null {
  return ALIASES[name.toLowerCase().replace(/[^a-z0-9]/g, '')] ?? null;
}

/** Encodings PostgreSQL accepts as client encodings whose multibyte characters may contain ASCII bytes. */
const NOT_ASCII_SAFE = new Set(['SJIS', 'SHIFT_JIS_2004', 'BIG5', 'GBK', 'UHC', 'GB18030', 'JOHAB']);

/**
 * The iconv-lite converter behind each encoding mamori supports. Left out, because no converter here reads
 * them as PostgreSQL does (the comparison test shows thousands of differences or there is none at all):
 * EUC_CN and EUC_KR (iconv-lite's are the GBK / UHC supersets), BIG5 (iconv-lite's is Big5-HKSCS), GBK,
 * EUC_TW, JOHAB, EUC_JIS_2004, SHIFT_JIS_2004 and MULE_INTERNAL.
 */
export const CONVERTERS: Readonly<Record<string, string>> = {
  EUC_JP: 'euc-jp', SJIS: 'shift_jis', UHC: 'cp949', GB18030: 'gb18030',
  LATIN1: 'iso-8859-1', LATIN2: 'iso-8859-2', LATIN3: 'iso-8859-3', LATIN4: 'iso-8859-4', LATIN5: 'iso-8859-9',
  LATIN6: 'iso-8859-10', LATIN7: 'iso-8859-13', LATIN8: 'iso-8859-14', LATIN9: 'iso-8859-15', LATIN10: 'iso-8859-16',
  ISO_8859_5: 'iso-8859-5', ISO_8859_6: 'iso-8859-6', ISO_8859_7: 'iso-8859-7', ISO_8859_8: 'iso-8859-8',
  WIN866: 'cp866', WIN874: 'windows-874', WIN1250: 'windows-1250', WIN1251: 'windows-1251', WIN1252: 'windows-1252',
  WIN1253: 'windows-1253', WIN1254: 'windows-1254', WIN1255: 'windows-1255', WIN1256: 'windows-1256',
  WIN1257: 'windows-1257', WIN1258: 'windows-1258', KOI8R: 'koi8-r', KOI8U: 'koi8-u',
};

function isAscii(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i]! >= 0x80) return false;
  return true;
}

const ASCII_TEXT = /^[\x00-\x7f]*$/;
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const UTF8: ClientCodec = {
  name: 'UTF8',
  utf8: true,
  asciiSafe: true,
  decode(bytes) {
    try {
      return utf8Decoder.decode(bytes);
    } catch {
      return null;
    }
  },
  encode(text) {
    return Buffer.from(text, 'utf8');
  },
};

/**
 * iconv-lite's encoder alone, the characters it cannot represent reported as null (it would write '?').
 * Exported for the table generator (scripts/gen-encoding-tables.ts), which compares it with PostgreSQL.
 */
export function baseEncode(converter: string, text: string): Buffer | null {
  if (text.includes('\ufffd')) return null; // PostgreSQL maps no byte of these encodings to U+FFFD
  const out = iconv.encode(text, converter);
  return iconv.decode(out, converter) === text ? out : null;
}

class IconvCodec implements ClientCodec {
  readonly utf8 = false;
  readonly asciiSafe: boolean;
  /** Per code point: its bytes, or null when it has none (PostgreSQL's answer where it differs). Filled lazily. */
  private readonly chars = new Map<number, Buffer | null>();
  /** Per character's bytes (as an integer, big-endian): its text, or null when invalid. Filled lazily. */
  private readonly reads = new Map<number, string | null>();
  private readonly substitutions: ReadonlyMap<number, number>;

  constructor(readonly name: string, private readonly converter: string) {
    this.asciiSafe = !NOT_ASCII_SAFE.has(name);
    for (const [cp, hex] of Object.entries(ENCODE_OVERRIDES[name] ?? {})) this.chars.set(Number(cp), hex === null ? null : Buffer.from(hex, 'hex'));
    this.substitutions = new Map(Object.entries(DECODE_SUBSTITUTIONS[name] ?? {}).map(([from, to]) => [Number(from), to]));
  }

  /** One character's bytes (these encodings are stateless: a string's bytes are its characters' bytes). */
  private char(cp: number): Buffer | null {
    let b = this.chars.get(cp);
    if (b === undefined) {
      b = baseEncode(this.converter, String.fromCodePoint(cp));
      if (this.chars.size < 65536) this.chars.set(cp, b);
    }
    return b;
  }

  encode(text: string): Buffer | null {
    if (ASCII_TEXT.test(text)) return Buffer.from(text, 'latin1');
    const parts: Buffer[] = [];
    let size = 0;
    let ascii = '';
    for (const ch of text) {
      const cp = ch.codePointAt(0)!;
      if (cp < 0x80) {
        ascii += ch;
        continue;
      }
      if (ascii !== '') {
        parts.push(Buffer.from(ascii, 'latin1'));
        size += ascii.length;
        ascii = '';
      }
      const b = this.char(cp);
      if (b === null) return null;
      parts.push(b);
      size += b.length;
    }
    if (ascii !== '') {
      parts.push(Buffer.from(ascii, 'latin1'));
      size += ascii.length;
    }
    return Buffer.concat(parts, size);
  }

  /**
   * Characters are delimited as PostgreSQL's pg_encoding_mblen delimits them; each is read once through
   * iconv-lite (then PostgreSQL's reading where it differs) and accepted only when it converts back to the
   * very same bytes: then PostgreSQL reads it as this text (its conversion, which encode() follows, is
   * checked to map this text to these bytes). Bytes PostgreSQL would also accept but that do not round-trip
   * (duplicate codes such as SJIS's IBM extensions in the NEC-selected rows) are refused: mamori cannot be
   * sure which character the server would make of them.
   */
  decode(bytes: Uint8Array): string | null {
    if (isAscii(bytes)) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('latin1');
    let out = '';
    let from = 0;
    for (let i = 0; i < bytes.length;) {
      const c = bytes[i]!;
      if (c < 0x80) {
        i++;
        continue;
      }
      const len = mblen(this.name, bytes, i);
      if (i + len > bytes.length) return null;
      let key = 0;
      for (let k = 0; k < len; k++) key = key * 256 + bytes[i + k]!;
      let ch = this.reads.get(key);
      if (ch === undefined) {
        ch = this.readChar(Buffer.from(bytes.subarray(i, i + len)));
        if (this.reads.size < 65536) this.reads.set(key, ch);
      }
      if (ch === null) return null;
      if (i > from) out += Buffer.from(bytes.buffer, bytes.byteOffset + from, i - from).toString('latin1');
      out += ch;
      i += len;
      from = i;
    }
    if (from < bytes.length) out += Buffer.from(bytes.buffer, bytes.byteOffset + from, bytes.length - from).toString('latin1');
    return out;
  }

  private readChar(b: Buffer): string | null {
    const text = iconv.decode(b, this.converter);
    const cps = [...text];
    if (cps.length !== 1) return null;
    const to = this.substitutions.get(cps[0]!.codePointAt(0)!);
    const ch = to === undefined ? cps[0]! : String.fromCodePoint(to);
    const back = this.char(ch.codePointAt(0)!);
    return back !== null && back.equals(b) ? ch : null;
  }
}

/** PostgreSQL's pg_encoding_mblen for a character starting with a high byte, in the converted encodings. */
function mblen(name: string, b: Uint8Array, i: number): number {
  const c = b[i]!;
  switch (name) {
    case 'EUC_JP':
      return c === 0x8f ? 3 : 2;
    case 'SJIS':
      return c >= 0xa1 && c <= 0xdf ? 1 : 2;
    case 'UHC':
      return 2;
    case 'GB18030': {
      const n = b[i + 1];
      return n !== undefined && n >= 0x30 && n <= 0x39 ? 4 : 2;
    }
    default:
      return 1; // single-byte encodings
  }
}

const codecs = new Map<string, ClientCodec | null>();

/**
 * The codec for a session's client_encoding (as PostgreSQL reports it, or any alias), or null when mamori
 * has no faithful converter for it. `serverEncoding` matters for SQL_ASCII, where PostgreSQL converts
 * nothing: the client then sends and receives the database's own encoding.
 */
export function clientCodec(clientEncoding: string | undefined, serverEncoding = 'UTF8'): ClientCodec | null {
  let name = canonicalEncodingName(clientEncoding ?? 'UTF8');
  if (name === 'SQL_ASCII') name = canonicalEncodingName(serverEncoding);
  if (name === null || name === 'SQL_ASCII') return null;
  if (name === 'UTF8') return UTF8;
  let c = codecs.get(name);
  if (c === undefined) {
    const converter = CONVERTERS[name];
    c = converter === undefined ? null : new IconvCodec(name, converter);
    codecs.set(name, c);
  }
  return c;
}

/** True when PostgreSQL's name (or alias) is an encoding whose multibyte characters may contain ASCII bytes. */
export function embedsAscii(encoding: string): boolean {
  const name = canonicalEncodingName(encoding);
  return name !== null && NOT_ASCII_SAFE.has(name);
}

/**
 * A copy of `sql` in which every byte of a multibyte character is 0x80, per PostgreSQL's pg_encoding_mblen
 * for the encoding: a byte-level lexer then sees the quotes, backslashes and identifiers the server sees
 * (an SJIS trail byte 0x5C is not a backslash). `sql` itself when nothing needs masking.
 */
export function maskMultibyte(sql: Buffer, encoding: string): Buffer {
  const name = canonicalEncodingName(encoding);
  if (name === null || !NOT_ASCII_SAFE.has(name) || isAscii(sql)) return sql;
  const out = Buffer.from(sql);
  for (let i = 0; i < out.length;) {
    const c = out[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let len = 2;
    if (name === 'JOHAB' && c === 0x8f) len = 3; // pg_johab_mblen is pg_euc_mblen
    else if ((name === 'SJIS' || name === 'SHIFT_JIS_2004') && c >= 0xa1 && c <= 0xdf) len = 1; // half-width katakana
    else if (name === 'GB18030' && i + 1 < out.length && out[i + 1]! >= 0x30 && out[i + 1]! <= 0x39) len = 4;
    for (let k = 0; k < len && i < out.length; k++) out[i++] = 0x80;
  }
  return out;
}
