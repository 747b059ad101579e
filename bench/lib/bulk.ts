// The bulk workloads of bench:policy (issue 6): COPY FROM STDIN of N rows with one protected My Number per row,
// and a SELECT of many rows decrypting it, each beside the same statement on a plaintext table, plus the cell
// cipher's own single-core rate measured in the same run. The client runs in the bench process and mamori in
// its own: the COPY input is generated before the timed section (a few pre-built 64 KB chunks written by
// pg-copy-streams), so the client's share of the machine during a COPY is small.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { cellKeyFromBytes, decryptCell, encryptCell } from '../../keyring/cells/index.js';
import { myNumberCheckDigit } from '../../keyring/mynumber.js';

/** A valid My Number from an 11-digit base (check digit per MYNUMBER.md). */
export function myNumberOf(base: number): string {
  const d = String(base).padStart(11, '0');
  return d + String(myNumberCheckDigit(d));
}

/** Bulk rows carry numbers from this base upwards (disjoint from the pgbench tables' numbers). */
const BULK_BASE = 30_000_000_000;

/** `id \t name \t my_number \n` for ids 1..rows, in chunks of about 64 KB (text format). */
export function copyInput(rows: number): Buffer[] {
  const chunks: Buffer[] = [];
  let buf = '';
  for (let i = 1; i <= rows; i++) {
    buf += `${i}\temployee ${i}\t${myNumberOf(BULK_BASE + i)}\n`;
    if (buf.length >= 65_000) {
      chunks.push(Buffer.from(buf, 'latin1'));
      buf = '';
    }
  }
  if (buf) chunks.push(Buffer.from(buf, 'latin1'));
  return chunks;
}

export interface CipherRate { encrypt: number; decrypt: number }

/** Single-core cipher rate: cells per CPU-second over ~1 s each of encryptCell and decryptCell on My Numbers. */
export function cipherRate(): CipherRate {
  const key = cellKeyFromBytes('deterministic', randomBytes(64));
  const header = { mode: 'deterministic' as const, domainId: 7, version: 1 };
  const values = Array.from({ length: 1024 }, (_, i) => Buffer.from(myNumberOf(BULK_BASE + i + 1), 'latin1'));
  const cells = values.map((v) => encryptCell(header, key, v));
  const rate = (f: (i: number) => void): number => {
    const c0 = process.cpuUsage();
    const end = performance.now() + 1000;
    let n = 0;
    while (performance.now() < end) {
      for (let i = 0; i < 1024; i++) f(i);
      n += 1024;
    }
    const c = process.cpuUsage(c0);
    return n / ((c.user + c.system) / 1e6);
  };
  let sink = 0;
  const encrypt = rate((i) => { sink += encryptCell(header, key, values[i]!).length; });
  const decrypt = rate((i) => { sink += decryptCell(cells[i]!, key, { domainId: 7 }).length; });
  if (sink === 0) throw new Error('unreachable');
  return { encrypt, decrypt };
}

/** COPY table (id, name, my_number) FROM STDIN with the pre-built chunks; wall seconds. Throws on a short count. */
export async function timedCopy(c: pg.Client, table: string, chunks: readonly Buffer[], rows: number): Promise<number> {
  const t0 = performance.now();
  const stream = c.query(copyFrom(`COPY ${table} (id, name, my_number) FROM STDIN`));
  await pipeline(Readable.from(chunks), stream);
  const s = (performance.now() - t0) / 1000;
  if (stream.rowCount !== rows) throw new Error(`COPY into ${table} stored ${stream.rowCount} rows, not ${rows}`);
  return s;
}

/**
 * `repeat` SELECTs of ids 1..rows returning the My Number (decrypted through mamori on the protected table);
 * wall seconds for all of them. Checks the count and that values come back as 12 digits.
 */
export async function timedSelect(c: pg.Client, table: string, rows: number, repeat: number): Promise<number> {
  const sql = `SELECT id, my_number FROM ${table} WHERE id BETWEEN 1 AND ${rows}`;
  const t0 = performance.now();
  for (let i = 0; i < repeat; i++) {
    const r = await c.query<unknown[]>({ text: sql, rowMode: 'array' });
    if (r.rowCount !== rows) throw new Error(`SELECT on ${table} returned ${r.rowCount} rows, not ${rows}`);
    const v = r.rows[0]?.[1];
    if (typeof v !== 'string' || !/^\d{12}$/.test(v)) throw new Error(`SELECT on ${table} did not return a plaintext My Number`);
  }
  return (performance.now() - t0) / 1000;
}
