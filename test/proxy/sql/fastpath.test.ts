import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { loadModule, scanSync } from 'libpg-query';
import { buildNameIndex, mayTouchProtected } from '../../../proxy/sql/fastpath.js';

const index = buildNameIndex(['employees', 'Staff', 'emp_view', 'mamori']);
const may = (sql: string, scs = true) => mayTouchProtected(Buffer.from(sql, 'utf8'), index, { standardConformingStrings: scs });

before(async () => {
  await loadModule();
});

describe('fast path', () => {
  test('forwards statements that cannot reach a protected relation', () => {
    for (const sql of [
      'SELECT 1',
      'SELECT id, name FROM departments WHERE id = $1',
      "SELECT 'employees' AS word",
      "SELECT $$ FROM employees $$, $tag$ employees $tag$",
      '/* employees /* nested employees */ still comment employees */ SELECT 1',
      "SELECT 1 -- FROM employees\n",
      "SELECT E'it\\'s employees'",
      "SELECT 'it''s employees'",
      'SELECT "EMPLOYEES" FROM x', // a different (case-sensitive) relation
      'SELECT employees_x, x_employees FROM t',
      'BEGIN',
      'COMMIT',
      'INSERT INTO departments (name) VALUES ($1)',
    ])
      assert.equal(may(sql), false, sql);
  });
  test('parses anything that names a protected relation in any spelling', () => {
    for (const sql of [
      'SELECT * FROM employees',
      'SELECT * FROM EMPLOYEES',
      'select * from Employees',
      'SELECT * FROM "employees"',
      'SELECT * FROM public . /* c */ employees',
      'SELECT * FROM "hr"."Staff"',
      'SELECT * FROM emp_view',
      "SELECT 'a'\n'b' FROM employees",
      'TABLE employees',
      'ALTER DOMAIN mamori.mynumber DROP CONSTRAINT c',
    ])
      assert.equal(may(sql), true, sql);
  });
  test('opaque constructs, U& and non-ASCII identifiers, unterminated text are parsed', () => {
    for (const sql of [
      'EXECUTE s(1)',
      'PREPARE s AS SELECT 1',
      "DO $$ BEGIN END $$",
      'CALL p()',
      'COPY t FROM STDIN',
      'FETCH 10 FROM c',
      'DECLARE c CURSOR FOR SELECT 1',
      'SET search_path = x',
      'set role x',
      'RESET ALL',
      'DISCARD ALL',
      "SELECT set_config('role', 'x', false)",
      "SELECT pg_catalog.\"set_config\"('role', 'x', false)",
      'DROP SCHEMA public CASCADE',
      'DROP OWNED BY x',
      'SELECT * FROM U&"\\0065mployees"',
      'SELECT * FROM 社員',
      'SELECT * FROM "社員"',
      "SELECT 'unterminated",
      'SELECT /* unterminated',
    ])
      assert.equal(may(sql), true, sql);
  });
  test('standard_conforming_strings off: backslash escapes plain strings', () => {
    const sql = "SELECT 'a\\'' , my_number FROM employees --'";
    assert.equal(may(sql, false), true);
    // with scs on the same bytes hide nothing either: the lexer sees the FROM employees outside strings
    assert.equal(may("SELECT 'a\\' FROM employees --'", true), true);
  });
  test('property: never false when PostgreSQL\'s own scanner sees a protected identifier', () => {
    const name = fc.constantFrom('employees', 'EMPLOYEES', 'EmPlOyEeS', '"employees"', 'public.employees', '"public"."employees"', '"Staff"', 'emp_view', 'mamori.x');
    const frag = fc.constantFrom(
      'SELECT', 'FROM', 'WHERE', '*', ',', '(', ')', '=', '::', ';', '$1', '1.5e3', 'x', 'emp$loyees', 'employees_x', '"employee""s"', '"EMPLOYEES"',
      "'it''s employees'", "E'\\' employees'", "E'\\\\'", "'a\\'", '$$ employees $$', '$a$ $$ employees $a$', '/* /* employees */ */', '-- employees\n',
      "'a'\n'b'", "B'01'", "X'ff'", "N'employees'", '"', "'", '/*', '*/', '$', '$q$', '--', '\n', 'e', 'E', 'U&', 'n',
    );
    const piece = fc.oneof({ weight: 4, arbitrary: frag }, { weight: 1, arbitrary: name });
    const stmt = fc.array(fc.tuple(piece, fc.constantFrom(' ', '', '\n', '\t')), { minLength: 1, maxLength: 14 }).map((xs) => xs.map(([p, s]) => p + s).join(''));
    const names = new Set(['employees', 'Staff', 'emp_view', 'mamori']);
    let checked = 0;
    fc.assert(
      fc.property(stmt, (sql) => {
        let toks;
        try {
          toks = scanSync(sql).tokens;
        } catch {
          return true; // the server could not lex it either
        }
        const touches = toks.some((t) => {
          if (t.text.startsWith('U&"')) return true;
          if (t.tokenName !== 'IDENT' && t.keywordKind === 0) return false;
          const id = t.text.startsWith('"') ? t.text.slice(1, -1).replaceAll('""', '"') : t.text.toLowerCase();
          return names.has(id);
        });
        if (touches) {
          checked++;
          return may(sql) === true;
        }
        return true;
      }),
      { numRuns: 4000, seed: 20261127 },
    );
    assert.ok(checked > 500, `only ${checked} statements named a protected relation`);
  });
});
