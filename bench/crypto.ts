// npm run bench:crypto — cell encrypt/decrypt throughput beside raw node:crypto AES-256-GCM in the same run.
// Not a test: prints a table and writes bench/results/crypto-<date>.json. Single thread (one core).
//
// Throughput is ops per CPU-second of this process (process.cpuUsage, user + system), which is "on one
// core" and stays meaningful while other work shares the machine; wall-clock ops/s go to the JSON too.
//
// Baseline ("raw GCM"): the idiomatic per-value code — randomBytes(12) nonce, createCipheriv per op, the same
// 12-byte AAD, output nonce ‖ C ‖ tag; decrypt with createDecipheriv per op. Each figure is the median of
// ROUNDS rounds; within a round every case runs for SLICE_MS, and the order rotates between rounds so drift
// (thermal, other processes on the 2 shared cores) spreads evenly.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cellKeyFromBytes, decryptCell, encodeCellHeader, encryptCell, type CellHeader } from '../keyring/cells/index.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);
const SLICE_MS = Number(process.env.BENCH_SLICE_MS ?? 250);

const payloads = {
  'mynumber 12 B': Buffer.from('123456789018'),
  'text 200 B': Buffer.from('あいうえお mamori bench text '.repeat(10)).subarray(0, 200),
};

const gcmRaw = randomBytes(32);
const randKey = cellKeyFromBytes('randomized', gcmRaw);
const detKey = cellKeyFromBytes('deterministic', randomBytes(64));
const hRand: CellHeader = { mode: 'randomized', domainId: 42, version: 1 };
const hDet: CellHeader = { mode: 'deterministic', domainId: 43, version: 1 };
const aad = encodeCellHeader(hRand);
const rawKeyObject = randKey.mode === 'randomized' ? randKey.key : (null as never);

function rawGcmEncrypt(p: Buffer): Buffer {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', rawKeyObject, nonce, { authTagLength: 16 });
  c.setAAD(aad);
  const body = c.update(p);
  c.final();
  return Buffer.concat([nonce, body, c.getAuthTag()]);
}

function rawGcmDecrypt(b: Buffer): Buffer {
  const d = createDecipheriv('aes-256-gcm', rawKeyObject, b.subarray(0, 12), { authTagLength: 16 });
  d.setAAD(aad);
  d.setAuthTag(b.subarray(b.length - 16));
  const p = d.update(b.subarray(12, b.length - 16));
  d.final();
  return p;
}

type Op = () => Buffer;
interface Case {
  payload: string;
  op: string;
  run: Op;
}

const cases: Case[] = [];
const sizes: Record<string, Record<string, number>> = {};
for (const [name, p] of Object.entries(payloads)) {
  const rawCt = rawGcmEncrypt(p);
  const randCell = encryptCell(hRand, randKey, p);
  const detCell = encryptCell(hDet, detKey, p);
  // Sanity: every path round-trips before it is timed.
  for (const back of [rawGcmDecrypt(rawCt), decryptCell(randCell, randKey), decryptCell(detCell, detKey)]) {
    if (!back.equals(p)) throw new Error('bench: round trip failed');
  }
  sizes[name] = { plaintext: p.length, rawGcm: rawCt.length, randomized: randCell.length, deterministic: detCell.length };
  cases.push(
    { payload: name, op: 'raw GCM encrypt', run: () => rawGcmEncrypt(p) },
    { payload: name, op: 'raw GCM decrypt', run: () => rawGcmDecrypt(rawCt) },
    { payload: name, op: 'randomized encrypt', run: () => encryptCell(hRand, randKey, p) },
    { payload: name, op: 'randomized decrypt', run: () => decryptCell(randCell, randKey) },
    { payload: name, op: 'deterministic encrypt', run: () => encryptCell(hDet, detKey, p) },
    { payload: name, op: 'deterministic decrypt', run: () => decryptCell(detCell, detKey) },
  );
}

let sink = 0;
interface Sample {
  cpu: number;
  wall: number;
}
function measure(run: Op): Sample {
  const end = process.hrtime.bigint() + BigInt(SLICE_MS) * 1_000_000n;
  const start = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  let ops = 0;
  let now = start;
  while (now < end) {
    for (let i = 0; i < 256; i++) sink ^= run()[0]!;
    ops += 256;
    now = process.hrtime.bigint();
  }
  const cpu = process.cpuUsage(cpu0);
  return { cpu: ops / ((cpu.user + cpu.system) / 1e6), wall: ops / (Number(now - start) / 1e9) };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

// Warm-up (JIT, OpenSSL contexts), then the alternating rounds.
for (const c of cases) for (let i = 0; i < 2000; i++) sink ^= c.run()[0]!;
const samples = new Map<Case, Sample[]>(cases.map((c) => [c, []]));
for (let r = 0; r < ROUNDS; r++) {
  for (let i = 0; i < cases.length; i++) {
    const c = cases[(i + r) % cases.length]!;
    samples.get(c)!.push(measure(c.run));
  }
}

const kops = (n: number): string => `${(n / 1000).toFixed(1)} k`;
const rows: {
  payload: string;
  op: string;
  opsPerCpuSec: number;
  vsRawGcm: number;
  min: number;
  max: number;
  opsPerWallSec: number;
  wallVsRawGcm: number;
}[] = [];
for (const c of cases) {
  const cpu = samples.get(c)!.map((x) => x.cpu);
  const wall = samples.get(c)!.map((x) => x.wall);
  const dir = c.op.endsWith('encrypt') ? 'encrypt' : 'decrypt';
  const base = samples.get(cases.find((b) => b.payload === c.payload && b.op === `raw GCM ${dir}`)!)!;
  rows.push({
    payload: c.payload,
    op: c.op,
    opsPerCpuSec: Math.round(median(cpu)),
    vsRawGcm: Number((median(cpu) / median(base.map((x) => x.cpu))).toFixed(3)),
    min: Math.round(Math.min(...cpu)),
    max: Math.round(Math.max(...cpu)),
    opsPerWallSec: Math.round(median(wall)),
    wallVsRawGcm: Number((median(wall) / median(base.map((x) => x.wall))).toFixed(3)),
  });
}

const pad = (s: string, n: number): string => s.padEnd(n);
const lpad = (s: string, n: number): string => s.padStart(n);
console.log(`node ${process.version}, ${cpus()[0]?.model ?? 'cpu?'}, ${ROUNDS} rounds × ${SLICE_MS} ms, median`);
console.log('ops per CPU-second (one core); wall-clock ops/s and its ratio at the right');
console.log(
  `${pad('payload', 15)}${pad('operation', 24)}${lpad('ops/s', 10)}${lpad('× raw GCM', 11)}${lpad('min', 10)}` +
    `${lpad('max', 10)}${lpad('wall ops/s', 12)}${lpad('× raw', 8)}`,
);
for (const r of rows) {
  console.log(
    `${pad(r.payload, 15)}${pad(r.op, 24)}${lpad(kops(r.opsPerCpuSec), 10)}${lpad(r.vsRawGcm.toFixed(2), 11)}` +
      `${lpad(kops(r.min), 10)}${lpad(kops(r.max), 10)}${lpad(kops(r.opsPerWallSec), 12)}${lpad(r.wallVsRawGcm.toFixed(2), 8)}`,
  );
}
console.log('\ncell sizes (bytes)');
console.log(`${pad('payload', 15)}${lpad('plaintext', 10)}${lpad('raw GCM', 10)}${lpad('randomized', 12)}${lpad('deterministic', 15)}`);
for (const [name, s] of Object.entries(sizes)) {
  console.log(`${pad(name, 15)}${lpad(String(s.plaintext), 10)}${lpad(String(s.rawGcm), 10)}${lpad(String(s.randomized), 12)}${lpad(String(s.deterministic), 15)}`);
}

const here = dirname(fileURLToPath(import.meta.url));
const date = new Date().toISOString().slice(0, 10);
const outFile = join(here, 'results', `crypto-${date}.json`);
mkdirSync(dirname(outFile), { recursive: true });
writeFileSync(
  outFile,
  JSON.stringify(
    { date: new Date().toISOString(), node: process.version, cpu: cpus()[0]?.model, rounds: ROUNDS, sliceMs: SLICE_MS, rows, sizes },
    null,
    2,
  ) + '\n',
);
console.log(`\nwrote ${outFile}${sink === 0.5 ? '' : ''}`);
