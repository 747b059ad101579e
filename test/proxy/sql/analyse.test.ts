import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { loadParser, parseText } from '../../../proxy/sql/parser.js';
import { analyse } from '../../../proxy/sql/analyse.js';
import { byteaEdit, nullEdit, paramCastEdit, rewrite, typeNameEdit, type ExpectedEdit } from '../../../proxy/sql/splice.js';
import type { Analysis, AnalysisContext, StatementPlan } from '../../../proxy/sql/types.js';
import { ctx, viewer, outsider } from './fixture.js';

before(async () => {
  await loadParser();
});

const short = (c: { table: string; column: string }) => `${c.table}.${c.column}`;

interface Expect {
  touched?: Record<string, string[]>;
  literals?: [text: string, column: string, purpose: 'write' | 'search', value: string | null][];
  params?: [index: number, column: string, purpose: 'write' | 'search', extra?: { array?: boolean; cast?: string }][];
  deleteOfProtected?: boolean;
  command?: string;
}

function run(sql: string, over: Partial<AnalysisContext> = {}): { a: Analysis; buf: Buffer } {
  const buf = Buffer.from(sql, 'utf8');
  return { a: analyse(buf, ctx(over)), buf };
}

// Every rewrite the plan calls for is spliced, verified by re-parse and parsed once more.
function rewriteAll(buf: Buffer, plans: StatementPlan[]): Buffer {
  const edits: ExpectedEdit[] = [];
  for (const p of plans) {
    for (const l of p.literals) {
      if (l.value === null) edits.push(nullEdit(l));
      else edits.push(byteaEdit(l, createHash('sha256').update(`${l.column.domain}\0${l.value}`).digest().subarray(0, 20)));
    }
    for (const q of p.params) if (q.cast) edits.push(paramCastEdit(q.cast, q.index, !!q.array));
    for (const t of p.prepare?.typeSpans ?? []) edits.push(typeNameEdit(t));
  }
  const out = rewrite(buf, edits);
  assert.ok(parseText(out.toString('utf8')).length >= 1);
  return out;
}

function expectProtected(sql: string, e: Expect, over: Partial<AnalysisContext> = {}): StatementPlan[] {
  const { a, buf } = run(sql, over);
  assert.equal(a.kind, 'protected', `expected protected, got ${JSON.stringify(a)}`);
  if (a.kind !== 'protected') return [];
  const plans = a.statements;
  const all = {
    touched: new Map<string, Set<string>>(),
    literals: plans.flatMap((p) => p.literals),
    params: plans.flatMap((p) => p.params),
  };
  for (const p of plans) for (const t of p.touched) all.touched.set(short(t.column), new Set([...(all.touched.get(short(t.column)) ?? []), ...t.uses]));
  if (e.touched) {
    const got = Object.fromEntries([...all.touched].map(([k, v]) => [k, [...v].sort()]));
    const want = Object.fromEntries(Object.entries(e.touched).map(([k, v]) => [k, [...v].sort()]));
    assert.deepEqual(got, want);
  }
  if (e.literals) {
    assert.deepEqual(
      all.literals.map((l) => [buf.subarray(l.start, l.end).toString('utf8'), short(l.column), l.purpose, l.value]),
      e.literals,
    );
  }
  if (e.params) {
    assert.deepEqual(
      all.params.map((p) => {
        const extra: { array?: boolean; cast?: string } = {};
        if (p.array) extra.array = true;
        if (p.cast) extra.cast = buf.subarray(p.cast.start, p.cast.end).toString('utf8');
        return Object.keys(extra).length ? [p.index, short(p.column), p.purpose, extra] : [p.index, short(p.column), p.purpose];
      }),
      e.params,
    );
  }
  if (e.deleteOfProtected !== undefined) assert.equal(!!plans.some((p) => p.deleteOfProtected), e.deleteOfProtected);
  if (e.command) assert.equal(plans[plans.length - 1]!.command, e.command);
  rewriteAll(buf, plans);
  return plans;
}

function expectRefusal(sql: string, sqlstate: string, message: string, over: Partial<AnalysisContext> = {}): void {
  const { a } = run(sql, over);
  assert.deepEqual(a, { kind: 'refuse', sqlstate, message });
}

function expectUnprotected(sql: string, over: Partial<AnalysisContext> = {}): Analysis {
  const { a } = run(sql, over);
  assert.equal(a.kind, 'unprotected', JSON.stringify(a));
  return a;
}

const P = (c: string, construct: string) => `column "${c}" is protected: ${construct} is not supported on protected columns`;
const MN = 'public.employees.my_number';

describe('ORM statement styles', () => {
  test('Prisma: fully quoted, LIMIT/OFFSET parameters', () => {
    expectProtected(
      'SELECT "public"."employees"."id", "public"."employees"."name", "public"."employees"."my_number" FROM "public"."employees" WHERE "public"."employees"."my_number" = $1 LIMIT $2 OFFSET $3',
      { touched: { 'employees.my_number': ['read', 'search'] }, params: [[1, 'employees.my_number', 'search']], literals: [] },
    );
  });
  test('Prisma: IN with parameters and RETURNING on insert', () => {
    expectProtected('SELECT "public"."employees"."id" FROM "public"."employees" WHERE "public"."employees"."my_number" IN ($1,$2,$3) OFFSET $4', {
      params: [
        [1, 'employees.my_number', 'search'],
        [2, 'employees.my_number', 'search'],
        [3, 'employees.my_number', 'search'],
      ],
    });
    expectProtected('INSERT INTO "public"."employees" ("name","my_number") VALUES ($1,$2) RETURNING "public"."employees"."id", "public"."employees"."my_number"', {
      touched: { 'employees.my_number': ['write', 'returning'] },
      params: [[2, 'employees.my_number', 'write']],
    });
  });
  test('Drizzle: quoted identifiers without schema, = ANY with a typed array parameter', () => {
    expectProtected('select "id", "name", "my_number" from "employees" where "employees"."my_number" = $1', {
      params: [[1, 'employees.my_number', 'search']],
    });
    expectProtected('select "id" from "employees" where "employees"."my_number" = any($1::text[])', {
      params: [[1, 'employees.my_number', 'search', { array: true, cast: '$1::text[]' }]],
    });
  });
  test('TypeORM: aliases with quoted dotted names', () => {
    expectProtected(
      'SELECT "Employee"."id" AS "Employee_id", "Employee"."my_number" AS "Employee_my_number" FROM "employees" "Employee" WHERE "Employee"."my_number" = $1',
      { touched: { 'employees.my_number': ['read', 'search'] }, params: [[1, 'employees.my_number', 'search']] },
    );
  });
  test('Sequelize: INSERT … RETURNING with casts, IS NOT DISTINCT FROM', () => {
    expectProtected('INSERT INTO "employees" ("id","name","my_number","created_at") VALUES (DEFAULT,$1,$2,$3) RETURNING "id","name","my_number","created_at";', {
      params: [[2, 'employees.my_number', 'write']],
    });
    expectProtected('SELECT "id" FROM "employees" AS "Employee" WHERE "Employee"."my_number" IS NOT DISTINCT FROM $1::text', {
      params: [[1, 'employees.my_number', 'search', { cast: '$1::text' }]],
    });
  });
  test('Rails (ActiveRecord): LIMIT $2 with quoted table, UPDATE with updated_at', () => {
    expectProtected('SELECT "employees".* FROM "employees" WHERE "employees"."my_number" = $1 LIMIT $2', {
      touched: { 'employees.my_number': ['read', 'search'], 'employees.secret_note': ['read'] },
      params: [[1, 'employees.my_number', 'search']],
    });
    expectProtected('UPDATE "employees" SET "my_number" = $1, "name" = $2 WHERE "employees"."id" = $3', {
      params: [[1, 'employees.my_number', 'write']],
      deleteOfProtected: false,
    });
  });
  test('Hibernate: e1_0 aliases, lower-case keywords, positional parameters', () => {
    expectProtected('select e1_0.id,e1_0.my_number,e1_0.name from employees e1_0 where e1_0.my_number=$1', {
      touched: { 'employees.my_number': ['read', 'search'] },
      params: [[1, 'employees.my_number', 'search']],
    });
    expectProtected('insert into employees (name,my_number,id) values ($1,$2,$3)', { params: [[2, 'employees.my_number', 'write']] });
  });
});

describe('literals and byte offsets', () => {
  test('multi-byte UTF-8 before a literal: offsets are bytes', () => {
    const sql = "SELECT 'こんにちは' AS greeting, id FROM employees WHERE name = '山田' AND my_number = '123456789018'";
    const plans = expectProtected(sql, { literals: [["'123456789018'", 'employees.my_number', 'search', '123456789018']] });
    const l = plans[0]!.literals[0]!;
    assert.equal(l.start, Buffer.byteLength(sql.slice(0, sql.lastIndexOf("'1234"))));
    assert.notEqual(l.start, sql.lastIndexOf("'1234"));
  });
  test('comments, dollar quoting, E strings and doubled quotes around the literal', () => {
    expectProtected("/* a 'quoted' /* nested */ comment */ SELECT $$it's$$, id FROM employees -- trailing 'x'\n WHERE my_number = E'12345678\\x39018' AND name = 'O''Brien'", {
      literals: [["E'12345678\\x39018'", 'employees.my_number', 'search', '123456789018']],
    });
    expectProtected("INSERT INTO employees (name, my_number) VALUES ('it''s', 'a''b')", { literals: [["'a''b'", 'employees.my_number', 'write', "a'b"]] });
  });
  test('casts in every spelling are spanned whole', () => {
    expectProtected(
      "INSERT INTO employees (my_number, name) VALUES ('1'::text, 'a'), (CAST('2' AS character varying(12)), 'b'), ('3'::varchar(12)::text, 'c'), (text '4', 'd'), (NULL::text, 'e')",
      {
        literals: [
          ["'1'::text", 'employees.my_number', 'write', '1'],
          ["CAST('2' AS character varying(12))", 'employees.my_number', 'write', '2'],
          ["'3'::varchar(12)::text", 'employees.my_number', 'write', '3'],
          ["text '4'", 'employees.my_number', 'write', '4'],
          ['NULL::text', 'employees.my_number', 'write', null],
        ],
      },
    );
  });
  test('numeric constants, including negative ones', () => {
    expectProtected('SELECT id FROM employees WHERE my_number = -5 OR my_number = 12.5', {
      literals: [
        ['-5', 'employees.my_number', 'search', '-5'],
        ['12.5', 'employees.my_number', 'search', '12.5'],
      ],
    });
  });
  test('multi-statement strings: one plan per statement with its own span', () => {
    const sql = "BEGIN; INSERT INTO employees (my_number) VALUES ('123456789018'); SELECT 1; COMMIT";
    const plans = expectProtected(sql, { literals: [["'123456789018'", 'employees.my_number', 'write', '123456789018']] });
    assert.equal(plans.length, 4);
    assert.deepEqual(plans.map((p) => p.command), ['TRANSACTION', 'INSERT', 'SELECT', 'TRANSACTION']);
    assert.equal(Buffer.from(sql).subarray(plans[1]!.start, plans[1]!.end).toString().trim(), "INSERT INTO employees (my_number) VALUES ('123456789018')");
  });
});

describe('allow-list', () => {
  test('INSERT: column list, multi-row, DEFAULT, NULL, params and literals', () => {
    expectProtected("INSERT INTO employees (name, my_number) VALUES ('a', '123456789018'), ('b', DEFAULT), ('c', NULL), ('d', $1)", {
      touched: { 'employees.my_number': ['write'] },
      literals: [["'123456789018'", 'employees.my_number', 'write', '123456789018']],
      params: [[1, 'employees.my_number', 'write']],
    });
  });
  test('INSERT without a column list takes the catalog column order', () => {
    expectProtected("INSERT INTO employees VALUES (1, 'n', '123456789018', 'secret', 2)", {
      literals: [
        ["'123456789018'", 'employees.my_number', 'write', '123456789018'],
        ["'secret'", 'employees.secret_note', 'write', 'secret'],
      ],
    });
  });
  test('UPDATE SET constant / parameter / DEFAULT / multi-column', () => {
    expectProtected("UPDATE employees SET my_number = '123456789018', secret_note = $1 WHERE id = $2", {
      literals: [["'123456789018'", 'employees.my_number', 'write', '123456789018']],
      params: [[1, 'employees.secret_note', 'write']],
    });
    expectProtected("UPDATE employees SET (name, my_number) = ('x', $1) WHERE id = 1", { params: [[1, 'employees.my_number', 'write']] });
    expectProtected('UPDATE employees SET my_number = DEFAULT WHERE id = 1', { deleteOfProtected: true });
  });
  test('ON CONFLICT DO UPDATE SET c = EXCLUDED.c or a value', () => {
    expectProtected(
      'INSERT INTO employees (id, my_number) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET my_number = EXCLUDED.my_number, secret_note = $3',
      {
        params: [
          [2, 'employees.my_number', 'write'],
          [3, 'employees.secret_note', 'write'],
        ],
      },
    );
    expectProtected('INSERT INTO employees (id, my_number) VALUES (1, $1) ON CONFLICT (my_number) DO NOTHING', { params: [[1, 'employees.my_number', 'write']] });
  });
  test('comparisons: v = c, c <> v, IN, = ANY(ARRAY[…]), IS [NOT] DISTINCT FROM, IS NULL', () => {
    expectProtected("SELECT id FROM employees WHERE '123456789018' = my_number", { literals: [["'123456789018'", 'employees.my_number', 'search', '123456789018']] });
    expectProtected("SELECT id FROM employees WHERE my_number IN ('1', $1) AND my_number <> '2'", {
      literals: [
        ["'1'", 'employees.my_number', 'search', '1'],
        ["'2'", 'employees.my_number', 'search', '2'],
      ],
      params: [[1, 'employees.my_number', 'search']],
    });
    expectProtected("SELECT id FROM employees WHERE my_number = ANY(ARRAY['1', $1])", {
      literals: [["'1'", 'employees.my_number', 'search', '1']],
      params: [[1, 'employees.my_number', 'search']],
    });
    expectProtected("SELECT id FROM employees WHERE my_number IS DISTINCT FROM 'x'", { literals: [["'x'", 'employees.my_number', 'search', 'x']] });
    expectProtected('SELECT id FROM employees WHERE secret_note IS NOT NULL AND my_number IS NULL', {
      touched: { 'employees.secret_note': ['search'], 'employees.my_number': ['search'] },
    });
  });
  test('IS NULL on a randomized column is allowed even without search permission (if the role may read)', () => {
    expectProtected('SELECT id FROM employees WHERE secret_note IS NULL', { touched: { 'employees.secret_note': ['search'] } }, { role: viewer });
  });
  test('joins within a key domain, USING, IN (subquery)', () => {
    expectProtected('SELECT e.id FROM employees e JOIN dependents d ON d.my_number = e.my_number', {
      touched: { 'employees.my_number': ['search'], 'dependents.my_number': ['search'] },
    });
    expectProtected('SELECT e.id FROM employees e JOIN dependents d USING (my_number)', {
      touched: { 'employees.my_number': ['search'], 'dependents.my_number': ['search'] },
    });
    expectProtected('SELECT id FROM employees WHERE my_number IN (SELECT my_number FROM dependents)', {
      touched: { 'employees.my_number': ['search'], 'dependents.my_number': ['search', 'read'] },
    });
  });
  test('GROUP BY, DISTINCT, COUNT(DISTINCT), count(*)', () => {
    expectProtected('SELECT my_number, count(*) FROM employees GROUP BY my_number', { touched: { 'employees.my_number': ['read', 'group'] } });
    expectProtected('SELECT my_number, count(*) FROM employees GROUP BY 1 HAVING count(*) > 1', { touched: { 'employees.my_number': ['read', 'group'] } });
    expectProtected('SELECT DISTINCT my_number FROM employees', { touched: { 'employees.my_number': ['read', 'group'] } });
    expectProtected('SELECT count(DISTINCT my_number) FROM employees', { touched: { 'employees.my_number': ['group'] } });
  });
  test('select list: aliases, t.*, *, subqueries, CTEs, views', () => {
    expectProtected('SELECT x.n FROM (SELECT my_number AS n FROM employees) x WHERE x.n = $1', {
      touched: { 'employees.my_number': ['read', 'search'] },
      params: [[1, 'employees.my_number', 'search']],
    });
    expectProtected("WITH c AS (SELECT id, my_number FROM employees) SELECT c.my_number FROM c WHERE my_number = '1'", {
      touched: { 'employees.my_number': ['read', 'search'] },
      literals: [["'1'", 'employees.my_number', 'search', '1']],
    });
    expectProtected('SELECT d.*, e.name FROM dependents d JOIN employees e ON e.id = d.employee_id', { touched: { 'dependents.my_number': ['read'] } });
    expectProtected('SELECT (SELECT my_number FROM employees LIMIT 1) AS n', { touched: { 'employees.my_number': ['read'] } });
    expectProtected("SELECT id FROM emp_view WHERE my_number = '1'", { literals: [["'1'", 'employees.my_number', 'search', '1']] });
    expectProtected('SELECT * FROM "hr"."Staff" WHERE "MyNumber" = $1', { params: [[1, 'Staff.MyNumber', 'search']] });
  });
  test('data-modifying CTE with RETURNING, PostgreSQL 18 RETURNING old/new', () => {
    expectProtected("WITH d AS (DELETE FROM employees WHERE my_number = $1 RETURNING id) SELECT count(*) FROM d", {
      touched: { 'employees.my_number': ['write', 'search'], 'employees.secret_note': ['write'] },
      params: [[1, 'employees.my_number', 'search']],
      deleteOfProtected: true,
    });
    expectProtected('UPDATE employees SET my_number = $1 WHERE id = 1 RETURNING old.my_number, new.my_number', {
      touched: { 'employees.my_number': ['write', 'returning'] },
    });
  });
  test('DELETE with allowed predicates and TRUNCATE record deletions', () => {
    expectProtected('DELETE FROM employees WHERE my_number = $1', { deleteOfProtected: true, command: 'DELETE' });
    expectProtected('TRUNCATE employees', { deleteOfProtected: true, command: 'TRUNCATE' });
  });
  test('EXPLAIN of a query, DECLARE CURSOR, PREPARE with a declared type, EXECUTE arguments', () => {
    expectProtected("EXPLAIN SELECT id FROM employees WHERE my_number = '1'", { literals: [["'1'", 'employees.my_number', 'search', '1']], command: 'EXPLAIN' });
    expectProtected('DECLARE c CURSOR WITH HOLD FOR SELECT my_number FROM employees', { command: 'DECLARE CURSOR' });
    const plans = expectProtected('PREPARE ins(text, character varying(12)) AS INSERT INTO employees (name, my_number) VALUES ($1, $2)', {
      params: [[2, 'employees.my_number', 'write']],
    });
    const buf = Buffer.from('PREPARE ins(text, character varying(12)) AS INSERT INTO employees (name, my_number) VALUES ($1, $2)');
    const ts = plans[0]!.prepare!.typeSpans;
    assert.deepEqual(ts.map((t) => [t.index, buf.subarray(t.start, t.end).toString()]), [[2, 'character varying(12)']]);
    assert.equal(plans[0]!.prepare!.command, 'INSERT');
    const { a } = run("EXECUTE ins('x', '123456789018', $1, 1 + 1)");
    assert.equal(a.kind, 'protected');
    if (a.kind === 'protected') {
      const args = a.statements[0]!.execute!.args;
      assert.deepEqual(args.map((x) => [x.kind, x.value]), [['literal', 'x'], ['literal', '123456789018'], ['param', null], ['other', null]]);
      assert.deepEqual([args[2]!.index, args[2]!.cast], [1, false]);
    }
  });
  test('temp table shadowing a protected one is not protected; qualified and folded names resolve', () => {
    expectUnprotected("SELECT my_number FROM shadowed WHERE my_number LIKE '1%'");
    expectProtected('SELECT my_number FROM PUBLIC.SHADOWED', { touched: { 'shadowed.my_number': ['read'] } });
    expectProtected('SELECT my_number FROM Employees', { touched: { 'employees.my_number': ['read'] } });
    expectUnprotected('SELECT my_number FROM "Employees"');
  });
  test('functions in FROM: same-level names stay resolvable, outer protected names behind them are refused', () => {
    expectProtected("SELECT my_number FROM employees, generate_series(1, 3) g WHERE my_number = '1'", { literals: [["'1'", 'employees.my_number', 'search', '1']] });
    expectRefusal(
      "SELECT (SELECT 1 FROM generate_series(1, 2) g WHERE my_number = 'x') FROM employees",
      '0A000',
      P(MN, 'an ambiguous reference to "my_number"'),
    );
  });
  test('UPDATE … RETURNING * reads the target (and FROM items), not old/new twice', () => {
    expectProtected('UPDATE employees SET name = $1 WHERE id = $2 RETURNING *', {
      touched: { 'employees.my_number': ['returning'], 'employees.secret_note': ['returning'] },
    });
  });
  test('a CTE named like a protected table shadows it', () => {
    expectUnprotected("WITH employees AS (SELECT 1 AS my_number) SELECT my_number FROM employees WHERE my_number::text LIKE '1%'");
    expectProtected("WITH employees AS (SELECT 1 AS x) SELECT my_number FROM public.employees WHERE my_number = '1'", { literals: [["'1'", 'employees.my_number', 'search', '1']] });
  });
  test('a byte-order mark inside the text keeps byte offsets exact; a leading one is a syntax error as on the server', () => {
    const sql = "SELECT '\ufeff' AS bom, id FROM employees WHERE my_number = '123456789018'";
    const plans = expectProtected(sql, {});
    assert.equal(Buffer.from(sql).subarray(plans[0]!.literals[0]!.start, plans[0]!.literals[0]!.end).toString(), "'123456789018'");
    assert.equal(run("\ufeffSELECT my_number FROM employees").a.kind, 'refuse');
  });
  test('standard_conforming_strings off: a backslash that hides SQL from the parser is caught', () => {
    // with scs on the parser sees one string; the server with scs off reads `, my_number FROM employees`
    expectRefusal("SELECT 'a\\'' , my_number FROM employees --'", '0A000', 'protected columns cannot be used while standard_conforming_strings is off', { standardConformingStrings: false });
    expectUnprotected("SELECT 'a\\\\' AS x, 'employees' AS y", { standardConformingStrings: false });
  });
  test('unprotected statements and columns stay unprotected', () => {
    expectUnprotected("SELECT name FROM employees WHERE name LIKE 'a%' ORDER BY name");
    expectUnprotected('SELECT * FROM departments d WHERE d.name = $1');
    expectUnprotected('SELECT id, upper(name) FROM employees UNION SELECT id, name FROM departments');
    expectUnprotected("INSERT INTO audit_log (msg) SELECT name FROM employees");
  });
});

describe('refusals', () => {
  const cases: [string, string, string, Partial<AnalysisContext>?][] = [
    ["SELECT id FROM employees WHERE my_number LIKE '1%'", '0A000', P(MN, 'LIKE')],
    ["SELECT id FROM employees WHERE my_number ILIKE '1%'", '0A000', P(MN, 'ILIKE')],
    ["SELECT id FROM employees WHERE my_number SIMILAR TO '1%'", '0A000', P(MN, 'SIMILAR TO')],
    ["SELECT id FROM employees WHERE my_number ~ '^1'", '0A000', P(MN, 'a regular expression match (~)')],
    ["SELECT id FROM employees WHERE my_number < '2'", '0A000', P(MN, 'a range comparison (<)')],
    ["SELECT id FROM employees WHERE my_number BETWEEN '1' AND '2'", '0A000', P(MN, 'BETWEEN')],
    ['SELECT id FROM employees ORDER BY my_number', '0A000', P(MN, 'ORDER BY')],
    ['SELECT my_number AS n FROM employees ORDER BY n', '0A000', P(MN, 'ORDER BY')],
    ['SELECT my_number FROM employees ORDER BY 1 DESC', '0A000', P(MN, 'ORDER BY')],
    ['SELECT lower(my_number) FROM employees', '0A000', P(MN, 'function lower()')],
    ["SELECT id FROM employees WHERE substr(my_number, 1, 4) = '1234'", '0A000', P(MN, 'function substr()')],
    ["SELECT my_number || 'x' FROM employees", '0A000', P(MN, 'the operator ||')],
    ['SELECT my_number::text FROM employees', '0A000', P(MN, 'a cast')],
    ['SELECT max(my_number) FROM employees', '0A000', P(MN, 'function max()')],
    ['SELECT count(my_number) FROM employees', '0A000', P(MN, 'function count()')],
    ['SELECT e FROM employees e', '0A000', P(MN, 'a whole-row reference')],
    ['SELECT row(e.*) FROM employees e', '0A000', P(MN, 'a whole-row reference')],
    ['SELECT to_json(e) FROM employees e', '0A000', P(MN, 'a whole-row reference')],
    ["SELECT json_build_object('n', my_number) FROM employees", '0A000', P(MN, 'function json_build_object()')],
    ["SELECT JSON_OBJECT('n': my_number) FROM employees", '0A000', P(MN, 'a JSON constructor')],
    ['SELECT ROW(my_number, id) FROM employees', '0A000', P(MN, 'a ROW constructor')],
    ['SELECT COALESCE(my_number, name) FROM employees', '0A000', P(MN, 'COALESCE')],
    ['SELECT my_number FROM employees UNION SELECT my_number FROM dependents', '0A000', P(MN, 'UNION (a set operation)')],
    ['SELECT my_number FROM employees INTERSECT ALL SELECT my_number FROM dependents', '0A000', P(MN, 'INTERSECT ALL (a set operation)')],
    ['INSERT INTO audit_log (msg) SELECT my_number FROM employees', '0A000', P(MN, 'INSERT … SELECT copying a protected column')],
    ['INSERT INTO dependents (my_number) SELECT my_number FROM employees', '0A000', P('public.dependents.my_number', 'INSERT … SELECT into a protected column')],
    ['CREATE TABLE copy AS SELECT my_number FROM employees', '0A000', P(MN, 'CREATE TABLE AS')],
    ['CREATE MATERIALIZED VIEW mv AS SELECT * FROM employees', '0A000', P(MN, 'CREATE MATERIALIZED VIEW')],
    ['SELECT my_number INTO TEMP t FROM employees', '0A000', P(MN, 'SELECT INTO')],
    ['MERGE INTO employees e USING departments d ON e.id = d.id WHEN MATCHED THEN DELETE', '0A000', P(MN, 'MERGE')],
    ['MERGE INTO departments d USING employees e ON e.id = d.id WHEN MATCHED THEN DELETE', '0A000', P(MN, 'MERGE')],
    ['SELECT id FROM employees WHERE my_number = $1 AND name = $1', '0A000', P(MN, 'parameter $1 used both for a protected column and in another position')],
    [
      'SELECT 1 FROM employees e, corps c WHERE e.my_number = $1 AND c.corp_number = $1',
      '0A000',
      'parameter $1 is used for columns "public.employees.my_number" and "public.corps.corp_number" of different key domains or types',
    ],
    [
      'SELECT 1 FROM employees e JOIN corps c ON e.my_number = c.corp_number',
      '0A000',
      'columns "public.employees.my_number" and "public.corps.corp_number" are in different key domains: a join or comparison between them is not supported',
    ],
    ['SELECT 1 FROM employees e JOIN departments d ON e.my_number = d.name', '0A000', P(MN, 'the comparison = with an expression other than a constant or parameter')],
    ["EXPLAIN ANALYZE UPDATE employees SET my_number = '1' WHERE id = 1", '0A000', P(MN, 'EXPLAIN ANALYZE of a write')],
    ['EXPLAIN (ANALYZE, BUFFERS) DELETE FROM employees', '0A000', P(MN, 'EXPLAIN ANALYZE of a write')],
    ['EXPLAIN EXECUTE s(1)', '0A000', 'EXPLAIN EXECUTE is not supported in sessions that may reach protected columns'],
    ['CREATE TABLE t2 AS EXECUTE s(1)', '0A000', 'CREATE TABLE AS EXECUTE is not supported in sessions that may reach protected columns'],
    ['ALTER TABLE employees ADD COLUMN x int', '0A000', 'ALTER TABLE on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ['DROP TABLE public.employees', '0A000', 'DROP on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ['CREATE INDEX ON employees (my_number)', '0A000', 'CREATE INDEX on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ['GRANT SELECT ON employees TO public', '0A000', 'GRANT on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ['CREATE VIEW v AS SELECT my_number FROM employees', '0A000', 'CREATE VIEW on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ['DROP SCHEMA public CASCADE', '0A000', 'DROP on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ['ALTER DOMAIN mamori.mynumber DROP CONSTRAINT c', '0A000', 'ALTER DOMAIN on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)'],
    ["DO $$ BEGIN PERFORM 1 FROM Employees; END $$", '0A000', 'a DO block that names a protected relation is not supported'],
    ['COPY employees TO STDOUT', '42501', `permission denied to export column "${MN}": COPY TO of plaintext needs the export grant`],
    ['COPY (SELECT my_number FROM employees) TO STDOUT', '42501', `permission denied to export column "${MN}": COPY TO of plaintext needs the export grant`],
    ["UPDATE employees SET my_number = lower($1)", '0A000', P(MN, 'an expression as an UPDATE value (use a constant or a parameter)')],
    ["INSERT INTO employees (my_number) VALUES (upper('x'))", '0A000', P(MN, 'an expression as an INSERT value (use a constant or a parameter)')],
    ['UPDATE employees SET (name, my_number) = (SELECT name, my_number FROM dependents LIMIT 1)', '0A000', P('public.dependents.my_number', 'SET (…) = (subquery) copying a protected column')],
    ['UPDATE employees SET (my_number, name) = (SELECT $1, name FROM departments LIMIT 1)', '0A000', P(MN, 'SET (…) = (subquery)')],
    ['INSERT INTO employees (my_number) VALUES ($1) ON CONFLICT (id) DO UPDATE SET my_number = lower(EXCLUDED.my_number)', '0A000', P(MN, 'an expression as an ON CONFLICT DO UPDATE value (use a constant or a parameter)')],
    ["SELECT id FROM employees WHERE my_number IN ('1','2','3','4','5','6')", '54000', `column "${MN}" is protected: an IN list of 6 values exceeds the limit of 5`],
    ["SELECT id FROM employees WHERE my_number = ANY('{1,2}')", '0A000', P(MN, '= ANY with anything but a parameter or an ARRAY[…] of constants or parameters')],
    ["SELECT id FROM employees WHERE secret_note = 'x'", '0A000', 'column "public.employees.secret_note" is protected with randomized encryption: the comparison = is not supported (only IS [NOT] NULL)'],
    ['SELECT DISTINCT secret_note FROM employees', '0A000', 'column "public.employees.secret_note" is protected with randomized encryption: DISTINCT is not supported (only IS [NOT] NULL)'],
    ['SELECT my_number FROM employees, dependents', '0A000', P(MN, 'an ambiguous reference to "my_number"')],
    ["SET ROLE hr_clerk; SELECT my_number FROM employees", '42501', 'role changes are not allowed in a query string that reaches protected columns'],
    ["SELECT set_config('role', 'x', false), my_number FROM employees", '42501', 'role changes are not allowed in a query string that reaches protected columns'],
    ["SELECT my_number FROM employees", '0A000', 'protected columns cannot be used while standard_conforming_strings is off', { standardConformingStrings: false }],
    // bytes still in a client encoding (the session converts those it can to UTF-8 before analysis)
    ["SELECT my_number FROM employees WHERE name = 'テスト'", '0A000', 'statements that may reach protected columns must be readable by mamori: the text is not valid in client_encoding SJIS, or mamori has no converter for it (docs/results.md lists the encodings it converts; UTF8 always works)', { clientEncoding: 'SJIS' }],
    ["SET search_path = hr, public; SELECT 1 FROM employees", '0A000', 'relation "employees" cannot be resolved: search_path was changed earlier in the same query string (send it separately)'],
    ['SELECT my_number FROM employees WHERE', '42601', 'syntax error at or near byte 37 (statements that may reach protected columns are parsed before they run)'],
  ];
  for (const [sql, state, msg, over] of cases) test(sql, () => expectRefusal(sql, state, msg, over ?? {}));

  test('ASCII statements read the same in every client encoding: analysed whatever the session uses', () => {
    for (const clientEncoding of ['SJIS', 'BIG5', 'LATIN1']) {
      const { a } = run("SELECT my_number FROM employees WHERE my_number = '123456789018'", { clientEncoding });
      assert.equal(a.kind, 'protected', clientEncoding);
    }
  });

  test('permissions: search, write and read by role', () => {
    expectRefusal("SELECT id FROM employees WHERE my_number = '1'", '42501', `permission denied to search column "${MN}"`, { role: viewer });
    expectRefusal("INSERT INTO employees (my_number) VALUES ('1')", '42501', `permission denied to write column "${MN}"`, { role: viewer });
    expectRefusal('SELECT my_number FROM employees', '42501', `permission denied to read column "${MN}"`, { role: outsider });
    expectRefusal('DELETE FROM employees WHERE id = 1 RETURNING my_number', '42501', `permission denied to write column "${MN}"`, { role: outsider });
    expectProtected('SELECT my_number FROM employees', { touched: { 'employees.my_number': ['read'] } }, { role: viewer });
  });
  test('DDL on protected tables is allowed for the admin role and flagged', () => {
    const { a } = run('ALTER TABLE employees ADD COLUMN x int', { allowDdl: true });
    assert.equal(a.kind, 'protected');
    if (a.kind === 'protected') assert.equal(a.statements[0]!.ddl, true);
    expectUnprotected('CREATE TABLE public.other (id int)');
  });
});

describe('settings', () => {
  test('SET / RESET / set_config are reported; role changes flagged', () => {
    const a = expectUnprotected("SET search_path = hr, \"$user\"; SET LOCAL standard_conforming_strings TO off; SET NAMES 'SJIS'; RESET ALL; SELECT set_config('client_encoding', 'UTF8', false); SET ROLE x");
    assert.equal(a.kind, 'unprotected');
    if (a.kind !== 'unprotected') return;
    assert.deepEqual(a.settings, [
      { name: 'search_path', value: 'hr, $user', local: false, action: 'set' },
      { name: 'standard_conforming_strings', value: 'off', local: true, action: 'set' },
      { name: 'client_encoding', value: 'SJIS', local: false, action: 'set' },
      { name: '*', value: null, local: false, action: 'reset' },
      { name: 'client_encoding', value: 'UTF8', local: false, action: 'set' },
      { name: 'role', value: 'x', local: false, action: 'set' },
    ]);
    assert.equal(a.roleChange, true);
  });
  test('set_config with a non-constant name is an unknown setting that counts as a role change', () => {
    const a = expectUnprotected('SELECT set_config($1, $2, true)');
    if (a.kind === 'unprotected') {
      assert.deepEqual(a.settings, [{ name: '?', value: null, local: true, action: 'set' }]);
      assert.equal(a.roleChange, true);
    }
  });
});
