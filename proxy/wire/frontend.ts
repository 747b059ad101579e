// Frontend (client → server) message codecs. Decoders take the body after the 5-byte header and return
// values whose Buffers are subarrays of it; encoders return the complete message.
import { Reader, Writer, cstringSize, emptyMessage, fieldSize } from './bytes.js';
import {
  FE,
  ProtocolError,
  type Bind,
  type Close,
  type CopyFail,
  type Describe,
  type DescribeTarget,
  type Execute,
  type Field,
  type FrontendMessage,
  type FunctionCall,
  type Parse,
  type PasswordMessage,
  type Query,
  type SASLInitialResponse,
  type SASLResponse,
} from './types.js';

// ---------------------------------------------------------------------------------------------------------
// Decoders

export function decodeQuery(body: Buffer): Query {
  const r = new Reader(body, 'Query');
  const sql = r.cstring();
  r.end();
  return { kind: 'Query', sql };
}

export function decodeParse(body: Buffer): Parse {
  const r = new Reader(body, 'Parse');
  const name = r.cstring();
  const sql = r.cstring();
  const n = r.uint16();
  r.expectItems(n, 4);
  const paramTypes = new Array<number>(n);
  for (let i = 0; i < n; i++) paramTypes[i] = r.uint32();
  r.end();
  return { kind: 'Parse', name, sql, paramTypes };
}

function readFormats(r: Reader): number[] {
  const n = r.uint16();
  r.expectItems(n, 2);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = r.int16();
  return out;
}

function readFields(r: Reader): Field[] {
  const n = r.uint16();
  r.expectItems(n, 4);
  const out = new Array<Field>(n);
  for (let i = 0; i < n; i++) out[i] = r.field();
  return out;
}

export function decodeBind(body: Buffer): Bind {
  const r = new Reader(body, 'Bind');
  const portal = r.cstring();
  const statement = r.cstring();
  const paramFormats = readFormats(r);
  const params = readFields(r);
  const resultFormats = readFormats(r);
  r.end();
  return { kind: 'Bind', portal, statement, paramFormats, params, resultFormats };
}

function readTarget(r: Reader): DescribeTarget {
  const t = r.uint8();
  if (t === 0x53) return 'S';
  if (t === 0x50) return 'P';
  throw new ProtocolError(`${r.what}: invalid target type`);
}

export function decodeDescribe(body: Buffer): Describe {
  const r = new Reader(body, 'Describe');
  const target = readTarget(r);
  const name = r.cstring();
  r.end();
  return { kind: 'Describe', target, name };
}

export function decodeClose(body: Buffer): Close {
  const r = new Reader(body, 'Close');
  const target = readTarget(r);
  const name = r.cstring();
  r.end();
  return { kind: 'Close', target, name };
}

export function decodeExecute(body: Buffer): Execute {
  const r = new Reader(body, 'Execute');
  const portal = r.cstring();
  const maxRows = r.int32();
  r.end();
  return { kind: 'Execute', portal, maxRows };
}

export function decodeCopyFail(body: Buffer): CopyFail {
  const r = new Reader(body, 'CopyFail');
  const message = r.cstring();
  r.end();
  return { kind: 'CopyFail', message };
}

export function decodeFunctionCall(body: Buffer): FunctionCall {
  const r = new Reader(body, 'FunctionCall');
  const functionOid = r.uint32();
  const argFormats = readFormats(r);
  const args = readFields(r);
  const resultFormat = r.int16();
  r.end();
  return { kind: 'FunctionCall', functionOid, argFormats, args, resultFormat };
}

/** 'p' as a PasswordMessage (cleartext or md5 response). */
export function decodePassword(body: Buffer): PasswordMessage {
  const r = new Reader(body, 'PasswordMessage');
  const password = r.cstring();
  r.end();
  return { kind: 'PasswordMessage', password };
}

/** 'p' as the first SASL message: mechanism name, then Int32 length (-1 = none) and the client-first data. */
export function decodeSASLInitialResponse(body: Buffer): SASLInitialResponse {
  const r = new Reader(body, 'SASLInitialResponse');
  const mechanism = r.cstring();
  const data = r.field();
  r.end();
  return { kind: 'SASLInitialResponse', mechanism, data };
}

/** 'p' as a later SASL message: the whole body is mechanism data. */
export function decodeSASLResponse(body: Buffer): SASLResponse {
  return { kind: 'SASLResponse', data: body };
}

function expectEmpty(body: Buffer, what: string): void {
  if (body.length !== 0) throw new ProtocolError(`${what}: unexpected trailing bytes`);
}

/**
 * Decodes any frontend message by type byte. 'p' is returned as an opaque AuthResponse (its meaning depends
 * on the auth exchange); an unknown type throws.
 */
export function decodeFrontend(type: number, body: Buffer): FrontendMessage {
  switch (type) {
    case FE.Query:
      return decodeQuery(body);
    case FE.Parse:
      return decodeParse(body);
    case FE.Bind:
      return decodeBind(body);
    case FE.Describe:
      return decodeDescribe(body);
    case FE.Execute:
      return decodeExecute(body);
    case FE.Close:
      return decodeClose(body);
    case FE.Sync:
      expectEmpty(body, 'Sync');
      return { kind: 'Sync' };
    case FE.Flush:
      expectEmpty(body, 'Flush');
      return { kind: 'Flush' };
    case FE.Terminate:
      expectEmpty(body, 'Terminate');
      return { kind: 'Terminate' };
    case FE.CopyData:
      return { kind: 'CopyData', data: body };
    case FE.CopyDone:
      expectEmpty(body, 'CopyDone');
      return { kind: 'CopyDone' };
    case FE.CopyFail:
      return decodeCopyFail(body);
    case FE.FunctionCall:
      return decodeFunctionCall(body);
    case FE.AuthResponse:
      return { kind: 'AuthResponse', data: body };
    default:
      throw new ProtocolError(`invalid frontend message type ${type}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Format codes

/**
 * Expands Bind/FunctionCall format codes to one per value: none → all text (0), one → that code for all,
 * otherwise exactly one per value. Mirrors PostgreSQL's check (08P01 on a count mismatch).
 */
export function expandFormats(codes: readonly number[], n: number): number[] {
  if (codes.length === n) return codes.slice();
  if (codes.length === 0) return new Array<number>(n).fill(0);
  if (codes.length === 1) return new Array<number>(n).fill(codes[0]!);
  throw new ProtocolError(`message has ${codes.length} format codes but ${n} values`);
}

// ---------------------------------------------------------------------------------------------------------
// Encoders

export function encodeQuery(sql: string): Buffer {
  return new Writer(FE.Query, cstringSize(sql)).cstring(sql).finish();
}

export function encodeParse(msg: Omit<Parse, 'kind'>): Buffer {
  const w = new Writer(FE.Parse, cstringSize(msg.name) + cstringSize(msg.sql) + 2 + 4 * msg.paramTypes.length);
  w.cstring(msg.name).cstring(msg.sql).uint16(msg.paramTypes.length);
  for (const t of msg.paramTypes) w.uint32(t);
  return w.finish();
}

function writeFormats(w: Writer, codes: readonly number[]): void {
  w.uint16(codes.length);
  for (const c of codes) w.int16(c);
}

function writeFields(w: Writer, fields: readonly Field[]): void {
  w.uint16(fields.length);
  for (const f of fields) w.field(f);
}

function fieldsSize(fields: readonly Field[]): number {
  let n = 2;
  for (const f of fields) n += fieldSize(f);
  return n;
}

export function encodeBind(msg: Omit<Bind, 'kind'>): Buffer {
  const size =
    cstringSize(msg.portal) +
    cstringSize(msg.statement) +
    2 + 2 * msg.paramFormats.length +
    fieldsSize(msg.params) +
    2 + 2 * msg.resultFormats.length;
  const w = new Writer(FE.Bind, size).cstring(msg.portal).cstring(msg.statement);
  writeFormats(w, msg.paramFormats);
  writeFields(w, msg.params);
  writeFormats(w, msg.resultFormats);
  return w.finish();
}

function encodeTargeted(type: number, target: DescribeTarget, name: string): Buffer {
  return new Writer(type, 1 + cstringSize(name)).uint8(target === 'S' ? 0x53 : 0x50).cstring(name).finish();
}

export function encodeDescribe(msg: Omit<Describe, 'kind'>): Buffer {
  return encodeTargeted(FE.Describe, msg.target, msg.name);
}

export function encodeClose(msg: Omit<Close, 'kind'>): Buffer {
  return encodeTargeted(FE.Close, msg.target, msg.name);
}

export function encodeExecute(msg: Omit<Execute, 'kind'>): Buffer {
  return new Writer(FE.Execute, cstringSize(msg.portal) + 4).cstring(msg.portal).int32(msg.maxRows).finish();
}

export function encodeSync(): Buffer {
  return emptyMessage(FE.Sync);
}
export function encodeFlush(): Buffer {
  return emptyMessage(FE.Flush);
}
export function encodeTerminate(): Buffer {
  return emptyMessage(FE.Terminate);
}
/** CopyData has the same type byte in both directions. */
export function encodeCopyData(data: Uint8Array): Buffer {
  return new Writer(FE.CopyData, data.length).bytes(data).finish();
}
/** CopyDone has the same type byte in both directions. */
export function encodeCopyDone(): Buffer {
  return emptyMessage(FE.CopyDone);
}
export function encodeCopyFail(message: string): Buffer {
  return new Writer(FE.CopyFail, cstringSize(message)).cstring(message).finish();
}

export function encodeFunctionCall(msg: Omit<FunctionCall, 'kind'>): Buffer {
  const w = new Writer(FE.FunctionCall, 4 + 2 + 2 * msg.argFormats.length + fieldsSize(msg.args) + 2);
  w.uint32(msg.functionOid);
  writeFormats(w, msg.argFormats);
  writeFields(w, msg.args);
  return w.int16(msg.resultFormat).finish();
}

export function encodePassword(password: string): Buffer {
  return new Writer(FE.AuthResponse, cstringSize(password)).cstring(password).finish();
}

export function encodeSASLInitialResponse(msg: { mechanism: string; data: Buffer | null }): Buffer {
  return new Writer(FE.AuthResponse, cstringSize(msg.mechanism) + fieldSize(msg.data))
    .cstring(msg.mechanism)
    .field(msg.data)
    .finish();
}

export function encodeSASLResponse(data: Uint8Array): Buffer {
  return new Writer(FE.AuthResponse, data.length).bytes(data).finish();
}

export function encodeFrontend(msg: FrontendMessage): Buffer {
  switch (msg.kind) {
    case 'Query':
      return encodeQuery(msg.sql);
    case 'Parse':
      return encodeParse(msg);
    case 'Bind':
      return encodeBind(msg);
    case 'Describe':
      return encodeDescribe(msg);
    case 'Execute':
      return encodeExecute(msg);
    case 'Close':
      return encodeClose(msg);
    case 'Sync':
      return encodeSync();
    case 'Flush':
      return encodeFlush();
    case 'Terminate':
      return encodeTerminate();
    case 'CopyData':
      return encodeCopyData(msg.data);
    case 'CopyDone':
      return encodeCopyDone();
    case 'CopyFail':
      return encodeCopyFail(msg.message);
    case 'FunctionCall':
      return encodeFunctionCall(msg);
    case 'AuthResponse':
      return encodeSASLResponse(msg.data);
  }
}
