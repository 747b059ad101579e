// Rewriting by splicing replacement tokens at byte offsets (never by deparsing), then proving by re-parse that
// only the intended nodes changed and that each became exactly the intended constant.
import { decodeSql, parseText, type AstNode } from './parser.js';
import { spanStart } from './span.js';

export interface Edit {
  start: number;
  end: number;
  replacement: Buffer;
}

export type Expected =
  | { kind: 'bytea'; hex: string } // E'\\x<hex>'::bytea
  | { kind: 'param'; index: number; array: boolean } // $n::bytea / $n::bytea[]
  | { kind: 'null' } // NULL::bytea
  | { kind: 'typename' }; // bytea (a declared PREPARE parameter type)

export interface ExpectedEdit extends Edit {
  expect: Expected;
}

export class SpliceError extends Error {}

function checkEdits(sql: Buffer, edits: readonly Edit[]): Edit[] {
  const sorted = [...edits].sort((a, b) => a.start - b.start);
  let prev = 0;
  for (const e of sorted) {
    if (!Number.isInteger(e.start) || !Number.isInteger(e.end) || e.start < prev || e.end < e.start || e.end > sql.length)
      throw new SpliceError('edits overlap or fall outside the statement');
    prev = e.end;
  }
  return sorted;
}

// Applies non-overlapping edits (any order given) in one allocation.
export function splice(sql: Buffer, edits: readonly Edit[]): Buffer {
  const sorted = checkEdits(sql, edits);
  const parts: Buffer[] = [];
  let at = 0;
  for (const e of sorted) {
    parts.push(sql.subarray(at, e.start), e.replacement);
    at = e.end;
  }
  parts.push(sql.subarray(at));
  return Buffer.concat(parts);
}

// The bytea constant form that reads the same with standard_conforming_strings on or off (DESIGN.md §4).
export function byteaLiteral(bytes: Buffer): Buffer {
  return Buffer.from(`E'\\\\x${bytes.toString('hex')}'::bytea`, 'latin1');
}

export function byteaEdit(span: { start: number; end: number }, bytes: Buffer): ExpectedEdit {
  return { start: span.start, end: span.end, replacement: byteaLiteral(bytes), expect: { kind: 'bytea', hex: bytes.toString('hex') } };
}

export function paramCastEdit(span: { start: number; end: number }, index: number, array: boolean): ExpectedEdit {
  return { start: span.start, end: span.end, replacement: Buffer.from(`$${index}::bytea${array ? '[]' : ''}`), expect: { kind: 'param', index, array } };
}

export function nullEdit(span: { start: number; end: number }): ExpectedEdit {
  return { start: span.start, end: span.end, replacement: Buffer.from('NULL::bytea'), expect: { kind: 'null' } };
}

export function typeNameEdit(span: { start: number; end: number }): ExpectedEdit {
  return { start: span.start, end: span.end, replacement: Buffer.from('bytea'), expect: { kind: 'typename' } };
}

const BYTEA_TYPE = { names: [{ String: { sval: 'bytea' } }], typemod: -1 };

function expectedNode(x: Expected): unknown {
  switch (x.kind) {
    case 'bytea':
      return { TypeCast: { arg: { A_Const: { sval: { sval: `\\x${x.hex}` } } }, typeName: BYTEA_TYPE } };
    case 'param':
      return { TypeCast: { arg: { ParamRef: { number: x.index } }, typeName: x.array ? { ...BYTEA_TYPE, arrayBounds: [{ Integer: { ival: -1 } }] } : BYTEA_TYPE } };
    case 'null':
      return { TypeCast: { arg: { A_Const: { isnull: true } }, typeName: BYTEA_TYPE } };
    case 'typename':
      return BYTEA_TYPE;
  }
}

// Byte-position fields of parse nodes (location, stmt_location, rexpr_list_start, list_end …).
const LOCATION_KEY = /(^|_)location$|_start$|_end$/;
const LOCATION_KEYS = { has: (k: string) => LOCATION_KEY.test(k) };

// Deep equality ignoring key order and location fields.
function equalNoLoc(a: unknown, b: unknown): boolean {
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => equalNoLoc(x, b[i]));
  if (a && typeof a === 'object') {
    if (!b || typeof b !== 'object' || Array.isArray(b)) return false;
    const ka = Object.keys(a).filter((k) => !LOCATION_KEYS.has(k) && k !== 'stmt_len');
    const kb = Object.keys(b).filter((k) => !LOCATION_KEYS.has(k) && k !== 'stmt_len');
    if (ka.length !== kb.length) return false;
    return ka.every((k) => k in b && equalNoLoc((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return a === b;
}

// Re-parses `rewritten` and checks it equals `original` except at the edited nodes, which must now be the
// expected constants, and that every location outside the edits moved by exactly the edits' length changes.
// Throws SpliceError otherwise (the caller answers with an internal error, nothing is forwarded).
export function verifySplice(original: Buffer, rewritten: Buffer, edits: readonly ExpectedEdit[]): void {
  const sorted = checkEdits(original, edits) as ExpectedEdit[];
  let o: AstNode[];
  let r: AstNode[];
  try {
    o = parseText(decodeSql(original));
    r = parseText(decodeSql(rewritten));
  } catch (e) {
    throw new SpliceError(`re-parse failed: ${(e as Error).message.slice(0, 80)}`);
  }
  const byStart = new Map<number, ExpectedEdit>(sorted.map((e) => [e.start, e]));
  const used = new Set<ExpectedEdit>();
  const mapLoc = (loc: number): number => {
    if (loc < 0) return loc;
    let delta = 0;
    for (const e of sorted) {
      if (e.end <= loc) delta += e.replacement.length - (e.end - e.start);
      else if (e.start < loc) return Number.NaN; // inside a replaced span but not a replaced node
    }
    return loc + delta;
  };
  const fail = (why: string): never => {
    throw new SpliceError(`rewritten statement differs from the original: ${why}`);
  };
  const editFor = (n: AstNode): ExpectedEdit | undefined => {
    if (n.A_Const || n.ParamRef || n.TypeCast) {
      try {
        const e = byStart.get(spanStart(n));
        if (e && e.expect.kind !== 'typename') return e;
      } catch {
        return undefined;
      }
    } else if (Array.isArray(n.names) && 'typemod' in n && typeof n.location === 'number') {
      const e = byStart.get(n.location);
      if (e && e.expect.kind === 'typename') return e;
    }
    return undefined;
  };
  // The path to the node being compared, built into a string only when a difference is reported (the walk
  // visits every node of both trees on every rewritten statement).
  const trail: (string | number)[] = ['stmts'];
  const at = (): string => trail.map((x) => (typeof x === 'number' ? `[${x}]` : `.${x}`)).join('').slice(1);
  const walk = (a: unknown, b: unknown): void => {
    if (Array.isArray(a)) {
      if (!Array.isArray(b) || a.length !== b.length) fail(`list length at ${at()}`);
      for (let i = 0; i < a.length; i++) {
        trail.push(i);
        walk(a[i], (b as unknown[])[i]);
        trail.pop();
      }
      return;
    }
    if (a && typeof a === 'object') {
      if (!b || typeof b !== 'object' || Array.isArray(b)) fail(`node at ${at()}`);
      const an = a as AstNode;
      const bn = b as AstNode;
      const e = editFor(an);
      if (e) {
        if (used.has(e)) fail(`edit at ${e.start} applies twice`);
        used.add(e);
        if (!equalNoLoc(bn, expectedNode(e.expect))) fail(`replacement at ${at()} is not the expected constant`);
        return;
      }
      const ka = Object.keys(an).filter((k) => k !== 'stmt_len');
      const kb = Object.keys(bn).filter((k) => k !== 'stmt_len');
      if (ka.length !== kb.length || ka.some((k) => !(k in bn))) fail(`fields at ${at()}`);
      for (const k of ka) {
        trail.push(k);
        if (LOCATION_KEYS.has(k) && typeof an[k] === 'number') {
          if (mapLoc(an[k]) !== bn[k]) fail(`location at ${at()}`);
        } else walk(an[k], bn[k]);
        trail.pop();
      }
      return;
    }
    if (a !== b) fail(`value at ${at()}`);
  };
  walk(o, r);
  if (used.size !== sorted.length) fail('an edit did not replace a constant or parameter node');
}

// Splice and verify in one step.
export function rewrite(sql: Buffer, edits: readonly ExpectedEdit[]): Buffer {
  const out = splice(sql, edits);
  verifySplice(sql, out, edits);
  return out;
}
