// npm run bench:copy — bulk paths of a protected column through mamori: COPY FROM STDIN of N rows (one
// protected My Number per row; default 1 M, BENCH_COPY_ROWS to change) and a SELECT of 100 k rows decrypting
// it, each beside the same statement on a plaintext table through mamori, and the cell cipher's own
// single-core rate (encryptCell / decryptCell loops) measured in the same run. Cells/s = protected values
// per wall-clock second. Not a test. mamori runs in this process (as in the tests' stacks), so client-side
// work (row generation, pg parsing) shares the CPU with it on both the protected and plaintext runs.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import { cellKeyFromBytes, decryptCell, encryptCell } from '../keyring/cells/index.js';
import { startProtectedStack, ROLES } from '../test/harness/protected.js';
import { fmt } from './lib/stats.js';
import { myNumberCheckDigit } from '../keyring/mynumber.js';

const N = Number(process.env.BENCH_COPY_ROWS ?? 1_000_000);
const SELECT_ROWS = Math.min(N, Number(process.env.BENCH_SELECT_ROWS ?? 100_000));

/** A valid My Number from an 11-digit base (check digit per MYNUMBER.md). */
function mn(base: number): string {
  const d = String(base).padStart(11, '0');
  return d + String(myNumberCheckDigit(d));
}

function* rowStream(): Generator<Buffer> {
  let buf = '';
  for (let i = 1; i <= N; i++) {
    buf += `${i}\temployee ${i}\t${mn(i)}\n`;
    if (buf.length >= 65_000) {
      yield Buffer.from(buf);
      buf = '';
    }
  }
  if (buf) yield Buffer.from(buf);
}

/** Single-core cipher rate: cells per CPU-second over ~1 s of encryptCell (or decryptCell). */
function cipherRate(): { encrypt: number; decrypt: number } {
  const key = cellKeyFromBytes('deterministic', randomBytes(64));
  const header = { mode: 'deterministic' as const, domainId: 7, version: 1 };
  const values = Array.from({ length: 1024 }, (_, i) => Buffer.from(mn(i + 1), 'latin1'));
  const cells = values.map((v) => encryptCell(header, key, v));
  const run = (f: (i: number) => void): number => {
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
  const encrypt = run((i) => { sink += encryptCell(header, key, values[i]!).length; });
  const decrypt = run((i) => { sink += decryptCell(cells[i]!, key, { domainId: 7 }).length; });
  if (sink === 0) throw new Error('unreachable');
  return { encrypt, decrypt };
}

async function timed(f: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await f();
  return (performance.now() - t0) / 1000;
}

async function main(): Promise<void> {
  const columns = {
    'public.employees.my_number': {
      type: 'mynumber', mode: 'deterministic',
      read: { plaintext: [ROLES.clerk] }, search: [ROLES.clerk], write: [ROLES.clerk], export: [ROLES.clerk], others: 'deny',
    },
  };
  const s = await startProtectedStack({ columns: columns as never });
  try {
    await s.cluster.query(`CREATE TABLE public.plain_employees (id int PRIMARY KEY, name text NOT NULL, my_number text UNIQUE);
      GRANT SELECT, INSERT ON public.plain_employees TO ${ROLES.clerk}`);
    const c = await s.connect(ROLES.clerk);
    c.on('error', () => undefined); // the stack's shutdown ends it
    const copyInto = async (table: string): Promise<void> => {
      const stream = c.query(copyFrom(`COPY ${table} (id, name, my_number) FROM STDIN`));
      await pipeline(Readable.from({ [Symbol.iterator]: rowStream }), stream);
      if (stream.rowCount !== N) throw new Error(`COPY stored ${stream.rowCount} rows`);
    };
    // warm-up (keys, catalog, JIT)
    await c.query(`INSERT INTO employees VALUES (0, 'w', '${mn(99_999_999_999)}')`);
    await c.query(`SELECT my_number FROM employees WHERE id = 0`);
    const cipher = cipherRate();
    const copyProt = await timed(() => copyInto('employees'));
    const copyPlain = await timed(() => copyInto('plain_employees'));
    await s.cluster.query('VACUUM ANALYZE public.employees');
    await s.cluster.query('VACUUM ANALYZE public.plain_employees');
    const select = async (table: string): Promise<number> => {
      const sql = `SELECT id, my_number FROM ${table} WHERE id BETWEEN 1 AND ${SELECT_ROWS}`;
      await c.query(sql); // warm
      return timed(async () => {
        const r = await c.query(sql);
        if (r.rowCount !== SELECT_ROWS) throw new Error(`SELECT returned ${r.rowCount}`);
        if (table === 'employees' && (r.rows[0] as { my_number: string }).my_number.length !== 12) throw new Error('not decrypted');
      });
    };
    const selProt = await select('employees');
    const selPlain = await select('plain_employees');
    await c.end();
    const table = [
      ['cell cipher alone, 1 core (encryptCell / decryptCell)', `${fmt(cipher.encrypt)} enc/s`, `${fmt(cipher.decrypt)} dec/s`, ''],
      [`COPY FROM ${N} rows, protected`, `${fmt(N / copyProt)} cells/s`, `${fmt(N / copyProt / cipher.encrypt, 2)} × cipher`, `${copyProt.toFixed(1)} s`],
      [`COPY FROM ${N} rows, plaintext table`, `${fmt(N / copyPlain)} rows/s`, `protected/plain ${fmt(copyPlain / copyProt, 2)}`, `${copyPlain.toFixed(1)} s`],
      [`SELECT ${SELECT_ROWS} rows, protected (decrypt)`, `${fmt(SELECT_ROWS / selProt)} cells/s`, `${fmt(SELECT_ROWS / selProt / cipher.decrypt, 2)} × cipher`, `${selProt.toFixed(2)} s`],
      [`SELECT ${SELECT_ROWS} rows, plaintext table`, `${fmt(SELECT_ROWS / selPlain)} rows/s`, `protected/plain ${fmt(selPlain / selProt, 2)}`, `${selPlain.toFixed(2)} s`],
    ];
    console.log('| case | rate | ratio | time |\n|---|---|---|---|');
    for (const r of table) console.log(`| ${r.join(' | ')} |`);
  } catch (e) {
    console.error('bench failed:', (e as Error).message);
    process.exitCode = 1;
  } finally {
    await s.stop();
  }
}

await main();
