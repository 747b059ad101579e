import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { loadParser } from '../../../proxy/sql/parser.js';
import { analyse } from '../../../proxy/sql/analyse.js';
import type { Analysis, AnalysisContext, CatalogSnapshot, CopyPlan, RolePolicy } from '../../../proxy/sql/types.js';
import { catalog, clerk, ctx, viewer, outsider, EMP_MYNUMBER, EMP_NOTE } from './fixture.js';

before(async () => {
  await loadParser();
});

const exporter: RolePolicy = { ...clerk, canExport: () => true };
const MN = 'public.employees.my_number';

function run(sql: string, over: Partial<AnalysisContext> = {}): Analysis {
  return analyse(Buffer.from(sql, 'utf8'), ctx(over));
}

function plan(sql: string, over: Partial<AnalysisContext> = {}): CopyPlan {
  const a = run(sql, over);
  assert.equal(a.kind, 'protected', JSON.stringify(a));
  if (a.kind !== 'protected') throw new Error('unreachable');
  assert.equal(a.statements.length, 1);
  const c = a.statements[0]!.copy;
  assert.ok(c, 'a copy plan');
  return c;
}

function refused(sql: string, sqlstate: string, message: RegExp, over: Partial<AnalysisContext> = {}): void {
  const a = run(sql, over);
  assert.equal(a.kind, 'refuse', JSON.stringify(a));
  if (a.kind !== 'refuse') return;
  assert.equal(a.sqlstate, sqlstate);
  assert.match(a.message, message);
}

describe('COPY analysis', () => {
  test('FROM STDIN without a column list: catalog order, protected positions, write use', () => {
    const c = plan('COPY employees FROM STDIN');
    assert.equal(c.direction, 'from');
    assert.deepEqual(c.table, { schema: 'public', name: 'employees' });
    assert.deepEqual(c.columnNames, ['id', 'name', 'my_number', 'secret_note', 'dept_id', 'created_at']);
    assert.deepEqual(c.columns, [null, null, EMP_MYNUMBER, EMP_NOTE, null, null]);
    assert.deepEqual(c.options, { format: 'text' });
    const a = run('COPY employees FROM STDIN');
    assert.ok(a.kind === 'protected' && a.statements[0]!.touched.every((t) => t.uses.join() === 'write'));
  });

  test('FROM STDIN with a column list and every option, old and new syntax', () => {
    const c = plan(
      "COPY employees (my_number, id) FROM STDIN WITH (FORMAT csv, HEADER match, DELIMITER ';', NULL 'x', QUOTE '''', ESCAPE '\\', FORCE_NOT_NULL (my_number), FORCE_NULL *, DEFAULT 'd', ENCODING 'utf8', ON_ERROR stop, FREEZE false)",
    );
    assert.deepEqual(c.columnNames, ['my_number', 'id']);
    assert.deepEqual(c.columns, [EMP_MYNUMBER, null]);
    assert.deepEqual(c.options, {
      format: 'csv', header: 'match', delimiter: ';', null: 'x', quote: "'", escape: '\\', forceNotNull: ['my_number'], forceNull: '*', default: 'd', encoding: 'utf8',
    });
    const old = plan("COPY employees (id, my_number) FROM STDIN WITH DELIMITER '|' NULL 'n' CSV HEADER QUOTE AS '\"'");
    assert.deepEqual(old.options, { format: 'csv', delimiter: '|', null: 'n', header: true, quote: '"' });
    assert.deepEqual(plan('COPY employees (id, my_number) FROM STDIN (HEADER off)').options, { format: 'text', header: false });
  });

  test('generated columns are skipped when no list is given', () => {
    const withGen: CatalogSnapshot = {
      ...catalog,
      resolveRelation: (n, p) => {
        const r = catalog.resolveRelation(n, p);
        return r && r.name === 'employees' ? { ...r, generated: ['dept_id'] } : r;
      },
    };
    assert.deepEqual(plan('COPY employees FROM STDIN', { catalog: withGen }).columnNames, ['id', 'name', 'my_number', 'secret_note', 'created_at']);
  });

  test('COPY of an unprotected table, or of a list without protected columns, is not planned', () => {
    assert.equal(run('COPY departments FROM STDIN').kind, 'unprotected');
    assert.equal(run("COPY departments TO '/tmp/x' (FORMAT binary)").kind, 'unprotected');
    assert.equal(run('COPY employees (id, name) TO STDOUT (FORMAT binary)').kind, 'unprotected');
  });

  test('TO STDOUT: plaintext needs export; masks and ciphertext do not; deny is refused', () => {
    refused('COPY employees (id, my_number) TO STDOUT', '42501', /permission denied to export column "public\.employees\.my_number": COPY TO of plaintext needs the export grant/);
    const c = plan('COPY employees (id, my_number) TO STDOUT (FORMAT csv, FORCE_QUOTE *)', { role: exporter });
    assert.equal(c.direction, 'to');
    assert.deepEqual(c.columns, [null, EMP_MYNUMBER]);
    assert.deepEqual(c.options, { format: 'csv', forceQuote: '*' });
    assert.deepEqual(plan('COPY employees (id, my_number) TO STDOUT', { role: viewer }).columns, [null, EMP_MYNUMBER]);
    const cipher: RolePolicy = { ...outsider, read: () => 'ciphertext' };
    assert.equal(plan('COPY employees (my_number) TO STDOUT', { role: cipher }).direction, 'to');
    refused('COPY employees TO STDOUT', '42501', /permission denied to read column/, { role: outsider });
  });

  test('COPY (query) TO STDOUT: the shape comes from the query, analysed like a SELECT', () => {
    const c = plan('COPY (SELECT e.id, e.my_number AS mn, d.name FROM employees e JOIN departments d ON d.id = e.dept_id) TO STDOUT', { role: exporter });
    assert.equal(c.table, null);
    assert.deepEqual(c.columnNames, ['id', 'mn', 'name']);
    assert.deepEqual(c.columns, [null, EMP_MYNUMBER, null]);
    assert.deepEqual(plan('COPY (SELECT * FROM emp_view) TO STDOUT', { role: viewer }).columns, [null, null, EMP_MYNUMBER]);
    refused('COPY (SELECT upper(my_number) FROM employees) TO STDOUT', '0A000', /protected/, { role: exporter });
    refused('COPY (SELECT id FROM employees ORDER BY my_number) TO STDOUT', '0A000', /ORDER BY/, { role: exporter });
    // a query that only searches a protected column has no protected output: nothing to rewrite
    const a = run("COPY (SELECT id FROM employees WHERE my_number = '123456789018') TO STDOUT", { role: exporter });
    assert.equal(a.kind, 'protected');
    assert.ok(a.kind === 'protected' && a.statements[0]!.copy === undefined && a.statements[0]!.literals.length === 1);
  });

  test('refusals: binary, files and programs, ON_ERROR ignore, other encodings, FROM … WHERE, write grant, batches', () => {
    refused('COPY employees FROM STDIN (FORMAT binary)', '0A000', new RegExp(`column "${MN}" is protected: binary COPY`));
    refused('COPY employees TO STDOUT BINARY', '0A000', /binary COPY/, { role: exporter });
    refused("COPY employees FROM '/tmp/in.csv' CSV", '0A000', /server-side file or program .* bypass mamori.*COPY FROM STDIN/);
    refused("COPY employees TO PROGRAM 'cat'", '0A000', /server-side file or program/, { role: exporter });
    refused("COPY (SELECT my_number FROM employees) TO '/tmp/out'", '0A000', /server-side file or program/, { role: exporter });
    refused('COPY employees FROM STDIN (ON_ERROR ignore)', '0A000', /COPY ON_ERROR ignore is not supported/);
    // ENCODING is decided when the COPY runs (proxy/results/copy.ts copyFormat), by the converters mamori has
    const enc = run("COPY employees FROM STDIN (ENCODING 'SJIS')");
    assert.ok(enc.kind === 'protected' && enc.statements[0]!.copy?.options.encoding === 'SJIS');
    refused("COPY employees FROM STDIN WHERE my_number = '1'", '0A000', /COPY FROM … WHERE/);
    refused('COPY employees (id, my_number) FROM STDIN', '42501', /permission denied to write column/, { role: viewer });
    refused('COPY employees FROM STDIN; SELECT 1', '0A000', /must be the only statement/);
    refused('COPY employees FROM STDIN (FORMAT xml)', '22023', /format "xml" not recognized/);
    assert.equal(run('COPY employees (id, my_number) FROM STDIN (ON_ERROR stop)').kind, 'protected');
  });
});
