// Canonical JSON and record sealing: stable bytes whatever the key order, hashes over everything but `hash`,
// and shape checks on parse.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AuditParseError, canonicalJson, parseRecord, recordHash, sealRecord, serializeRecord, ZERO_HASH } from '../../../proxy/audit/record.js';

function shuffleKeys(v: unknown, rnd: () => number): unknown {
  if (Array.isArray(v)) return v.map((x) => shuffleKeys(x, rnd));
  if (v && typeof v === 'object') {
    const entries = Object.entries(v).sort(() => rnd() - 0.5);
    return Object.fromEntries(entries.map(([k, x]) => [k, shuffleKeys(x, rnd)]));
  }
  return v;
}

describe('canonical JSON', () => {
  test('the same value in any key order gives the same bytes, and parses back to an equal value', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.integer(), (value, seed) => {
        let s = seed;
        const rnd = (): number => ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
        const a = canonicalJson(value);
        assert.equal(canonicalJson(shuffleKeys(value, rnd)), a);
        assert.equal(canonicalJson(JSON.parse(a)), a);
      }),
      { numRuns: 500 },
    );
  });

  test('keys sorted, no whitespace, undefined members dropped, non-finite numbers refused', () => {
    assert.equal(canonicalJson({ b: 1, a: [1, 'x', null], c: undefined, d: { z: true, y: false } }), '{"a":[1,"x",null],"b":1,"d":{"y":false,"z":true}}');
    assert.throws(() => canonicalJson({ a: Number.NaN }), TypeError);
    assert.throws(() => canonicalJson({ a: Infinity }), TypeError);
  });
});

describe('sealRecord / parseRecord', () => {
  const chain = { time: '2026-11-27T00:00:00.000Z', instance: 'i1', seq: 1, prev: ZERO_HASH };
  test('the hash covers every field but itself; any change changes it', () => {
    const r = sealRecord({ kind: 'connect', tls: true, user: 'alice' }, chain);
    assert.equal(r.hash, recordHash(r));
    assert.match(r.hash, /^[0-9a-f]{64}$/);
    for (const change of [{ user: 'bob' }, { seq: 2 }, { prev: 'f'.repeat(64) }, { tls: false }, { time: '2026-11-27T00:00:00.001Z' }])
      assert.notEqual(recordHash({ ...r, ...change }), r.hash);
    assert.deepEqual(parseRecord(serializeRecord(r)), r);
  });

  test('parse refuses what is not a record', () => {
    for (const bad of ['not json', '[]', '{"kind":"nope"}', '{"kind":"connect","instance":"i","time":"t","seq":0,"prev":"","hash":"","columns":[]}'])
      assert.throws(() => parseRecord(bad), AuditParseError);
  });
});
