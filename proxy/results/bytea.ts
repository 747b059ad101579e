// bytea text formats, both directions, on bytes (no JS strings on the hot path). PostgreSQL's output is
// `\x` + lower-case hex (bytea_output = hex) or the escape format (printable ASCII as is, `\\` for a
// backslash, `\ooo` octal for everything else); its input also allows whitespace between hex pairs.

const BACKSLASH = 0x5c;

/** Raised for malformed bytea text; the message never contains the bytes. */
export class ByteaSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ByteaSyntaxError';
  }
}

// Hex digit values by byte, -1 for anything else (a table lookup is ~2x faster than range tests here).
const HEX_VALUE = new Int8Array(256).fill(-1);
for (let i = 0; i < 10; i++) HEX_VALUE[0x30 + i] = i;
for (let i = 0; i < 6; i++) {
  HEX_VALUE[0x41 + i] = 10 + i;
  HEX_VALUE[0x61 + i] = 10 + i;
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
}

function decodeHex(text: Uint8Array, start: number): Buffer {
  const n = text.length - start;
  const out = Buffer.allocUnsafe(n >> 1);
  let o = 0;
  let i = start;
  while (i < text.length) {
    const c = text[i]!;
    if (isSpace(c)) {
      i++;
      continue;
    }
    const hi = HEX_VALUE[c]!;
    const lo = i + 1 < text.length ? HEX_VALUE[text[i + 1]!]! : -1;
    if (hi < 0 || lo < 0) throw new ByteaSyntaxError('invalid hexadecimal data for type bytea');
    out[o++] = (hi << 4) | lo;
    i += 2;
  }
  return o === out.length ? out : out.subarray(0, o);
}

function decodeEscape(text: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(text.length);
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c !== BACKSLASH) {
      out[o++] = c;
      continue;
    }
    if (text[i + 1] === BACKSLASH) {
      out[o++] = BACKSLASH;
      i++;
      continue;
    }
    if (i + 3 >= text.length) throw new ByteaSyntaxError('invalid input syntax for type bytea');
    const a = text[i + 1]! - 0x30;
    const b = text[i + 2]! - 0x30;
    const d = text[i + 3]! - 0x30;
    if (a < 0 || a > 3 || b < 0 || b > 7 || d < 0 || d > 7) throw new ByteaSyntaxError('invalid input syntax for type bytea');
    out[o++] = (a << 6) | (b << 3) | d;
    i += 3;
  }
  return out.subarray(0, o);
}

/**
 * bytea text (as PostgreSQL prints or reads it) → the bytes. Text starting with `\x` is hex whatever the
 * setting (PostgreSQL reads it so); otherwise the escape format. `escapeFormat` says the server was set
 * to bytea_output = escape: then text without `\x` is expected, and with hex output it must start `\x`.
 */
export function decodeByteaText(text: Uint8Array, escapeFormat = false): Buffer {
  if (text.length >= 2 && text[0] === BACKSLASH && text[1] === 0x78) return decodeHex(text, 2);
  if (!escapeFormat) throw new ByteaSyntaxError('bytea text in hex output format must start with \\x');
  return decodeEscape(text);
}

/** Any bytea input text the server would accept (hex or escape), as it would read it. */
export function parseByteaInput(text: Uint8Array): Buffer {
  return decodeByteaText(text, true);
}

const HEX = Buffer.from('0123456789abcdef', 'latin1');

/** bytes → `\x…` (bytea_output = hex), as bytes. */
export function encodeByteaHex(bytes: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(2 + 2 * bytes.length);
  out[0] = BACKSLASH;
  out[1] = 0x78;
  let o = 2;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    out[o++] = HEX[b >> 4]!;
    out[o++] = HEX[b & 15]!;
  }
  return out;
}

/** bytes → the escape format (bytea_output = escape), as PostgreSQL's byteaout writes it. */
export function encodeByteaEscape(bytes: Uint8Array): Buffer {
  let size = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    size += b === BACKSLASH ? 2 : b < 0x20 || b > 0x7e ? 4 : 1;
  }
  const out = Buffer.allocUnsafe(size);
  let o = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b === BACKSLASH) {
      out[o++] = BACKSLASH;
      out[o++] = BACKSLASH;
    } else if (b < 0x20 || b > 0x7e) {
      out[o++] = BACKSLASH;
      out[o++] = 0x30 + (b >> 6);
      out[o++] = 0x30 + ((b >> 3) & 7);
      out[o++] = 0x30 + (b & 7);
    } else {
      out[o++] = b;
    }
  }
  return out;
}
