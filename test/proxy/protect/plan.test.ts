// The pure parts of protect: the plan text the operator confirms, the identifier limit, and the proxy's rule
// for columns whose storage is still plaintext or that unprotect is converting.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { formatPlan, suffixed, type ColumnInspection } from '../../../proxy/protect/plan.js';
import { plaintextStorageRefusal } from '../../../proxy/protect/transition.js';
import type { ColumnStorage } from '../../../proxy/policy/catalog.js';
import type { ProtectedColumn, ResolvedRelation, StatementPlan } from '../../../proxy/sql/types.js';

const inspection: ColumnInspection = {
  tableOid: 16384,
  attnum: 3,
  type: 'text',
  typeOid: 25,
  typmod: -1,
  isGuard: false,
  notNull: true,
  pk: [{ name: 'id', type: 'integer' }],
  blockers: [],
  rebuilds: [{ kind: 'unique-constraint', name: 'employees_my_number_key', shadowName: 'employees_my_number_key__mamori' }],
  userTriggers: ['touch_updated_at'],
  shadowAttnum: null,
};

describe('formatPlan', () => {
  test('names every step, the rebuilt constraint, the key order and the triggers that will fire', () => {
    const text = formatPlan({ verb: 'protect', column: 'public.employees.my_number', inspection, shadow: 'my_number__mamori', shadowType: 'mamori.mynumber', rows: 1234 });
    assert.equal(
      text,
      [
        'mamori protect public.employees.my_number',
        '  column type now: text NOT NULL; after: mamori.mynumber NOT NULL',
        '  rows holding a value: 1234',
        '  1. add column my_number__mamori mamori.mynumber and a trigger refusing new values in public.employees.my_number while it runs',
        '  2. build unique index employees_my_number_key__mamori on my_number__mamori (CONCURRENTLY); at the swap it replaces UNIQUE constraint employees_my_number_key',
        "  3. backfill in keyset batches by primary key (id): each row's value moves to my_number__mamori, compare-and-swap on the old value",
        '  4. swap names under a short lock, drop the old column, VACUUM',
        '  note: these triggers fire for every backfilled row (UPDATE): touch_updated_at; updated_at-style columns they maintain will change',
        '',
      ].join('\n'),
    );
  });

  test('says when it resumes', () => {
    const text = formatPlan({ verb: 'unprotect', column: 'public.t.c', inspection: { ...inspection, rebuilds: [], userTriggers: [], shadowAttnum: 5 }, shadow: 'c__mamori_plain', shadowType: 'text', rows: 0 });
    assert.match(text, /^mamori unprotect public\.t\.c\n/);
    assert.match(text, /add column c__mamori_plain text \(already there: resuming\)/);
    assert.doesNotMatch(text, /note:/);
  });
});

describe('suffixed', () => {
  test('refuses names PostgreSQL would truncate (63 bytes, counted in UTF-8)', () => {
    assert.equal(suffixed('my_number', '__mamori'), 'my_number__mamori');
    assert.equal(suffixed('a'.repeat(55), '__mamori').length, 63);
    assert.throws(() => suffixed('a'.repeat(56), '__mamori'), /63-byte identifier limit/);
    assert.equal(suffixed('番号'.repeat(9), '__mamori'), '番号'.repeat(9) + '__mamori'); // 54 + 8 bytes
    assert.throws(() => suffixed('番号'.repeat(10), '__mamori'), /63-byte/); // 60 + 8 bytes
  });
});

describe('plaintextStorageRefusal', () => {
  const col = (table: string, attnum: number): ProtectedColumn => ({ schema: 'public', table, column: 'my_number', type: { type: 'mynumber' }, mode: 'deterministic', domain: `public.${table}.my_number`, tableOid: 100 + attnum, attnum });
  const plan = (...cols: ProtectedColumn[]): StatementPlan => ({ command: 'SELECT', start: 0, end: 1, touched: cols.map((column) => ({ column, uses: ['read'] })), literals: [], params: [] });
  const storage = new Map<string, ColumnStorage>([
    ['101:1', { kind: 'guard', type: 'mamori.mynumber' }],
    ['102:2', { kind: 'plaintext', type: 'character varying(20)' }],
    ['103:3', { kind: 'guard', type: 'mamori.mynumber' }],
  ]);
  const relations: Record<string, string[]> = { done: ['id', 'my_number'], pending: ['id', 'my_number'], leaving: ['id', 'my_number', 'my_number__mamori_plain'] };
  const catalog = {
    storage,
    resolveRelation: (n: { schema?: string; name: string }): ResolvedRelation | null => (relations[n.name] ? { schema: n.schema ?? 'public', name: n.name, kind: 'table', columns: relations[n.name]! } : null),
  };
  const all = (): boolean => true;

  test('a column in its guard domain passes', () => {
    assert.equal(plaintextStorageRefusal([plan(col('done', 1))], catalog, all), null);
  });

  test('a column still stored as plaintext is refused, naming it and its type, in any statement of the batch', () => {
    const msg = plaintextStorageRefusal([plan(col('done', 1)), plan(col('pending', 2))], catalog, all);
    assert.equal(msg, 'protected column public.pending.my_number is stored as character varying(20), not encrypted yet or being converted by `mamori protect`: statements that touch it are refused until protect has finished (docs/protect.md)');
  });

  test('a column whose table has the unprotect shadow is refused although its storage is the guard domain', () => {
    assert.match(plaintextStorageRefusal([plan(col('leaving', 3))], catalog, all) ?? '', /public\.leaving\.my_number is being decrypted by `mamori unprotect`/);
  });

  test('columns with enforce: false are exempt', () => {
    assert.equal(plaintextStorageRefusal([plan(col('pending', 2), col('leaving', 3))], catalog, () => false), null);
  });
});
