// node --import tsx bench/rows.ts — the protected read hot path: rewriting a 5-field DataRow with one
// deterministic My Number field, in text (bytea hex) and binary result formats, beside decoding the same row
// with decodeDataRow (the floor of touching a row at all) and raw decryptCell calls (the floor of the
// crypto). Not a test: prints rows per CPU-second of this process (median of ROUNDS rounds; within a
// round each case runs SLICE_MS, the order rotating between rounds) and the ratios.
import { randomBytes } from 'node:crypto';
import { cellKeyFromBytes, decryptCell, encryptCell } from '../keyring/cells/index.js';
import { decodeDataRow, encodeDataRow } from '../proxy/wire/backend.js';
import { RowRewriter, StaticCellKeys, type FieldPlan } from '../proxy/results/index.js';
import type { ProtectedColumn } from '../proxy/sql/types.js';
import { fmt, median, ratio } from './lib/stats.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const SLICE_MS = Number(process.env.BENCH_SLICE_MS ?? 300);

const key = cellKeyFromBytes('deterministic', randomBytes(64));
const cell = encryptCell({ mode: 'deterministic', domainId: 7, version: 1 }, key, Buffer.from('123456789018'));
const keys = new StaticCellKeys().set(7, 1, key);
const col: ProtectedColumn = {
  schema: 'public', table: 'employees', column: 'my_number', type: { type: 'mynumber' }, mode: 'deterministic', domain: 'mynumber',
};
const plans: FieldPlan[] = [{ index: 1, column: col, action: 'plaintext', domainId: 7 }];
const maskPlans: FieldPlan[] = [{ index: 1, column: col, action: 'mask', domainId: 7 }];

const rowOf = (protectedField: Buffer): Buffer =>
  encodeDataRow([Buffer.from('12345'), protectedField, Buffer.from('山田 太郎'), Buffer.from('taro@example.com'), Buffer.from('2024-02-29')]).subarray(5);
const textRow = rowOf(Buffer.from('\\x' + cell.toString('hex'), 'latin1'));
const binaryRow = rowOf(cell);

const textRw = new RowRewriter(plans, [0, 0, 0, 0, 0], keys);
const binaryRw = new RowRewriter(plans, [0, 1, 0, 0, 0], keys);
const maskRw = new RowRewriter(maskPlans, [0, 0, 0, 0, 0], keys);

// Check the setup renders what it should before timing it.
const check = decodeDataRow(textRw.rewrite(textRow).subarray(5)).fields[1]!.toString();
if (check !== '123456789018') throw new Error('bench setup: text rewrite did not decrypt');
if (decodeDataRow(binaryRw.rewrite(binaryRow).subarray(5)).fields[1]!.toString() !== '123456789018') throw new Error('bench setup: binary');

let sink = 0;
const cases: Array<[string, () => void]> = [
  ['decodeDataRow (baseline)', () => { sink += decodeDataRow(textRow).fields.length; }],
  ['decryptCell only', () => { sink += decryptCell(cell, key, { domainId: 7 }).length; }],
  ['rewrite, text (hex)', () => { sink += textRw.rewrite(textRow).length; }],
  ['rewrite, binary', () => { sink += binaryRw.rewrite(binaryRow).length; }],
  ['rewrite, mask, text', () => { sink += maskRw.rewrite(textRow).length; }],
];

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function slice(run: () => void): number {
  const endAt = performance.now() + SLICE_MS;
  const c0 = cpuSeconds();
  let n = 0;
  while (performance.now() < endAt) {
    for (let i = 0; i < 256; i++) run();
    n += 256;
  }
  return n / (cpuSeconds() - c0);
}

const results = new Map<string, number[]>(cases.map(([name]) => [name, []]));
for (const [, run] of cases) slice(run); // warm up
for (let r = 0; r < ROUNDS; r++) {
  for (let k = 0; k < cases.length; k++) {
    const [name, run] = cases[(k + r) % cases.length]!;
    results.get(name)!.push(slice(run));
  }
}

const base = median(results.get('decodeDataRow (baseline)')!);
const crypto = median(results.get('decryptCell only')!);
console.log(`rows per CPU-second, median of ${ROUNDS} rounds × ${SLICE_MS} ms (node ${process.version})`);
console.log('case                         rows/s   ×decode  ×decrypt');
for (const [name] of cases) {
  const m = median(results.get(name)!);
  console.log(`${name.padEnd(26)} ${fmt(m).padStart(9)}  ${fmt(ratio(m, base), 3).padStart(7)}  ${fmt(ratio(m, crypto), 3).padStart(8)}`);
}
if (sink === 0) console.log('');
