// Reads mamori.yaml: YAML syntax (with line and column), the schema, literal passwords refused, secrets taken
// from the environment variables the file names. Pure apart from reading the one file.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type ScalarTag, type Tags } from 'yaml';
import { configSchema, type MamoriConfig, type MamoriConfigInput } from './schema.js';
import { formatConfigIssues, fromZodIssues, formatPath, type ConfigIssue, type PathSegment } from './issues.js';

export type { ConfigIssue } from './issues.js';
export { formatConfigIssues } from './issues.js';

/** Secrets never live in the config object: they are looked up here, from the variables the file names. */
export interface ConfigSecrets {
  /** From the variable named by control.passwordEnv. */
  controlPassword?: string;
  /** Per audit sink index, from a postgres sink's connection.passwordEnv (undefined where none is named). */
  auditSinkPasswords: (string | undefined)[];
}

export type LoadResult =
  | { ok: true; config: MamoriConfig; secrets: ConfigSecrets }
  | { ok: false; errors: ConfigIssue[] };

export type Env = Readonly<Record<string, string | undefined>>;

export interface LoadOptions {
  /**
   * When true (the default) a named password variable that is unset or empty is an error. Commands that never
   * open the control connection (e.g. `keys init`) pass false and get `controlPassword: undefined`.
   */
  requireSecrets?: boolean;
}

export interface ParseOptions extends LoadOptions {
  /** How issues name the file (as the user gave it). */
  file?: string;
  /** Directory relative paths resolve against. */
  baseDir: string;
  env?: Env;
}

// Aliases can expand exponentially ("billion laughs"); a config needs few.
const MAX_ALIAS_COUNT = 100;

// In mamori's vocabulary `null` is a word (`read: { null: [...] }`, `others: null`), not YAML's null, so the
// plain scalar null/Null/NULL stays a string; `~` and an empty value are still YAML null.
const customTags = (tags: Tags): Tags =>
  tags.map((t) => (typeof t === 'object' && t.tag === 'tag:yaml.org,2002:null' ? ({ ...t, test: /^~?$/ } as ScalarTag) : t));

export async function loadConfig(file: string, env: Env = process.env, opts: LoadOptions = {}): Promise<LoadResult> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (code ?? 'read failed');
    return { ok: false, errors: [{ file, path: '', message: `cannot read the config file: ${why}` }] };
  }
  return parseConfigText(text, { ...opts, file, baseDir: path.dirname(path.resolve(file)), env });
}

export function parseConfigText(text: string, opts: ParseOptions): LoadResult {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, lineCounter, customTags });
  const at = (issue: ConfigIssue): ConfigIssue => (opts.file === undefined ? issue : { file: opts.file, ...issue });

  if (doc.errors.length > 0) {
    return {
      ok: false,
      errors: doc.errors.map((e) => {
        const pos = e.linePos?.[0];
        // The yaml library appends its own " at line L, column C" to some messages; the position is separate here.
        const message = e.message.replace(/ at line \d+, column \d+:?[\s\S]*$/, '').replace(/\s+/g, ' ').trim();
        return at({ path: '', message: `YAML syntax error: ${message}`, line: pos?.line, column: pos?.col });
      }),
    };
  }

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) ?? {};
  } catch (err) {
    return { ok: false, errors: [at({ path: '', message: `YAML error: ${(err as Error).message}` })] };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    return { ok: false, errors: [at({ path: '', message: 'the file must be a mapping of sections (listen:, upstream:, …)' })] };
  }

  const located = (segments: PathSegment[], message: string): ConfigIssue => {
    const pos = positionOf(doc, lineCounter, segments);
    return at({ path: formatPath(segments), message, ...pos });
  };

  const passwordPaths = findLiteralPasswords(raw);
  const errors: ConfigIssue[] = passwordPaths.map((p) =>
    located(p, 'a password may not be written in the config file; put it in an environment variable and give that variable\'s name in passwordEnv'),
  );
  const refused = new Set(passwordPaths.map(formatPath));

  const schema = configSchema(opts.baseDir);
  const parsed = schema.safeParse(raw, { reportInput: true });
  if (!parsed.success) {
    for (const issue of fromZodIssues(parsed.error.issues, schema)) {
      if (refused.has(issue.path)) continue; // already explained as a literal password
      const { segments, ...rest } = issue;
      errors.push({ ...at(rest), ...positionOf(doc, lineCounter, segments) });
    }
  }
  if (errors.length > 0 || !parsed.success) return { ok: false, errors };

  const config = parsed.data;
  const env = opts.env ?? process.env;
  const required = opts.requireSecrets ?? true;
  const lookup = (name: string, segments: PathSegment[], whose: string): string | undefined => {
    const value = env[name];
    if (value !== undefined && value !== '') return value;
    if (required) errors.push(located(segments, `environment variable ${name} is not set (it must hold the password of ${whose})`));
    return undefined;
  };
  const secrets: ConfigSecrets = {
    controlPassword: lookup(config.control.passwordEnv, ['control', 'passwordEnv'], `the control role "${config.control.user}"`),
    auditSinkPasswords: config.audit.sinks.map((s, i) =>
      s.type === 'postgres' && s.connection?.passwordEnv !== undefined
        ? lookup(s.connection.passwordEnv, ['audit', 'sinks', i, 'connection', 'passwordEnv'], `the role of audit sink ${i}`)
        : undefined,
    ),
  };
  if (secrets.controlPassword === undefined) delete secrets.controlPassword;
  if (errors.length > 0) return { ok: false, errors };
  return { ok: true, config, secrets };
}

/** The configuration with every default: the base of the embedded default (`mamori start` with no file). */
export function defaultConfig(overrides: MamoriConfigInput = {}, baseDir: string = process.cwd()): MamoriConfig {
  const schema = configSchema(baseDir);
  const parsed = schema.safeParse(overrides, { reportInput: true });
  if (!parsed.success) {
    throw new Error(`invalid built-in configuration:\n${formatConfigIssues(fromZodIssues(parsed.error.issues, schema))}`);
  }
  return parsed.data;
}

// Keys that hold a password by name; `passwordEnv` (a variable's name) is the allowed spelling.
const PASSWORD_KEY = /^(pass|pwd|passwd|password|secret|[A-Za-z_]*(password|passwd|secret))$/i;

function findLiteralPasswords(value: unknown, at: PathSegment[] = []): PathSegment[][] {
  if (Array.isArray(value)) return value.flatMap((v, i) => findLiteralPasswords(v, [...at, i]));
  if (value === null || typeof value !== 'object') return [];
  const found: PathSegment[][] = [];
  for (const [k, v] of Object.entries(value)) {
    if (PASSWORD_KEY.test(k) && (v === null || typeof v !== 'object')) found.push([...at, k]);
    else found.push(...findLiteralPasswords(v, [...at, k]));
  }
  return found;
}

/** Line and column of the key (or list item) at `segments`, or of its nearest existing ancestor (for a missing key). */
function positionOf(doc: Document, lc: LineCounter, segments: readonly PathSegment[]): { line?: number; column?: number } {
  for (let n = segments.length; n > 0; n--) {
    const parent = n === 1 ? doc.contents : doc.getIn(segments.slice(0, n - 1), true);
    const seg = segments[n - 1];
    let range: readonly number[] | null | undefined;
    if (isMap(parent)) {
      const pair = parent.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (pair && isScalar(pair.key)) range = pair.key.range;
    } else if (isSeq(parent) && typeof seg === 'number') {
      const item = parent.items[seg];
      if (item && typeof item === 'object' && 'range' in item) range = (item as { range?: readonly number[] | null }).range;
    }
    if (range) {
      const pos = lc.linePos(range[0]!);
      return { line: pos.line, column: pos.col };
    }
  }
  return {};
}
