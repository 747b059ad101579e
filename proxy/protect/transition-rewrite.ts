// Serving a column while `mamori protect` converts it (docs/protect.md "While a column is in transition"): rows
// not yet moved hold plaintext in the column, moved rows a cell in the shadow `<col>__mamori` and NULL in the
// column. The common statement forms are rewritten to use both; everything else touching the column is refused.
//  - a plain reference in a select list / RETURNING (and `*`, expanded without the shadow) becomes one value:
//    the cell when the shadow holds one, else 0x00 + the plaintext's UTF-8 bytes. The field is mapped to the
//    protected column by position and rendered per role like any cell (proxy/results/rows.ts), so a mask, NULL
//    or refusal applies to rows still in plaintext too;
//  - `col = v`, `col IN (vs)` and `col = ANY($k | ARRAY[vs])` become `(shadow = cell OR col = v)` (IN / ANY
//    alike, over cells); `col IS [NOT] NULL` covers both. For a
//    parameter `$k` the cell stays in `$k` (bytea) and the plaintext comparison gets a parameter of its own, `$m`
//    after the client's, bound by mamori with the value as the client sent it (its ParameterDescription hides it);
//  - INSERT (…, col, …) (with ON CONFLICT DO NOTHING / DO UPDATE SET col = EXCLUDED.col | v), UPDATE SET col = v and
//    COPY FROM STDIN write the cell to the shadow (and NULL to the column);
//  - a ciphertext reader gets a moved row's cell, and for a row still in plaintext a cell made as it is sent.
// One statement per query string, the table once (joined with other tables in a SELECT), no subqueries or CTEs:
// the rewrite stays checkable.
import { decodeSql, parseText, type AstNode } from '../sql/parser.js';
import { readToken, skipTrivia, tokens } from '../sql/lexer.js';
import { byteaLiteral, splice, verifySplice, type ExpectedEdit } from '../sql/splice.js';
import { spanEnd, spanStart } from '../sql/span.js';
import { decodeBind, encodeBind, expandFormats } from '../wire/frontend.js';
import type { CatalogSnapshot, CopyPlan, LiteralSite, ParamSite, ProtectedColumn, StatementPlan } from '../sql/types.js';
import type { ColumnTransition } from '../policy/catalog.js';

/** A result field served from a column in transition (its origin in RowDescription is 0: mapped by position). */
export interface TransitionField {
  index: number;
  column: ProtectedColumn;
}

/** Replacement text for a span; LiteralSite parts become the cell of that search constant. */
interface TransitionEdit {
  start: number;
  end: number;
  parts: (Buffer | LiteralSite)[];
}

export interface TransitionPlan {
  edits: TransitionEdit[];
  fields: TransitionField[];
  /** Search constants whose cell is placed by a transition edit (their own bytea edit must not be applied). */
  consumed: ReadonlySet<LiteralSite>;
  /** Search parameters rewritten by a transition edit (their own `$k::bytea` cast edit must not be applied). */
  consumedParams: ReadonlySet<ParamSite>;
  /**
   * Parameters mamori adds for the plaintext side of parameter searches: `$index` carries what the client bound
   * to `$from`, as sent. All of them come after the client's parameters (`clientParams` of them).
   */
  extraParams: { index: number; from: number }[];
  clientParams: number;
  /** COPY FROM: the plan of the rewritten COPY (the client's fields, the column's written to its shadow). */
  copy?: CopyPlan;
  /** Checks the re-parsed rewritten statement has the intended shape; throws TransitionRefusal otherwise. */
  check(rewritten: Buffer): void;
}

export class TransitionRefusal extends Error {
  constructor(
    readonly sqlstate: '0A000' | '55000' | 'XX000',
    message: string,
  ) {
    super(message);
  }
}

type TransitionCatalog = Pick<CatalogSnapshot, 'resolveRelation'> & { transitions: ReadonlyMap<string, ColumnTransition> };

interface TCol {
  column: ProtectedColumn;
  /** The column mamori added: the cells' (protect) or the plaintext's (unprotect). */
  shadow: string;
  /** Which of the two holds cells, and which plaintext. */
  cells: string;
  plain: string;
  direction: 'protect' | 'unprotect';
}

const qi = (name: string): string => '"' + name.replace(/"/g, '""') + '"';
const path = (c: ProtectedColumn): string => `${c.schema}.${c.table}.${c.column}`;

type Busy = (c: ProtectedColumn, what: string) => TransitionRefusal;

function busyIn(direction: 'protect' | 'unprotect'): Busy {
  const doing = direction === 'protect' ? 'converted by `mamori protect`' : 'decrypted by `mamori unprotect`';
  return (c, what) => new TransitionRefusal('55000', `protected column ${path(c)} is being ${doing}: ${what} is refused until ${direction} has finished (docs/protect.md)`);
}

/** The columns in transition a statement touches, by column name (all of one table), or null when none. */
export function transitionColumns(statements: readonly StatementPlan[], catalog: TransitionCatalog): Map<string, TCol> | null {
  const out = new Map<string, TCol>();
  for (const st of statements) {
    for (const { column: c } of st.touched) {
      const tr = catalog.transitions.get(`${c.tableOid}:${c.attnum}`);
      if (tr) {
        const protect = tr.direction === 'protect';
        out.set(c.column, { column: c, shadow: tr.shadow, cells: protect ? tr.shadow : c.column, plain: protect ? c.column : tr.shadow, direction: tr.direction });
      }
    }
  }
  return out.size > 0 ? out : null;
}

/**
 * Names a shadow column of a column in transition (anywhere in the text): refused, the shadow is mamori's.
 * A plain case-insensitive substring test: it errs on the side of refusing.
 */
export function mentionsShadow(sql: Buffer, catalog: TransitionCatalog): string | null {
  if (catalog.transitions.size === 0) return null;
  const text = sql.toString('latin1').toLowerCase();
  for (const tr of catalog.transitions.values()) {
    if (text.includes(tr.shadow.toLowerCase())) {
      return `column ${tr.shadow} is mamori's shadow of a column being converted by \`mamori ${tr.direction}\`: statements naming it are refused (docs/protect.md)`;
    }
  }
  // A U&"…" identifier can spell a shadow's name with escapes the test above does not see.
  if (text.includes('u&"')) {
    try {
      for (const t of tokens(sql)) {
        if (t.kind === 'uident') return 'U&"…" identifiers are refused while a column is being converted by `mamori protect` or `mamori unprotect` (they could name its shadow column; docs/protect.md)';
      }
    } catch {
      return 'a statement mamori cannot read is refused while a column is being converted (docs/protect.md)';
    }
  }
  return null;
}

/**
 * Plans the rewrite of a statement that touches columns in transition, or null when it touches none. Throws
 * TransitionRefusal for every form it does not serve. `statements` is mamori's analysis of `sql` (which has
 * already refused what is refused for any protected column, and found the constants and parameters).
 */
export function planTransition(sql: Buffer, statements: readonly StatementPlan[], catalog: TransitionCatalog, searchPath: readonly string[], declaredParams = 0): TransitionPlan | null {
  const tcols = transitionColumns(statements, catalog);
  if (!tcols) return null;
  const firstCol = [...tcols.values()][0]!;
  const first = firstCol.column;
  const busy = busyIn(firstCol.direction);
  for (const t of tcols.values()) {
    if (t.column.tableOid !== first.tableOid) throw busy(t.column, 'a statement touching two tables in transition');
  }
  if (statements.length !== 1) throw busy(first, 'a query string of several statements touching it');
  const plan = statements[0]!;
  const stmts = parseText(decodeSql(sql));
  if (stmts.length !== 1) throw busy(first, 'a query string of several statements touching it');
  const node: AstNode = stmts[0].stmt;
  const type = Object.keys(node)[0]!;
  const clientParams = Math.max(declaredParams, maxParam(node));
  const w = new Walker(sql, tcols, first, plan, catalog, searchPath, clientParams, busy);
  switch (type) {
    case 'SelectStmt':
      w.select(node.SelectStmt);
      break;
    case 'InsertStmt':
      w.insert(node.InsertStmt);
      break;
    case 'UpdateStmt':
      w.update(node.UpdateStmt);
      break;
    case 'DeleteStmt':
      w.delete(node.DeleteStmt);
      break;
    case 'CopyStmt':
      w.copyFrom(node.CopyStmt);
      break;
    default:
      throw busy(first, `${plan.command} of it`);
  }
  w.finish(node);
  const copyColumns = w.copyPlan ? copyColumnList(w.copyPlan, tcols) : null;
  const expect = { type, fieldCount: w.fieldCount, fields: w.fields, tcols, copyColumns };
  return {
    ...(w.copyPlan ? { copy: w.copyPlan } : {}),
    edits: w.edits,
    fields: w.fields,
    consumed: w.consumed,
    consumedParams: w.consumedParams,
    extraParams: [...w.extra].map(([from, index]) => ({ index, from })),
    clientParams,
    check: (rewritten) => checkShape(rewritten, expect, first),
  };
}

/** Splices the transition edits and the ordinary (verified) constant edits together, and checks the result. */
/** Bind (original body) → the encrypted Bind (full message) with mamori's added parameters appended. */
export function appendTransitionParams(original: Buffer, encrypted: Buffer, plan: Pick<TransitionPlan, 'extraParams' | 'clientParams'>): Buffer {
  if (plan.extraParams.length === 0) return encrypted;
  const orig = decodeBind(original);
  const enc = decodeBind(encrypted.subarray(5));
  if (enc.params.length !== plan.clientParams) {
    throw new TransitionRefusal('55000', `the Bind supplies ${enc.params.length} parameter(s) but the statement has ${plan.clientParams}`);
  }
  const origFormats = expandFormats(orig.paramFormats, orig.params.length);
  const formats = expandFormats(enc.paramFormats, enc.params.length);
  const params = enc.params.slice();
  for (const x of [...plan.extraParams].sort((a, b) => a.index - b.index)) {
    params[x.index - 1] = orig.params[x.from - 1] ?? null;
    formats[x.index - 1] = origFormats[x.from - 1] ?? 0;
  }
  return encodeBind({ ...enc, paramFormats: formats, params });
}

/** Full ParameterDescription message cut to the client's own parameters (mamori's added ones hidden). */
export function hideTransitionParams(full: Buffer, clientParams: number): Buffer {
  const n = full.readUInt16BE(5);
  if (n <= clientParams) return full;
  const out = Buffer.from(full.subarray(0, 5 + 2 + 4 * clientParams));
  out.writeInt32BE(4 + 2 + 4 * clientParams, 1);
  out.writeUInt16BE(clientParams, 5);
  return out;
}

export function applyTransition(sql: Buffer, plan: TransitionPlan, byteEdits: readonly ExpectedEdit[], cellOf: (site: LiteralSite) => Buffer): Buffer {
  // The ordinary edits alone are verified as always (only the intended constants changed) …
  if (byteEdits.length > 0) verifySplice(sql, splice(sql, byteEdits), byteEdits);
  const edits = plan.edits.map((e) => ({
    start: e.start,
    end: e.end,
    replacement: Buffer.concat(e.parts.map((p) => (Buffer.isBuffer(p) ? p : byteaLiteral(cellOf(p))))),
  }));
  // … and together with the transition edits the statement must re-parse to the planned shape.
  const out = splice(sql, [...byteEdits, ...edits]);
  plan.check(out);
  return out;
}

/** RETURNING items (PostgreSQL 18's parser: returningClause.exprs; before: returningList). */
function returning(s: AstNode): AstNode[] {
  return s.returningClause?.exprs ?? s.returningList ?? [];
}

/** The highest `$n` in the statement (0 when none). */
function maxParam(n: unknown): number {
  if (Array.isArray(n)) return n.reduce((m: number, x) => Math.max(m, maxParam(x)), 0);
  if (!n || typeof n !== 'object') return 0;
  const o = n as AstNode;
  let m = typeof o.ParamRef?.number === 'number' ? o.ParamRef.number : 0;
  for (const v of Object.values(o)) m = Math.max(m, maxParam(v));
  return m;
}

/**
 * The old column's value as text for mamori to validate. A date's `::text` follows the session's DateStyle, so it
 * is written out as ISO whatever the session uses; BC dates and infinity become text no date parser accepts
 * (the row then ends the result with an error naming the column, as any invalid plaintext does).
 */
function plainText(ref: string, c: ProtectedColumn): string {
  if (c.type.type !== 'date') return `${ref}::pg_catalog.text`;
  return `CASE WHEN ${ref} OPERATOR(pg_catalog.>=) '0001-01-01'::pg_catalog.date AND pg_catalog.isfinite(${ref}) ` +
    `THEN pg_catalog.to_char(${ref}, 'YYYY-MM-DD') ELSE 'not a supported date' END`;
}

/** A COPY FROM's columns as written out in transition: the client's, each column in transition as its shadow. */
function copyColumnList(plan: CopyPlan, tcols: Map<string, TCol>): string[] {
  return plan.columnNames.map((n) => tcols.get(n)?.shadow ?? n);
}

/** The column reference of a search, and what it becomes on the plaintext side. */
interface Rename {
  ref: { start: number; end: number };
  to: string;
  t: TCol;
}

/** A value operand of a search: a constant found by the analysis, or a parameter `$k` at a byte offset. */
type SearchOperand = { kind: 'literal'; site: LiteralSite; start: number; end: number } | { kind: 'param'; site: ParamSite; k: number; at: number; start: number; end: number };

class Walker {
  readonly edits: TransitionEdit[] = [];
  readonly fields: TransitionField[] = [];
  readonly consumed = new Set<LiteralSite>();
  readonly consumedParams = new Set<ParamSite>();
  /** Client parameter `$k` → the parameter mamori adds for its plaintext comparison. */
  readonly extra = new Map<number, number>();
  fieldCount = 0;
  /** The SELECT reads other tables as well (a `*` must then be qualified with the table in transition). */
  private joined = false;
  /** COPY FROM in transition: the plan of the rewritten COPY (its column list: copyColumnList). */
  copyPlan: CopyPlan | null = null;
  private readonly handled = new Set<AstNode>();
  private refnames: string[][] = [];
  private columns: string[] = [];

  constructor(
    private readonly buf: Buffer,
    private readonly tcols: Map<string, TCol>,
    private readonly first: ProtectedColumn,
    private readonly plan: StatementPlan,
    private readonly catalog: TransitionCatalog,
    private readonly searchPath: readonly string[],
    private readonly clientParams: number,
    private readonly busy: Busy,
  ) {}

  /** The one relation of the statement: must be the table in transition. */
  private relation(rv: AstNode | undefined): void {
    if (!rv?.RangeVar && !rv?.relname) throw this.busy(this.first, 'a statement reading it from a join, subquery or function');
    const r: AstNode = rv.RangeVar ?? rv;
    const rel = this.catalog.resolveRelation(r.schemaname ? { schema: r.schemaname, name: r.relname } : { name: r.relname }, this.searchPath);
    if (!rel || rel.schema !== this.first.schema || rel.name !== this.first.table) throw this.busy(this.first, 'a statement over another relation as well');
    this.refnames = r.alias ? [[r.alias.aliasname]] : [[rel.name], [rel.schema, rel.name]];
    const shadows = new Set([...this.tcols.values()].map((t) => t.shadow));
    this.columns = rel.columns.filter((c) => !shadows.has(c));
  }

  /**
   * FROM of a SELECT: tables, joined (ON) or listed, exactly one of them the table in transition; the others must
   * be tables mamori resolves with no column named like the column or its shadow (so an unqualified name can only
   * be the column, and a qualified one is checked against the refnames).
   */
  private fromItems(items: readonly AstNode[]): void {
    const rels: AstNode[] = [];
    const walk = (n: AstNode): void => {
      if (n?.RangeVar) rels.push(n.RangeVar);
      else if (n?.JoinExpr) {
        const j = n.JoinExpr;
        if (j.usingClause || j.isNatural) throw this.busy(this.first, 'JOIN … USING or NATURAL JOIN in a statement reading it');
        if (j.alias) throw this.busy(this.first, 'an aliased join in a statement reading it');
        walk(j.larg);
        walk(j.rarg);
      } else throw this.busy(this.first, 'a statement reading it from a subquery or function');
    };
    for (const it of items) walk(it);
    const resolve = (r: AstNode) => this.catalog.resolveRelation(r.schemaname ? { schema: r.schemaname, name: r.relname } : { name: r.relname }, this.searchPath);
    const isMine = (r: AstNode): boolean => {
      const rel = resolve(r);
      return rel !== null && rel.schema === this.first.schema && rel.name === this.first.table;
    };
    const mine = rels.filter(isMine);
    if (mine.length === 0) throw this.busy(this.first, 'a statement over another relation');
    if (mine.length > 1) throw this.busy(this.first, 'a statement reading its table twice (self-join)');
    this.relation(mine[0]);
    const names = new Set([...this.tcols.values()].flatMap((t) => [t.column.column, t.shadow]));
    for (const r of rels) {
      if (r === mine[0]) continue;
      const rel = resolve(r);
      if (!rel) throw this.busy(this.first, `a join with ${r.relname}, which mamori cannot resolve`);
      if (rel.columns.some((c) => names.has(c))) throw this.busy(this.first, `a join with ${rel.schema}.${rel.name}, which has a column of the same name`);
    }
    this.joined = rels.length > 1;
  }

  select(s: AstNode): void {
    if (s.op && s.op !== 'SETOP_NONE') throw this.busy(this.first, 'a set operation (UNION …) over it');
    if (s.withClause) throw this.busy(this.first, 'a statement with WITH');
    if (s.intoClause) throw this.busy(this.first, 'SELECT INTO');
    if (s.distinctClause) throw this.busy(this.first, 'DISTINCT over it');
    this.fromItems(s.fromClause ?? []);
    for (const x of [...(s.sortClause ?? []), ...(s.groupClause ?? [])]) {
      const n = x.SortBy?.node ?? x;
      if (n.A_Const) throw this.busy(this.first, 'ORDER BY / GROUP BY by position in a statement reading it');
    }
    this.targets(s.targetList ?? []);
  }

  insert(i: AstNode): void {
    if (i.withClause) throw this.busy(this.first, 'a statement with WITH');
    this.relation(i.relation);
    const sel = i.selectStmt?.SelectStmt;
    if (sel && !sel.valuesLists) throw this.busy(this.first, 'INSERT … SELECT');
    if (!i.cols || i.cols.length === 0) throw this.busy(this.first, 'INSERT without a column list (name the columns)');
    for (const c of i.cols) {
      const rt = c.ResTarget;
      const t = this.tcols.get(rt.name);
      if (!t) continue;
      this.writable(t);
      if (rt.indirection) throw this.busy(t.column, 'a write to part of it');
      this.nameEdit(rt.location, t.column, Buffer.from(qi(t.shadow)));
    }
    if (i.onConflictClause) this.onConflict(i.onConflictClause);
    this.targets(returning(i));
  }

  /**
   * ON CONFLICT: a target naming other columns (or none), and DO NOTHING or DO UPDATE whose SET of the column is a
   * value (encrypted as any write) or `EXCLUDED.col` — both written to the shadow, the column emptied.
   */
  private onConflict(oc: AstNode): void {
    if (oc.infer?.conname) throw this.busy(this.first, 'ON CONFLICT ON CONSTRAINT (name the columns)');
    for (const x of oc.infer?.indexElems ?? []) {
      const name = x.IndexElem?.name;
      if (typeof name !== 'string') throw this.busy(this.first, 'ON CONFLICT over an expression');
      if (this.tcols.has(name)) throw this.busy(this.tcols.get(name)!.column, 'ON CONFLICT (…) naming it (uniqueness spans the two columns until the conversion has finished)');
    }
    for (const x of oc.targetList ?? []) {
      const rt = x.ResTarget;
      const t = this.setTarget(rt);
      if (!t) continue;
      const cr = rt.val?.ColumnRef;
      const names: unknown[] = cr?.fields?.map((f: AstNode) => f.String?.sval) ?? [];
      if (cr && names.length === 2 && names[0] === 'excluded' && names[1] === t.column.column) {
        const ref = this.columnRefSpan(cr);
        this.edits.push({ start: ref.start, end: ref.end, parts: [Buffer.from(`${ref.qualifier}${qi(t.shadow)}`)] });
        this.handled.add(cr);
      }
    }
  }

  update(u: AstNode): void {
    if (u.withClause) throw this.busy(this.first, 'a statement with WITH');
    if ((u.fromClause ?? []).length > 0) throw this.busy(this.first, 'UPDATE … FROM');
    this.relation(u.relation);
    for (const x of u.targetList ?? []) this.setTarget(x.ResTarget);
    this.targets(returning(u));
  }

  /**
   * A SET item of UPDATE or ON CONFLICT DO UPDATE: for the column in transition, its value goes to the shadow
   * (encrypted as usual) and the column is emptied. Returns the column's entry, or null for any other column.
   */
  private setTarget(rt: AstNode): TCol | null {
    const t = this.tcols.get(rt.name);
    if (!t) return null;
    this.writable(t);
    if (rt.val?.MultiAssignRef) throw this.busy(t.column, 'SET (a, b) = (…)');
    if (rt.indirection) throw this.busy(t.column, 'a write to part of it');
    this.nameEdit(rt.location, t.column, Buffer.from(`${qi(t.column.column)} = NULL, ${qi(t.shadow)}`));
    return t;
  }

  delete(d: AstNode): void {
    if (d.withClause) throw this.busy(this.first, 'a statement with WITH');
    if ((d.usingClause ?? []).length > 0) throw this.busy(this.first, 'DELETE … USING');
    this.relation(d.relation);
    this.targets(returning(d));
  }

  /**
   * `COPY t [(cols)] FROM STDIN`: the client's fields go to the same columns, the column's to its shadow. The
   * column list is written out (named, or the table's columns without the shadow and generated columns, which is
   * what the client's rows carry) with the shadow in the column's place; the old column is left NULL.
   */
  copyFrom(c: AstNode): void {
    const copy = this.plan.copy;
    if (!copy || copy.direction !== 'from' || !copy.table || !c.relation) throw this.busy(this.first, 'COPY TO of it');
    if (c.whereClause) throw this.busy(this.first, 'COPY FROM … WHERE');
    this.relation(c.relation);
    const o = copy.options;
    if (o.header === 'match') throw this.busy(this.first, 'COPY FROM with HEADER MATCH (the header names the column, the data goes to its shadow)');
    for (const [name, list] of [['FORCE_NOT_NULL', o.forceNotNull], ['FORCE_NULL', o.forceNull], ['FORCE_QUOTE', o.forceQuote]] as const) {
      if (Array.isArray(list) && list.some((n) => this.tcols.has(n))) throw this.busy(this.first, `COPY FROM with ${name} naming it`);
    }
    for (const n of copy.columnNames) {
      const t = this.tcols.get(n);
      if (t) this.writable(t);
    }
    const shadows = new Set([...this.tcols.values()].map((t) => t.shadow));
    // The analysis took the table's columns when none are named: the shadow (added last) is not the client's.
    const keep = copy.columnNames.map((n, i) => (shadows.has(n) ? -1 : i)).filter((i) => i >= 0);
    const names = keep.map((i) => copy.columnNames[i]!);
    if (new Set(names).size !== names.length) throw this.busy(this.first, 'a COPY naming a column twice');
    this.copyPlan = { ...copy, columnNames: names, columns: keep.map((i) => copy.columns[i] ?? null) };
    const list = Buffer.from(' (' + copyColumnList(this.copyPlan, this.tcols).map(qi).join(', ') + ')');
    const rel = this.relationEnd(c.relation);
    const open = skipTrivia(this.buf, rel);
    if (c.attlist) {
      if (this.buf[open] !== 0x28) throw new TransitionRefusal('XX000', `internal error: could not locate the COPY column list of ${path(this.first)}`);
      let depth = 0;
      let i = open;
      for (;;) {
        const t = readToken(this.buf, i);
        if (t.kind === 'op' && this.buf[i] === 0x28) depth++;
        if (t.kind === 'op' && this.buf[i] === 0x29 && --depth === 0) {
          this.edits.push({ start: rel, end: t.end, parts: [list] });
          return;
        }
        i = skipTrivia(this.buf, t.end);
        if (i >= this.buf.length) throw new TransitionRefusal('XX000', `internal error: could not locate the COPY column list of ${path(this.first)}`);
      }
    }
    this.edits.push({ start: rel, end: rel, parts: [list] });
  }

  /** Byte offset just past a relation name (`t`, `s.t`, quoted or not) starting at the RangeVar's location. */
  private relationEnd(rv: AstNode): number {
    const r: AstNode = rv.RangeVar ?? rv;
    let i: number = r.location;
    if (typeof i !== 'number' || i < 0) throw new TransitionRefusal('XX000', `internal error: could not locate the table of ${path(this.first)}`);
    for (;;) {
      const t = readToken(this.buf, i);
      if (t.kind !== 'ident' && t.kind !== 'qident') throw new TransitionRefusal('XX000', `internal error: could not locate the table of ${path(this.first)}`);
      const next = skipTrivia(this.buf, t.end);
      if (this.buf[next] !== 0x2e) return t.end;
      i = skipTrivia(this.buf, next + 1);
    }
  }

  /** Writes go to the cells' shadow during protect; during unprotect the values are read only. */
  private writable(t: TCol): void {
    if (t.direction === 'unprotect') throw this.busy(t.column, 'a write of it');
  }

  /** The SET / INSERT column name token at `loc` (the name only, no indirection). */
  private nameEdit(loc: number, c: ProtectedColumn, replacement: Buffer): void {
    const t = readToken(this.buf, loc);
    if (t.kind !== 'ident' && t.kind !== 'qident') throw new TransitionRefusal('XX000', `internal error: could not locate column ${path(c)} in the statement`);
    this.edits.push({ start: t.start, end: t.end, parts: [replacement] });
  }

  /** Select list or RETURNING: plain references and `*` are served; result positions recorded. */
  private targets(list: AstNode[]): void {
    let index = 0;
    for (const x of list) {
      const rt = x.ResTarget;
      const cr = rt?.val?.ColumnRef;
      const star = cr && cr.fields.at(-1)?.A_Star !== undefined;
      if (star) {
        const ref = this.columnRefSpan(cr);
        // Result positions are counted per select-list item: a `*` of another relation would shift them.
        if (this.joined && cr.fields.length === 1) throw this.busy(this.first, 'an unqualified `*` over a join (name the columns, or use t.*)');
        if (!this.qualifierMatches(cr)) throw this.busy(this.first, 'a `*` over another relation');
        const items: string[] = [];
        for (const name of this.columns) {
          const t = this.tcols.get(name);
          if (t) {
            items.push(`${this.readExpr(ref.qualifier, t)} AS ${qi(name)}`);
            this.fields.push({ index, column: t.column });
          } else items.push(`${ref.qualifier}${qi(name)}`);
          index++;
        }
        this.edits.push({ start: ref.start, end: ref.end, parts: [Buffer.from(items.join(', '))] });
        this.handled.add(cr);
        continue;
      }
      const t = cr ? this.tcolOf(cr) : null;
      if (cr && t) {
        const ref = this.columnRefSpan(cr);
        const alias = rt.name ? '' : ` AS ${qi(t.column.column)}`;
        this.edits.push({ start: ref.start, end: ref.end, parts: [Buffer.from(this.readExpr(ref.qualifier, t) + alias)] });
        this.fields.push({ index, column: t.column });
        this.handled.add(cr);
      }
      index++;
    }
    this.fieldCount = index;
  }

  /** One value from whichever column holds it: the cell, else 0x00 + the plaintext's UTF-8 bytes. */
  private readExpr(q: string, t: TCol): string {
    return `COALESCE(${q}${qi(t.cells)}::pg_catalog.bytea, '\\x00'::pg_catalog.bytea OPERATOR(pg_catalog.||) ` +
      `pg_catalog.convert_to(${plainText(`${q}${qi(t.plain)}`, t.column)}, 'UTF8'))`;
  }

  private qualifierMatches(cr: AstNode): boolean {
    const names: string[] = cr.fields.slice(0, -1).map((f: AstNode) => f.String?.sval);
    return names.length === 0 || this.refnames.some((r) => r.length === names.length && r.every((x, i) => x === names[i]));
  }

  private tcolOf(cr: AstNode): TCol | null {
    const last = cr.fields.at(-1)?.String?.sval;
    const t = last === undefined ? undefined : this.tcols.get(last);
    if (!t) return null;
    if (!this.qualifierMatches(cr)) throw this.busy(t.column, 'a reference through another relation');
    return t;
  }

  /** Byte span of a ColumnRef and the source text of its qualifier (`e.`, `public.t.`, or empty). */
  private columnRefSpan(cr: AstNode): { start: number; end: number; qualifier: string } {
    const start: number = cr.location;
    // `TABLE t` has an implicit `*` with no place in the text.
    if (typeof start !== 'number' || start < 0) throw this.busy(this.first, 'TABLE (write SELECT … FROM)');
    let i = start;
    let lastStart = start;
    let end = start;
    for (let k = 0; k < cr.fields.length; k++) {
      if (k > 0) {
        i = skipTrivia(this.buf, end);
        if (this.buf[i] !== 0x2e) throw new TransitionRefusal('XX000', `internal error: could not locate a column reference to ${path(this.first)}`);
        i = skipTrivia(this.buf, i + 1);
      }
      const t = readToken(this.buf, i);
      if (t.kind !== 'ident' && t.kind !== 'qident' && !(t.kind === 'op' && this.buf[i] === 0x2a)) {
        throw new TransitionRefusal('XX000', `internal error: could not locate a column reference to ${path(this.first)}`);
      }
      lastStart = t.start;
      end = t.end;
    }
    return { start, end, qualifier: this.buf.toString('utf8', start, lastStart).replace(/\s+/g, '') };
  }

  /** Conditions anywhere in the statement: equality / IN with constants and IS [NOT] NULL are served. */
  private condition(n: AstNode): void {
    if (n.A_Expr) {
      const e = n.A_Expr;
      const op = e.name?.length === 1 ? e.name[0].String?.sval : null;
      const l = e.lexpr?.ColumnRef ? this.tcolOf(e.lexpr.ColumnRef) : null;
      const r = e.rexpr?.ColumnRef ? this.tcolOf(e.rexpr.ColumnRef) : null;
      const t = l ?? r;
      if (!t) return;
      if (l && r) throw this.busy(t.column, 'a comparison of it with a column');
      const colNode = (l ? e.lexpr : e.rexpr).ColumnRef;
      const other = l ? e.rexpr : e.lexpr;
      const ref = this.columnRefSpan(colNode);
      const cells = `${ref.qualifier}${qi(t.cells)}`;
      const plain: Rename = { ref, to: `${ref.qualifier}${qi(t.plain)}`, t };
      if (e.kind === 'AEXPR_OP' && op === '=') {
        const v = this.searchOperand(other, t);
        const start = Math.min(ref.start, v.start);
        const end = Math.max(ref.end, v.end);
        this.edits.push({ start, end, parts: [Buffer.from(`(${cells} = `), ...this.cellPart(v), Buffer.from(' OR '), ...this.plainPart(start, end, [v], plain), Buffer.from(')')] });
        this.handled.add(colNode);
        return;
      }
      const items: AstNode[] | undefined = Array.isArray(other) ? other : other?.List?.items;
      if (e.kind === 'AEXPR_IN' && op === '=' && l && Array.isArray(items) && items.length > 0) {
        const vs = items.map((x: AstNode) => this.searchOperand(x, t));
        const close = skipTrivia(this.buf, vs.at(-1)!.end);
        if (this.buf[close] !== 0x29) throw new TransitionRefusal('XX000', `internal error: could not locate the IN list of ${path(t.column)}`);
        const end = close + 1;
        const parts: (Buffer | LiteralSite)[] = [Buffer.from(`(${cells} IN (`)];
        vs.forEach((v, k) => parts.push(...(k > 0 ? [Buffer.from(', ')] : []), ...this.cellPart(v)));
        parts.push(Buffer.from(') OR '), ...this.plainPart(ref.start, end, vs, plain), Buffer.from(')'));
        this.edits.push({ start: ref.start, end, parts });
        this.handled.add(colNode);
        return;
      }
      if (e.kind === 'AEXPR_OP_ANY' && op === '=' && l) {
        this.anySearch(colNode, ref, cells, plain, other, t);
        return;
      }
      throw this.busy(t.column, 'this comparison of it (only =, IN and = ANY with constants or parameters, and IS [NOT] NULL, are served)');
    }
    if (n.NullTest?.arg?.ColumnRef) {
      const cr = n.NullTest.arg.ColumnRef;
      const t = this.tcolOf(cr);
      if (!t) return;
      const ref = this.columnRefSpan(cr);
      const not = n.NullTest.nulltesttype === 'IS_NOT_NULL';
      // `col IS [NOT] NULL` only (not ISNULL / NOTNULL): the tokens after the reference.
      let i = skipTrivia(this.buf, ref.end);
      const words: string[] = [];
      let end = ref.end;
      for (let k = 0; k < (not ? 3 : 2); k++) {
        const tok = readToken(this.buf, i);
        words.push(tok.kind === 'ident' ? tok.text : '');
        end = tok.end;
        i = skipTrivia(this.buf, tok.end);
      }
      if (words.join(' ') !== (not ? 'is not null' : 'is null')) throw this.busy(t.column, 'ISNULL / NOTNULL (write IS [NOT] NULL)');
      const shadow = `${ref.qualifier}${qi(t.shadow)}`;
      const orig = this.buf.subarray(ref.start, end);
      this.edits.push({ start: ref.start, end, parts: not ? [Buffer.from('('), orig, Buffer.from(` OR ${shadow} IS NOT NULL)`)] : [Buffer.from('('), orig, Buffer.from(` AND ${shadow} IS NULL)`)] });
      this.handled.add(cr);
    }
  }

  /**
   * `col = ANY($k)` (an array parameter) or `col = ANY(ARRAY[v, …])`: `(shadow = ANY(cells) OR col = ANY(…))`.
   * The array parameter's cells stay in `$k` (bytea[]); the plaintext side gets a parameter of its own, bound with
   * the array as the client sent it.
   */
  private anySearch(colNode: AstNode, ref: { start: number; end: number }, cellsRef: string, plain: Rename, other: AstNode, t: TCol): void {
    const arr = other?.A_ArrayExpr;
    let vs: SearchOperand[];
    let inner: number;
    const cells: (Buffer | LiteralSite)[] = [];
    if (arr) {
      const elems: AstNode[] = arr.elements ?? [];
      if (elems.length === 0) throw this.busy(t.column, '= ANY of an empty ARRAY[]');
      vs = elems.map((x) => this.searchOperand(x, t));
      const rb = skipTrivia(this.buf, vs.at(-1)!.end);
      if (this.buf[rb] !== 0x5d) throw new TransitionRefusal('XX000', `internal error: could not locate the ARRAY[…] of ${path(t.column)}`);
      inner = rb + 1;
      cells.push(Buffer.from('ARRAY['));
      vs.forEach((v, k) => cells.push(...(k > 0 ? [Buffer.from(', ')] : []), ...this.cellPart(v)));
      cells.push(Buffer.from(']::pg_catalog.bytea[]'));
    } else {
      const v = this.searchOperand(other, t, true);
      vs = [v];
      inner = v.end;
      cells.push(...this.cellPart(v));
    }
    const close = skipTrivia(this.buf, inner);
    if (this.buf[close] !== 0x29) throw new TransitionRefusal('XX000', `internal error: could not locate the ANY (…) of ${path(t.column)}`);
    const end = close + 1;
    this.edits.push({ start: ref.start, end, parts: [Buffer.from(`(${cellsRef} = ANY (`), ...cells, Buffer.from(') OR '), ...this.plainPart(ref.start, end, vs, plain), Buffer.from(')')] });
    this.handled.add(colNode);
  }

  /** The search value bound for the column at this operand (found by the analysis), else refused. */
  private searchOperand(n: AstNode, t: TCol, array = false): SearchOperand {
    let start: number;
    let end: number;
    try {
      start = spanStart(n);
      end = spanEnd(this.buf, n);
    } catch {
      throw this.busy(t.column, 'a comparison with an expression');
    }
    const pr: AstNode | undefined = n?.ParamRef ?? n?.TypeCast?.arg?.ParamRef;
    if (pr) {
      const site = this.plan.params.find((p) => p.index === pr.number && p.purpose === 'search' && p.column === t.column && (p.array === true) === array);
      if (!site) throw this.busy(t.column, 'a comparison with this parameter');
      this.consumedParams.add(site);
      if (!this.extra.has(pr.number)) this.extra.set(pr.number, this.clientParams + this.extra.size + 1);
      return { kind: 'param', site, k: pr.number, at: pr.location, start, end };
    }
    const site = this.plan.literals.find((s) => s.start === start && s.end === end && s.purpose === 'search' && s.column === t.column);
    if (!site || array) throw this.busy(t.column, 'a comparison with this value');
    this.consumed.add(site);
    return { kind: 'literal', site, start, end };
  }

  /** The shadow side: the constant's cell, or the parameter (which mamori binds to the cell). */
  private cellPart(v: SearchOperand): (Buffer | LiteralSite)[] {
    return v.kind === 'literal' ? [v.site] : [Buffer.from(`$${v.k}::pg_catalog.bytea${v.site.array === true ? '[]' : ''}`)];
  }

  /**
   * The plaintext side: the original text, each search parameter `$k` renamed to its added `$m`, and during
   * unprotect the column reference renamed to the plaintext shadow (during protect the column is the plaintext).
   */
  private plainPart(start: number, end: number, vs: readonly SearchOperand[], plain: Rename): Buffer[] {
    const subs: { start: number; end: number; to: Buffer }[] = [];
    for (const v of vs) {
      if (v.kind !== 'param') continue;
      const tok = readToken(this.buf, v.at);
      if (tok.kind !== 'param') throw new TransitionRefusal('XX000', `internal error: could not locate parameter $${v.k}`);
      subs.push({ start: tok.start, end: tok.end, to: Buffer.from(`$${this.extra.get(v.k)!}`) });
    }
    if (plain.t.direction === 'unprotect') subs.push({ start: plain.ref.start, end: plain.ref.end, to: Buffer.from(plain.to) });
    const out: Buffer[] = [];
    let at = start;
    for (const x of subs.sort((a, b) => a.start - b.start)) {
      out.push(this.buf.subarray(at, x.start), x.to);
      at = x.end;
    }
    out.push(this.buf.subarray(at, end));
    return out;
  }

  /** Every condition is looked at; any reference to the column not served above is refused. */
  finish(root: AstNode): void {
    const visit = (n: unknown): void => {
      if (Array.isArray(n)) {
        for (const x of n) visit(x);
        return;
      }
      if (!n || typeof n !== 'object') return;
      const o = n as AstNode;
      // (Joins are checked by fromItems: only a SELECT's FROM may have them.)
      if (o.SubLink || o.RangeSubselect || o.CommonTableExpr) throw this.busy(this.first, 'a statement with a subquery or CTE');
      if (o.JoinExpr && !this.joined) throw this.busy(this.first, 'a statement with a join');
      if (o.A_Expr || o.NullTest) this.condition(o);
      for (const v of Object.values(o)) visit(v);
    };
    visit(root);
    const refuseUnhandled = (n: unknown): void => {
      if (Array.isArray(n)) {
        for (const x of n) refuseUnhandled(x);
        return;
      }
      if (!n || typeof n !== 'object') return;
      const o = n as AstNode;
      if (o.ColumnRef && !this.handled.has(o.ColumnRef)) {
        const cr = o.ColumnRef;
        if (cr.fields.at(-1)?.A_Star !== undefined) throw this.busy(this.first, 'a `*` outside the select list');
        const t = this.tcolOf(cr);
        if (t) throw this.busy(t.column, 'this use of it (only plain reads, = / IN / = ANY with constants or parameters, IS [NOT] NULL, INSERT and UPDATE SET are served)');
        // A whole-row reference to the table (`SELECT t FROM t`).
        const names: string[] = cr.fields.map((f: AstNode) => f.String?.sval);
        if (this.refnames.some((r) => r.length === names.length && r.every((x, i) => x === names[i]))) throw this.busy(this.first, 'a whole-row reference to its table');
      }
      for (const v of Object.values(o)) refuseUnhandled(v);
    };
    refuseUnhandled(root);
    for (const s of this.plan.literals) {
      if (s.purpose === 'search' && this.tcols.get(s.column.column)?.column === s.column && !this.consumed.has(s)) throw this.busy(s.column, 'this search of it (only =, IN and = ANY with constants are served)');
    }
    for (const p of this.plan.params) {
      if (p.purpose === 'search' && this.tcols.get(p.column.column)?.column === p.column && !this.consumedParams.has(p)) throw this.busy(p.column, 'this search of it with a parameter (only =, IN and = ANY are served)');
    }
  }
}

/** The rewritten statement re-parsed: same statement kind, the planned result fields, the writes on the shadow. */
function checkShape(rewritten: Buffer, expect: { type: string; fieldCount: number; fields: TransitionField[]; tcols: Map<string, TCol>; copyColumns: string[] | null }, first: ProtectedColumn): void {
  const fail = (why: string): never => {
    throw new TransitionRefusal('XX000', `internal error: the rewrite for ${path(first)} (in transition) did not check out (${why}); the statement was not run`);
  };
  let stmts: AstNode[];
  try {
    stmts = parseText(decodeSql(rewritten));
  } catch {
    return fail('re-parse');
  }
  if (stmts.length !== 1) fail('statement count');
  const node: AstNode = stmts[0].stmt;
  if (Object.keys(node)[0] !== expect.type) fail('statement kind');
  const s: AstNode = node[expect.type];
  if (expect.type === 'CopyStmt') {
    const names: string[] = (s.attlist ?? []).map((n: AstNode) => n.String?.sval);
    if (s.is_from !== true || !expect.copyColumns || names.join('\0') !== expect.copyColumns.join('\0')) fail('COPY column list');
    return;
  }
  const list: AstNode[] = expect.type === 'SelectStmt' ? (s.targetList ?? []) : returning(s);
  if (list.length !== expect.fieldCount) fail('result field count');
  for (const f of expect.fields) {
    const rt = list[f.index]?.ResTarget;
    if (!rt?.val?.CoalesceExpr) fail(`field ${f.index}`);
  }
  if (expect.type === 'InsertStmt') {
    const names: string[] = (s.cols ?? []).map((c: AstNode) => c.ResTarget.name);
    if (names.some((n) => expect.tcols.has(n))) fail('insert column list');
  }
  if (expect.type === 'UpdateStmt' || s.onConflictClause) {
    const set: AstNode[] = ((expect.type === 'UpdateStmt' ? s.targetList : s.onConflictClause.targetList) ?? []).map((x: AstNode) => x.ResTarget);
    for (const rt of set) if (expect.tcols.has(rt.name) && !rt.val?.A_Const?.isnull) fail('update of the old column');
  }
}
