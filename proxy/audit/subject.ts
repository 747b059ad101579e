// The subject trail: keyed hashes that let `audit search --subject` find every record that wrote, returned or
// searched one value without the trail ever holding the value. The key is a keyring key of purpose `subject`
// (one per retention period, so shredding it makes that period's hashes unlinkable); auditors never hold it.
import { createHmac, type KeyObject } from 'node:crypto';

/** Hash length: 128 bits of HMAC-SHA-256, base64url (22 characters). Collisions are not a practical concern at
 * audit-trail volumes, and a shorter hash keeps records of large results small. */
export const SUBJECT_HASH_BYTES = 16;

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/**
 * HMAC-SHA-256 under the subject key over a domain-separated encoding:
 * "mamori-subject-v1" ‖ 0x00 ‖ len(type) ‖ type ‖ 0x00 ‖ len(value) ‖ value, lengths as 32-bit big-endian.
 * `canonical` must already be normalized (e.g. 12 ASCII digits for a My Number) so every written form of one
 * number gives one hash; `logicalType` keeps a My Number and, say, a phone number with the same digits apart.
 */
export function subjectHash(subjectKey: KeyObject, logicalType: string, canonical: Buffer): string {
  // one update of the whole encoding: each update() is a crossing into C++, which costs more than the copy
  const prefix = typePrefix(logicalType);
  const msg = Buffer.allocUnsafe(prefix.length + 4 + canonical.length);
  prefix.copy(msg, 0);
  msg.writeUInt32BE(canonical.length, prefix.length);
  canonical.copy(msg, prefix.length + 4);
  return createHmac('sha256', subjectKey).update(msg).digest().subarray(0, SUBJECT_HASH_BYTES).toString('base64url');
}

const prefixes = new Map<string, Buffer>();
/** "mamori-subject-v1" ‖ 0x00 ‖ len(type) ‖ type ‖ 0x00, built once per logical type. */
function typePrefix(logicalType: string): Buffer {
  let p = prefixes.get(logicalType);
  if (!p) {
    const type = Buffer.from(logicalType, 'utf8');
    p = Buffer.concat([Buffer.from('mamori-subject-v1\u0000', 'utf8'), u32(type.length), type, Buffer.from([0])]);
    prefixes.set(logicalType, p);
  }
  return p;
}

const FULLWIDTH_ZERO = 0xff10;
// Separators MYNUMBER.md accepts between digit groups.
const SEPARATORS = new Set([0x20, 0x3000, 0x2d, 0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xff0d, 0x30fc]);

export class SubjectFormatError extends Error {
  override readonly name = 'SubjectFormatError';
}

/** ASCII digits from ASCII/full-width digits with the accepted separators; anything else is refused. */
function digitsOf(input: string): string {
  let out = '';
  for (const ch of input.trim()) {
    const c = ch.codePointAt(0)!;
    if (c >= 48 && c <= 57) out += ch;
    else if (c >= FULLWIDTH_ZERO && c <= FULLWIDTH_ZERO + 9) out += String.fromCharCode(48 + c - FULLWIDTH_ZERO);
    else if (!SEPARATORS.has(c)) throw new SubjectFormatError('subject value contains a character that is not a digit or separator');
  }
  return out;
}

export function myNumberCheckDigit(first11: string): number {
  let sum = 0;
  for (let n = 1; n <= 11; n++) {
    const p = first11.charCodeAt(11 - n) - 48;
    const q = n <= 6 ? n + 1 : n - 5;
    sum += p * q;
  }
  const r = sum % 11;
  return r <= 1 ? 0 : 11 - r;
}

export function corporateNumberCheckDigit(last12: string): number {
  let sum = 0;
  for (let n = 1; n <= 12; n++) sum += (last12.charCodeAt(12 - n) - 48) * (n % 2 === 1 ? 1 : 2);
  return 9 - (sum % 9);
}

/** A searched value normalized for hashing: its logical type and canonical bytes. */
export interface NormalizedSubject {
  logicalType: 'mynumber' | 'corporate_number';
  canonical: Buffer;
}

/**
 * Normalizes a value typed at the CLI: 12 digits → My Number, 13 → corporate number, both check-digit verified.
 * The error never repeats the value.
 */
export function normalizeSubject(input: string): NormalizedSubject {
  const d = digitsOf(input);
  if (d.length === 12) {
    if (myNumberCheckDigit(d.slice(0, 11)) !== d.charCodeAt(11) - 48) throw new SubjectFormatError('not a valid individual number (check digit)');
    return { logicalType: 'mynumber', canonical: Buffer.from(d, 'ascii') };
  }
  if (d.length === 13) {
    if (corporateNumberCheckDigit(d.slice(1)) !== d.charCodeAt(0) - 48) throw new SubjectFormatError('not a valid corporate number (check digit)');
    return { logicalType: 'corporate_number', canonical: Buffer.from(d, 'ascii') };
  }
  throw new SubjectFormatError(`expected 12 or 13 digits, got ${d.length}`);
}
