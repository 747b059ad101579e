// Validation problems as operators read them: the dotted path of the bad field and one plain sentence.
// Zod's own messages are rewritten here so every line reads the same way and names what was found.
import type { z } from 'zod';

export interface ConfigIssue {
  /** e.g. `upstream.tls.mode` or `columns["public.employees.my_number"].read.plaintext[0]`; '' for the whole file. */
  path: string;
  message: string;
  /** The file the issue is in, as the caller named it. */
  file?: string;
  /** 1-based position in the file, when known. */
  line?: number;
  column?: number;
}

export type PathSegment = string | number;

const BARE_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function formatPath(segments: readonly PathSegment[]): string {
  let out = '';
  for (const s of segments) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (BARE_KEY.test(s)) out += out === '' ? s : `.${s}`;
    else out += `[${JSON.stringify(s)}]`;
  }
  return out;
}

/** One line per issue: `mamori.yaml: upstream.tls.mode: expected one of …, got "sometimes" (line 7, column 11)`. */
export function formatConfigIssues(issues: readonly ConfigIssue[]): string {
  return issues
    .map((i) => {
      const where = i.line === undefined ? '' : ` (line ${i.line}${i.column === undefined ? '' : `, column ${i.column}`})`;
      const file = i.file === undefined ? '' : `${i.file}: `;
      const path = i.path === '' ? '' : `${i.path}: `;
      return `${file}${path}${i.message}${where}`;
    })
    .join('\n');
}

/** A short, safe rendering of a value found in the file (configs hold no secrets, but keep lines bounded). */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v.length > 60 ? `${v.slice(0, 57)}...` : v);
    case 'number':
    case 'boolean':
    case 'bigint':
      return String(v);
    case 'object':
      return 'a mapping';
    default:
      return typeof v;
  }
}

const EXPECTED: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'an integer',
  boolean: 'true or false',
  object: 'a mapping',
  array: 'a list',
};

const ORIGIN_UNITS: Record<string, string> = { string: 'character', array: 'item', set: 'item' };

type Issue = z.core.$ZodIssue;

/** A ConfigIssue that keeps its path as segments, so the loader can find the line in the YAML. */
export type LocatedIssue = ConfigIssue & { segments: PathSegment[] };
type Schema = z.core.$ZodType;

/**
 * Converts zod's issues (parsed with `reportInput: true`) to ConfigIssues; `root` lets unknown keys get a
 * "did you mean" from the keys the schema allows at that place.
 */
export function fromZodIssues(issues: readonly Issue[], root?: Schema): LocatedIssue[] {
  const out: LocatedIssue[] = [];
  for (const issue of issues) convert(issue, [...(issue.path as PathSegment[])], root, out);
  return out;
}

function convert(issue: Issue, path: PathSegment[], root: Schema | undefined, out: LocatedIssue[]): void {
  const input = (issue as { input?: unknown }).input;
  const add = (segments: PathSegment[], message: string) => {
    out.push({ path: formatPath(segments), message, segments });
  };
  switch (issue.code) {
    case 'invalid_type': {
      const expected = EXPECTED[issue.expected] ?? issue.expected;
      add(path, input === undefined ? `required (${expected})` : `expected ${expected}, got ${describeValue(input)}`);
      return;
    }
    case 'invalid_value': {
      const values = issue.values.map((v) => String(v));
      const expected = values.length === 1 ? `expected ${JSON.stringify(issue.values[0])}` : `expected one of ${values.join('|')}`;
      add(path, `${expected}, got ${describeValue(input)}`);
      return;
    }
    case 'unrecognized_keys': {
      const known = root ? knownKeysAt(root, path, input) : [];
      for (const key of issue.keys) {
        const hint = suggest(key, known);
        add([...path, key], `unknown key${hint === undefined ? '' : `; did you mean ${JSON.stringify(hint)}?`}`);
      }
      return;
    }
    case 'too_small':
    case 'too_big': {
      const bound = Number(issue.code === 'too_small' ? issue.minimum : issue.maximum);
      const small = issue.code === 'too_small';
      const inclusive = issue.inclusive !== false;
      if (issue.origin === 'number' || issue.origin === 'int' || issue.origin === 'bigint') {
        const op = small ? (inclusive ? '>=' : '>') : inclusive ? '<=' : '<';
        add(path, `must be ${op} ${bound}, got ${describeValue(input)}`);
      } else if (small && bound === 1 && inclusive) {
        add(path, 'must not be empty');
      } else {
        const unit = ORIGIN_UNITS[issue.origin] ?? 'element';
        add(path, `must have ${small ? 'at least' : 'at most'} ${bound} ${unit}${bound === 1 ? '' : 's'}`);
      }
      return;
    }
    case 'invalid_union': {
      const disc = (issue as { discriminator?: string }).discriminator;
      const options = (issue as { options?: unknown[] }).options;
      if (disc !== undefined && options !== undefined) {
        const found = input !== null && typeof input === 'object' ? (input as Record<string, unknown>)[disc] : undefined;
        // zod points at the discriminator itself when the object has one; otherwise at the object.
        const at = path[path.length - 1] === disc ? path : [...path, disc];
        const allowed = options.map(String).join('|');
        add(at, found === undefined ? `required (one of ${allowed})` : `expected one of ${allowed}, got ${describeValue(found)}`);
        return;
      }
      // A plain union: if some branch got past the shape check, report that branch's issues (the deepest);
      // if every branch refused the value's shape, say which shapes are accepted.
      const depth = (b: readonly Issue[]) =>
        Math.max(...b.map((i) => (i.path.length === 0 && (i.code === 'invalid_type' || i.code === 'invalid_value') ? -1 : i.path.length)));
      const branches = issue.errors.filter((b) => b.length > 0);
      const best = branches.reduce<readonly Issue[] | undefined>(
        (acc, b) => (acc === undefined || depth(b) > depth(acc) ? b : acc),
        undefined,
      );
      if (best && depth(best) >= 0) {
        for (const sub of best) convert(sub, [...path, ...(sub.path as PathSegment[])], root, out);
      } else {
        const shapes = branches.flat().map((i) =>
          i.code === 'invalid_value' ? i.values.map((v) => JSON.stringify(v)).join(' or ') : i.code === 'invalid_type' ? (EXPECTED[i.expected] ?? i.expected) : 'another form',
        );
        add(path, `expected ${[...new Set(shapes)].join(' or ')}, got ${describeValue(input)}`);
      }
      return;
    }
    case 'invalid_key': {
      for (const sub of issue.issues) add(path, sub.message);
      return;
    }
    case 'invalid_element': {
      for (const sub of issue.issues) add(path, sub.message);
      return;
    }
    default:
      // custom, invalid_format, not_multiple_of: the schema supplies the sentence.
      add(path, issue.message);
  }
}

// ---- "did you mean": walk the schema to the object at `path` and list its keys -------------------------------

interface Def {
  type: string;
  shape?: Record<string, Schema>;
  innerType?: Schema;
  in?: Schema;
  element?: Schema;
  valueType?: Schema;
  options?: Schema[];
  values?: unknown[];
}

const defOf = (s: Schema): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

/** Strips wrappers (optional, default, prefault, nullable, pipes from transforms). */
function unwrap(s: Schema): Schema {
  for (;;) {
    const d = defOf(s);
    if (d.innerType) s = d.innerType;
    else if (d.type === 'pipe' && d.in) s = d.in;
    else return s;
  }
}

/** Object schemas a value at this place may match (several for a union, narrowed by the input's `type`). */
function objectsAt(s: Schema, input: unknown): Schema[] {
  const u = unwrap(s);
  const d = defOf(u);
  if (d.type === 'object') return [u];
  if (d.type === 'union' && d.options) {
    const all = d.options.flatMap((o) => objectsAt(o, input));
    const t = input !== null && typeof input === 'object' ? (input as Record<string, unknown>).type : undefined;
    const matching = all.filter((o) => {
      const disc = defOf(o).shape?.type;
      return disc !== undefined && defOf(unwrap(disc)).values?.includes(t);
    });
    return matching.length > 0 ? matching : all;
  }
  return [];
}

function knownKeysAt(root: Schema, path: readonly PathSegment[], input: unknown): string[] {
  let current: Schema[] = [root];
  for (const seg of path) {
    const next: Schema[] = [];
    for (const s of current) {
      const u = unwrap(s);
      const d = defOf(u);
      if (d.type === 'array' && d.element && typeof seg === 'number') next.push(d.element);
      else if (d.type === 'record' && d.valueType) next.push(d.valueType);
      else for (const o of objectsAt(u, undefined)) {
        const child = defOf(o).shape?.[String(seg)];
        if (child) next.push(child);
      }
    }
    current = next;
  }
  return [...new Set(current.flatMap((s) => objectsAt(s, input)).flatMap((o) => Object.keys(defOf(o).shape ?? {})))];
}

function suggest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDist = Infinity;
  for (const k of known) {
    const d = k.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, k);
    if (d < bestDist) {
      best = k;
      bestDist = d;
    }
  }
  return bestDist <= Math.max(1, Math.min(3, Math.floor(key.length / 3))) ? best : undefined;
}

/** Optimal string alignment distance: edits plus adjacent transpositions (the usual typos). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}
