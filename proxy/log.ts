// Structured logs (pino) that cannot carry secrets by accident: every logged object, child binding and
// serialized error is walked and any field whose name looks secret — at any depth — is replaced by a censor.
// Log statement fingerprints, never SQL text: `sql`, `query` and friends are censored too.
import pino, { type Bindings, type ChildLoggerOptions, type DestinationStream, type Logger, type LoggerOptions } from 'pino';
import type { LogConfig } from '../config/schema.js';

export type { Logger } from 'pino';

export const CENSOR = '[redacted]';

// Exact names (case-insensitive) that carry secrets, protected values or statement text that may hold literals.
const SECRET_NAMES = new Set(
  [
    'password', 'passwd', 'pwd', 'secret', 'key', 'clientkey', 'serverkey', 'storedkey', 'privatekey', 'token',
    'proof', 'clientproof', 'serversignature', 'nonce', 'salt', 'value', 'values', 'plaintext', 'params',
    'parameters', 'args', 'row', 'rows', 'data', 'literal', 'literals', 'sql', 'query', 'querytext', 'statement',
    'text', 'detail', 'where', 'internalquery', 'authorization', 'cookie', 'credentials', 'verifier',
  ].map((s) => s.toLowerCase()),
);
// Suffixes: controlPassword, apiToken, dataKey, rootKey, clientSecret … (but not keyArn, keyFile or passwordEnv).
const SECRET_SUFFIX = /(password|passwd|secret|token|key|proof|plaintext)$/i;

export function isSecretKey(name: string): boolean {
  return SECRET_NAMES.has(name.toLowerCase()) || SECRET_SUFFIX.test(name);
}

const MAX_DEPTH = 8;

/** A copy of `value` with secret-looking fields censored; Buffers are censored wherever they appear. */
export function redact(value: unknown, depth = 0, seen: WeakSet<object> = new WeakSet()): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return CENSOR; // raw bytes may be wire data
  if (seen.has(value)) return '[circular]';
  if (depth >= MAX_DEPTH) return '[depth]';
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1, seen));
  if (value instanceof Map) return redact(Object.fromEntries(value), depth, seen);
  if (value instanceof Set) return redact([...value], depth, seen);
  const src: Record<string, unknown> =
    value instanceof Error ? errorFields(value) : (value as Record<string, unknown>);
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(src)) {
    out[k] = isSecretKey(k) ? CENSOR : redact(src[k], depth + 1, seen);
  }
  return out;
}

/** Error → plain fields (message and stack are not enumerable); pg's DatabaseError fields come along. */
function errorFields(err: Error): Record<string, unknown> {
  const fields: Record<string, unknown> = { type: err.name, message: err.message, stack: err.stack };
  for (const k of Object.keys(err)) fields[k] = (err as unknown as Record<string, unknown>)[k];
  if (err.cause !== undefined) fields.cause = err.cause;
  return fields;
}

export function createLogger(cfg: LogConfig, dest?: DestinationStream): Logger {
  const opts: LoggerOptions = {
    level: cfg.level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: {
      level: (label) => ({ level: label }),
      log: (obj) => redact(obj) as Record<string, unknown>,
      bindings: (b) => redact(b) as Record<string, unknown>,
    },
    // formatters.log runs first, but pino applies the err serializer afterwards; censor its output as well.
    serializers: { err: (e: unknown) => redact(e instanceof Error ? errorFields(e) : e) },
  };
  return guardBindings(dest ? pino(opts, dest) : pino(opts));
}

/**
 * pino resets the bindings formatter for child loggers, so child bindings are censored here instead. Installed
 * once on the root; children are created with Object.create(parent) and inherit it with the right `this`.
 */
function guardBindings(root: Logger): Logger {
  const child = root.child;
  const setBindings = root.setBindings;
  const guarded = {
    child(this: Logger, bindings: Bindings, options?: ChildLoggerOptions) {
      return Reflect.apply(child, this, [redact(bindings), options]) as Logger;
    },
    setBindings(this: Logger, bindings: Bindings) {
      Reflect.apply(setBindings, this, [redact(bindings)]);
    },
  };
  // The generic signatures of pino's methods cannot be restated exactly; behaviour is the same.
  return Object.assign(root, guarded as unknown as Pick<Logger, 'child' | 'setBindings'>);
}

export interface SessionFields {
  sessionId: string;
  user?: string;
  database?: string;
  /** Client address as `host:port`. */
  client?: string;
}

/** One child per client session, so every line of a session carries who and where. */
export function sessionLogger(parent: Logger, fields: SessionFields): Logger {
  return parent.child(fields);
}
