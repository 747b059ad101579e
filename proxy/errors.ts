// The one place that builds ErrorResponse messages for errors mamori raises itself, the one table of
// SQLSTATEs it uses (docs/sqlstates.md explains when each is used), PostgreSQL-worded errors for the cases
// where a client must not be able to tell mamori from the server, and redaction of server error fields
// that could echo protected values.
import { encodeErrorResponse } from './wire/backend.js';
import { ProtocolError, type NoticeFields } from './wire/types.js';

/** Every SQLSTATE mamori raises. Names are PostgreSQL's condition names (Appendix A of its docs). */
export const SQLSTATES = {
  connection_failure: { code: '08006', description: 'the upstream server could not be reached or its connection broke' },
  protocol_violation: { code: '08P01', description: 'malformed or out-of-sequence protocol message from the client' },
  feature_not_supported: { code: '0A000', description: 'a protocol feature or statement mamori does not support (e.g. replication)' },
  invalid_parameter_value: { code: '22023', description: 'a startup or session parameter value mamori cannot accept' },
  invalid_text_representation: { code: '22P02', description: 'a value for a protected column is not valid for its logical type' },
  character_not_in_repertoire: { code: '22021', description: 'a value for a protected column is not valid in the client encoding (invalid byte sequence)' },
  untranslatable_character: { code: '22P05', description: 'a protected value has a character with no equivalent in the client encoding' },
  invalid_binary_representation: { code: '22P03', description: 'a binary-format value for a protected column is malformed' },
  invalid_authorization_specification: { code: '28000', description: 'login refused before any password check (no user, TLS required, client certificate)' },
  invalid_password: { code: '28P01', description: 'password / SCRAM proof did not verify (PostgreSQL wording)' },
  syntax_error: { code: '42601', description: 'SQL mamori must analyse could not be parsed' },
  insufficient_privilege: { code: '42501', description: 'the read policy denies this role the protected column' },
  undefined_object: { code: '42704', description: 'a key, policy or column named in a request does not exist' },
  reserved_name: { code: '42939', description: "a client statement or portal name uses mamori's reserved prefix" },
  too_many_connections: { code: '53300', description: 'max connections reached (PostgreSQL wording)' },
  configuration_limit_exceeded: { code: '53400', description: 'a configured limit (e.g. rewrite buffer size) was exceeded' },
  program_limit_exceeded: { code: '54000', description: 'a message exceeds the largest size mamori handles' },
  object_not_in_prerequisite_state: { code: '55000', description: 'the session is not in a state where the request can be served (e.g. unknown rendering setting)' },
  query_canceled: { code: '57014', description: 'a statement was cancelled (PostgreSQL wording)' },
  admin_shutdown: { code: '57P01', description: 'mamori is shutting down and ends the session (PostgreSQL wording)' },
  cannot_connect_now: { code: '57P03', description: 'mamori is shutting down and refuses new sessions (PostgreSQL wording)' },
  idle_session_timeout: { code: '57P05', description: 'the idle timeout ended the session (PostgreSQL wording)' },
  system_error: { code: '58000', description: 'an external dependency failed (audit sink, key provider)' },
  internal_error: { code: 'XX000', description: 'a bug in mamori; details go to the log, not the client' },
  data_corrupted: { code: 'XX001', description: 'a protected cell failed authentication or has an unknown header' },
} as const satisfies Record<string, { code: string; description: string }>;

export type MamoriErrorCode = keyof typeof SQLSTATES;
export type ErrorSeverity = 'ERROR' | 'FATAL';

export interface MamoriErrorOptions {
  detail?: string;
  hint?: string;
  severity?: ErrorSeverity;
  /** Kept for logs only; never sent to the client. */
  cause?: unknown;
}

export const MESSAGE_PREFIX = 'mamori: ';

/**
 * An error mamori raises itself. `message`, `detail` and `hint` go to the client: they must not contain
 * protected values, keys or passwords.
 */
export class MamoriError extends Error {
  override readonly name = 'MamoriError';
  readonly code: MamoriErrorCode;
  readonly sqlstate: string;
  readonly severity: ErrorSeverity;
  readonly detail: string | undefined;
  readonly hint: string | undefined;

  constructor(code: MamoriErrorCode, message: string, opts: MamoriErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.sqlstate = SQLSTATES[code].code;
    this.severity = opts.severity ?? 'ERROR';
    this.detail = opts.detail;
    this.hint = opts.hint;
  }
}

/** Wraps anything thrown into a MamoriError without leaking unknown error texts to the client. */
export function toMamoriError(e: unknown): MamoriError {
  if (e instanceof MamoriError) return e;
  // ProtocolError texts are written to be safe to show (they never contain payload bytes).
  if (e instanceof ProtocolError) return new MamoriError('protocol_violation', e.message, { severity: 'FATAL', cause: e });
  return new MamoriError('internal_error', 'internal error', { cause: e });
}

function fields(severity: ErrorSeverity, sqlstate: string, message: string, detail?: string, hint?: string): NoticeFields {
  const f: NoticeFields = { S: severity, V: severity, C: sqlstate, M: message };
  if (detail !== undefined) f.D = detail;
  if (hint !== undefined) f.H = hint;
  return f;
}

/** The ErrorResponse fields for a mamori error, message prefixed with "mamori: " (once). */
export function mamoriErrorFields(err: MamoriError): NoticeFields {
  const m = err.message.startsWith(MESSAGE_PREFIX) ? err.message : MESSAGE_PREFIX + err.message;
  return fields(err.severity, err.sqlstate, m, err.detail, err.hint);
}

/** A complete 'E' message for a mamori error. */
export function errorResponse(err: MamoriError): Buffer {
  return encodeErrorResponse(mamoriErrorFields(err));
}

/**
 * An ErrorResponse worded exactly as PostgreSQL words it, without the mamori prefix: for the cases where a
 * client (or an attacker probing) must see what the server itself would send. Prefer PG_ERRORS.
 */
export function postgresStyleError(
  code: MamoriErrorCode,
  message: string,
  opts: { severity?: ErrorSeverity; detail?: string; hint?: string } = {},
): Buffer {
  return encodeErrorResponse(fields(opts.severity ?? 'ERROR', SQLSTATES[code].code, message, opts.detail, opts.hint));
}

/** PostgreSQL's own wording (backend sources as of 15–18) for errors mamori must reproduce verbatim. */
export const PG_ERRORS = {
  /** postmaster/proc.c, when max_connections is reached. */
  tooManyClients: (): Buffer => postgresStyleError('too_many_connections', 'sorry, too many clients already', { severity: 'FATAL' }),
  /** libpq/auth.c, wrong password or SCRAM proof (also for unknown users, so they cannot be probed). */
  passwordAuthFailed: (user: string): Buffer =>
    postgresStyleError('invalid_password', `password authentication failed for user "${user}"`, { severity: 'FATAL' }),
  noUserName: (): Buffer =>
    postgresStyleError('invalid_authorization_specification', 'no PostgreSQL user name specified in startup packet', { severity: 'FATAL' }),
  /**
   * `latestMinor` is the newest 3.x minor mamori offers (2 = protocol 3.2). A client asking for a version
   * before 3.0 gets the error in the old protocol's form, as PostgreSQL sends it: 'E', then one string.
   */
  unsupportedProtocol: (major: number, minor: number, latestMinor = 2): Buffer => {
    const message = `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.${latestMinor}`;
    if (major < 3) return Buffer.from(`EFATAL:  ${message}\n\0`, 'utf8');
    return postgresStyleError('feature_not_supported', message, { severity: 'FATAL' });
  },
  shuttingDown: (): Buffer => postgresStyleError('cannot_connect_now', 'the database system is shutting down', { severity: 'FATAL' }),
  adminShutdown: (): Buffer =>
    postgresStyleError('admin_shutdown', 'terminating connection due to administrator command', { severity: 'FATAL' }),
  queryCanceled: (): Buffer => postgresStyleError('query_canceled', 'canceling statement due to user request'),
  idleSessionTimeout: (): Buffer =>
    postgresStyleError('idle_session_timeout', 'terminating connection due to idle-session timeout', { severity: 'FATAL' }),
} as const;

// ---------------------------------------------------------------------------------------------------------
// Redaction of server errors

/** Fields that can echo row values or statement text: detail, context, internal query and positions. */
const REDACTED_CODES = ['D', 'W', 'q', 'p', 'P'] as const;

function mentions(text: string | undefined, name: string): boolean {
  if (text === undefined || name === '') return false;
  const lower = text.toLowerCase();
  const n = name.toLowerCase();
  for (let i = lower.indexOf(n); i >= 0; i = lower.indexOf(n, i + 1)) {
    const before = i === 0 ? '' : lower[i - 1]!;
    const after = lower[i + n.length] ?? '';
    if (!/[a-z0-9_$]/.test(before) && !/[a-z0-9_$]/.test(after)) return true;
  }
  return false;
}

/**
 * Whether a server error concerns one of `protectedTables` ("schema.table" or bare "table", as PostgreSQL
 * reports names): by its schema/table fields, or by the table's name appearing in the message, detail,
 * context or internal query (a foreign-key violation names the referenced table only in its detail).
 * Over-matching only costs detail; under-matching could leak a value.
 */
export function errorNamesTable(fields: NoticeFields, protectedTables: Iterable<string>): boolean {
  for (const entry of protectedTables) {
    const dot = entry.lastIndexOf('.');
    const schema = dot < 0 ? undefined : entry.slice(0, dot);
    const table = dot < 0 ? entry : entry.slice(dot + 1);
    if (fields.t === table && (schema === undefined || fields.s === undefined || fields.s === schema)) return true;
    if (mentions(fields.M, table) || mentions(fields.D, table) || mentions(fields.W, table) || mentions(fields.q, table)) {
      return true;
    }
  }
  return false;
}

/**
 * Drops the fields that can echo protected values (D, W, q, p, P) from a server error or notice. With no
 * `protectedTables` the caller is saying the error concerns protected data: always redact. With a list,
 * redact only when the error names one of them. Returns a new object; the input is not changed.
 */
export function redactErrorFields(fields: NoticeFields, protectedTables?: Iterable<string>): NoticeFields {
  if (protectedTables !== undefined && !errorNamesTable(fields, protectedTables)) return { ...fields };
  const out: NoticeFields = { ...fields };
  for (const code of REDACTED_CODES) delete out[code];
  return out;
}
