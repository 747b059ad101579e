// Shared test data: sample values of every v1 logical type with PostgreSQL's own text and binary renderings
// (server.test.ts checks each rendering against a real server), real cell keys, and column descriptions.
import { randomBytes } from 'node:crypto';
import { cellKeyFromBytes, encryptCell, type CellKey, type CellMode } from '../../../keyring/cells/index.js';
import { canonicalFromText } from '../../../keyring/logical-types.js';
import type { LogicalTypeSpec, ProtectedColumn } from '../../../proxy/sql/types.js';
import { toLogicalType } from '../../../proxy/results/logical.js';

export interface Sample {
  type: LogicalTypeSpec;
  /** The type as a SQL cast, to ask the server for its rendering. */
  pgType: string;
  /** Text input as a client would send it. */
  input: string;
  /** PostgreSQL's text output of the value (bytea_output = hex). */
  text: string;
  /** bytea only: text output with bytea_output = escape. */
  escapeText?: string;
  /** PostgreSQL's binary output, hex. */
  binaryHex: string;
  /** The masked rendering, or null where the type has no mask (sent as NULL). */
  mask: string | null;
}

const utf8hex = (s: string): string => Buffer.from(s, 'utf8').toString('hex');

export const SAMPLES: Sample[] = [
  { type: { type: 'text' }, pgType: 'text', input: 'héllo wörld', text: 'héllo wörld', binaryHex: utf8hex('héllo wörld'), mask: '****' },
  { type: { type: 'text' }, pgType: 'text', input: '山田 太郎', text: '山田 太郎', binaryHex: utf8hex('山田 太郎'), mask: '****' },
  { type: { type: 'text' }, pgType: 'text', input: '', text: '', binaryHex: '', mask: '****' },
  { type: { type: 'varchar', length: 12 }, pgType: 'varchar(12)', input: 'abc  ', text: 'abc  ', binaryHex: '6162632020', mask: '****' },
  { type: { type: 'char', length: 5 }, pgType: 'char(5)', input: 'ab', text: 'ab   ', binaryHex: '6162202020', mask: '****' },
  { type: { type: 'mynumber' }, pgType: 'text', input: '1234-5678-9018', text: '123456789018', binaryHex: utf8hex('123456789018'), mask: '********9018' },
  { type: { type: 'mynumber' }, pgType: 'text', input: '000000000019', text: '000000000019', binaryHex: utf8hex('000000000019'), mask: '********0019' },
  { type: { type: 'corporate_number' }, pgType: 'text', input: '9234567890123', text: '9234567890123', binaryHex: utf8hex('9234567890123'), mask: '*********0123' },
  { type: { type: 'int2' }, pgType: 'int2', input: '-32768', text: '-32768', binaryHex: '8000', mask: null },
  { type: { type: 'int4' }, pgType: 'int4', input: '2147483647', text: '2147483647', binaryHex: '7fffffff', mask: null },
  { type: { type: 'int4' }, pgType: 'int4', input: ' +0 ', text: '0', binaryHex: '00000000', mask: null },
  { type: { type: 'int8' }, pgType: 'int8', input: '-9223372036854775808', text: '-9223372036854775808', binaryHex: '8000000000000000', mask: null },
  { type: { type: 'date' }, pgType: 'date', input: '2024-02-29', text: '2024-02-29', binaryHex: '00002279', mask: null },
  { type: { type: 'date' }, pgType: 'date', input: '0001-01-01', text: '0001-01-01', binaryHex: 'fff4dbf9', mask: null },
  { type: { type: 'date' }, pgType: 'date', input: '1999-12-31', text: '1999-12-31', binaryHex: 'ffffffff', mask: null },
  { type: { type: 'bytea' }, pgType: 'bytea', input: '\\x00ff5c41', text: '\\x00ff5c41', escapeText: '\\000\\377\\\\A', binaryHex: '00ff5c41', mask: null },
];

export function column(type: LogicalTypeSpec, mode: CellMode = 'deterministic', name = 'c'): ProtectedColumn {
  return { schema: 'public', table: 'people', column: name, type, mode, domain: `public.people.${name}` };
}

export interface TestKey {
  mode: CellMode;
  domainId: number;
  version: number;
  key: CellKey;
}

export function newKey(mode: CellMode, domainId: number, version = 1): TestKey {
  return { mode, domainId, version, key: cellKeyFromBytes(mode, randomBytes(mode === 'deterministic' ? 64 : 32)) };
}

export function seal(k: TestKey, canonical: Buffer): Buffer {
  return encryptCell({ mode: k.mode, domainId: k.domainId, version: k.version }, k.key, canonical);
}

export function canonical(type: LogicalTypeSpec, input: string): Buffer {
  const r = canonicalFromText(toLogicalType(type), input);
  if (!r.ok) throw new Error(`bad fixture: ${r.reason}`);
  return r.value;
}

/** bytea escape output, written independently of proxy/results/bytea.ts (per byteaout in varlena.c). */
export function byteaEscape(b: Buffer): string {
  let s = '';
  for (const x of b) {
    if (x === 0x5c) s += '\\\\';
    else if (x < 0x20 || x > 0x7e) s += '\\' + x.toString(8).padStart(3, '0');
    else s += String.fromCharCode(x);
  }
  return s;
}
