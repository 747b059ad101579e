// Statement shapes: the analysis of one query text reused for texts that differ from it only in the value of
// constants the analysis never looks at (`WHERE id = 5` → `WHERE id = 6`). pgbench-style and ORM-generated
// simple-protocol traffic sends a new text for every value, and each would otherwise cost a full parse.
//
// Which constants are free is decided on the analysed text's parse tree, by a positive list: the constant
// operand of a comparison with a column (=, <>, <, >, <=, >=, IS [NOT] DISTINCT FROM), an item of
// `column IN (…)`, a VALUES item, the value of an UPDATE / ON CONFLICT SET item, LIMIT and OFFSET — optionally
// cast to a type without modifiers. Nothing else is free: positional ORDER BY / GROUP BY, type modifiers,
// function arguments (set_config), SET values stay part of the shape. A reused analysis must also be one whose
// content depends on no constant but the values bound for protected columns: no parameters bound for them, no
// settings, no role change, no PREPARE / EXECUTE / COPY / DDL, only the fields listed in PLAN_FIELDS. A value
// bound for a protected column is reused only when it is one free plain '…' string (its value is then the
// new text's string, validated and encrypted per text like any other).
//
// A new text is matched by mamori's lexer (proxy/sql/lexer.ts, the one the fast path already relies on to
// find every protected name): same tokens byte for byte, except free constants, whose replacement must be
// of the same class and unambiguous to lex — a plain '…' string without quote, backslash or NUL inside, or
// an unsigned decimal number. Anything else is a miss and gets the full analysis.
import { isUtf8 } from 'node:buffer';
import type { Analysis, StatementPlan } from './types.js';
import { tokens as lex, LexError, type Token } from './lexer.js';
import { rewrite, splice, type ExpectedEdit } from './splice.js';
import { decodeSql, parseText, type AstNode } from './parser.js';

/** A text's tokens and its shape key (free-candidate constants replaced by their class). */
export interface Shape {
  key: string;
  tokens: Token[];
  classes: (string | null)[]; // per token: its constant class, or null when it is not a free candidate
}

// The fields a reusable statement plan may have (a new field makes plans non-reusable until listed here).
const PLAN_FIELDS = new Set(['command', 'start', 'end', 'touched', 'literals', 'params', 'deleteOfProtected']);
const COMPARISONS = new Set(['=', '<>', '!=', '<', '>', '<=', '>=']);
/** Offsets of a plan, as token boundaries: reproducible in another text of the same shape. */
type Anchor = { at: 'text-start' } | { at: 'text-end' } | { at: 'token-start' | 'token-end'; token: number };

/** A value bound for a protected column: its span, and the free string token holding it (-1: a cast NULL). */
interface LiteralRef {
  start: Anchor;
  end: Anchor;
  token: number;
}

export interface ShapeEntry {
  analysis: Analysis;
  fixed: [number, string][]; // free-candidate constants that were not free: token index and exact text
  anchors: [Anchor, Anchor][]; // per statement: start and end
  literals: LiteralRef[][]; // per statement, in the order of its literals
  /** Set once a statement of this shape was spliced and verified by re-parse (proxy/sql/splice.ts). */
  spliceVerified: boolean;
  /** The audit fingerprint, the same for every text of the shape (it removes every constant). */
  fingerprint?: string;
}

const SEP = '\u0001';
const STRING_CLASS = '\u0002S';

/** The class of a token that may stand for a free constant, or null. */
function constantClass(sql: Buffer, t: Token): string | null {
  if (t.kind === 'number') {
    let digits = 0;
    let dots = 0;
    for (let i = t.start; i < t.end; i++) {
      const c = sql[i]!;
      if (c >= 0x30 && c <= 0x39) digits++;
      else if (c === 0x2e && dots === 0 && i > t.start && i < t.end - 1) dots++;
      else return null;
    }
    // Up to 9 digits is always an int4 (ICONST); longer or with a point is a numeric constant (FCONST).
    return dots === 0 && digits <= 9 ? '\u0002I' : '\u0002F';
  }
  if (t.kind === 'string' && sql[t.start] === 0x27) {
    for (let i = t.start + 1; i < t.end - 1; i++) {
      const c = sql[i];
      if (c === 0x27 || c === 0x5c || c === 0) return null;
    }
    return STRING_CLASS;
  }
  return null;
}

/**
 * The shape of a UTF-8 query text under standard_conforming_strings on, or null when it has none (a lexing
 * error, or a byte that could blur the key's separators).
 */
export function shapeOf(sql: Buffer): Shape | null {
  if (sql.includes(1) || sql.includes(2) || sql.includes(0)) return null;
  const tokens: Token[] = [];
  const classes: (string | null)[] = [];
  let key = '';
  try {
    for (const t of lex(sql)) {
      const cls = constantClass(sql, t);
      tokens.push(t);
      classes.push(cls);
      key += (cls ?? sql.toString('latin1', t.start, t.end)) + SEP;
    }
  } catch (e) {
    if (e instanceof LexError) return null;
    throw e;
  }
  // Whether trivia leads or trails: with it, the text's first and last bytes are no token boundaries, so a
  // statement span starting at 0 or ending at the text's end keeps its meaning in every text of the shape.
  const lead = tokens.length > 0 && tokens[0]!.start === 0 ? 'L0' : 'L1';
  const trail = tokens.length > 0 && tokens[tokens.length - 1]!.end === sql.length ? 'T0' : 'T1';
  return { key: lead + SEP + key + trail, tokens, classes };
}

/** Byte offsets of the constants the positive list makes free, found in a parse tree. */
export function freeConstantOffsets(stmts: readonly AstNode[]): Set<number> {
  const out = new Set<number>();
  const constAt = (n: AstNode | undefined): number | null => {
    if (!n || typeof n !== 'object') return null;
    const c = n.A_Const ?? (n.TypeCast && noModifiers(n.TypeCast.typeName) ? n.TypeCast.arg?.A_Const : undefined);
    if (!c || c.isnull || typeof c.location !== 'number' || c.location < 0) return null;
    return c.location as number;
  };
  const visit = (n: unknown): void => {
    if (Array.isArray(n)) {
      for (const x of n) visit(x);
      return;
    }
    if (!n || typeof n !== 'object') return;
    const node = n as AstNode;
    const a = node.A_Expr;
    if (a) {
      const names = a.name;
      const op = Array.isArray(names) && names.length === 1 ? names[0]?.String?.sval : undefined;
      const comparison = (a.kind === 'AEXPR_OP' && COMPARISONS.has(op)) || a.kind === 'AEXPR_DISTINCT' || a.kind === 'AEXPR_NOT_DISTINCT';
      if (comparison) {
        const l = a.lexpr?.ColumnRef ? constAt(a.rexpr) : null;
        const r = a.rexpr?.ColumnRef ? constAt(a.lexpr) : null;
        if (l !== null) out.add(l);
        if (r !== null) out.add(r);
      } else if (a.kind === 'AEXPR_IN' && (op === '=' || op === '<>') && a.lexpr?.ColumnRef) {
        for (const it of a.rexpr?.List?.items ?? []) {
          const at = constAt(it);
          if (at !== null) out.add(at);
        }
      }
    }
    const s = node.SelectStmt;
    if (s) {
      for (const lim of [s.limitCount, s.limitOffset]) {
        const at = constAt(lim);
        if (at !== null) out.add(at);
      }
      for (const row of s.valuesLists ?? []) {
        for (const it of row?.List?.items ?? []) {
          const at = constAt(it);
          if (at !== null) out.add(at);
        }
      }
    }
    for (const list of [node.UpdateStmt?.targetList, node.InsertStmt?.onConflictClause?.targetList]) {
      for (const t of Array.isArray(list) ? list : []) {
        const at = constAt(t?.ResTarget?.val);
        if (at !== null) out.add(at);
      }
    }
    for (const v of Object.values(node)) if (v && typeof v === 'object') visit(v);
  };
  visit(stmts);
  return out;
}

function noModifiers(t: AstNode | undefined): boolean {
  return !!t && !(Array.isArray(t.typmods) && t.typmods.length > 0) && !(Array.isArray(t.arrayBounds) && t.arrayBounds.length > 0);
}

function reusablePlan(st: StatementPlan): boolean {
  for (const k of Object.keys(st)) if (!PLAN_FIELDS.has(k)) return false;
  return st.params.length === 0;
}

/** The value of a plain '…' string token without quote or backslash inside: its content. */
const stringValue = (sql: Buffer, t: Token): string => sql.toString('utf8', t.start + 1, t.end - 1);

function anchorOf(offset: number, textLength: number, starts: Map<number, number>, ends: Map<number, number>): Anchor | null {
  if (offset === 0) return { at: 'text-start' };
  if (offset === textLength) return { at: 'text-end' };
  const s = starts.get(offset);
  if (s !== undefined) return { at: 'token-start', token: s };
  const e = ends.get(offset);
  if (e !== undefined) return { at: 'token-end', token: e };
  return null;
}

/**
 * What of an analysis can be reused for texts of the same shape, or null when nothing can: the analysis
 * depends on a constant, or its offsets are not token boundaries. Reads the text's parse tree (the
 * analysis has just parsed it; the parser keeps the last tree).
 */
export function shapeEntry(analysis: Analysis, shape: Shape, sql: Buffer): ShapeEntry | null {
  if (analysis.kind === 'refuse' || analysis.settings.length > 0 || analysis.roleChange) return null;
  const statements = analysis.kind === 'protected' ? analysis.statements : [];
  if (!statements.every(reusablePlan)) return null;
  let free: Set<number>;
  try {
    free = freeConstantOffsets(parseText(decodeSql(sql)));
  } catch {
    return null;
  }
  const fixed: [number, string][] = [];
  let anyFree = false;
  shape.tokens.forEach((t, i) => {
    if (shape.classes[i] === null) return;
    if (free.has(t.start)) anyFree = true;
    else fixed.push([i, sql.toString('latin1', t.start, t.end)]);
  });
  if (!anyFree) return null; // the exact-text cache already covers it
  const starts = new Map(shape.tokens.map((t, i) => [t.start, i]));
  const ends = new Map(shape.tokens.map((t, i) => [t.end, i]));
  const anchors: [Anchor, Anchor][] = [];
  const literals: LiteralRef[][] = [];
  for (const st of statements) {
    const a = anchorOf(st.start, sql.length, starts, ends);
    const b = anchorOf(st.end, sql.length, starts, ends);
    if (!a || !b) return null;
    anchors.push([a, b]);
    const refs: LiteralRef[] = [];
    for (const lit of st.literals) {
      const ls = anchorOf(lit.start, sql.length, starts, ends);
      const le = anchorOf(lit.end, sql.length, starts, ends);
      if (!ls || !le) return null;
      // The free constants inside the literal's span: none for a cast NULL, else exactly its one string.
      const inside: number[] = [];
      shape.tokens.forEach((t, i) => {
        if (t.start >= lit.start && t.end <= lit.end && shape.classes[i] !== null && free.has(t.start)) inside.push(i);
      });
      if (lit.value === null) {
        if (inside.length !== 0) return null;
        refs.push({ start: ls, end: le, token: -1 });
        continue;
      }
      if (inside.length !== 1 || shape.classes[inside[0]!] !== STRING_CLASS) return null;
      if (stringValue(sql, shape.tokens[inside[0]!]!) !== lit.value) return null;
      refs.push({ start: ls, end: le, token: inside[0]! });
    }
    literals.push(refs);
  }
  return { analysis, fixed, anchors, literals, spliceVerified: false };
}

function place(a: Anchor, shape: Shape, textLength: number): number {
  if (a.at === 'text-start') return 0;
  if (a.at === 'text-end') return textLength;
  const t = shape.tokens[a.token]!;
  return a.at === 'token-start' ? t.start : t.end;
}

/**
 * The analysis of a text whose shape key matched the entry's, or null when a constant the entry depends on
 * differs (or the text is not valid UTF-8, which the full analysis refuses). Statements and the values bound
 * for protected columns get this text's offsets and strings; everything else is shared (plans are immutable).
 */
export function instantiate(entry: ShapeEntry, shape: Shape, sql: Buffer): Analysis | null {
  for (const [i, text] of entry.fixed) {
    const t = shape.tokens[i];
    if (!t || t.end - t.start !== text.length || sql.toString('latin1', t.start, t.end) !== text) return null;
  }
  if (!isUtf8(sql)) return null;
  const a = entry.analysis;
  if (a.kind !== 'protected') return a;
  const n = sql.length;
  return {
    ...a,
    statements: a.statements.map((st, k) => ({
      ...st,
      start: place(entry.anchors[k]![0], shape, n),
      end: place(entry.anchors[k]![1], shape, n),
      literals: st.literals.length === 0 ? st.literals : st.literals.map((lit, j) => {
        const ref = entry.literals[k]![j]!;
        return { ...lit, start: place(ref.start, shape, n), end: place(ref.end, shape, n), value: ref.token < 0 ? null : stringValue(sql, shape.tokens[ref.token]!) };
      }),
    })),
  };
}

/**
 * Splices a text of this shape (splice.ts `rewrite`: splice, then verify by re-parse). Once one text of the shape
 * has been verified with only bytea constants spliced — the values bound for protected columns, at the shape's
 * literal anchors — later texts are not parsed again: their rewritten text has the verified one's tokens but for
 * constant values (docs/decisions.md, statement shapes). Any other edit is verified every time.
 */
export function rewriteInShape(entry: ShapeEntry, sql: Buffer, edits: readonly ExpectedEdit[]): Buffer {
  const cellsOnly = edits.every((e) => e.expect.kind === 'bytea');
  if (cellsOnly && entry.spliceVerified) return splice(sql, edits);
  const out = rewrite(sql, edits);
  if (cellsOnly) entry.spliceVerified = true;
  return out;
}
