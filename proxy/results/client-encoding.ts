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
  /** Client bytes → text, or null when they are invalid or would not read back byte for byte. */
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
  private readonly overrides: ReadonlyMap<number, Buffer | null>;
  private readonly substitutions: ReadonlyMap<number, number>;

  constructor(readonly name: string, private readonly converter: string) {
    this.asciiSafe = !NOT_ASCII_SAFE.has(name);
    this.overrides = new Map(Object.entries(ENCODE_OVERRIDES[name] ?? {}).map(([cp, hex]) => [Number(cp), hex === null ? null : Buffer.from(hex, 'hex')]));
    this.substitutions = new Map(Object.entries(DECODE_SUBSTITUTIONS[name] ?? {}).map(([from, to]) => [Number(from), to]));
  }

  encode(text: string): Buffer | null {
    if (ASCII_TEXT.test(text)) return Buffer.from(text, 'latin1');
    if (this.overrides.size === 0) return baseEncode(this.converter, text);
    // Characters PostgreSQL converts differently take its bytes; the runs between them go to iconv-lite.
    const parts: Buffer[] = [];
    let run = '';
    for (const ch of text) {
      const o = this.overrides.get(ch.codePointAt(0)!);
      if (o === undefined) {
        run += ch;
        continue;
      }
      if (o === null) return null;
      if (run !== '') {
        const b = baseEncode(this.converter, run);
        if (b === null) return null;
        parts.push(b);
        run = '';
      }
      parts.push(o);
    }
    if (run !== '') {
      const b = baseEncode(this.converter, run);
      if (b === null) return null;
      parts.push(b);
    }
    return Buffer.concat(parts);
  }

  decode(bytes: Uint8Array): string | null {
    if (isAscii(bytes)) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('latin1');
    let text = iconv.decode(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), this.converter);
    if (this.substitutions.size > 0) {
      let out = '';
      for (const ch of text) {
        const to = this.substitutions.get(ch.codePointAt(0)!);
        out += to === undefined ? ch : String.fromCodePoint(to);
      }
      text = out;
    }
    // Accepted only when it converts back to the very same bytes: then PostgreSQL reads them as this text
    // (its conversion, which encode() follows, is checked to map this text to these bytes). Bytes that
    // PostgreSQL would also accept but that do not round-trip (duplicate codes such as NEC/IBM extensions
    // in SJIS) are refused: mamori cannot be sure which character the server would have made of them.
    const back = this.encode(text);
    return back !== null && Buffer.compare(back, bytes) === 0 ? text : null;
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
