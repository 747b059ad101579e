// Canonical JSON and record sealing: stable bytes whatever the key order, hashes over everything but `hash`,
// and shape checks on parse.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AuditParseError, canonicalJson, parseRecord, recordHash, RecordTemplate, sealLine, sealRecord, sealRecordLine, serializeRecord, ZERO_HASH, type AuditEvent, type ColumnDecision, type RecordContext, type TemplateValues } from '../../../proxy/audit/record.js';

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

describe('sealLine (the template serializer)', () => {
  const chain = { time: '2026-11-27T00:00:00.000Z', instance: 'i1', seq: 7, prev: 'a'.repeat(64) };
  const context = { session: 's1', user: 'alice', client: '127.0.0.1:5', tlsSubject: null, applicationName: 'app', database: 'db' };
  const events: AuditEvent[] = [
    { kind: 'statement_intent', statement: 's1:1', mode: 'protected', fingerprint: 'select my_number from t where id = ?', command: 'SELECT', columns: [{ column: 'public.t.my_number', decision: 'plaintext' }], subjects: ['x', 'y'], subjectKeyId: 'k1' },
    { kind: 'statement_complete', statement: 's1:1', rows: 3, sqlstate: null, durationMs: 1.25, subjects: undefined, subjectsDropped: 2 },
    { kind: 'refusal', reason: 'deny', sqlstate: '42501', user: 'bob' },
    { kind: 'disconnect', reason: 'client ended', bytesIn: 10, bytesOut: 20 } as AuditEvent,
    { kind: 'search', shadow: true, columns: [{ column: 'public.t.my_number', decision: 'deny' }] },
    // a member the template does not list takes the generic path, with the same result
    { kind: 'connect', tls: true, somethingNew: { b: 1, a: [2] } } as unknown as AuditEvent,
  ];
  test('gives exactly the bytes and hash of the generic sealing of the merged record, which verify re-derives', () => {
    for (const e of events) {
      for (const ctx of [context, null]) {
        const merged = { ...(ctx ?? {}), ...Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined)) } as AuditEvent;
        const reference = sealRecordLine(merged, chain);
        const fast = sealLine(e, ctx, chain);
        assert.equal(fast.line, reference.line);
        assert.equal(fast.hash, reference.record.hash);
        const parsed = parseRecord(fast.line);
        assert.equal(recordHash(parsed), parsed.hash);
        assert.equal(serializeRecord(parsed), fast.line);
      }
    }
  });

  test('a frozen context is serialized once and reused; a context that is not frozen is read afresh each time', () => {
    const frozen = Object.freeze({ ...context });
    const e = events[0]!;
    const merged = { ...context, ...Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined)) } as AuditEvent;
    for (let i = 0; i < 3; i++) assert.equal(sealLine(e, frozen, chain).line, sealRecordLine(merged, chain).line);
    const mutable: Record<string, unknown> = { ...context };
    const first = sealLine(e, mutable, chain).line;
    mutable.user = 'carol';
    const second = sealLine(e, mutable, chain).line;
    assert.notEqual(second, first);
    assert.equal(parseRecord(second).user, 'carol');
    assert.equal(second, sealRecordLine({ ...merged, user: 'carol' }, chain).line);
  });

  test('frozen column decisions are serialized once; an array whose elements can still change is read afresh', () => {
    const decisions: ColumnDecision[] = [{ column: 'public.t.my_number', decision: 'plaintext' }, { column: 'public.t.name', decision: 'mask' }];
    const e = (columns: AuditEvent['columns']): AuditEvent => ({ kind: 'statement_intent', statement: 's1:1', mode: 'protected', columns });
    const reference = sealRecordLine({ ...context, ...e(decisions.map((d) => ({ ...d }))) }, chain).line;
    const frozen = Object.freeze(decisions.map((d) => Object.freeze({ ...d })));
    for (let i = 0; i < 3; i++) assert.equal(sealLine(e(frozen as AuditEvent['columns']), context, chain).line, reference);
    // frozen array, elements not frozen: an element changed between two records shows in the second
    const shallow = Object.freeze(decisions.map((d) => ({ ...d })));
    assert.equal(sealLine(e(shallow as AuditEvent['columns']), context, chain).line, reference);
    shallow[1]!.decision = 'deny';
    const after = parseRecord(sealLine(e(shallow as AuditEvent['columns']), context, chain).line);
    assert.equal(after.columns[1]!.decision, 'deny');
    assert.equal(recordHash(after), after.hash);
  });

  test('the chain fields of consecutive records (time, instance, seq, prev) are each their own', () => {
    const e = events[1]!;
    const chains = [chain, { ...chain, seq: 8, prev: 'b'.repeat(64) }, { ...chain, time: '2026-11-27T00:00:01.000Z', seq: 9 }, { ...chain, instance: 'i2', seq: 1 }];
    for (const c of chains) {
      const r = parseRecord(sealLine(e, context, c).line);
      assert.deepEqual([r.time, r.instance, r.seq, r.prev], [c.time, c.instance, c.seq, c.prev]);
      assert.equal(recordHash(r), r.hash);
    }
  });

  test('property: any event with string, number, boolean, null and nested members seals as the generic path does', () => {
    const member = fc.oneof(fc.string(), fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 4 }), fc.integer(), { maxKeys: 3 }));
    const key = fc.constantFrom('user', 'session', 'rows', 'fingerprint', 'reason', 'subjects', 'statement', 'mode', 'detail', 'extra', 'zz', 'A');
    fc.assert(
      fc.property(fc.dictionary(key, member), fc.boolean(), (fields, withCtx) => {
        const e = { ...fields, kind: 'refusal' } as unknown as AuditEvent;
        const ctx = withCtx ? context : null;
        const merged = { ...(ctx ?? {}), ...e } as AuditEvent;
        assert.equal(sealLine(e, ctx, chain).line, sealRecordLine(merged, chain).line);
      }),
      { numRuns: 300 },
    );
  });
});

describe('RecordTemplate (shared members serialized once)', () => {
  const vars = ['statement', 'durationMs', 'rows', 'sqlstate', 'subjects', 'subjectKeyId', 'subjectsDropped'] as const;
  const reference = (members: RecordContext, values: TemplateValues, chain: { time: string; instance: string; seq: number; prev: string }) =>
    sealRecordLine({ ...members, ...Object.fromEntries(Object.entries(values).filter(([, v]) => v !== undefined)) } as unknown as AuditEvent, chain);

  test('property: a record sealed through a template is byte for byte the generic sealing of the merged members', () => {
    const text = fc.string({ maxLength: 12 });
    const nullable = fc.option(text, { nil: null });
    const members = fc.record(
      {
        session: text, user: nullable, client: nullable, tlsSubject: nullable, applicationName: nullable, database: nullable,
        fingerprint: text, command: text,
        columns: fc.array(fc.record({ column: text, decision: fc.constantFrom('plaintext', 'mask', 'deny', 'write') }), { maxLength: 3 }),
        kind: fc.constantFrom('statement_intent' as const, 'statement_complete' as const),
        mode: fc.constantFrom('protected' as const, 'all' as const),
      },
      { requiredKeys: ['kind'] },
    );
    const values = fc.record({
      statement: fc.option(text, { nil: undefined }),
      durationMs: fc.option(fc.double({ noNaN: true, noDefaultInfinity: true }), { nil: undefined }),
      rows: fc.option(fc.oneof(fc.integer(), fc.constant(null)), { nil: undefined }),
      sqlstate: fc.option(nullable, { nil: undefined }),
      subjects: fc.option(fc.array(text, { maxLength: 3 }), { nil: undefined }),
      subjectKeyId: fc.option(text, { nil: undefined }),
      subjectsDropped: fc.option(fc.nat(), { nil: undefined }),
    });
    const chain = fc.record({ time: fc.constantFrom('2026-11-27T00:00:00.000Z', '2026-11-27T00:00:01.000Z'), instance: fc.constantFrom('i1', 'i"2'), seq: fc.nat(), prev: fc.constantFrom(ZERO_HASH, 'f'.repeat(64)) });
    fc.assert(
      fc.property(members, fc.array(fc.tuple(values, chain), { minLength: 1, maxLength: 4 }), (m, records) => {
        const template = new RecordTemplate(m as RecordContext, vars);
        // the same template seals several records (compiled layouts are reused across masks and chains)
        for (const [v, c] of records) {
          const sealed = template.seal(v as TemplateValues, c);
          const ref = reference(m as RecordContext, v as TemplateValues, c);
          assert.equal(sealed.line, ref.line);
          assert.equal(sealed.hash, ref.record.hash);
        }
      }),
      { numRuns: 400 },
    );
  });

  test('refuses members it cannot hold: chain fields, hash, unknown names, a member both shared and per record', () => {
    for (const k of ['seq', 'prev', 'time', 'instance', 'v', 'hash', 'somethingNew'])
      assert.throws(() => new RecordTemplate({ kind: 'statement_intent', [k]: 'x' } as RecordContext, ['statement']), TypeError);
    assert.throws(() => new RecordTemplate({ kind: 'statement_intent' }, ['seq']), TypeError);
    assert.throws(() => new RecordTemplate({ kind: 'statement_intent', command: 'SELECT' }, ['command']), TypeError);
  });

  test('sealLine takes a template\'s shared members as a context (the path of a record whose subjects moved to a side file)', () => {
    const members: RecordContext = { session: 's', kind: 'statement_complete', fingerprint: 'select ?', command: 'SELECT', columns: [{ column: 'public.t.c', decision: 'mask' }] };
    const template = new RecordTemplate(members, vars);
    const chain = { time: '2026-11-27T00:00:00.000Z', instance: 'i1', seq: 3, prev: ZERO_HASH };
    const values = { statement: 's:1', rows: 2, subjectsRef: 'ab', subjectCount: 900 } as unknown as AuditEvent;
    assert.equal(sealLine(values, template.members, chain).line, reference(members, values as unknown as TemplateValues, chain).line);
  });
});
