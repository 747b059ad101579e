// The chain state's instance registry: the other instances as read at start plus this one's last committed head,
// pruned to REGISTRY_LIMIT, marked ended on close — built when read, the same whatever the number of commits.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChainState, REGISTRY_LIMIT } from '../../../proxy/audit/chain.js';
import type { InstanceRegistry } from '../../../proxy/audit/record.js';

function previous(n: number): InstanceRegistry {
  const r: InstanceRegistry = {};
  for (let i = 0; i < n; i++) r[`old-${i}`] = { started: new Date(Date.UTC(2026, 0, 1, 0, i)).toISOString(), lastSeq: i + 1, head: String(i).padStart(64, '0') };
  return r;
}

describe('ChainState registry', () => {
  test('before any commit it is the registry read at start; after commits it adds this instance with its last head', () => {
    const c = new ChainState('me', new Date('2026-11-27T10:00:00.000Z'));
    const prev = previous(3);
    c.setPrevious(null, prev);
    assert.deepEqual(c.registry, prev);
    for (let seq = 1; seq <= 5; seq++) c.commit({ instance: 'me', seq, hash: String(seq).repeat(64) });
    assert.deepEqual(c.registry, { ...prev, me: { started: '2026-11-27T10:00:00.000Z', lastSeq: 5, head: '5'.repeat(64) } });
    assert.equal(c.seq, 5);
    assert.deepEqual(c.current, { instance: 'me', seq: 5, hash: '5'.repeat(64) });
  });

  test('pruned to REGISTRY_LIMIT, keeping the most recently started (this instance among them)', () => {
    const c = new ChainState('me', new Date('2026-11-27T10:00:00.000Z'));
    c.setPrevious(null, previous(REGISTRY_LIMIT + 10));
    c.commit({ instance: 'me', seq: 1, hash: 'a'.repeat(64) });
    const r = c.registry;
    assert.equal(Object.keys(r).length, REGISTRY_LIMIT);
    assert.equal(r.me?.lastSeq, 1);
    assert.equal(r['old-0'], undefined, 'the oldest instances are the ones dropped');
    assert.ok(r[`old-${REGISTRY_LIMIT + 9}`]);
  });

  test('end() marks this instance ended; an instance that never committed adds nothing', () => {
    const c = new ChainState('me', new Date('2026-11-27T10:00:00.000Z'));
    c.setPrevious(null, previous(1));
    c.end(new Date('2026-11-27T11:00:00.000Z'));
    assert.deepEqual(c.registry, previous(1));
    const d = new ChainState('me', new Date('2026-11-27T10:00:00.000Z'));
    d.setPrevious(null, previous(1));
    d.commit({ instance: 'me', seq: 1, hash: 'a'.repeat(64) });
    d.end(new Date('2026-11-27T11:00:00.000Z'));
    assert.deepEqual(d.registry.me, { started: '2026-11-27T10:00:00.000Z', lastSeq: 1, head: 'a'.repeat(64), ended: '2026-11-27T11:00:00.000Z' });
  });

  test('the registry read is a copy: changing it does not change the chain state', () => {
    const c = new ChainState('me', new Date('2026-11-27T10:00:00.000Z'));
    c.setPrevious(null, previous(2));
    c.commit({ instance: 'me', seq: 1, hash: 'a'.repeat(64) });
    const r = c.registry;
    delete r.me;
    assert.equal(c.registry.me?.lastSeq, 1);
  });
});
