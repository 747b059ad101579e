// The subject trail: keyed hashes that let `audit search --subject` find every record that wrote, returned or
// searched one value without the trail ever holding the value. The key is a keyring key of purpose `subject`
// (one per retention period, so shredding it makes that period's hashes unlinkable); auditors never hold it.
import { createHmac, type KeyObject } from 'node:crypto';
import { normalizeCorporateNumber, normalizeMyNumber } from '../../keyring/mynumber.js';

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

export class SubjectFormatError extends Error {
  override readonly name = 'SubjectFormatError';
}

/** A searched value normalized for hashing: its logical type and canonical bytes. */
export interface NormalizedSubject {
  logicalType: 'mynumber' | 'corporate_number';
  canonical: Buffer;
}

/**
 * Normalizes a value typed at the CLI with the rules writes use (keyring/mynumber.ts: the accepted written forms,
 * check digits), so a subject searched hashes like the value stored: a valid My Number, else a valid corporate
 * number. The error never repeats the value.
 */
export function normalizeSubject(input: string): NormalizedSubject {
  const my = normalizeMyNumber(input);
  if (my.ok) return { logicalType: 'mynumber', canonical: Buffer.from(my.value, 'ascii') };
  const corp = normalizeCorporateNumber(input);
  if (corp.ok) return { logicalType: 'corporate_number', canonical: Buffer.from(corp.value, 'ascii') };
  throw new SubjectFormatError(`neither a valid individual number (${my.reason}) nor a valid corporate number (${corp.reason})`);
}
