// Statement shapes (proxy/sql/shape.ts): an analysis reused for a text that differs only in free constants
// must be exactly the analysis that text gets on its own — checked for every role of the fixture on
// statements where constants are free, where they are not (positional GROUP BY / ORDER BY, type modifiers,
// set_config arguments, values bound for protected columns), and with replacement "constants" that try to
// change the statement (quotes, backslashes, comments, dollar quotes, identifiers, operators).
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { loadParser } from '../../../proxy/sql/parser.js';
import { analyse } from '../../../proxy/sql/analyse.js';
import { AnalysisCache } from '../../../proxy/sql/cache.js';
import { freeConstantOffsets, shapeOf } from '../../../proxy/sql/shape.js';
import { fingerprint } from '../../../proxy/sql/fingerprint.js';
import { parseText } from '../../../proxy/sql/parser.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import { ctx, clerk, viewer, outsider } from './fixture.js';
import type { RolePolicy } from '../../../proxy/sql/types.js';

before(async () => {
  await loadParser();
});

const ROLES: [string, RolePolicy][] = [['clerk', clerk], ['viewer', viewer], ['outsider', outsider]];
const parts = (role: string) => ({ searchPath: ['pg_temp_3', 'public'], catalogEpoch: 1, roleSet: role });

/** Fills the `{}` slots of a template in order. */
const fill = (template: string, values: readonly string[]): string => {
  let k = 0;
  return template.replace(/\{\}/g, () => values[k++ % values.length]!);
};

const myNumber = (base: number): string => {
  const b = String(base).padStart(11, '0');
  return `'${b}${myNumberCheckDigit(b)}'`;
};

// Deterministic pseudo-random values (a fixed-seed LCG: a failure replays).
function* values(seed: number): Generator<string> {
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  const pool = [
    () => String(next() % 1000),
    () => String(next()),
    () => `${next() % 100}.${next() % 100}`,
    () => `'n${next() % 1000}'`,
    () => `'山田${next() % 10}'`,
    () => myNumber(next() % 99_999_999_999),
    () => '-7',
    () => "'it''s'",
    () => "'a\\'",
    () => "E'\\x41'",
    () => '$$x$$',
    () => 'NULL',
    () => 'my_number',
    () => '5 OR my_number IS NOT NULL',
    () => "'1' -- '",
    () => '1e5',
    () => "''",
    () => '0x1F',
    () => "'x'\n'y'",
    () => 'true',
  ];
  for (;;) yield pool[next() % pool.length]!();
}

const TEMPLATES = [
  'SELECT my_number FROM employees WHERE id = {}',
  'SELECT my_number FROM employees WHERE id = {};',
  '  -- lead comment\n SELECT my_number FROM employees WHERE id = {} ;  ',
  'SELECT name, my_number FROM employees WHERE id IN ({}, {}) LIMIT {}',
  'SELECT my_number FROM employees WHERE {} = id OFFSET {}',
  'SELECT my_number FROM employees WHERE id = {}::int AND created_at > {}',
  'SELECT my_number FROM employees WHERE id IS DISTINCT FROM {}',
  'SELECT my_number, count(*) FROM employees GROUP BY {}',
  'SELECT name, my_number FROM employees ORDER BY {}',
  'SELECT my_number FROM employees WHERE name = CAST({} AS varchar({}))',
  "SELECT set_config({}, 'x', false), my_number FROM employees WHERE id = {}",
  'SELECT {} AS x, my_number FROM employees WHERE id = {}',
  'SELECT id FROM employees WHERE my_number = {}',
  'SELECT id FROM employees WHERE my_number IN ({}, {})',
  'UPDATE employees SET my_number = {} WHERE id = {}',
  'UPDATE employees SET name = {} WHERE id = {}',
  'DELETE FROM employees WHERE id = {} RETURNING my_number',
  'SELECT e.my_number FROM employees e JOIN departments d ON d.id = e.dept_id WHERE d.id = {} AND e.id < {}',
  'SELECT my_number FROM emp_view WHERE id = {}',
  'SELECT name FROM departments WHERE id = {}',
  'SELECT my_number FROM employees WHERE id = {}; SELECT name FROM departments WHERE id = {}',
  'SELECT secret_note FROM employees WHERE secret_note IS NOT NULL AND id >= {}',
  'SELECT my_number FROM dependents WHERE employee_id = {} AND name <> {}',
  'INSERT INTO employees (id, name, my_number) VALUES ({}, {}, {})',
  "INSERT INTO employees (id, name, my_number) VALUES ({}, 'a', {}), ({}, 'b', {}) ON CONFLICT (id) DO UPDATE SET my_number = {}",
  'INSERT INTO employees (id, name, my_number) VALUES ({}, {}, {}) ON CONFLICT (id) DO NOTHING',
  'UPDATE employees SET my_number = {}, name = {} WHERE id = {} RETURNING my_number',
  'SELECT id FROM employees WHERE my_number = {}::text',
  'SELECT id FROM employees WHERE my_number = CAST({} AS text) OR my_number = CAST({} AS varchar(12))',
  'INSERT INTO employees (id, secret_note) VALUES ({}, {})',
  'INSERT INTO corps (id, corp_number, name) VALUES ({}, {}, {})',
  'SELECT * FROM (VALUES ({}, {})) AS v(a, b) JOIN employees e ON e.id = v.a',
];

describe('statement shapes', () => {
  test('a reused analysis equals the fresh analysis of the same text, for every role (property)', () => {
    let hits = 0;
    let checked = 0;
    for (const [name, role] of ROLES) {
      const cache = new AnalysisCache(4096);
      for (const [ti, template] of TEMPLATES.entries()) {
        const gen = values(ti * 7919 + name.length);
        // Warm with plain values, then check many fills against a fresh analysis.
        cache.getOrAnalyse(Buffer.from(fill(template, ['1', "'a'", '2'])), parts(name), ctx({ role }), analyse);
        for (let k = 0; k < 60; k++) {
          const slots = template.split('{}').length - 1;
          const sql = Buffer.from(fill(template, Array.from({ length: slots }, () => gen.next().value as string)));
          const before = cache.shapeHits;
          const got = cache.getOrAnalyse(sql, parts(name), ctx({ role }), analyse);
          const fresh = analyse(sql, ctx({ role }));
          assert.deepEqual(got, fresh, `${name}: ${sql.toString()}`);
          // Every text of a shape has the same audit fingerprint (the session computes it once per shape).
          const entry = cache.shapeEntryOf(got);
          if (entry) assert.equal(fingerprint(sql), (entry.fingerprint ??= fingerprint(sql)), sql.toString());
          checked++;
          if (cache.shapeHits > before) hits++;
        }
      }
    }
    assert.equal(checked, ROLES.length * TEMPLATES.length * 60);
    // The cache is used (most generated values are no free constant, and half the templates have none).
    assert.ok(hits > checked / 20, `shape hits ${hits} of ${checked}`);
  });

  test('a new value in a comparison with a column is a shape hit; statement offsets are this text\'s', () => {
    const cache = new AnalysisCache(64);
    cache.getOrAnalyse(Buffer.from('SELECT my_number FROM employees WHERE id = 5;'), parts('clerk'), ctx(), analyse);
    const sql = Buffer.from('SELECT my_number FROM employees WHERE id = 123456;');
    const a = cache.getOrAnalyse(sql, parts('clerk'), ctx(), analyse);
    assert.equal(cache.shapeHits, 1);
    assert.equal(a.kind, 'protected');
    if (a.kind === 'protected') assert.deepEqual([a.statements[0]!.start, a.statements[0]!.end], [0, sql.length - 1]);
    assert.deepEqual(a, analyse(sql, ctx()));
    // The role set is part of the key: a denied role's analysis is its own.
    const d = cache.getOrAnalyse(sql, parts('outsider'), ctx({ role: outsider }), analyse);
    assert.equal(d.kind, 'refuse');
  });

  test('constants the analysis reads are never free', () => {
    const cache = new AnalysisCache(64);
    const run = (sql: string, role: RolePolicy, r: string) => cache.getOrAnalyse(Buffer.from(sql), parts(r), ctx({ role }), analyse);
    // positional GROUP BY: 2 is count(*), 1 is the protected column (a grouping the viewer may not do)
    assert.equal(run('SELECT count(*), my_number FROM employees GROUP BY 1', viewer, 'viewer').kind, 'protected');
    assert.equal(run('SELECT count(*), my_number FROM employees GROUP BY 2', viewer, 'viewer').kind, 'refuse');
    // set_config's name decides whether it is a role change
    const app = run("SELECT set_config('application_name', 'x', false), my_number FROM employees", clerk, 'clerk');
    assert.notEqual(app.kind, 'refuse');
    const role = run("SELECT set_config('role', 'x', false), my_number FROM employees", clerk, 'clerk');
    assert.equal(role.kind, 'refuse');
    // a value bound for a protected column is read (validated, encrypted): each text gets its own
    const n1 = myNumber(1234567890);
    const n2 = myNumber(1234567891);
    const a1 = run(`SELECT id FROM employees WHERE my_number = ${n1}`, clerk, 'clerk');
    const a2 = run(`SELECT id FROM employees WHERE my_number = ${n2}`, clerk, 'clerk');
    assert.ok(a1.kind === 'protected' && a2.kind === 'protected');
    assert.notEqual(a1.statements[0]!.literals[0]!.value, a2.statements[0]!.literals[0]!.value);
    assert.deepEqual(a2, analyse(Buffer.from(`SELECT id FROM employees WHERE my_number = ${n2}`), ctx()));
  });

  test('free constants: comparison operands of columns, IN items, LIMIT / OFFSET — nothing else', () => {
    const sql = "SELECT 1, f(2) FROM t WHERE a = 3 AND 4 < b AND c IN (5, '6') AND d = '7'::int AND e = CAST('8' AS varchar(9)) AND g = -10 GROUP BY 11 ORDER BY 12 LIMIT 13 OFFSET 14";
    const free = freeConstantOffsets(parseText(sql));
    const at = (s: string) => sql.indexOf(s);
    // (-10 is one constant at the minus sign: no constant token starts there, so no text can reuse it)
    const expected = ['3', '4 <', '5,', "'6'", "'7'", '-10', '13', '14'].map(at);
    assert.deepEqual([...free].sort((x, y) => x - y), expected.sort((x, y) => x - y));
    const w = "INSERT INTO t (a, b) VALUES (15, f(16)) ON CONFLICT (a) DO UPDATE SET b = '17', c = 18 + 19";
    const wfree = freeConstantOffsets(parseText(w));
    assert.deepEqual([...wfree].sort((x, y) => x - y), ['15', "'17'"].map((x) => w.indexOf(x)));
    const u = "UPDATE t SET a = 20, b = ARRAY[21] WHERE c = 22";
    assert.deepEqual([...freeConstantOffsets(parseText(u))].sort((x, y) => x - y), ['20', '22'].map((x) => u.indexOf(x)));
  });

  test('a value bound for a protected column is this text\'s own; invalid UTF-8 in a reused shape is still refused', () => {
    const cache = new AnalysisCache(64);
    const t = (v: string) => Buffer.from(`INSERT INTO employees (id, name, my_number) VALUES (1, 'x', ${v})`);
    cache.getOrAnalyse(t(myNumber(1234567890)), parts('clerk'), ctx(), analyse);
    const sql = t(myNumber(2345678901));
    const a = cache.getOrAnalyse(sql, parts('clerk'), ctx(), analyse);
    assert.equal(cache.shapeHits, 1);
    assert.ok(a.kind === 'protected');
    assert.equal(a.statements[0]!.literals[0]!.value, myNumber(2345678901).slice(1, -1));
    assert.deepEqual(a, analyse(sql, ctx()));
    const bad = Buffer.concat([Buffer.from("INSERT INTO employees (id, name, my_number) VALUES (1, 'x', '12"), Buffer.from([0xff]), Buffer.from("')")]);
    const b = cache.getOrAnalyse(bad, parts('clerk'), ctx(), analyse);
    assert.equal(b.kind, 'refuse');
    assert.deepEqual(b, analyse(bad, ctx()));
  });

  test('texts without a shape: lexing errors, separator bytes; constants that are not unambiguous stay in the key', () => {
    assert.equal(shapeOf(Buffer.from("SELECT 'unterminated")), null);
    assert.equal(shapeOf(Buffer.from('SELECT \u0001')), null);
    const k = (s: string) => shapeOf(Buffer.from(s))!.key;
    assert.equal(k('SELECT a FROM t WHERE b = 1'), k('SELECT  a FROM t WHERE b = 22'));
    assert.equal(k("SELECT a FROM t WHERE b = 'x'"), k("SELECT a FROM t WHERE b = 'yy'"));
    assert.notEqual(k('SELECT a FROM t WHERE b = 1'), k("SELECT a FROM t WHERE b = '1'"));
    assert.notEqual(k('SELECT a FROM t WHERE b = 1'), k('SELECT a FROM t WHERE b = 1.5'));
    assert.notEqual(k('SELECT a FROM t WHERE b = 1'), k('SELECT a FROM t WHERE b = 1234567890'));
    assert.notEqual(k("SELECT a FROM t WHERE b = 'x'"), k("SELECT a FROM t WHERE b = 'it''s'"));
    assert.notEqual(k("SELECT a FROM t WHERE b = 'x'"), k("SELECT a FROM t WHERE b = E'x'"));
    assert.notEqual(k("SELECT a FROM t WHERE b = 'x'"), k("SELECT a FROM t WHERE b = 'a\\'"));
    assert.notEqual(k('SELECT a FROM t WHERE b = 1'), k('SELECT a FROM t WHERE b = 1e5'));
    assert.notEqual(k('SELECT a FROM t WHERE b = 1'), k('SELECT A FROM t WHERE b = 1'));
  });
});
