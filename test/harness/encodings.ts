// PostgreSQL's own conversions between UTF-8 and a client encoding, for the generator of mamori's
// correction tables (scripts/gen-encoding-tables.ts) and the test that checks mamori's codecs against the
// server (test/proxy/results/client-encoding.test.ts).
import type { Cluster } from './cluster.js';

const FUNCS = `
create or replace function mamori_test_enc_to(cp int, e text) returns bytea language plpgsql as $$
begin return convert_to(chr(cp), e); exception when others then return null; end $$;
create or replace function mamori_test_enc_from(b bytea, e text) returns text language plpgsql as $$
begin return convert_from(b, e); exception when others then return null; end $$;`;

/** Every BMP code point (surrogates left out) → PostgreSQL's bytes for it in `encoding`, or null if it has none. */
export async function pgEncodeBmp(c: Cluster, encoding: string): Promise<Map<number, Buffer | null>> {
  await c.query(FUNCS);
  const r = await c.query<{ cp: number; b: Buffer | null }>(`
    select cp, mamori_test_enc_to(cp, $1) b from generate_series(1, 65535) cp where cp not between 55296 and 57343`, [encoding]);
  return new Map(r.rows.map((x) => [Number(x.cp), x.b]));
}

/**
 * Candidate single characters of `encoding`: every high byte, and for multibyte encodings every two-byte
 * sequence with a high first byte (plus EUC_JP's three-byte JIS X 0212 sequences).
 */
export function candidateSequences(encoding: string, multibyte: boolean): Buffer[] {
  const out: Buffer[] = [];
  for (let a = 0x80; a < 0x100; a++) out.push(Buffer.from([a]));
  if (!multibyte) return out;
  for (let a = 0x80; a < 0x100; a++) for (let b = 0x30; b < 0x100; b++) out.push(Buffer.from([a, b]));
  if (encoding === 'EUC_JP') for (let a = 0xa1; a < 0xff; a++) for (let b = 0xa1; b < 0xff; b++) out.push(Buffer.from([0x8f, a, b]));
  return out;
}

/** PostgreSQL's reading of each byte sequence in `encoding` (null where it refuses it). */
export async function pgDecode(c: Cluster, encoding: string, seqs: readonly Buffer[]): Promise<(string | null)[]> {
  await c.query(FUNCS);
  const r = await c.query<{ i: string; t: string | null }>(`
    select i, mamori_test_enc_from(b, $1) t from unnest($2::bytea[]) with ordinality x(b, i) order by i`, [encoding, seqs]);
  return r.rows.map((x) => x.t);
}
