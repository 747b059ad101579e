// Byte spans of constant / parameter expressions (with their casts). The parser reports only start locations,
// so the end is found with the lexer and, for casts, confirmed by parsing the candidate text on its own: a span
// is returned only when `SELECT <span>` parses to the same expression tree.
import { readToken, skipTrivia, LexError } from './lexer.js';
import { parseText, type AstNode } from './parser.js';

export class SpanError extends Error {}

const LOCATION_KEY = /(^|_)location$|_start$|_end$|^stmt_len$/;
const LOCATION_KEYS = { has: (k: string) => LOCATION_KEY.test(k) };

// A copy of an AST without location fields, for structural comparison.
export function stripLocations(n: unknown): unknown {
  if (Array.isArray(n)) return n.map(stripLocations);
  if (n !== null && typeof n === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(n)) if (!LOCATION_KEYS.has(k)) out[k] = stripLocations(v);
    return out;
  }
  return n;
}

export function sameTree(a: unknown, b: unknown): boolean {
  return JSON.stringify(stripLocations(a)) === JSON.stringify(stripLocations(b));
}

export function spanStart(node: AstNode): number {
  if (node.A_Const) return node.A_Const.location;
  if (node.ParamRef) return node.ParamRef.location;
  if (node.TypeCast) {
    const tc = node.TypeCast;
    const inner = spanStart(tc.arg);
    let s = inner;
    if (typeof tc.location === 'number' && tc.location >= 0 && tc.location < s) s = tc.location; // CAST(
    if (typeof tc.typeName?.location === 'number' && tc.typeName.location >= 0 && tc.typeName.location < s) s = tc.typeName.location; // date '…'
    return s;
  }
  throw new SpanError('not a constant or parameter expression');
}

function tokenEndAt(buf: Buffer, pos: number): number {
  try {
    const t = readToken(buf, pos);
    if (t.kind === 'op' && (buf[pos] === 0x2d || buf[pos] === 0x2b) && t.end === pos + 1) {
      // a signed number constant: -5
      const n = readToken(buf, skipTrivia(buf, t.end));
      return n.end;
    }
    return t.end;
  } catch (e) {
    if (e instanceof LexError) throw new SpanError(e.message);
    throw e;
  }
}

export function spanEnd(buf: Buffer, node: AstNode): number {
  if (node.A_Const) return tokenEndAt(buf, node.A_Const.location);
  if (node.ParamRef) return tokenEndAt(buf, node.ParamRef.location);
  if (node.TypeCast) {
    const tc = node.TypeCast;
    const start = spanStart(node);
    const loc: number = tc.location;
    if (loc === undefined || loc < 0 || (tc.typeName?.location ?? -1) < spanStart(tc.arg)) {
      // prefix form `type 'literal'`: ends with the literal
      return spanEnd(buf, tc.arg);
    }
    if (buf[loc] === 0x3a && buf[loc + 1] === 0x3a) return castEnd(buf, node, start, loc + 2);
    // CAST ( arg AS type ): the matching close parenthesis
    let i = skipTrivia(buf, readToken(buf, loc).end);
    if (buf[i] !== 0x28) throw new SpanError('unexpected cast syntax');
    let depth = 0;
    while (i < buf.length) {
      const t = readToken(buf, i);
      if (t.kind === 'op' && buf[i] === 0x28) depth++;
      if (t.kind === 'op' && buf[i] === 0x29) {
        depth--;
        if (depth === 0) return t.end;
      }
      i = skipTrivia(buf, t.end);
    }
    throw new SpanError('unterminated CAST');
  }
  throw new SpanError('not a constant or parameter expression');
}

// `expr::type`: try successively longer token runs after `::` until the text parses to the same cast.
function castEnd(buf: Buffer, node: AstNode, start: number, after: number): number {
  let i = skipTrivia(buf, after);
  for (let k = 0; k < 16 && i < buf.length; k++) {
    const t = readToken(buf, i);
    const candidate = buf.subarray(start, t.end).toString('utf8');
    try {
      const stmts = parseText(`SELECT ${candidate}`);
      const val = stmts.length === 1 ? stmts[0]!.stmt?.SelectStmt?.targetList?.[0]?.ResTarget?.val : undefined;
      if (stmts.length === 1 && stmts[0]!.stmt.SelectStmt.targetList.length === 1 && val && sameTree(val, node)) return t.end;
    } catch {
      // not yet a complete type name
    }
    i = skipTrivia(buf, t.end);
  }
  throw new SpanError('could not delimit the cast');
}

// Span of a bare type name (PREPARE's declared parameter types).
export function typeNameSpan(buf: Buffer, typeName: AstNode): { start: number; end: number } {
  const start: number = typeName.location;
  let i = start;
  for (let k = 0; k < 16 && i < buf.length; k++) {
    const t = readToken(buf, i);
    const candidate = buf.subarray(start, t.end).toString('utf8');
    try {
      const stmts = parseText(`SELECT NULL::${candidate}`);
      const val = stmts.length === 1 ? stmts[0]!.stmt?.SelectStmt?.targetList : undefined;
      if (val && val.length === 1 && sameTree(val[0].ResTarget.val.TypeCast.typeName, typeName)) return { start, end: t.end };
    } catch {
      // keep extending
    }
    i = skipTrivia(buf, t.end);
  }
  throw new SpanError('could not delimit the type name');
}
