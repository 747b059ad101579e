// Backend (server → client) message codecs. Decoders take the body after the 5-byte header and return
// values whose Buffers are subarrays of it; encoders return the complete message.
import { Reader, Writer, cstringSize, emptyMessage, fieldSize } from './bytes.js';
import {
  AUTH,
  BE,
  CANCEL_KEY_MAX,
  CANCEL_KEY_MIN,
  ProtocolError,
  type Authentication,
  type BackendKeyData,
  type BackendMessage,
  type CommandComplete,
  type CopyResponseBody,
  type DataRow,
  type Field,
  type FieldDescription,
  type FunctionCallResponse,
  type NegotiateProtocolVersion,
  type NoticeFields,
  type NotificationResponse,
  type ParameterDescription,
  type ParameterStatus,
  type ReadyForQuery,
  type RowDescription,
  type TransactionStatus,
} from './types.js';

// ---------------------------------------------------------------------------------------------------------
// Decoders

export function decodeAuthentication(body: Buffer): Authentication {
  const r = new Reader(body, 'Authentication');
  const code = r.int32();
  let msg: Authentication;
  switch (code) {
    case AUTH.Ok:
      msg = { kind: 'AuthenticationOk' };
      break;
    case AUTH.CleartextPassword:
      msg = { kind: 'AuthenticationCleartextPassword' };
      break;
    case AUTH.MD5Password:
      msg = { kind: 'AuthenticationMD5Password', salt: r.bytes(4) };
      break;
    case AUTH.SASL: {
      const mechanisms: string[] = [];
      for (;;) {
        const m = r.cstring();
        if (m === '') break;
        mechanisms.push(m);
      }
      msg = { kind: 'AuthenticationSASL', mechanisms };
      break;
    }
    case AUTH.SASLContinue:
      msg = { kind: 'AuthenticationSASLContinue', data: r.rest() };
      break;
    case AUTH.SASLFinal:
      msg = { kind: 'AuthenticationSASLFinal', data: r.rest() };
      break;
    default:
      msg = { kind: 'AuthenticationOther', code, data: r.rest() };
  }
  r.end();
  return msg;
}

export function decodeBackendKeyData(body: Buffer): BackendKeyData {
  const r = new Reader(body, 'BackendKeyData');
  const pid = r.int32();
  const secret = r.rest();
  if (secret.length < CANCEL_KEY_MIN || secret.length > CANCEL_KEY_MAX) {
    throw new ProtocolError('BackendKeyData: invalid cancel key length');
  }
  return { kind: 'BackendKeyData', pid, secret };
}

export function decodeParameterStatus(body: Buffer): ParameterStatus {
  const r = new Reader(body, 'ParameterStatus');
  const name = r.cstring();
  const value = r.cstring();
  r.end();
  return { kind: 'ParameterStatus', name, value };
}

export function decodeReadyForQuery(body: Buffer): ReadyForQuery {
  if (body.length !== 1) throw new ProtocolError('ReadyForQuery: invalid length');
  const s = body[0];
  if (s !== 0x49 && s !== 0x54 && s !== 0x45) throw new ProtocolError('ReadyForQuery: invalid status');
  return { kind: 'ReadyForQuery', status: String.fromCharCode(s) as TransactionStatus };
}

export function decodeRowDescription(body: Buffer): RowDescription {
  const r = new Reader(body, 'RowDescription');
  const n = r.uint16();
  r.expectItems(n, 19); // NUL + 18 fixed bytes per field
  const fields = new Array<FieldDescription>(n);
  for (let i = 0; i < n; i++) {
    fields[i] = {
      name: r.cstring(),
      tableOid: r.uint32(),
      attnum: r.int16(),
      typeOid: r.uint32(),
      typlen: r.int16(),
      typmod: r.int32(),
      format: r.int16(),
    };
  }
  r.end();
  return { kind: 'RowDescription', fields };
}

/** The hot path: fields are subarrays of `body`, nothing is copied. Hand-inlined rather than via Reader. */
export function decodeDataRow(body: Buffer): DataRow {
  const len = body.length;
  if (len < 2) throw new ProtocolError('DataRow: message is truncated');
  const n = body.readUInt16BE(0);
  if (n * 4 > len - 2) throw new ProtocolError('DataRow: message is truncated');
  const fields = new Array<Field>(n);
  let pos = 2;
  for (let i = 0; i < n; i++) {
    if (len - pos < 4) throw new ProtocolError('DataRow: message is truncated');
    const flen = body.readInt32BE(pos);
    pos += 4;
    if (flen === -1) {
      fields[i] = null;
    } else if (flen < 0) {
      throw new ProtocolError('DataRow: negative field length');
    } else if (flen > len - pos) {
      throw new ProtocolError('DataRow: message is truncated');
    } else {
      fields[i] = body.subarray(pos, pos + flen);
      pos += flen;
    }
  }
  if (pos !== len) throw new ProtocolError('DataRow: unexpected trailing bytes');
  return { kind: 'DataRow', fields };
}

/**
 * Validates a DataRow body and returns its field positions without creating a Buffer per field:
 * `[start0, len0, start1, len1, …]` with offsets into `body` and length -1 for NULL. For transforms that
 * touch a few protected columns and copy the rest of the row as bytes. Same checks as decodeDataRow.
 */
export function scanDataRow(body: Buffer): Int32Array {
  const len = body.length;
  if (len < 2) throw new ProtocolError('DataRow: message is truncated');
  const n = body.readUInt16BE(0);
  if (n * 4 > len - 2) throw new ProtocolError('DataRow: message is truncated');
  const out = new Int32Array(2 * n);
  let pos = 2;
  for (let i = 0; i < n; i++) {
    if (len - pos < 4) throw new ProtocolError('DataRow: message is truncated');
    const flen = body.readInt32BE(pos);
    pos += 4;
    if (flen < -1) throw new ProtocolError('DataRow: negative field length');
    if (flen > len - pos) throw new ProtocolError('DataRow: message is truncated');
    out[2 * i] = pos;
    out[2 * i + 1] = flen;
    if (flen > 0) pos += flen;
  }
  if (pos !== len) throw new ProtocolError('DataRow: unexpected trailing bytes');
  return out;
}

/** Field `i` of a body scanned by scanDataRow, as a subarray (or null). */
export function dataRowField(body: Buffer, offsets: Int32Array, i: number): Field {
  const flen = offsets[2 * i + 1];
  if (flen === undefined) throw new ProtocolError('DataRow: field index out of range');
  if (flen === -1) return null;
  const start = offsets[2 * i]!;
  return body.subarray(start, start + flen);
}

export function decodeCommandComplete(body: Buffer): CommandComplete {
  const r = new Reader(body, 'CommandComplete');
  const tag = r.cstring();
  r.end();
  return { kind: 'CommandComplete', tag };
}

/** The row count a CommandComplete tag ends with (`SELECT 5`, `INSERT 0 5`, `COPY 5`), or null. */
export function commandRows(body: Buffer): number | null {
  const end = body.length - 1;
  // read from the bytes (runs for every audited statement); a malformed body takes the decoder, which says why
  const n = end >= 0 && body.indexOf(0) === end
    ? Number(body.toString('utf8', body.lastIndexOf(0x20, end - 1) + 1, end))
    : Number(decodeCommandComplete(body).tag.split(' ').at(-1));
  return Number.isFinite(n) ? n : null;
}

/** The SQLSTATE (field C) of an ErrorResponse body, without decoding the other fields. */
export function errorSqlstate(body: Buffer): string | null {
  for (let i = 0; i < body.length && body[i] !== 0;) {
    const code = body[i]!;
    const end = body.indexOf(0, i + 1);
    if (end < 0) return null;
    if (code === 0x43) return body.toString('latin1', i + 1, end);
    i = end + 1;
  }
  return null;
}

/** ErrorResponse and NoticeResponse bodies: (code byte, string)* then a zero byte. */
export function decodeNoticeFields(body: Buffer, what = 'ErrorResponse'): NoticeFields {
  const r = new Reader(body, what);
  const fields: NoticeFields = {};
  for (;;) {
    const code = r.uint8();
    if (code === 0) break;
    fields[String.fromCharCode(code)] = r.cstring();
  }
  r.end();
  return fields;
}

export function decodeParameterDescription(body: Buffer): ParameterDescription {
  const r = new Reader(body, 'ParameterDescription');
  const n = r.uint16();
  r.expectItems(n, 4);
  const typeOids = new Array<number>(n);
  for (let i = 0; i < n; i++) typeOids[i] = r.uint32();
  r.end();
  return { kind: 'ParameterDescription', typeOids };
}

export function decodeNotificationResponse(body: Buffer): NotificationResponse {
  const r = new Reader(body, 'NotificationResponse');
  const pid = r.int32();
  const channel = r.cstring();
  const payload = r.cstring();
  r.end();
  return { kind: 'NotificationResponse', pid, channel, payload };
}

/** Body shared by CopyInResponse, CopyOutResponse and CopyBothResponse. */
export function decodeCopyResponse(body: Buffer, what = 'CopyResponse'): CopyResponseBody {
  const r = new Reader(body, what);
  const format = r.uint8();
  if (format > 1) throw new ProtocolError(`${what}: invalid format`);
  const n = r.uint16();
  r.expectItems(n, 2);
  const columnFormats = new Array<number>(n);
  for (let i = 0; i < n; i++) columnFormats[i] = r.int16();
  r.end();
  return { format, columnFormats };
}

export function decodeNegotiateProtocolVersion(body: Buffer): NegotiateProtocolVersion {
  const r = new Reader(body, 'NegotiateProtocolVersion');
  const version = r.int32();
  const n = r.int32();
  if (n < 0) throw new ProtocolError('NegotiateProtocolVersion: negative option count');
  r.expectItems(n, 1);
  const unrecognized: string[] = [];
  for (let i = 0; i < n; i++) unrecognized.push(r.cstring());
  r.end();
  return { kind: 'NegotiateProtocolVersion', version, unrecognized };
}

export function decodeFunctionCallResponse(body: Buffer): FunctionCallResponse {
  const r = new Reader(body, 'FunctionCallResponse');
  const result = r.field();
  r.end();
  return { kind: 'FunctionCallResponse', result };
}

function expectEmpty(body: Buffer, what: string): void {
  if (body.length !== 0) throw new ProtocolError(`${what}: unexpected trailing bytes`);
}

/** Decodes any backend message by type byte; an unknown type throws. */
export function decodeBackend(type: number, body: Buffer): BackendMessage {
  switch (type) {
    case BE.Authentication:
      return decodeAuthentication(body);
    case BE.BackendKeyData:
      return decodeBackendKeyData(body);
    case BE.ParameterStatus:
      return decodeParameterStatus(body);
    case BE.ReadyForQuery:
      return decodeReadyForQuery(body);
    case BE.RowDescription:
      return decodeRowDescription(body);
    case BE.DataRow:
      return decodeDataRow(body);
    case BE.CommandComplete:
      return decodeCommandComplete(body);
    case BE.EmptyQueryResponse:
      expectEmpty(body, 'EmptyQueryResponse');
      return { kind: 'EmptyQueryResponse' };
    case BE.ErrorResponse:
      return { kind: 'ErrorResponse', fields: decodeNoticeFields(body, 'ErrorResponse') };
    case BE.NoticeResponse:
      return { kind: 'NoticeResponse', fields: decodeNoticeFields(body, 'NoticeResponse') };
    case BE.ParseComplete:
      expectEmpty(body, 'ParseComplete');
      return { kind: 'ParseComplete' };
    case BE.BindComplete:
      expectEmpty(body, 'BindComplete');
      return { kind: 'BindComplete' };
    case BE.CloseComplete:
      expectEmpty(body, 'CloseComplete');
      return { kind: 'CloseComplete' };
    case BE.NoData:
      expectEmpty(body, 'NoData');
      return { kind: 'NoData' };
    case BE.PortalSuspended:
      expectEmpty(body, 'PortalSuspended');
      return { kind: 'PortalSuspended' };
    case BE.ParameterDescription:
      return decodeParameterDescription(body);
    case BE.NotificationResponse:
      return decodeNotificationResponse(body);
    case BE.CopyInResponse:
      return { kind: 'CopyInResponse', ...decodeCopyResponse(body, 'CopyInResponse') };
    case BE.CopyOutResponse:
      return { kind: 'CopyOutResponse', ...decodeCopyResponse(body, 'CopyOutResponse') };
    case BE.CopyBothResponse:
      return { kind: 'CopyBothResponse', ...decodeCopyResponse(body, 'CopyBothResponse') };
    case BE.CopyData:
      return { kind: 'CopyData', data: body };
    case BE.CopyDone:
      expectEmpty(body, 'CopyDone');
      return { kind: 'CopyDone' };
    case BE.NegotiateProtocolVersion:
      return decodeNegotiateProtocolVersion(body);
    case BE.FunctionCallResponse:
      return decodeFunctionCallResponse(body);
    default:
      throw new ProtocolError(`invalid backend message type ${type}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Encoders

export function encodeAuthentication(msg: Authentication): Buffer {
  switch (msg.kind) {
    case 'AuthenticationOk':
      return new Writer(BE.Authentication, 4).int32(AUTH.Ok).finish();
    case 'AuthenticationCleartextPassword':
      return new Writer(BE.Authentication, 4).int32(AUTH.CleartextPassword).finish();
    case 'AuthenticationMD5Password':
      if (msg.salt.length !== 4) throw new ProtocolError('AuthenticationMD5Password: salt must be 4 bytes');
      return new Writer(BE.Authentication, 8).int32(AUTH.MD5Password).bytes(msg.salt).finish();
    case 'AuthenticationSASL': {
      let size = 4 + 1;
      for (const m of msg.mechanisms) size += cstringSize(m);
      const w = new Writer(BE.Authentication, size).int32(AUTH.SASL);
      for (const m of msg.mechanisms) {
        if (m === '') throw new ProtocolError('AuthenticationSASL: empty mechanism name');
        w.cstring(m);
      }
      return w.uint8(0).finish();
    }
    case 'AuthenticationSASLContinue':
      return new Writer(BE.Authentication, 4 + msg.data.length).int32(AUTH.SASLContinue).bytes(msg.data).finish();
    case 'AuthenticationSASLFinal':
      return new Writer(BE.Authentication, 4 + msg.data.length).int32(AUTH.SASLFinal).bytes(msg.data).finish();
    case 'AuthenticationOther':
      return new Writer(BE.Authentication, 4 + msg.data.length).int32(msg.code).bytes(msg.data).finish();
  }
}

export function encodeBackendKeyData(msg: { pid: number; secret: Buffer }): Buffer {
  if (msg.secret.length < CANCEL_KEY_MIN || msg.secret.length > CANCEL_KEY_MAX) {
    throw new ProtocolError('BackendKeyData: invalid cancel key length');
  }
  return new Writer(BE.BackendKeyData, 4 + msg.secret.length).int32(msg.pid).bytes(msg.secret).finish();
}

export function encodeParameterStatus(name: string, value: string): Buffer {
  return new Writer(BE.ParameterStatus, cstringSize(name) + cstringSize(value)).cstring(name).cstring(value).finish();
}

export function encodeReadyForQuery(status: TransactionStatus): Buffer {
  const b = Buffer.allocUnsafe(6);
  b[0] = BE.ReadyForQuery;
  b.writeInt32BE(5, 1);
  b[5] = status.charCodeAt(0);
  return b;
}

export function encodeRowDescription(fields: readonly FieldDescription[]): Buffer {
  let size = 2;
  for (const f of fields) size += cstringSize(f.name) + 18;
  const w = new Writer(BE.RowDescription, size).uint16(fields.length);
  for (const f of fields) {
    w.cstring(f.name).uint32(f.tableOid).int16(f.attnum).uint32(f.typeOid).int16(f.typlen).int32(f.typmod).int16(f.format);
  }
  return w.finish();
}

/** Encodes a DataRow from fields; the size is computed first so there is exactly one allocation. */
export function encodeDataRow(fields: readonly Field[]): Buffer {
  let size = 2;
  for (const f of fields) size += fieldSize(f);
  const w = new Writer(BE.DataRow, size).uint16(fields.length);
  for (const f of fields) w.field(f);
  return w.finish();
}

export function encodeCommandComplete(tag: string): Buffer {
  return new Writer(BE.CommandComplete, cstringSize(tag)).cstring(tag).finish();
}

function encodeNotice(type: number, fields: NoticeFields): Buffer {
  let size = 1;
  const entries: Array<[string, string]> = [];
  for (const code of Object.keys(fields)) {
    const v = fields[code];
    if (v === undefined) continue;
    if (code.length !== 1 || code.charCodeAt(0) === 0 || code.charCodeAt(0) > 0xff) {
      throw new ProtocolError('notice field code must be a single non-zero byte');
    }
    entries.push([code, v]);
    size += 1 + cstringSize(v);
  }
  const w = new Writer(type, size);
  for (const [code, v] of entries) w.uint8(code.charCodeAt(0)).cstring(v);
  return w.uint8(0).finish();
}

export function encodeErrorResponse(fields: NoticeFields): Buffer {
  return encodeNotice(BE.ErrorResponse, fields);
}
export function encodeNoticeResponse(fields: NoticeFields): Buffer {
  return encodeNotice(BE.NoticeResponse, fields);
}

export function encodeEmptyQueryResponse(): Buffer {
  return emptyMessage(BE.EmptyQueryResponse);
}
export function encodeParseComplete(): Buffer {
  return emptyMessage(BE.ParseComplete);
}
export function encodeBindComplete(): Buffer {
  return emptyMessage(BE.BindComplete);
}
export function encodeCloseComplete(): Buffer {
  return emptyMessage(BE.CloseComplete);
}
export function encodeNoData(): Buffer {
  return emptyMessage(BE.NoData);
}
export function encodePortalSuspended(): Buffer {
  return emptyMessage(BE.PortalSuspended);
}

export function encodeParameterDescription(typeOids: readonly number[]): Buffer {
  const w = new Writer(BE.ParameterDescription, 2 + 4 * typeOids.length).uint16(typeOids.length);
  for (const t of typeOids) w.uint32(t);
  return w.finish();
}

export function encodeNotificationResponse(msg: { pid: number; channel: string; payload: string }): Buffer {
  return new Writer(BE.NotificationResponse, 4 + cstringSize(msg.channel) + cstringSize(msg.payload))
    .int32(msg.pid)
    .cstring(msg.channel)
    .cstring(msg.payload)
    .finish();
}

function encodeCopyResponse(type: number, msg: CopyResponseBody): Buffer {
  if (msg.format !== 0 && msg.format !== 1) throw new ProtocolError('copy response: invalid format');
  const w = new Writer(type, 3 + 2 * msg.columnFormats.length).uint8(msg.format).uint16(msg.columnFormats.length);
  for (const f of msg.columnFormats) w.int16(f);
  return w.finish();
}
export function encodeCopyInResponse(msg: CopyResponseBody): Buffer {
  return encodeCopyResponse(BE.CopyInResponse, msg);
}
export function encodeCopyOutResponse(msg: CopyResponseBody): Buffer {
  return encodeCopyResponse(BE.CopyOutResponse, msg);
}
export function encodeCopyBothResponse(msg: CopyResponseBody): Buffer {
  return encodeCopyResponse(BE.CopyBothResponse, msg);
}

export function encodeNegotiateProtocolVersion(msg: { version: number; unrecognized: readonly string[] }): Buffer {
  let size = 8;
  for (const o of msg.unrecognized) size += cstringSize(o);
  const w = new Writer(BE.NegotiateProtocolVersion, size).int32(msg.version).int32(msg.unrecognized.length);
  for (const o of msg.unrecognized) w.cstring(o);
  return w.finish();
}

export function encodeFunctionCallResponse(result: Field): Buffer {
  return new Writer(BE.FunctionCallResponse, fieldSize(result)).field(result).finish();
}

export function encodeBackend(msg: BackendMessage): Buffer {
  switch (msg.kind) {
    case 'AuthenticationOk':
    case 'AuthenticationCleartextPassword':
    case 'AuthenticationMD5Password':
    case 'AuthenticationSASL':
    case 'AuthenticationSASLContinue':
    case 'AuthenticationSASLFinal':
    case 'AuthenticationOther':
      return encodeAuthentication(msg);
    case 'BackendKeyData':
      return encodeBackendKeyData(msg);
    case 'ParameterStatus':
      return encodeParameterStatus(msg.name, msg.value);
    case 'ReadyForQuery':
      return encodeReadyForQuery(msg.status);
    case 'RowDescription':
      return encodeRowDescription(msg.fields);
    case 'DataRow':
      return encodeDataRow(msg.fields);
    case 'CommandComplete':
      return encodeCommandComplete(msg.tag);
    case 'EmptyQueryResponse':
      return encodeEmptyQueryResponse();
    case 'ErrorResponse':
      return encodeErrorResponse(msg.fields);
    case 'NoticeResponse':
      return encodeNoticeResponse(msg.fields);
    case 'ParseComplete':
      return encodeParseComplete();
    case 'BindComplete':
      return encodeBindComplete();
    case 'CloseComplete':
      return encodeCloseComplete();
    case 'NoData':
      return encodeNoData();
    case 'PortalSuspended':
      return encodePortalSuspended();
    case 'ParameterDescription':
      return encodeParameterDescription(msg.typeOids);
    case 'NotificationResponse':
      return encodeNotificationResponse(msg);
    case 'CopyInResponse':
      return encodeCopyInResponse(msg);
    case 'CopyOutResponse':
      return encodeCopyOutResponse(msg);
    case 'CopyBothResponse':
      return encodeCopyBothResponse(msg);
    case 'CopyData':
      return new Writer(BE.CopyData, msg.data.length).bytes(msg.data).finish();
    case 'CopyDone':
      return emptyMessage(BE.CopyDone);
    case 'NegotiateProtocolVersion':
      return encodeNegotiateProtocolVersion(msg);
    case 'FunctionCallResponse':
      return encodeFunctionCallResponse(msg.result);
  }
}
