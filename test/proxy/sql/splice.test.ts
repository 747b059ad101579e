import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { loadParser, parseText } from '../../../proxy/sql/parser.js';
import { analyse } from '../../../proxy/sql/analyse.js';
import {
  byteaEdit,
  byteaLiteral,
  nullEdit,
  paramCastEdit,
  rewrite,
  splice,
  SpliceError,
  verifySplice,
  type ExpectedEdit,
} from '../../../proxy/sql/splice.js';
import { ctx } from './fixture.js';

before(async () => {
  await loadParser();
});

const b = (s: string) => Buffer.from(s, 'utf8');

function literalEdits(sql: Buffer, cipher: (v: string) => Buffer): ExpectedEdit[] {
  const a = analyse(sql, ctx());
  assert.equal(a.kind, 'protected', JSON.stringify(a));
  if (a.kind !== 'protected') return [];
  return a.statements.flatMap((p) => [
    ...p.literals.map((l) => (l.value === null ? nullEdit(l) : byteaEdit(l, cipher(l.value)))),
    ...p.params.filter((q) => q.cast).map((q) => paramCastEdit(q.cast!, q.index, !!q.array)),
  ]);
}

describe('splice', () => {
  test('applies edits back to front in any given order', () => {
    const sql = b('abcdefghij');
    const out = splice(sql, [
      { start: 8, end: 9, replacement: b('XYZ') },
      { start: 1, end: 3, replacement: b('') },
      { start: 4, end: 4, replacement: b('+') },
    ]);
    assert.equal(out.toString(), 'ad+efghXYZj');
  });
  test('refuses overlapping and out-of-range edits', () => {
    assert.throws(() => splice(b('abcdef'), [{ start: 1, end: 3, replacement: b('x') }, { start: 2, end: 4, replacement: b('y') }]), SpliceError);
    assert.throws(() => splice(b('abc'), [{ start: 2, end: 9, replacement: b('x') }]), SpliceError);
    assert.throws(() => splice(b('abc'), [{ start: 2, end: 1, replacement: b('x') }]), SpliceError);
  });
  test('the bytea form: E\'\\\\x<hex>\'::bytea, which reads the same with standard_conforming_strings on or off', () => {
    const lit = byteaLiteral(Buffer.from([0, 0x5c, 0x27, 0xff]));
    assert.equal(lit.toString(), "E'\\\\x005c27ff'::bytea");
    const val = parseText(`SELECT ${lit.toString()}`)[0]!.stmt.SelectStmt.targetList[0].ResTarget.val;
    assert.equal(val.TypeCast.arg.A_Const.sval.sval, '\\x005c27ff');
  });
});

describe('rewrite and verify', () => {
  const cipher = (v: string) => Buffer.concat([Buffer.from('MAM1'), Buffer.from(v)]);
  for (const sql of [
    "SELECT id FROM employees WHERE my_number = '123456789018'",
    "INSERT INTO employees (name, my_number) VALUES ('山田 太郎', '１２３４ ５６７８ ９０１８'), ('b', NULL::text), ('c', CAST('1' AS varchar(12)))",
    "/* ' */ UPDATE employees SET my_number = E'1\\'2' WHERE name = $$it's$$ AND my_number IN ('1', '2')",
    'SELECT id FROM employees WHERE my_number = ANY($1::text[]) AND my_number <> $2::varchar(12)',
    "SELECT 1; INSERT INTO employees (my_number) VALUES ('x'); SELECT id FROM employees WHERE my_number = 'y'",
  ]) {
    test(sql, () => {
      const buf = b(sql);
      const edits = literalEdits(buf, cipher);
      assert.ok(edits.length > 0);
      const out = rewrite(buf, edits);
      assert.ok(!out.includes(b("'123456789018'")));
      assert.ok(parseText(out.toString('utf8')).length >= 1);
    });
  }
  test('rejects a splice that changed something else', () => {
    const sql = b("SELECT id FROM employees WHERE my_number = '1' AND id = 2");
    const [e] = literalEdits(sql, cipher);
    // the edit swallows the rest of the predicate
    const wide = { ...e!, end: sql.length };
    assert.throws(() => rewrite(sql, [wide]), SpliceError);
    // the rewritten text is tampered with outside the edit
    const good = splice(sql, [e!]);
    const tampered = Buffer.from(good.toString().replace('id = 2', 'id = 3'));
    assert.throws(() => verifySplice(sql, tampered, [e!]), SpliceError);
    // an injection through the replacement
    const inject = { ...e!, replacement: b("'x' OR true") };
    assert.throws(() => rewrite(sql, [inject]), SpliceError);
    // the replacement is a bytea constant, but not the expected one
    const other = { ...e!, replacement: byteaLiteral(Buffer.from('other')) };
    assert.throws(() => rewrite(sql, [other]), SpliceError);
    // an edit that does not start at a constant
    assert.throws(() => rewrite(sql, [{ ...e!, start: e!.start - 2, end: e!.start - 1 }]), SpliceError);
    // an edit that cuts a constant short
    assert.throws(() => rewrite(sql, [{ ...e!, end: e!.end - 1 }]), SpliceError);
  });
  test('property: random values round-trip through splice + verify', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 20 }), fc.uint8Array({ maxLength: 48 }), fc.constantFrom("''", "'ＡＢＣ'", "'q'''", "/* c */ 'x'", "$$é$$"), (v, ct, prefix) => {
        if (v.includes('\0')) return true;
        const sql = b(`SELECT ${prefix}, id FROM employees WHERE my_number = '${v.replaceAll("'", "''")}'`);
        const a = analyse(sql, ctx());
        if (a.kind !== 'protected') return false;
        const l = a.statements[0]!.literals[0]!;
        if (l.value !== v) return false;
        const out = rewrite(sql, [byteaEdit(l, Buffer.from(ct))]);
        return out.includes(byteaLiteral(Buffer.from(ct)));
      }),
      { numRuns: 300, seed: 7 },
    );
  });
});
