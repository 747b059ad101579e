// Subject hashes: keyed, domain-separated by logical type, stable across written forms; normalization refuses
// bad input without echoing it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, createSecretKey, randomBytes } from 'node:crypto';
import { normalizeSubject, subjectHash, SubjectFormatError } from '../../../proxy/audit/subject.js';
import { SubjectCollector } from '../../../proxy/audit/statement-records.js';

const key = createSecretKey(randomBytes(32));

describe('subjectHash', () => {
  test('128-bit base64url, deterministic per key, different per key and per logical type', () => {
    const v = Buffer.from('123456789018');
    const a = subjectHash(key, 'mynumber', v);
    assert.match(a, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(subjectHash(key, 'mynumber', v), a);
    assert.notEqual(subjectHash(createSecretKey(randomBytes(32)), 'mynumber', v), a);
    assert.notEqual(subjectHash(key, 'phone', v), a);
  });

  test('matches the documented encoding, and length prefixes keep type/value boundaries apart', () => {
    const v = Buffer.from('123456789018');
    const u32 = (n: number): Buffer => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
    const expected = createHmac('sha256', key)
      .update(Buffer.concat([Buffer.from('mamori-subject-v1\0'), u32(8), Buffer.from('mynumber'), Buffer.from([0]), u32(12), v]))
      .digest()
      .subarray(0, 16)
      .toString('base64url');
    assert.equal(subjectHash(key, 'mynumber', v), expected);
    assert.notEqual(subjectHash(key, 'ab', Buffer.from('c')), subjectHash(key, 'a', Buffer.from('bc')));
  });
});

describe('normalizeSubject', () => {
  test('every accepted written form of one number normalizes to the same 12 digits', () => {
    for (const form of ['123456789018', '1234 5678 9018', '1234-5678-9018', '１２３４\u3000５６７８\u3000９０１８', '1234ー5678ー9018', '1234\u22125678\u22129018'])
      assert.deepEqual(normalizeSubject(form), { logicalType: 'mynumber', canonical: Buffer.from('123456789018') });
    assert.equal(normalizeSubject('000000000019').canonical.toString(), '000000000019');
  });

  test('corporate numbers (13 digits, leading check digit)', () => {
    // check digit for 700110005901: computed by the MYNUMBER.md rule
    const body = '700110005901';
    let sum = 0;
    for (let n = 1; n <= 12; n++) sum += Number(body[12 - n]) * (n % 2 ? 1 : 2);
    const full = `${9 - (sum % 9)}${body}`;
    assert.equal(normalizeSubject(full).logicalType, 'corporate_number');
  });

  test('bad input is refused without repeating it', () => {
    for (const bad of ['123456789012', '12345678901', 'abcd56789018', '1234/5678/9018']) {
      assert.throws(() => normalizeSubject(bad), (e: unknown) => e instanceof SubjectFormatError && !e.message.includes(bad.slice(0, 8)));
    }
  });
});

describe('SubjectCollector', () => {
  const col = (type: string) => ({ schema: 'public', table: 't', column: 'c', type: { type }, mode: 'deterministic' as const, domain: 'd' });
  test('hashes looked up by stored cell equal the computed ones, per subject key and per logical type', () => {
    let current = { id: 'k1', key };
    const source = { subjectKey: () => current };
    const v = Buffer.from('123456789018');
    const stored = 'h\\x0badc0ffee'; // the stored form stands for the value: one cell decrypts to one value
    const first = new SubjectCollector(source);
    first.add(col('mynumber'), v, stored);
    assert.deepEqual(first.take().subjects, [subjectHash(key, 'mynumber', v)]);
    const again = new SubjectCollector(source);
    again.add(col('mynumber'), v, stored); // looked up
    again.add(col('text'), v, stored); // another logical type: its own hash
    assert.deepEqual(again.take().subjects, [subjectHash(key, 'mynumber', v), subjectHash(key, 'text', v)]);
    // the same characters sent in another format (binary, escape) are another cell: never answered from this one
    const w = Buffer.from('000000000019');
    const other = new SubjectCollector(source);
    other.add(col('mynumber'), v, '\\x0badc0ffee', 'h');
    other.add(col('mynumber'), w, '\\x0badc0ffee', 'b');
    assert.deepEqual(other.take().subjects, [subjectHash(key, 'mynumber', v), subjectHash(key, 'mynumber', w)]);
    // A new subject key (next retention period) is never answered with the old key's hash.
    const key2 = createSecretKey(randomBytes(32));
    current = { id: 'k2', key: key2 };
    const next = new SubjectCollector(source);
    next.add(col('mynumber'), v, stored);
    assert.deepEqual(next.take(), { subjects: [subjectHash(key2, 'mynumber', v)], subjectKeyId: 'k2' });
    // one collector across statements (the cell map it keeps from its last value is dropped with its key)
    current = { id: 'k1', key };
    const reused = new SubjectCollector(source);
    reused.add(col('mynumber'), v, stored);
    assert.deepEqual(reused.take().subjects, [subjectHash(key, 'mynumber', v)]);
    current = { id: 'k2', key: key2 };
    reused.add(col('mynumber'), v, stored);
    assert.deepEqual(reused.take(), { subjects: [subjectHash(key2, 'mynumber', v)], subjectKeyId: 'k2' });
  });

  test('one statement hashes all its values under one subject key, the one its record names; the next takes the key current then', () => {
    const key2 = createSecretKey(randomBytes(32));
    let calls = 0;
    let current = { id: 'k1', key };
    const source = { subjectKey: () => (calls++, current) };
    const a = Buffer.from('123456789018');
    const b = Buffer.from('000000000019');
    const c = new SubjectCollector(source);
    c.add(col('mynumber'), a);
    current = { id: 'k2', key: key2 }; // the retention period turns mid-statement
    c.add(col('mynumber'), b);
    assert.deepEqual(c.take(), { subjects: [subjectHash(key, 'mynumber', a), subjectHash(key, 'mynumber', b)], subjectKeyId: 'k1' });
    assert.equal(calls, 1);
    c.add(col('mynumber'), a); // the same collector, next statement
    assert.deepEqual(c.take(), { subjects: [subjectHash(key2, 'mynumber', a)], subjectKeyId: 'k2' });
    assert.equal(calls, 2);
  });
});
