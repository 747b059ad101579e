import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { loadParser } from '../../../proxy/sql/parser.js';
import { analyse } from '../../../proxy/sql/analyse.js';
import { AnalysisCache, LruCache, analysisKey } from '../../../proxy/sql/cache.js';
import { ctx, viewer } from './fixture.js';

before(async () => {
  await loadParser();
});

describe('LRU', () => {
  test('evicts the least recently used entry at capacity', () => {
    const c = new LruCache<string, number>(2);
    c.set('a', 1);
    c.set('b', 2);
    assert.equal(c.get('a'), 1); // a is now most recent
    c.set('c', 3);
    assert.equal(c.get('b'), undefined);
    assert.equal(c.get('a'), 1);
    assert.equal(c.get('c'), 3);
    assert.equal(c.size, 2);
  });
  test('the key separates every input the analysis depends on', () => {
    const sql = Buffer.from('SELECT 1');
    const base = { searchPath: ['pg_temp_3', 'public'], catalogEpoch: 1, roleSet: 'clerk' };
    const keys = new Set([
      analysisKey(sql, base),
      analysisKey(Buffer.from('SELECT 2'), base),
      analysisKey(sql, { ...base, searchPath: ['public'] }),
      analysisKey(sql, { ...base, catalogEpoch: 2 }),
      analysisKey(sql, { ...base, roleSet: 'viewer' }),
      analysisKey(sql, { ...base, standardConformingStrings: false }),
      analysisKey(sql, { ...base, clientEncoding: 'SJIS' }),
      analysisKey(sql, { ...base, allowDdl: true }),
    ]);
    assert.equal(keys.size, 8);
  });
});

describe('AnalysisCache', () => {
  test('returns the stored analysis on a hit and keys by role set', () => {
    const cache = new AnalysisCache(16);
    const sql = Buffer.from("SELECT id FROM employees WHERE my_number = '1'");
    const parts = { searchPath: ['pg_temp_3', 'public'], catalogEpoch: 1, roleSet: 'clerk' };
    const a1 = cache.getOrAnalyse(sql, parts, ctx(), analyse);
    const a2 = cache.getOrAnalyse(sql, parts, ctx(), analyse);
    assert.equal(a1, a2);
    assert.equal(a1.kind, 'protected');
    const v = cache.getOrAnalyse(sql, { ...parts, roleSet: 'viewer' }, ctx({ role: viewer }), analyse);
    assert.equal(v.kind, 'refuse');
    assert.deepEqual([cache.hits, cache.misses, cache.size], [1, 2, 2]);
  });
  test('does not keep statements longer than maxSqlBytes', () => {
    const cache = new AnalysisCache(16, 64);
    const sql = Buffer.from(`SELECT id FROM employees WHERE name IN (${Array.from({ length: 30 }, (_, i) => `'n${i}'`).join(',')})`);
    const parts = { searchPath: ['public'], catalogEpoch: 1, roleSet: 'clerk' };
    cache.getOrAnalyse(sql, parts, ctx(), analyse);
    cache.getOrAnalyse(sql, parts, ctx(), analyse);
    assert.deepEqual([cache.hits, cache.misses, cache.size], [0, 2, 0]);
  });
});
