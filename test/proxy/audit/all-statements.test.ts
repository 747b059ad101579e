// `statements: all` helpers: the command taken from a fingerprint by a scan must be what the regex it replaced
// gave, for fingerprints and for any text. (The records themselves are tested end to end in wiring.test.ts.)
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { commandOfFingerprint } from '../../../proxy/audit/all-statements.js';
import { fingerprint } from '../../../proxy/sql/fingerprint.js';

/** The previous implementation, the reference. */
function byRegex(fp: string): string {
  const m = /^[\s(]*([a-z_]+)/i.exec(fp);
  return m ? m[1]!.toUpperCase() : 'OTHER';
}

describe('commandOfFingerprint', () => {
  test('known statements', () => {
    assert.equal(commandOfFingerprint(fingerprint('SELECT abalance FROM pgbench_accounts WHERE aid = 7;')), 'SELECT');
    assert.equal(commandOfFingerprint(fingerprint('(select 1) union (select 2)')), 'SELECT');
    assert.equal(commandOfFingerprint(fingerprint('  insert_x into t values (1)')), 'INSERT_X');
    assert.equal(commandOfFingerprint(fingerprint("'only a literal'")), 'OTHER');
    assert.equal(commandOfFingerprint(''), 'OTHER');
  });

  test('equals the regex it replaced, over fingerprints and arbitrary text (unicode spaces, DEL, letters beyond ASCII)', () => {
    const chars = fc.constantFrom(' ', '(', '\t', '\n', '\u00a0', '\u2003', '\u3000', '\ufeff', '\u0085', '\u007f', 'a', 'Z', '_', '1', 'é', 'ſ', '\u212a', ';', '?', '"');
    const text = fc.oneof(fc.array(chars, { maxLength: 12 }).map((a) => a.join('')), fc.string({ maxLength: 20, unit: 'binary' }), fc.string({ maxLength: 40 }).map((s) => fingerprint(s)));
    fc.assert(fc.property(text, (s) => assert.equal(commandOfFingerprint(s), byRegex(s), JSON.stringify(s))), { numRuns: 20000 });
  });
});
