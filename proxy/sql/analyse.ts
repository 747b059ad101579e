// Analysis of a query string against the protected columns: which protected columns each statement touches and
// how, which literals and parameters must be encrypted, and refusals for everything outside the allow-list
// (DESIGN.md §4; the user-facing list is docs/sql-support.md). Fail-closed: an unknown construct that reaches
// a protected column is refused, never guessed.
import { decodeSql, parseText, SqlDecodeError, SqlSyntaxError, type AstNode } from './parser.js';
import { buildNameIndex, type ProtectedNameIndex } from './fastpath.js';
import { tokens, LexError, type LexOptions } from './lexer.js';
import { spanEnd, spanStart, typeNameSpan, SpanError } from './span.js';
import type {
  Analysis,
  AnalysisContext,
  CatalogSnapshot,
  ColumnUse,
  CopyOptions,
  LiteralSite,
  ParamSite,
  ProtectedColumn,
  Setting,
  StatementPlan,
} from './types.js';

export class Refusal extends Error {
  constructor(
    readonly sqlstate: string,
    message: string,
  ) {
    super(message);
  }
}

export const qualified = (c: ProtectedColumn) => `${c.schema}.${c.table}.${c.column}`;

export function notSupported(c: ProtectedColumn, construct: string): Refusal {
  return new Refusal('0A000', `column "${qualified(c)}" is protected: ${construct} is not supported on protected columns`);
}

// ---- catalog index -------------------------------------------------------------------------------------------

export interface CatalogIndex {
  relations: Map<string, Map<string, ProtectedColumn>>; // "schema.name" → column → protected column
  relationNames: Set<string>; // bare names of protected relations
  schemas: Set<string>;
  names: ProtectedNameIndex;
}

const indexCache = new WeakMap<CatalogSnapshot, CatalogIndex>();

export function catalogIndex(cat: CatalogSnapshot): CatalogIndex {
  let ix = indexCache.get(cat);
  if (ix) return ix;
  const relations = new Map<string, Map<string, ProtectedColumn>>();
  const add = (schema: string, rel: string, col: string, p: ProtectedColumn) => {
    const k = `${schema}.${rel}`;
    let m = relations.get(k);
    if (!m) relations.set(k, (m = new Map()));
    m.set(col, p);
  };
  const relationNames = new Set<string>();
  const schemas = new Set<string>();
  for (const p of cat.protectedColumns) {
    add(p.schema, p.table, p.column, p);
    relationNames.add(p.table);
    schemas.add(p.schema);
  }
  for (const v of cat.protectedViews ?? []) {
    add(v.schema, v.view, v.column, v.source);
    relationNames.add(v.view);
    schemas.add(v.schema);
  }
  ix = { relations, relationNames, schemas, names: buildNameIndex([...relationNames, 'mamori']) };
  indexCache.set(cat, ix);
  return ix;
}

// ---- scopes ---------------------------------------------------------------------------------------------------

type Cols = Map<string, ProtectedColumn | null>;

interface RangeEntry {
  refname: string | null; // the name that qualifies its columns (alias, or relation name)
  schema: string | null; // set for unaliased base relations (schema-qualified references)
  columns: Cols | null; // null: unknown column set (function results and other opaque items)
  order: string[];
  protectedCount: number;
  qualifiedOnly?: boolean; // old/new/excluded: reachable only by qualified names
}

interface Output {
  name: string;
  prot: ProtectedColumn | null;
}

interface Scope {
  entries: RangeEntry[];
  parent: Scope | null;
  ctes: Map<string, Output[] | null>; // null: being defined (recursive reference)
  outputs?: Output[]; // the select list of this level, for ORDER BY / GROUP BY references
}

const newScope = (parent: Scope | null): Scope => ({ entries: [], parent, ctes: new Map() });

function makeEntry(refname: string | null, schema: string | null, outs: Output[] | null): RangeEntry {
  if (!outs) return { refname, schema, columns: null, order: [], protectedCount: 0 };
  const columns: Cols = new Map();
  let protectedCount = 0;
  for (const o of outs) {
    if (!columns.has(o.name)) columns.set(o.name, o.prot);
    if (o.prot) protectedCount++;
  }
  return { refname, schema, columns, order: outs.map((o) => o.name), protectedCount };
}

function renameOutputs(outs: Output[], alias: AstNode | undefined): Output[] {
  const names: AstNode[] | undefined = alias?.colnames;
  if (!names) return outs;
  return outs.map((o, i) => (i < names.length ? { name: names[i].String.sval, prot: o.prot } : o));
}

// ---- value operands -------------------------------------------------------------------------------------------

interface ValueOperand {
  kind: 'const' | 'null' | 'param';
  node: AstNode;
  cast: boolean;
  arrayCast: boolean;
  value: string | null;
  index: number;
}

// A constant, a parameter, NULL, or a cast of one of them.
function valueOperand(n: AstNode | undefined): ValueOperand | null {
  if (!n) return null;
  if (n.A_Const) {
    const c = n.A_Const;
    if (c.isnull) return { kind: 'null', node: n, cast: false, arrayCast: false, value: null, index: 0 };
    let value: string | null = null;
    if (c.sval) value = c.sval.sval ?? '';
    else if (c.ival) value = String(c.ival.ival ?? 0);
    else if (c.fval) value = String(c.fval.fval);
    if (value === null) return null; // booleans and bit strings are no value of a protected type
    return { kind: 'const', node: n, cast: false, arrayCast: false, value, index: 0 };
  }
  if (n.ParamRef) return { kind: 'param', node: n, cast: false, arrayCast: false, value: null, index: n.ParamRef.number };
  if (n.TypeCast) {
    const inner = valueOperand(n.TypeCast.arg);
    if (!inner) return null;
    return { ...inner, node: n, cast: true, arrayCast: inner.arrayCast || Array.isArray(n.TypeCast.typeName?.arrayBounds) };
  }
  return null;
}

// ---- statement state ------------------------------------------------------------------------------------------

interface ParamUse {
  prot: { col: ProtectedColumn; purpose: 'write' | 'search' }[];
  other: boolean;
}

class StatementState {
  touched = new Map<ProtectedColumn, Set<ColumnUse>>();
  touchLog: ProtectedColumn[] = [];
  literals: LiteralSite[] = [];
  params: ParamSite[] = [];
  paramUses = new Map<number, ParamUse>();
  deleteOfProtected = false;
  unqualifiedNames: string[] = [];
  constructor(
    readonly buf: Buffer,
    readonly ctx: AnalysisContext,
    readonly ix: CatalogIndex,
  ) {}

  paramUse(i: number): ParamUse {
    let u = this.paramUses.get(i);
    if (!u) this.paramUses.set(i, (u = { prot: [], other: false }));
    return u;
  }

  use(col: ProtectedColumn, use: ColumnUse): void {
    const role = this.ctx.role;
    if (use === 'read' || use === 'returning') {
      if (role.read(col) === 'deny') throw new Refusal('42501', `permission denied to read column "${qualified(col)}"`);
    } else if (use === 'write') {
      if (!role.canWrite(col)) throw new Refusal('42501', `permission denied to write column "${qualified(col)}"`);
    }
    let s = this.touched.get(col);
    if (!s) this.touched.set(col, (s = new Set()));
    s.add(use);
    this.touchLog.push(col);
  }

  // A search (equality, IN, ANY, DISTINCT FROM, join) or grouping on the column.
  search(col: ProtectedColumn, construct: string, use: 'search' | 'group' = 'search'): void {
    if (col.mode !== 'deterministic')
      throw new Refusal(
        '0A000',
        `column "${qualified(col)}" is protected with randomized encryption: ${construct} is not supported (only IS [NOT] NULL)`,
      );
    if (!this.ctx.role.canSearch(col)) throw new Refusal('42501', `permission denied to search column "${qualified(col)}"`);
    this.use(col, use);
  }

  // A value operand bound for a protected column.
  bind(col: ProtectedColumn, v: ValueOperand, purpose: 'write' | 'search', array = false): void {
    if (v.kind === 'param') {
      const site: ParamSite = { index: v.index, column: col, purpose };
      if (array || v.arrayCast) site.array = true;
      if (v.cast) site.cast = this.span(v.node);
      this.params.push(site);
      this.paramUse(v.index).prot.push({ col, purpose });
      return;
    }
    if (v.kind === 'null' && !v.cast) return;
    if (v.kind === 'const' && v.arrayCast) throw notSupported(col, 'an array constant');
    const { start, end } = this.span(v.node);
    this.literals.push({ start, end, column: col, purpose, value: v.value });
  }

  span(node: AstNode): { start: number; end: number } {
    try {
      return { start: spanStart(node), end: spanEnd(this.buf, node) };
    } catch (e) {
      if (e instanceof SpanError) throw new Refusal('XX000', `internal error: could not locate a constant bound for a protected column (${e.message})`);
      throw e;
    }
  }
}

// ---- the analyser ---------------------------------------------------------------------------------------------

const JSON_NODES = /^Json/;

function constructName(type: string, n: AstNode): string {
  switch (type) {
    case 'FuncCall':
      return `function ${funcName(n)}()`;
    case 'TypeCast':
      return 'a cast';
    case 'CaseExpr':
    case 'CaseWhen':
      return 'CASE';
    case 'CoalesceExpr':
      return 'COALESCE';
    case 'MinMaxExpr':
      return 'GREATEST/LEAST';
    case 'RowExpr':
      return 'a ROW constructor';
    case 'A_ArrayExpr':
      return 'an ARRAY constructor';
    case 'A_Indirection':
      return 'a subscript or field selection';
    case 'CollateClause':
      return 'COLLATE';
    case 'BooleanTest':
      return 'IS TRUE/FALSE';
    case 'BoolExpr':
      return 'a boolean expression';
    case 'SortBy':
      return 'ORDER BY';
    case 'GroupingSet':
      return 'GROUPING SETS/ROLLUP/CUBE';
    case 'WindowDef':
      return 'a window clause';
    case 'XmlExpr':
    case 'XmlSerialize':
      return 'an XML function';
    case 'SubLink':
      return 'a subquery comparison';
    case 'NullTest':
      return 'IS [NOT] NULL';
    default:
      return JSON_NODES.test(type) ? 'a JSON constructor' : `the expression ${type}`;
  }
}

function funcName(n: AstNode): string {
  const names: AstNode[] = n.funcname ?? [];
  return names.length ? names[names.length - 1]!.String.sval : '?';
}

function opName(names: AstNode[] | undefined): string {
  if (!names || names.length === 0) return '?';
  const last = names[names.length - 1]!.String.sval as string;
  if (names.length === 2 && names[0]!.String.sval !== 'pg_catalog') return `${names[0]!.String.sval}.${last}`;
  return last;
}

function operatorConstruct(op: string): string {
  if (['<', '>', '<=', '>='].includes(op)) return `a range comparison (${op})`;
  if (['~', '~*', '!~', '!~*'].includes(op)) return `a regular expression match (${op})`;
  if (['~~', '~~*', '!~~', '!~~*'].includes(op)) return 'LIKE';
  return `the operator ${op}`;
}

const IN_TYPES: Record<string, string> = {
  AEXPR_LIKE: 'LIKE',
  AEXPR_ILIKE: 'ILIKE',
  AEXPR_SIMILAR: 'SIMILAR TO',
  AEXPR_BETWEEN: 'BETWEEN',
  AEXPR_NOT_BETWEEN: 'NOT BETWEEN',
  AEXPR_BETWEEN_SYM: 'BETWEEN SYMMETRIC',
  AEXPR_NOT_BETWEEN_SYM: 'NOT BETWEEN SYMMETRIC',
  AEXPR_NULLIF: 'NULLIF',
};

const STATEMENT_NODES = new Set(['SelectStmt', 'InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt']);

class Analyser {
  constructor(private readonly st: StatementState) {}

  private get ctx(): AnalysisContext {
    return this.st.ctx;
  }

  // --- relations ---

  relationEntry(rv: AstNode, scope: Scope | null): RangeEntry {
    const alias: AstNode | undefined = rv.alias;
    const name: string = rv.relname;
    const schema: string | undefined = rv.schemaname;
    if (!schema) {
      for (let s = scope; s; s = s.parent) {
        if (s.ctes.has(name)) {
          const outs = s.ctes.get(name)!;
          return makeEntry(alias?.aliasname ?? name, null, outs ? renameOutputs(outs, alias) : null);
        }
      }
      this.st.unqualifiedNames.push(name);
    }
    const rel = this.ctx.catalog.resolveRelation(schema ? { schema, name } : { name }, this.ctx.searchPath);
    if (!rel) {
      if (this.st.ix.relationNames.has(name))
        throw new Refusal('0A000', `relation "${schema ? `${schema}.` : ''}${name}" could not be resolved; it has the name of a protected relation`);
      return makeEntry(alias?.aliasname ?? name, alias ? null : (schema ?? null), null);
    }
    const prot = this.st.ix.relations.get(`${rel.schema}.${rel.name}`);
    const outs = rel.columns.map((c) => ({ name: c, prot: prot?.get(c) ?? null }));
    const e = makeEntry(alias?.aliasname ?? rel.name, alias ? null : rel.schema, renameOutputs(outs, alias));
    if (!alias && rel.name !== name) e.refname = name;
    return e;
  }

  protectedOf(e: RangeEntry): ProtectedColumn[] {
    const out: ProtectedColumn[] = [];
    if (e.columns) for (const p of e.columns.values()) if (p && !out.includes(p)) out.push(p);
    return out;
  }

  fromItem(item: AstNode, scope: Scope): void {
    if (item.RangeVar) {
      scope.entries.push(this.relationEntry(item.RangeVar, scope));
    } else if (item.RangeSubselect) {
      const rs = item.RangeSubselect;
      const outs = this.query(rs.subquery, rs.lateral ? scope : withCtes(scope));
      scope.entries.push(makeEntry(rs.alias?.aliasname ?? null, null, renameOutputs(outs, rs.alias)));
    } else if (item.JoinExpr) {
      const j = item.JoinExpr;
      const before = scope.entries.length;
      this.fromItem(j.larg, scope);
      const mid = scope.entries.length;
      this.fromItem(j.rarg, scope);
      const left = scope.entries.slice(before, mid);
      const right = scope.entries.slice(mid);
      let common: string[] = (j.usingClause ?? []).map((s: AstNode) => s.String.sval);
      if (j.isNatural) {
        const lnames = new Set(left.flatMap((e) => e.order));
        common = right.flatMap((e) => e.order).filter((n) => lnames.has(n));
      }
      for (const name of common) {
        const l = findIn(left, name);
        const r = findIn(right, name);
        if (l || r) this.joinPair(l, r, 'JOIN USING');
      }
      if (j.quals) this.condition(j.quals, scope);
      if (j.alias) {
        const merged: Output[] = [];
        for (const e of scope.entries.slice(before)) for (const n of e.order) merged.push({ name: n, prot: e.columns?.get(n) ?? null });
        scope.entries.splice(before, scope.entries.length - before, makeEntry(j.alias.aliasname, null, renameOutputs(merged, j.alias)));
      }
    } else if (item.RangeFunction) {
      const rf = item.RangeFunction;
      for (const f of rf.functions ?? []) for (const x of f.List?.items ?? []) if (x) this.valueExpr(x, scope, 'a function in FROM');
      scope.entries.push(makeEntry(rf.alias?.aliasname ?? null, null, null));
    } else if (item.RangeTableSample) {
      const ts = item.RangeTableSample;
      this.fromItem(ts.relation, scope);
      for (const a of ts.args ?? []) this.valueExpr(a, scope, 'TABLESAMPLE');
      if (ts.repeatable) this.valueExpr(ts.repeatable, scope, 'TABLESAMPLE');
    } else {
      // XMLTABLE, JSON_TABLE …: expressions checked, columns unknown
      this.generic(item, scope);
      scope.entries.push(makeEntry(null, null, null));
    }
  }

  joinPair(l: ProtectedColumn | null | undefined, r: ProtectedColumn | null | undefined, construct: string): void {
    const a = l ?? null;
    const b = r ?? null;
    if (a && b) {
      if (a.domain !== b.domain)
        throw new Refusal('0A000', `columns "${qualified(a)}" and "${qualified(b)}" are in different key domains: ${construct} between them is not supported`);
      this.st.search(a, construct);
      this.st.search(b, construct);
      return;
    }
    const p = (a ?? b)!;
    if (p) throw notSupported(p, `${construct} with an unprotected column`);
  }

  // --- column references ---

  // Resolves a ColumnRef to its protected column (or null). Whole-row references to protected relations refuse.
  columnRef(cr: AstNode, scope: Scope): ProtectedColumn | null {
    const fields: AstNode[] = cr.fields;
    const names: (string | null)[] = fields.map((f) => (f.A_Star ? null : f.String.sval));
    const last = names[names.length - 1];
    if (last === null) {
      // x.* outside a select list: a whole-row value
      if (names.length === 1) {
        for (let s: Scope | null = scope; s; s = s.parent) for (const e of s.entries) this.wholeRow(e);
        return null;
      }
      const e = this.findEntry(names.slice(0, -1) as string[], scope);
      if (e) this.wholeRow(e);
      return null;
    }
    if (names.length === 1) {
      const r = this.unqualified(last, scope);
      if (r !== undefined) return r;
      const e = this.findEntry([last], scope);
      if (e) this.wholeRow(e);
      return null;
    }
    const e = this.findEntry(names.slice(0, -1) as string[], scope);
    if (e) {
      if (!e.columns) return null;
      return e.columns.get(last) ?? null;
    }
    // a.b where a is a column of composite type: field selection
    const base = this.unqualified(names[0]!, scope);
    if (base) throw notSupported(base, 'a field selection');
    return null;
  }

  wholeRow(e: RangeEntry): void {
    const p = this.protectedOf(e)[0];
    if (p) throw notSupported(p, 'a whole-row reference');
  }

  // undefined: no column of that name anywhere in scope. Entries with unknown columns (functions in FROM) might
  // hold the name: then an outer protected match is ambiguous to us (refused), while a match at the same level is
  // either that column or a server-side ambiguity error.
  unqualified(name: string, scope: Scope): ProtectedColumn | null | undefined {
    let sawUnknown = false;
    for (let s: Scope | null = scope; s; s = s.parent) {
      const hits = s.entries.filter((e) => !e.qualifiedOnly && e.columns?.has(name));
      const unknown = s.entries.some((e) => !e.qualifiedOnly && !e.columns);
      if (hits.length === 0) {
        sawUnknown = sawUnknown || unknown;
        continue;
      }
      const p = hits.map((e) => e.columns!.get(name) ?? null).find((x) => x) ?? null;
      if (hits.length > 1 || (p && sawUnknown)) {
        if (p) throw notSupported(p, `an ambiguous reference to "${name}"`);
        return null;
      }
      return p;
    }
    return sawUnknown ? null : undefined;
  }

  findEntry(qual: string[], scope: Scope): RangeEntry | null {
    const rel = qual[qual.length - 1]!;
    const schema = qual.length >= 2 ? qual[qual.length - 2]! : null;
    for (let s: Scope | null = scope; s; s = s.parent) {
      const hits = s.entries.filter((e) => e.refname === rel && (schema === null || e.schema === schema));
      if (hits.length > 0) return hits[0]!;
    }
    return null;
  }

  // --- expressions ---

  // Evaluates an expression. Returns the protected column when the expression IS a plain reference to one
  // (the caller decides whether that position is allowed); refuses protected columns in any other construct.
  expr(n: AstNode | undefined, scope: Scope, construct = 'an expression'): ProtectedColumn | null {
    if (!n || typeof n !== 'object') return null;
    if (Array.isArray(n)) {
      for (const x of n) this.valueExpr(x, scope, 'a list');
      return null;
    }
    const keys = Object.keys(n);
    const type = keys[0]!;
    if (keys.length !== 1 || !/^[A-Z]/.test(type)) {
      // a bare struct inside a node (e.g. JsonValueExpr in JsonKeyValue): its fields take the parent's construct
      this.struct(n, scope, construct);
      return null;
    }
    const v = n[type];
    switch (type) {
      case 'ColumnRef':
        return this.columnRef(v, scope);
      case 'A_Const':
        return null;
      case 'ParamRef':
        this.st.paramUse(v.number).other = true;
        return null;
      case 'A_Expr':
        this.aExpr(v, scope);
        return null;
      case 'NullTest': {
        const p = this.expr(v.arg, scope);
        if (p) {
          const role = this.ctx.role;
          if (!role.canSearch(p) && role.read(p) === 'deny') throw new Refusal('42501', `permission denied to search column "${qualified(p)}"`);
          const s = this.st.touched.get(p) ?? new Set<ColumnUse>();
          s.add('search');
          this.st.touched.set(p, s);
          this.st.touchLog.push(p);
        }
        return null;
      }
      case 'BoolExpr':
        for (const a of v.args ?? []) this.condition(a, scope);
        return null;
      case 'SubLink':
        return this.subLink(v, scope);
      case 'FuncCall':
        this.funcCall(v, scope);
        return null;
      case 'String':
      case 'Integer':
      case 'Float':
      case 'Boolean':
      case 'BitString':
      case 'SetToDefault':
      case 'TypeName':
        return null;
      default:
        if (STATEMENT_NODES.has(type)) {
          this.query(n, scope);
          return null;
        }
        this.generic(n, scope);
        return null;
    }
  }

  // A position where a protected column may not appear directly.
  valueExpr(n: AstNode | undefined, scope: Scope, construct: string): void {
    const p = this.expr(n, scope, construct);
    if (p) throw notSupported(p, construct);
  }

  condition(n: AstNode | undefined, scope: Scope): void {
    this.valueExpr(n, scope, 'a bare boolean condition');
  }

  // Visits every child of an unknown node; a protected column as a direct child is refused naming the node.
  generic(n: AstNode, scope: Scope): void {
    const type = Object.keys(n)[0]!;
    const v = n[type];
    if (!v || typeof v !== 'object') return;
    this.struct(v, scope, constructName(type, v));
  }

  struct(v: AstNode, scope: Scope, construct: string): void {
    for (const [, child] of Object.entries(v)) {
      if (Array.isArray(child)) {
        for (const c of child) if (c && typeof c === 'object') this.valueExpr(c, scope, construct);
      } else if (child && typeof child === 'object' && !isPlainField(child)) {
        this.valueExpr(child as AstNode, scope, construct);
      }
    }
  }

  aExpr(a: AstNode, scope: Scope): void {
    const kind: string = a.kind;
    const op = opName(a.name);
    if (kind === 'AEXPR_OP' || kind === 'AEXPR_DISTINCT' || kind === 'AEXPR_NOT_DISTINCT') {
      const construct = kind === 'AEXPR_OP' ? (op === '=' || op === '<>' ? `the comparison ${op}` : operatorConstruct(op)) : kind === 'AEXPR_DISTINCT' ? 'IS DISTINCT FROM' : 'IS NOT DISTINCT FROM';
      const equality = kind !== 'AEXPR_OP' || op === '=' || op === '<>';
      const lv = valueOperand(a.lexpr);
      const rv = valueOperand(a.rexpr);
      const lp = lv ? null : this.expr(a.lexpr, scope);
      const rp = rv ? null : this.expr(a.rexpr, scope);
      if (!lp && !rp) {
        if (lv) this.expr(a.lexpr, scope);
        if (rv) this.expr(a.rexpr, scope);
        return;
      }
      if (!equality || !a.lexpr || !a.rexpr) throw notSupported((lp ?? rp)!, construct);
      if (lp && rp) return this.joinPair(lp, rp, construct === 'the comparison =' ? 'a join or comparison' : construct);
      const p = (lp ?? rp)!;
      const other = lp ? rv : lv;
      if (!other) throw notSupported(p, `${construct} with an expression other than a constant or parameter`);
      if (other.kind === 'null' && !other.cast && kind === 'AEXPR_OP') {
        this.st.search(p, construct);
        return;
      }
      this.st.search(p, construct);
      this.st.bind(p, other, 'search');
      return;
    }
    if (kind === 'AEXPR_IN') {
      const p = this.expr(a.lexpr, scope);
      const items: AstNode[] = Array.isArray(a.rexpr) ? a.rexpr : (a.rexpr?.List?.items ?? []);
      if (!p) {
        for (const it of items) this.valueExpr(it, scope, 'an IN list');
        return;
      }
      const construct = op === '<>' ? 'NOT IN' : 'IN';
      this.st.search(p, construct);
      if (items.length > this.ctx.maxInListItems)
        throw new Refusal('54000', `column "${qualified(p)}" is protected: an IN list of ${items.length} values exceeds the limit of ${this.ctx.maxInListItems}`);
      for (const it of items) {
        const v = valueOperand(it);
        if (!v) throw notSupported(p, `${construct} with an expression other than a constant or parameter`);
        this.st.bind(p, v, 'search');
      }
      return;
    }
    if (kind === 'AEXPR_OP_ANY' || kind === 'AEXPR_OP_ALL') {
      const p = this.expr(a.lexpr, scope);
      const construct = `${op} ${kind === 'AEXPR_OP_ANY' ? 'ANY' : 'ALL'}`;
      if (!p) {
        this.valueExpr(a.rexpr, scope, construct);
        return;
      }
      if (!(kind === 'AEXPR_OP_ANY' && op === '=')) throw notSupported(p, construct);
      this.st.search(p, '= ANY');
      const v = valueOperand(a.rexpr);
      if (v && v.kind === 'param') {
        this.st.bind(p, v, 'search', true);
        return;
      }
      const arr = a.rexpr?.A_ArrayExpr; // ARRAY[…]::text[] would keep a cast the stored bytea does not fit
      if (arr) {
        const elems: AstNode[] = arr.elements ?? [];
        if (elems.length > this.ctx.maxInListItems)
          throw new Refusal('54000', `column "${qualified(p)}" is protected: an ANY list of ${elems.length} values exceeds the limit of ${this.ctx.maxInListItems}`);
        for (const el of elems) {
          const ev = valueOperand(el);
          if (!ev || ev.arrayCast) throw notSupported(p, '= ANY with an expression other than constants or parameters');
          this.st.bind(p, ev, 'search');
        }
        return;
      }
      throw notSupported(p, '= ANY with anything but a parameter or an ARRAY[…] of constants or parameters');
    }
    const named = IN_TYPES[kind];
    const lp = this.expr(a.lexpr, scope);
    if (lp) throw notSupported(lp, named ?? kind);
    const rp = this.expr(a.rexpr, scope);
    if (rp) throw notSupported(rp, named ?? kind);
  }

  funcCall(f: AstNode, scope: Scope): void {
    const name = funcName(f).toLowerCase();
    const args: AstNode[] = f.args ?? [];
    if (name === 'count' && f.agg_distinct && args.length === 1 && !f.over) {
      const p = this.expr(args[0], scope);
      if (p) this.st.search(p, 'COUNT(DISTINCT)', 'group');
    } else {
      for (const a of args) this.valueExpr(a, scope, `function ${funcName(f)}()`);
    }
    for (const s of f.agg_order ?? []) this.valueExpr(s.SortBy?.node, scope, 'ORDER BY');
    if (f.agg_filter) this.condition(f.agg_filter, scope);
    if (f.over) this.windowDef(f.over, scope);
  }

  windowDef(w: AstNode, scope: Scope): void {
    for (const x of w.partitionClause ?? []) this.valueExpr(x, scope, 'a window PARTITION BY');
    for (const s of w.orderClause ?? []) this.valueExpr(s.SortBy?.node, scope, 'ORDER BY');
  }

  subLink(s: AstNode, scope: Scope): ProtectedColumn | null {
    const outs = this.query(s.subselect, scope);
    const first = outs[0]?.prot ?? null;
    switch (s.subLinkType) {
      case 'EXISTS_SUBLINK':
        return null;
      case 'EXPR_SUBLINK':
        return first;
      case 'ANY_SUBLINK': {
        const lp = this.expr(s.testexpr, scope);
        const op = opName(s.operName);
        if (!lp && !first) return null;
        if (op !== '=' && op !== '?') throw notSupported((lp ?? first)!, `${op} ANY (subquery)`);
        this.joinPair(lp, first, 'IN (subquery)');
        return null;
      }
      default: {
        const lp = s.testexpr ? this.expr(s.testexpr, scope) : null;
        const p = lp ?? first ?? outs.find((o) => o.prot)?.prot;
        if (p) throw notSupported(p, `a ${String(s.subLinkType).replace('_SUBLINK', '')} subquery`);
        return null;
      }
    }
  }

  // --- queries ---

  // Analyses a SELECT / VALUES / set operation / data-modifying statement; returns its output columns.
  query(n: AstNode, outer: Scope | null): Output[] {
    if (n.SelectStmt) return this.select(n.SelectStmt, outer);
    if (n.InsertStmt) return this.insert(n.InsertStmt, outer);
    if (n.UpdateStmt) return this.update(n.UpdateStmt, outer);
    if (n.DeleteStmt) return this.delete(n.DeleteStmt, outer);
    if (n.MergeStmt) return this.merge(n.MergeStmt, outer);
    throw new Refusal('0A000', `unsupported statement ${Object.keys(n)[0]} inside a query that may reach protected columns`);
  }

  withClause(w: AstNode | undefined, scope: Scope): void {
    if (!w) return;
    for (const c of w.ctes ?? []) {
      const cte = c.CommonTableExpr;
      if (w.recursive) scope.ctes.set(cte.ctename, null);
      const outs = this.query(cte.ctequery, scope);
      const names: AstNode[] | undefined = cte.aliascolnames;
      scope.ctes.set(cte.ctename, names ? outs.map((o, i) => (i < names.length ? { name: names[i]!.String.sval, prot: o.prot } : o)) : outs);
    }
  }

  select(s: AstNode, outer: Scope | null): Output[] {
    const scope = newScope(outer);
    this.withClause(s.withClause, scope);
    if (s.op && s.op !== 'SETOP_NONE') {
      const mark = this.st.touchLog.length;
      const louts = this.query({ SelectStmt: s.larg }, scope);
      this.query({ SelectStmt: s.rarg }, scope);
      if (this.st.touchLog.length > mark) {
        const opname = String(s.op).replace('SETOP_', '');
        throw notSupported(this.st.touchLog[mark]!, `${opname}${s.all ? ' ALL' : ''} (a set operation)`);
      }
      const outs = louts.map((o) => ({ name: o.name, prot: null }));
      scope.outputs = outs;
      for (const sb of s.sortClause ?? []) this.valueExpr(sb.SortBy.node, scope, 'ORDER BY');
      this.valueExpr(s.limitCount, scope, 'LIMIT');
      this.valueExpr(s.limitOffset, scope, 'OFFSET');
      return outs;
    }
    if (s.valuesLists) {
      let width = 0;
      for (const row of s.valuesLists) {
        const items: AstNode[] = row.List?.items ?? [];
        width = Math.max(width, items.length);
        for (const it of items) this.valueExpr(it, scope, 'VALUES');
      }
      return Array.from({ length: width }, (_, i) => ({ name: `column${i + 1}`, prot: null }));
    }
    for (const f of s.fromClause ?? []) this.fromItem(f, scope);
    const outs = this.targetList(s.targetList ?? [], scope, 'read');
    scope.outputs = outs;
    if (s.intoClause) {
      const p = outs.find((o) => o.prot)?.prot;
      if (p) throw notSupported(p, 'SELECT INTO');
    }
    if (s.whereClause) this.condition(s.whereClause, scope);
    for (const g of s.groupClause ?? []) this.grouping(g, scope, 'GROUP BY');
    if (s.havingClause) this.condition(s.havingClause, scope);
    if (s.distinctClause) {
      const plain = s.distinctClause.every((d: AstNode) => !d || Object.keys(d).length === 0);
      if (plain) {
        for (const o of outs) if (o.prot) this.st.search(o.prot, 'DISTINCT', 'group');
      } else for (const d of s.distinctClause) this.grouping(d, scope, 'DISTINCT ON');
    }
    for (const w of s.windowClause ?? []) this.windowDef(w.WindowDef, scope);
    for (const sb of s.sortClause ?? []) {
      const p = this.outputRef(sb.SortBy.node, scope, true);
      if (p) throw notSupported(p, 'ORDER BY');
    }
    this.valueExpr(s.limitCount, scope, 'LIMIT');
    this.valueExpr(s.limitOffset, scope, 'OFFSET');
    return outs;
  }

  // ORDER BY / GROUP BY items may name an output column or its position.
  outputRef(n: AstNode, scope: Scope, outputFirst: boolean): ProtectedColumn | null {
    const outs = scope.outputs ?? [];
    if (n?.A_Const?.ival !== undefined || (n?.A_Const && !n.A_Const.sval && !n.A_Const.isnull && !n.A_Const.fval && !n.A_Const.boolval)) {
      const pos = n.A_Const.ival?.ival ?? 0;
      return outs[pos - 1]?.prot ?? null;
    }
    const cr = n?.ColumnRef;
    if (cr && cr.fields.length === 1 && cr.fields[0].String) {
      const name = cr.fields[0].String.sval as string;
      const out = outs.find((o) => o.name === name);
      if (outputFirst && out) return out.prot;
      const input = this.unqualified(name, scope);
      if (input !== undefined) return input;
      if (out) return out.prot;
    }
    return this.expr(n, scope);
  }

  grouping(n: AstNode, scope: Scope, construct: string): void {
    const p = this.outputRef(n, scope, false);
    if (p) this.st.search(p, construct, 'group');
  }

  targetList(list: AstNode[], scope: Scope, use: 'read' | 'returning'): Output[] {
    const outs: Output[] = [];
    for (const t of list) {
      const rt = t.ResTarget;
      const val = rt.val;
      const fields: AstNode[] | undefined = val?.ColumnRef?.fields;
      if (fields && fields[fields.length - 1]!.A_Star) {
        const entries =
          fields.length === 1
            ? scope.entries.filter((e) => !e.qualifiedOnly)
            : [this.findEntry(fields.slice(0, -1).map((f) => f.String.sval), scope)].filter((e): e is RangeEntry => !!e);
        for (const e of entries) {
          if (!e.columns) continue;
          for (const name of e.order) {
            const p = e.columns.get(name) ?? null;
            if (p) this.st.use(p, use);
            outs.push({ name, prot: p });
          }
        }
        continue;
      }
      const p = this.expr(val, scope);
      if (p) this.st.use(p, use);
      const name: string = rt.name ?? (fields ? (fields[fields.length - 1]!.String?.sval ?? '?column?') : val?.FuncCall ? funcName(val.FuncCall) : '?column?');
      outs.push({ name, prot: p });
    }
    return outs;
  }

  returning(r: AstNode | undefined, scope: Scope, target: RangeEntry): Output[] {
    if (!r) return [];
    const rscope = newScope(scope);
    rscope.entries = [...scope.entries];
    let oldName = 'old';
    let newName = 'new';
    for (const o of r.options ?? []) {
      const ro = o.ReturningOption;
      if (ro?.option === 'RETURNING_OPTION_OLD') oldName = ro.value;
      if (ro?.option === 'RETURNING_OPTION_NEW') newName = ro.value;
    }
    rscope.entries.push({ ...target, refname: oldName, schema: null, qualifiedOnly: true }, { ...target, refname: newName, schema: null, qualifiedOnly: true });
    const exprs: AstNode[] = r.exprs ?? (Array.isArray(r) ? r : []);
    return this.targetList(exprs, rscope, 'returning');
  }

  insert(ins: AstNode, outer: Scope | null): Output[] {
    const scope = newScope(outer);
    this.withClause(ins.withClause, scope);
    const target = this.relationEntry(ins.relation, null);
    let cols: string[];
    if (ins.cols && ins.cols.length) {
      cols = ins.cols.map((c: AstNode) => {
        const rt = c.ResTarget;
        const p = target.columns?.get(rt.name);
        if (p && rt.indirection) throw notSupported(p, 'a subscript or field assignment');
        return rt.name as string;
      });
    } else if (target.columns) {
      cols = target.order;
    } else {
      cols = [];
    }
    const protAt = (i: number): ProtectedColumn | null => {
      const name = cols[i];
      return name === undefined ? null : (target.columns?.get(name) ?? null);
    };
    const sel = ins.selectStmt?.SelectStmt;
    if (sel) {
      if (sel.valuesLists && (!sel.op || sel.op === 'SETOP_NONE')) {
        const vscope = newScope(scope);
        this.withClause(sel.withClause, vscope);
        for (const row of sel.valuesLists) {
          const items: AstNode[] = row.List?.items ?? [];
          items.forEach((it, i) => {
            const p = protAt(i);
            if (!p) {
              const q = this.expr(it, vscope);
              if (q) throw notSupported(q, 'an INSERT value copying a protected column');
              return;
            }
            this.st.use(p, 'write');
            if (it.SetToDefault) return;
            const v = valueOperand(it);
            if (!v) throw notSupported(p, 'an expression as an INSERT value (use a constant or a parameter)');
            this.st.bind(p, v, 'write');
          });
        }
      } else {
        const outs = this.query(ins.selectStmt, scope);
        outs.forEach((o, i) => {
          const p = protAt(i);
          if (p) throw notSupported(p, 'INSERT … SELECT into a protected column');
          if (o.prot) throw notSupported(o.prot, 'INSERT … SELECT copying a protected column');
        });
      }
    }
    const oc = ins.onConflictClause;
    if (oc) {
      const cscope = newScope(scope);
      cscope.entries.push(target, { ...target, refname: 'excluded', schema: null, qualifiedOnly: true });
      for (const el of oc.infer?.indexElems ?? []) {
        const ie = el.IndexElem;
        if (ie.expr) this.valueExpr(ie.expr, cscope, 'an ON CONFLICT index expression');
      }
      if (oc.infer?.whereClause) this.condition(oc.infer.whereClause, cscope);
      for (const t of oc.targetList ?? []) this.assignment(t.ResTarget, target, cscope, true);
      if (oc.whereClause) this.condition(oc.whereClause, cscope);
    }
    const rscope = newScope(scope);
    rscope.entries.push(target);
    return this.returning(ins.returningClause, rscope, target);
  }

  // One SET target: protected columns take a constant, parameter, NULL, DEFAULT, or (ON CONFLICT) EXCLUDED.same-domain.
  assignment(rt: AstNode, target: RangeEntry, scope: Scope, onConflict: boolean, multiSource?: AstNode): void {
    const p = target.columns?.get(rt.name) ?? null;
    let val: AstNode = rt.val;
    if (val?.MultiAssignRef) {
      const m = val.MultiAssignRef;
      if (m.source?.RowExpr) val = m.source.RowExpr.args[m.colno - 1];
      else {
        if (p) throw notSupported(p, 'SET (…) = (subquery)');
        if (m.colno === 1 && m.source !== multiSource) {
          const outs = m.source?.SubLink ? this.query(m.source.SubLink.subselect, scope) : [];
          const q = outs.find((o) => o.prot)?.prot;
          if (q) throw notSupported(q, 'SET (…) = (subquery) copying a protected column');
        }
        return;
      }
    }
    if (!p) {
      const q = this.expr(val, scope);
      if (q) throw notSupported(q, 'an assignment copying a protected column');
      return;
    }
    if (rt.indirection) throw notSupported(p, 'a subscript or field assignment');
    this.st.use(p, 'write');
    if (val?.SetToDefault) {
      this.st.deleteOfProtected = true;
      return;
    }
    const v = valueOperand(val);
    if (v) {
      if (v.kind === 'null') this.st.deleteOfProtected = true;
      this.st.bind(p, v, 'write');
      return;
    }
    if (onConflict && val?.ColumnRef) {
      const fields: AstNode[] = val.ColumnRef.fields;
      if (fields.length === 2 && fields[0]!.String?.sval === 'excluded') {
        const src = this.columnRef(val.ColumnRef, scope);
        if (src && src.domain === p.domain && src.mode === p.mode) return;
      }
    }
    throw notSupported(p, `an expression as an ${onConflict ? 'ON CONFLICT DO UPDATE' : 'UPDATE'} value (use a constant or a parameter)`);
  }

  update(u: AstNode, outer: Scope | null): Output[] {
    const scope = newScope(outer);
    this.withClause(u.withClause, scope);
    const target = this.relationEntry(u.relation, null);
    scope.entries.push(target);
    for (const f of u.fromClause ?? []) this.fromItem(f, scope);
    for (const t of u.targetList ?? []) this.assignment(t.ResTarget, target, scope, false);
    if (u.whereClause) this.condition(u.whereClause, scope);
    return this.returning(u.returningClause, scope, target);
  }

  delete(d: AstNode, outer: Scope | null): Output[] {
    const scope = newScope(outer);
    this.withClause(d.withClause, scope);
    const target = this.relationEntry(d.relation, null);
    scope.entries.push(target);
    for (const p of this.protectedOf(target)) {
      this.st.use(p, 'write');
      this.st.deleteOfProtected = true;
    }
    for (const f of d.usingClause ?? []) this.fromItem(f, scope);
    if (d.whereClause) this.condition(d.whereClause, scope);
    return this.returning(d.returningClause, scope, target);
  }

  merge(m: AstNode, outer: Scope | null): Output[] {
    const scope = newScope(outer);
    this.withClause(m.withClause, scope);
    const target = this.relationEntry(m.relation, null);
    const p = this.protectedOf(target)[0];
    if (p) throw notSupported(p, 'MERGE');
    const mark = this.st.touchLog.length;
    this.fromItem(m.sourceRelation, scope);
    scope.entries.push(target);
    const src = scope.entries.flatMap((e) => this.protectedOf(e))[0];
    if (src) throw notSupported(src, 'MERGE');
    this.generic({ MergeStmt: { ...m, relation: undefined, sourceRelation: undefined, withClause: undefined } }, scope);
    if (this.st.touchLog.length > mark) throw notSupported(this.st.touchLog[mark]!, 'MERGE');
    return [];
  }
}

const PLAIN_FIELD_NODES = new Set(['alias', 'typeName']);
function isPlainField(child: object): boolean {
  return 'aliasname' in child || 'names' in child || PLAIN_FIELD_NODES.has(Object.keys(child)[0] ?? '');
}

function withCtes(scope: Scope): Scope {
  // a non-LATERAL subquery in FROM sees the outer levels and this level's CTEs, not this level's FROM items
  const s = newScope(scope.parent);
  s.ctes = scope.ctes;
  return s;
}

function findIn(entries: RangeEntry[], name: string): ProtectedColumn | null | undefined {
  for (const e of entries) if (e.columns?.has(name)) return e.columns.get(name) ?? null;
  return undefined;
}

// ---- settings -------------------------------------------------------------------------------------------------

function constString(n: AstNode | undefined): string | null {
  const c = n?.A_Const ?? n?.TypeCast?.arg?.A_Const;
  if (!c || c.isnull) return null;
  if (c.sval) return c.sval.sval ?? '';
  if (c.ival) return String(c.ival.ival ?? 0);
  if (c.fval) return String(c.fval.fval);
  if (c.boolval) return c.boolval.boolval ? 'on' : 'off';
  return null;
}

function variableSet(v: AstNode): Setting | null {
  const local = !!v.is_local;
  switch (v.kind) {
    case 'VAR_SET_VALUE': {
      const vals = (v.args ?? []).map((a: AstNode) => constString(a));
      return { name: String(v.name).toLowerCase(), value: vals.some((x: string | null) => x === null) ? null : vals.join(', '), local, action: 'set' };
    }
    case 'VAR_SET_DEFAULT':
    case 'VAR_RESET':
      return { name: String(v.name).toLowerCase(), value: null, local, action: 'reset' };
    case 'VAR_RESET_ALL':
      return { name: '*', value: null, local, action: 'reset' };
    case 'VAR_SET_CURRENT':
      return { name: String(v.name).toLowerCase(), value: null, local, action: 'set' };
    default:
      return null; // SET TRANSACTION …
  }
}

// set_config(name, value, is_local) anywhere inside a statement.
function collectSetConfig(n: unknown, out: Setting[]): void {
  if (Array.isArray(n)) {
    for (const x of n) collectSetConfig(x, out);
    return;
  }
  if (!n || typeof n !== 'object') return;
  const o = n as AstNode;
  if (o.FuncCall) {
    const names: AstNode[] = o.FuncCall.funcname ?? [];
    const last = names[names.length - 1]?.String?.sval;
    if (last === 'set_config' && (names.length === 1 || names[0]?.String?.sval === 'pg_catalog')) {
      const args: AstNode[] = o.FuncCall.args ?? [];
      const name = constString(args[0]);
      const local = constString(args[2]);
      out.push({ name: name === null ? '?' : name.toLowerCase(), value: constString(args[1]), local: local === null ? true : local === 'on' || local === 'true', action: 'set' });
    }
  }
  for (const v of Object.values(o)) if (v && typeof v === 'object') collectSetConfig(v, out);
}

const ROLE_SETTINGS = new Set(['role', 'session_authorization', '?']);

// ---- utility statements ---------------------------------------------------------------------------------------

const SAFE_UTILITY = new Set([
  'TransactionStmt',
  'VariableShowStmt',
  'VariableSetStmt',
  'ListenStmt',
  'UnlistenStmt',
  'NotifyStmt',
  'ClosePortalStmt',
  'FetchStmt',
  'DeallocateStmt',
  'DiscardStmt',
  'CheckPointStmt',
  'ConstraintsSetStmt',
  'VacuumStmt',
  'LockStmt',
]);

function mentions(n: unknown, words: Set<string>): boolean {
  if (Array.isArray(n)) return n.some((x) => mentions(x, words));
  if (typeof n === 'string') return words.has(n);
  if (!n || typeof n !== 'object') return false;
  return Object.values(n).some((v) => mentions(v, words));
}

function collectRangeVars(n: unknown, out: AstNode[]): void {
  if (Array.isArray(n)) {
    for (const x of n) collectRangeVars(x, out);
    return;
  }
  if (!n || typeof n !== 'object') return;
  const o = n as AstNode;
  if (o.RangeVar) out.push(o.RangeVar);
  else if (typeof o.relname === 'string' && 'relpersistence' in o) out.push(o);
  for (const v of Object.values(o)) if (v && typeof v === 'object') collectRangeVars(v, out);
}

function commandOf(type: string, n: AstNode): string {
  switch (type) {
    case 'SelectStmt':
      return n.intoClause ? 'SELECT INTO' : 'SELECT';
    case 'InsertStmt':
      return 'INSERT';
    case 'UpdateStmt':
      return 'UPDATE';
    case 'DeleteStmt':
      return 'DELETE';
    case 'MergeStmt':
      return 'MERGE';
    case 'TruncateStmt':
      return 'TRUNCATE';
    case 'ExplainStmt':
      return 'EXPLAIN';
    case 'DeclareCursorStmt':
      return 'DECLARE CURSOR';
    case 'PrepareStmt':
      return 'PREPARE';
    case 'ExecuteStmt':
      return 'EXECUTE';
    case 'CopyStmt':
      return 'COPY';
    case 'VariableSetStmt':
      return 'SET';
    case 'IndexStmt':
      return 'CREATE INDEX';
    case 'CreateStmt':
      return 'CREATE TABLE';
    case 'ViewStmt':
      return 'CREATE VIEW';
    case 'RenameStmt':
      return 'ALTER … RENAME';
    default:
      // AlterTableStmt → ALTER TABLE
      return type
        .replace(/Stmt$/, '')
        .replace(/([a-z])([A-Z])/g, '$1 $2')
        .toUpperCase();
  }
}

function statementAnalysis(st: StatementState, node: AstNode): Partial<StatementPlan> {
  const type = Object.keys(node)[0]!;
  const v = node[type];
  const a = new Analyser(st);
  const ctx = st.ctx;
  const emptyScope = () => newScope(null);
  switch (type) {
    case 'SelectStmt':
    case 'InsertStmt':
    case 'UpdateStmt':
    case 'DeleteStmt':
    case 'MergeStmt':
      a.query(node, null);
      return {};
    case 'TruncateStmt': {
      for (const rv of v.relations ?? []) {
        const e = a.relationEntry(rv.RangeVar, null);
        for (const p of a.protectedOf(e)) {
          st.use(p, 'write');
          st.deleteOfProtected = true;
        }
      }
      return {};
    }
    case 'ExplainStmt': {
      const q = v.query;
      const qtype = Object.keys(q)[0]!;
      const analyze = (v.options ?? []).some((o: AstNode) => o.DefElem?.defname === 'analyze' && constString(o.DefElem.arg) !== 'false' && constString(o.DefElem.arg) !== 'off' && constString(o.DefElem.arg) !== '0');
      if (qtype === 'ExecuteStmt') throw new Refusal('0A000', 'EXPLAIN EXECUTE is not supported in sessions that may reach protected columns');
      const mark = st.touchLog.length;
      const inner = statementAnalysis(st, q);
      const writes = qtype !== 'SelectStmt' || [...st.touched.values()].some((s) => s.has('write'));
      if (analyze && writes && (st.touchLog.length > mark || st.deleteOfProtected))
        throw notSupported(st.touchLog[mark] ?? st.touchLog[0]!, 'EXPLAIN ANALYZE of a write');
      return inner;
    }
    case 'DeclareCursorStmt':
      a.query(v.query, null);
      return {};
    case 'PrepareStmt': {
      const argtypes: AstNode[] = v.argtypes ?? [];
      a.query(v.query, null);
      const typeSpans: { index: number; start: number; end: number }[] = [];
      for (const [i, u] of st.paramUses) {
        const tn = argtypes[i - 1];
        if (u.prot.length && tn) {
          try {
            typeSpans.push({ index: i, ...typeNameSpan(st.buf, tn.TypeName ?? tn) });
          } catch (e) {
            if (e instanceof SpanError) throw new Refusal('XX000', 'internal error: could not locate a declared parameter type');
            throw e;
          }
        }
      }
      const innerType = Object.keys(v.query)[0]!;
      return { prepare: { name: v.name, typeSpans, command: commandOf(innerType, v.query[innerType]) } };
    }
    case 'ExecuteStmt': {
      const args = (v.params ?? []).map((p: AstNode) => {
        const vo = valueOperand(p);
        if (vo && vo.kind !== 'param') {
          const { start, end } = st.span(p);
          return { start, end, value: vo.value, kind: 'literal' as const };
        }
        if (vo) {
          const { start, end } = st.span(p);
          return { start, end, value: null, kind: 'param' as const, index: vo.index, cast: vo.cast };
        }
        a.expr(p, emptyScope());
        return { start: -1, end: -1, value: null, kind: 'other' as const };
      });
      return { execute: { name: v.name, args } };
    }
    case 'CopyStmt':
      return copyAnalysis(st, a, v);
    case 'CreateTableAsStmt': {
      const construct = v.objtype === 'OBJECT_MATVIEW' ? 'CREATE MATERIALIZED VIEW' : 'CREATE TABLE AS';
      if (v.query?.ExecuteStmt) throw new Refusal('0A000', 'CREATE TABLE AS EXECUTE is not supported in sessions that may reach protected columns');
      const outs = a.query(v.query, null);
      const p = outs.find((o) => o.prot)?.prot;
      if (p) throw notSupported(p, construct);
      return {};
    }
    case 'DoStmt': {
      const body = (v.args ?? []).find((d: AstNode) => d.DefElem?.defname === 'as')?.DefElem?.arg?.String?.sval ?? '';
      if (mentionsName(Buffer.from(body, 'utf8'), st.ix.names)) throw new Refusal('0A000', 'a DO block that names a protected relation is not supported');
      return {};
    }
    case 'CallStmt': {
      const fc = v.funccall?.FuncCall;
      for (const x of fc?.args ?? []) a.valueExpr(x, emptyScope(), `procedure ${funcName(fc)}()`);
      return {};
    }
    default: {
      if (SAFE_UTILITY.has(type)) return {};
      // DDL and other utility statements: protected relations, their schemas (for schema-wide commands) and the
      // mamori schema are off limits unless the caller allows DDL.
      const rvs: AstNode[] = [];
      // CREATE TEMP TABLE makes a new relation in the session's temp schema (which then shadows any table of
      // that name): its own name is not a protected relation; only what it refers to (LIKE, INHERITS) counts.
      const tempCreate = type === 'CreateStmt' && v.relation?.relpersistence === 't' && !v.relation?.schemaname;
      collectRangeVars(tempCreate ? { ...v, relation: undefined } : v, rvs);
      let hit = rvs.some((rv) => {
        const rel = ctx.catalog.resolveRelation(rv.schemaname ? { schema: rv.schemaname, name: rv.relname } : { name: rv.relname }, ctx.searchPath);
        return rel ? st.ix.relations.has(`${rel.schema}.${rel.name}`) : st.ix.relationNames.has(rv.relname);
      });
      const words = new Set([...st.ix.relationNames, 'mamori']);
      if (!hit) hit = mentions(tempCreate ? { ...v, relation: undefined } : v, words);
      const schemaWide = /OBJECT_SCHEMA/.test(JSON.stringify(v)) || type === 'DropOwnedStmt' || type === 'ReassignOwnedStmt';
      if (!hit && schemaWide) hit = type === 'DropOwnedStmt' || type === 'ReassignOwnedStmt' || mentions(v, st.ix.schemas);
      if (!hit) return {};
      if (!ctx.allowDdl) throw new Refusal('0A000', `${commandOf(type, v)} on a protected relation is not supported (DDL on protected tables is reserved to the configured admin role)`);
      return { ddl: true };
    }
  }
}

// ---- COPY ----------------------------------------------------------------------------------------------------

function defBool(arg: AstNode | undefined): boolean | 'match' | null {
  if (arg === undefined) return true;
  if (arg.Boolean) return arg.Boolean.boolval === true;
  if (arg.Integer) return arg.Integer.ival === 1 ? true : (arg.Integer.ival ?? 0) === 0 ? false : null;
  const s = typeof arg.String?.sval === 'string' ? (arg.String.sval as string).toLowerCase() : null;
  if (s === 'match') return 'match';
  if (s === 'true' || s === 'on' || s === '1') return true;
  if (s === 'false' || s === 'off' || s === '0') return false;
  return null;
}

function defNames(arg: AstNode | undefined): string[] | '*' {
  if (arg?.A_Star) return '*';
  return (arg?.List?.items ?? []).map((i: AstNode) => i.String?.sval as string);
}

// COPY options as written (old and new syntax both arrive as DefElems); the server checks their values.
function copyOptions(options: AstNode[] | undefined): { opts: CopyOptions; onError: string | null } {
  const opts: CopyOptions = { format: 'text' };
  let onError: string | null = null;
  for (const o of options ?? []) {
    const d = o.DefElem;
    if (!d) continue;
    const str = typeof d.arg?.String?.sval === 'string' ? (d.arg.String.sval as string) : null;
    switch (d.defname) {
      case 'format': {
        const f = (str ?? '').toLowerCase();
        if (f !== 'text' && f !== 'csv' && f !== 'binary') throw new Refusal('22023', `COPY format "${str ?? ''}" not recognized`);
        opts.format = f;
        break;
      }
      case 'delimiter': opts.delimiter = str ?? ''; break;
      case 'null': opts.null = str ?? ''; break;
      case 'quote': opts.quote = str ?? ''; break;
      case 'escape': opts.escape = str ?? ''; break;
      case 'default': opts.default = str ?? ''; break;
      case 'encoding': opts.encoding = str ?? ''; break;
      case 'header': {
        const h = defBool(d.arg);
        if (h === null) throw new Refusal('22023', 'COPY HEADER requires a Boolean value or "match"');
        opts.header = h;
        break;
      }
      case 'force_quote': opts.forceQuote = defNames(d.arg); break;
      case 'force_not_null': opts.forceNotNull = defNames(d.arg); break;
      case 'force_null': opts.forceNull = defNames(d.arg); break;
      case 'on_error': onError = (str ?? '').toLowerCase(); break;
      default: break; // freeze, log_verbosity …: no bearing on the bytes
    }
  }
  return { opts, onError };
}

// COPY on protected tables: FROM STDIN and TO STDOUT in text/CSV only; the plan carries the column order and
// options for the stream rewriters (proxy/results/copy.ts). COPY of other tables is left alone.
function copyAnalysis(st: StatementState, a: Analyser, v: AstNode): Partial<StatementPlan> {
  const from = v.is_from === true;
  const ctx = st.ctx;
  let names: string[];
  let columns: (ProtectedColumn | null)[];
  let table: { schema: string; name: string } | null = null;
  if (v.relation) {
    const e = a.relationEntry(v.relation, null);
    if (a.protectedOf(e).length === 0) return {};
    const rv = v.relation;
    const rel = ctx.catalog.resolveRelation(rv.schemaname ? { schema: rv.schemaname, name: rv.relname } : { name: rv.relname }, ctx.searchPath);
    if (!rel) return {};
    table = { schema: rel.schema, name: rel.name };
    const generated = new Set(rel.generated ?? []);
    names = v.attlist ? v.attlist.map((n: AstNode) => n.String.sval as string) : rel.columns.filter((c) => !generated.has(c));
    columns = names.map((n) => e.columns?.get(n) ?? null);
  } else {
    const outs = a.query(v.query, null);
    names = outs.map((o) => o.name);
    columns = outs.map((o) => o.prot);
  }
  const first = columns.find((c) => c !== null) ?? null;
  if (!first) return {};
  const { opts, onError } = copyOptions(v.options);
  const dir = from ? 'FROM' : 'TO';
  if (v.filename !== undefined || v.is_program === true) {
    throw new Refusal('0A000', `COPY ${dir} a server-side file or program is not supported on protected column "${qualified(first)}" (it would bypass mamori); use COPY ${dir} ${from ? 'STDIN' : 'STDOUT'}`);
  }
  if (opts.format === 'binary') throw notSupported(first, 'binary COPY');
  if (onError !== null && onError !== 'stop') throw notSupported(first, `COPY ON_ERROR ${onError}`);
  // ENCODING is honoured or refused when the COPY runs (proxy/results/copy.ts copyFormat): it depends on
  // which encodings mamori can convert, not on the statement.
  if (from && v.whereClause) throw notSupported(first, 'COPY FROM … WHERE');
  for (const c of columns) {
    if (!c) continue;
    if (from) {
      st.use(c, 'write');
      continue;
    }
    st.use(c, 'read');
    if (ctx.role.read(c) === 'plaintext' && ctx.role.canExport?.(c) !== true) {
      throw new Refusal('42501', `permission denied to export column "${qualified(c)}": COPY TO of plaintext needs the export grant`);
    }
  }
  return { copy: { direction: from ? 'from' : 'to', table, columnNames: names, columns, options: opts } };
}

// True when the text names a protected relation (or the mamori schema) in any spelling.
function mentionsName(body: Buffer, index: ProtectedNameIndex, opts: LexOptions = {}): boolean {
  try {
    for (const t of tokens(body, opts)) {
      if ((t.kind === 'ident' || t.kind === 'qident') && index.names.has(t.text)) return true;
      if (t.kind === 'uident' || t.nonAscii) return true;
    }
    return false;
  } catch (e) {
    if (e instanceof LexError) return true;
    throw e;
  }
}

// ---- entry point ----------------------------------------------------------------------------------------------

function normEncoding(e: string | undefined): string {
  return (e ?? 'UTF8').toUpperCase().replace(/[-_]/g, '');
}

function unreadable(encoding: string | undefined): string {
  return `statements that may reach protected columns must be readable by mamori: the text is not valid in client_encoding ${encoding ?? 'UTF8'}, or mamori has no converter for it (docs/results.md lists the encodings it converts; UTF8 always works)`;
}

export function analyse(sql: Buffer, ctx: AnalysisContext): Analysis {
  try {
    return analyseInner(sql, ctx);
  } catch (e) {
    if (e instanceof Refusal) return { kind: 'refuse', sqlstate: e.sqlstate, message: e.message };
    throw e;
  }
}

function analyseInner(sql: Buffer, ctx: AnalysisContext): Analysis {
  const ix = catalogIndex(ctx.catalog);
  const enc = normEncoding(ctx.clientEncoding);
  const utf8 = enc === 'UTF8' || enc === 'UNICODE';
  // The parser lexes UTF-8 with standard_conforming_strings on. `clientEncoding` is the encoding of these
  // bytes: the session converts what it can to UTF-8 first (proxy/results/client-encoding.ts), as the server
  // does before it parses. Bytes still in another encoding could be read differently by the server (an SJIS
  // trail byte can be a backslash), so neither the parse nor the names it finds could be trusted: refused.
  // ASCII reads the same in every client encoding. Backslashes with scs off: refused as soon as a protected
  // name may be involved.
  if (!utf8 && sql.some((x) => x >= 0x80))
    throw new Refusal('0A000', unreadable(ctx.clientEncoding));
  if (ctx.standardConformingStrings === false && sql.includes(0x5c) && (mentionsName(sql, ix.names, { standardConformingStrings: false }) || mentionsName(sql, ix.names)))
    throw new Refusal('0A000', 'protected columns cannot be used while standard_conforming_strings is off');
  let text: string;
  try {
    text = decodeSql(sql);
  } catch (e) {
    if (!(e instanceof SqlDecodeError)) throw e;
    if (!utf8) throw new Refusal('0A000', unreadable(ctx.clientEncoding));
    throw new Refusal('22021', `invalid query text: ${e.message}`);
  }
  let stmts: AstNode[];
  try {
    stmts = parseText(text);
  } catch (e) {
    if (e instanceof SqlSyntaxError) throw new Refusal('42601', `syntax error at or near byte ${Math.max(0, e.cursor)} (statements that may reach protected columns are parsed before they run)`);
    throw e;
  }
  const settings: Setting[] = [];
  const mentionsSetConfig = /set_config/i.test(text); // skip the tree walk in the common case
  let roleChange = false;
  let searchPathChanged = false;
  const plans: StatementPlan[] = [];
  let anyProtected = false;
  for (const raw of stmts) {
    const node: AstNode = raw.stmt;
    const type = Object.keys(node)[0]!;
    const start: number = raw.stmt_location ?? 0;
    const end: number = raw.stmt_len ? start + raw.stmt_len : sql.length;
    const st = new StatementState(sql, ctx, ix);
    const extra = statementAnalysis(st, node);
    // settings this statement makes (they take effect for the statements after it)
    const mine: Setting[] = [];
    if (type === 'VariableSetStmt') {
      const s = variableSet(node.VariableSetStmt);
      if (s) mine.push(s);
    } else if (type === 'DiscardStmt' && node.DiscardStmt.target === 'DISCARD_ALL') {
      mine.push({ name: '*', value: null, local: false, action: 'reset' });
    }
    if (mentionsSetConfig) collectSetConfig(node, mine);
    // unqualified names after a search_path change in the same string cannot be resolved here
    if (searchPathChanged) {
      const hit = st.unqualifiedNames.find((n) => ix.relationNames.has(n));
      if (hit) throw new Refusal('0A000', `relation "${hit}" cannot be resolved: search_path was changed earlier in the same query string (send it separately)`);
    }
    for (const s of mine) {
      if (ROLE_SETTINGS.has(s.name) || s.name === '*') roleChange = roleChange || ROLE_SETTINGS.has(s.name);
      if (s.name === 'search_path' || s.name === '*' || s.name === '?') searchPathChanged = true;
    }
    settings.push(...mine);
    // one $n in a protected and another position, or for columns of different key domains
    for (const [i, u] of st.paramUses) {
      if (!u.prot.length) continue;
      const first = u.prot[0]!.col;
      if (u.other) throw notSupported(first, `parameter $${i} used both for a protected column and in another position`);
      const other = u.prot.find((x) => x.col.domain !== first.domain || x.col.mode !== first.mode || x.col.type.type !== first.type.type);
      if (other) throw new Refusal('0A000', `parameter $${i} is used for columns "${qualified(first)}" and "${qualified(other.col)}" of different key domains or types`);
    }
    const plan: StatementPlan = {
      command: commandOf(type, node[type]),
      start,
      end,
      touched: [...st.touched].map(([column, uses]) => ({ column, uses: [...uses] })),
      literals: st.literals.sort((x, y) => x.start - y.start),
      params: st.params,
      ...extra,
    };
    if (st.deleteOfProtected) plan.deleteOfProtected = true;
    if (plan.touched.length || plan.literals.length || plan.params.length || plan.execute || plan.ddl || plan.deleteOfProtected) anyProtected = true;
    plans.push(plan);
  }
  if (!anyProtected) return { kind: 'unprotected', settings, roleChange };
  if (plans.length > 1 && plans.some((p) => p.copy)) throw new Refusal('0A000', 'COPY of a protected table must be the only statement in its query string');
  if (roleChange) throw new Refusal('42501', 'role changes are not allowed in a query string that reaches protected columns');
  if (ctx.standardConformingStrings === false)
    throw new Refusal('0A000', 'protected columns cannot be used while standard_conforming_strings is off');
  return { kind: 'protected', statements: plans, settings, roleChange };
}
