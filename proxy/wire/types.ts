// Message type bytes, startup-phase request codes and the decoded message shapes of the PostgreSQL
// frontend/backend protocol (3.0 and 3.2). Pure declarations: no I/O, no logic beyond ProtocolError.

/** Frontend (client → server) message type bytes. */
export const FE = {
  Bind: 0x42, // 'B'
  Close: 0x43, // 'C'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyFail: 0x66, // 'f'
  Describe: 0x44, // 'D'
  Execute: 0x45, // 'E'
  Flush: 0x48, // 'H'
  FunctionCall: 0x46, // 'F'
  Parse: 0x50, // 'P'
  /** PasswordMessage, SASLInitialResponse and SASLResponse share 'p'; the auth exchange says which. */
  AuthResponse: 0x70, // 'p'
  Query: 0x51, // 'Q'
  Sync: 0x53, // 'S'
  Terminate: 0x58, // 'X'
} as const;

/** Backend (server → client) message type bytes. */
export const BE = {
  Authentication: 0x52, // 'R'
  BackendKeyData: 0x4b, // 'K'
  BindComplete: 0x32, // '2'
  CloseComplete: 0x33, // '3'
  CommandComplete: 0x43, // 'C'
  CopyBothResponse: 0x57, // 'W'
  CopyData: 0x64, // 'd'
  CopyDone: 0x63, // 'c'
  CopyInResponse: 0x47, // 'G'
  CopyOutResponse: 0x48, // 'H'
  DataRow: 0x44, // 'D'
  EmptyQueryResponse: 0x49, // 'I'
  ErrorResponse: 0x45, // 'E'
  FunctionCallResponse: 0x56, // 'V'
  NegotiateProtocolVersion: 0x76, // 'v'
  NoData: 0x6e, // 'n'
  NoticeResponse: 0x4e, // 'N'
  NotificationResponse: 0x41, // 'A'
  ParameterDescription: 0x74, // 't'
  ParameterStatus: 0x53, // 'S'
  ParseComplete: 0x31, // '1'
  PortalSuspended: 0x73, // 's'
  ReadyForQuery: 0x5a, // 'Z'
  RowDescription: 0x54, // 'T'
} as const;

/** Request codes carried in place of a protocol version by untyped startup-phase messages. */
export const STARTUP = {
  Protocol30: 196608, // 3 << 16
  Protocol32: 196610, // (3 << 16) | 2
  CancelRequest: 80877102, // 1234 << 16 | 5678
  SSLRequest: 80877103, // 1234 << 16 | 5679
  GSSENCRequest: 80877104, // 1234 << 16 | 5680
} as const;

/** Authentication ('R') sub-codes. */
export const AUTH = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** Cancel-key (BackendKeyData secret) length bounds: protocol 3.0 uses 4 bytes, 3.2 allows up to 256. */
export const CANCEL_KEY_MIN = 4;
export const CANCEL_KEY_MAX = 256;

/**
 * Malformed or unencodable protocol data. The message never contains payload bytes, so it is safe to log
 * and to relay to a client as the text of a protocol_violation error.
 */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}

/** A field value as it travels on the wire: raw bytes (a subarray of the message, not a copy) or SQL NULL. */
export type Field = Buffer | null;

// ---------------------------------------------------------------------------------------------------------
// Startup phase (untyped messages)

export interface StartupMessage {
  kind: 'StartupMessage';
  /** The full 32-bit version code, e.g. 196608 for 3.0 or 196610 for 3.2. */
  protocol: number;
  /** Parameters in the order sent (user, database, options, replication, _pq_.*, GUCs …). */
  params: Array<[string, string]>;
}
export interface SSLRequest {
  kind: 'SSLRequest';
}
export interface GSSENCRequest {
  kind: 'GSSENCRequest';
}
export interface CancelRequest {
  kind: 'CancelRequest';
  pid: number;
  /** 4 bytes under protocol 3.0; 4..256 bytes under 3.2. */
  secret: Buffer;
}
/** A version code whose major is not 3 (or an unknown 1234.x request): the session answers it with a FATAL. */
export interface UnsupportedProtocol {
  kind: 'UnsupportedProtocol';
  protocol: number;
  major: number;
  minor: number;
}
export type StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest | UnsupportedProtocol;

// ---------------------------------------------------------------------------------------------------------
// Frontend messages

export interface Query {
  kind: 'Query';
  sql: string;
}
export interface Parse {
  kind: 'Parse';
  name: string;
  sql: string;
  /** Parameter type OIDs (0 = unspecified), unsigned. */
  paramTypes: number[];
}
export interface Bind {
  kind: 'Bind';
  portal: string;
  statement: string;
  /** As sent: empty (all text), one (applies to all) or one per parameter. See expandFormats. */
  paramFormats: number[];
  params: Field[];
  /** As sent: empty (all text), one (applies to all) or one per result column. */
  resultFormats: number[];
}
export type DescribeTarget = 'S' | 'P';
export interface Describe {
  kind: 'Describe';
  target: DescribeTarget;
  name: string;
}
export interface Execute {
  kind: 'Execute';
  portal: string;
  /** 0 (or negative) = no limit. */
  maxRows: number;
}
export interface Close {
  kind: 'Close';
  target: DescribeTarget;
  name: string;
}
export interface Sync {
  kind: 'Sync';
}
export interface Flush {
  kind: 'Flush';
}
export interface Terminate {
  kind: 'Terminate';
}
export interface CopyData {
  kind: 'CopyData';
  data: Buffer;
}
export interface CopyDone {
  kind: 'CopyDone';
}
export interface CopyFail {
  kind: 'CopyFail';
  message: string;
}
export interface FunctionCall {
  kind: 'FunctionCall';
  functionOid: number;
  argFormats: number[];
  args: Field[];
  resultFormat: number;
}
/** 'p' before the auth exchange tells which of the three it is; see decodePassword / decodeSASL*. */
export interface AuthResponse {
  kind: 'AuthResponse';
  data: Buffer;
}
export interface PasswordMessage {
  kind: 'PasswordMessage';
  password: string;
}
export interface SASLInitialResponse {
  kind: 'SASLInitialResponse';
  mechanism: string;
  /** null when the client sent length -1 (no initial response). */
  data: Buffer | null;
}
export interface SASLResponse {
  kind: 'SASLResponse';
  data: Buffer;
}

export type FrontendMessage =
  | Query
  | Parse
  | Bind
  | Describe
  | Execute
  | Close
  | Sync
  | Flush
  | Terminate
  | CopyData
  | CopyDone
  | CopyFail
  | FunctionCall
  | AuthResponse;

// ---------------------------------------------------------------------------------------------------------
// Backend messages

export interface AuthenticationOk {
  kind: 'AuthenticationOk';
}
export interface AuthenticationCleartextPassword {
  kind: 'AuthenticationCleartextPassword';
}
export interface AuthenticationMD5Password {
  kind: 'AuthenticationMD5Password';
  /** 4 bytes. */
  salt: Buffer;
}
export interface AuthenticationSASL {
  kind: 'AuthenticationSASL';
  mechanisms: string[];
}
export interface AuthenticationSASLContinue {
  kind: 'AuthenticationSASLContinue';
  data: Buffer;
}
export interface AuthenticationSASLFinal {
  kind: 'AuthenticationSASLFinal';
  data: Buffer;
}
/** Kerberos, GSS, SSPI and unknown codes: kept opaque (mamori does not speak them). */
export interface AuthenticationOther {
  kind: 'AuthenticationOther';
  code: number;
  data: Buffer;
}
export type Authentication =
  | AuthenticationOk
  | AuthenticationCleartextPassword
  | AuthenticationMD5Password
  | AuthenticationSASL
  | AuthenticationSASLContinue
  | AuthenticationSASLFinal
  | AuthenticationOther;

export interface BackendKeyData {
  kind: 'BackendKeyData';
  pid: number;
  secret: Buffer;
}
export interface ParameterStatus {
  kind: 'ParameterStatus';
  name: string;
  value: string;
}
export type TransactionStatus = 'I' | 'T' | 'E';
export interface ReadyForQuery {
  kind: 'ReadyForQuery';
  status: TransactionStatus;
}
export interface FieldDescription {
  name: string;
  /** 0 when the column is not a plain table column. Unsigned. */
  tableOid: number;
  /** 0 when not a table column. */
  attnum: number;
  typeOid: number;
  typlen: number;
  typmod: number;
  /** 0 text, 1 binary (always 0 in a Describe(statement) reply). */
  format: number;
}
export interface RowDescription {
  kind: 'RowDescription';
  fields: FieldDescription[];
}
export interface DataRow {
  kind: 'DataRow';
  fields: Field[];
}
export interface CommandComplete {
  kind: 'CommandComplete';
  tag: string;
}
export interface EmptyQueryResponse {
  kind: 'EmptyQueryResponse';
}

/** ErrorResponse / NoticeResponse field codes (single bytes), see PostgreSQL's "Error and Notice Message Fields". */
export type NoticeFieldCode =
  | 'S' // severity (localized)
  | 'V' // severity (never localized)
  | 'C' // SQLSTATE
  | 'M' // message
  | 'D' // detail
  | 'H' // hint
  | 'P' // position in the client's query
  | 'p' // position in an internal query
  | 'q' // internal query
  | 'W' // where (context)
  | 's' // schema
  | 't' // table
  | 'c' // column
  | 'd' // data type
  | 'n' // constraint
  | 'F' // file
  | 'L' // line
  | 'R'; // routine
/**
 * Fields keyed by their single-byte code, in wire order. Unknown codes are kept (clients must ignore them),
 * so the map is open-ended.
 */
export type NoticeFields = { [K in NoticeFieldCode]?: string } & { [code: string]: string | undefined };

export interface ErrorResponse {
  kind: 'ErrorResponse';
  fields: NoticeFields;
}
export interface NoticeResponse {
  kind: 'NoticeResponse';
  fields: NoticeFields;
}
export interface ParseComplete {
  kind: 'ParseComplete';
}
export interface BindComplete {
  kind: 'BindComplete';
}
export interface CloseComplete {
  kind: 'CloseComplete';
}
export interface NoData {
  kind: 'NoData';
}
export interface PortalSuspended {
  kind: 'PortalSuspended';
}
export interface ParameterDescription {
  kind: 'ParameterDescription';
  typeOids: number[];
}
export interface NotificationResponse {
  kind: 'NotificationResponse';
  pid: number;
  channel: string;
  payload: string;
}
export interface CopyResponseBody {
  /** Overall format: 0 text, 1 binary. */
  format: number;
  columnFormats: number[];
}
export interface CopyInResponse extends CopyResponseBody {
  kind: 'CopyInResponse';
}
export interface CopyOutResponse extends CopyResponseBody {
  kind: 'CopyOutResponse';
}
export interface CopyBothResponse extends CopyResponseBody {
  kind: 'CopyBothResponse';
}
export interface NegotiateProtocolVersion {
  kind: 'NegotiateProtocolVersion';
  /**
   * The newest protocol version the server supports for the requested major, as a full version code
   * (196608 = 3.0, 196610 = 3.2): the docs call it the minor version, but servers send PG_PROTOCOL(3, minor)
   * and libpq reads it that way.
   */
  version: number;
  /** Protocol options (`_pq_.*`) the server did not recognise. */
  unrecognized: string[];
}
export interface FunctionCallResponse {
  kind: 'FunctionCallResponse';
  result: Field;
}

export type BackendMessage =
  | Authentication
  | BackendKeyData
  | ParameterStatus
  | ReadyForQuery
  | RowDescription
  | DataRow
  | CommandComplete
  | EmptyQueryResponse
  | ErrorResponse
  | NoticeResponse
  | ParseComplete
  | BindComplete
  | CloseComplete
  | NoData
  | PortalSuspended
  | ParameterDescription
  | NotificationResponse
  | CopyInResponse
  | CopyOutResponse
  | CopyBothResponse
  | CopyData
  | CopyDone
  | NegotiateProtocolVersion
  | FunctionCallResponse;
