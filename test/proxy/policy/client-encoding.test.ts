// Protected text in sessions whose client_encoding is not UTF8 (docs/results.md, "Client encodings"), end to
// end through mamori to a real PostgreSQL (database encoding UTF8). Every rendered value is compared with
// PostgreSQL's own conversion of the same text from an unprotected column in the same session; writes and
// searches from EUC_JP / SJIS sessions meet values written by UTF8 sessions; characters with no
// equivalent raise 22P05 naming the column, never its bytes; what stays refused is refused clearly.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import iconv from 'iconv-lite';
import pg from 'pg';
import postgres from 'postgres';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';
import { RawClient } from '../../harness/raw-client.js';
import { systemBindir } from '../../harness/cluster.js';
import { encodeBind, encodeExecute, encodeSync } from '../../../proxy/wire/frontend.js';
import { decodeDataRow, decodeNoticeFields } from '../../../proxy/wire/backend.js';
import { BE } from '../../../proxy/wire/types.js';
import type { Frame } from '../../../proxy/wire/framer.js';

const run = promisify(execFile);

// 山田ソ太郎: kanji, and ソ whose SJIS trail byte is 0x5C (a backslash to a byte-level reader); ｱ: half-width
// katakana (one byte in SJIS, 0x8E-prefixed in EUC_JP); ①: an NEC special character (EUC_JP 0xADA1, SJIS
// 0x8740), none of them in LATIN1.
const JA = '山田ソ太郎ｱ①';
const LATIN = 'Müller';
const EXPORTER = 'hr_exporter';
const BIG5_ONLY = 'big5 sample';

let s: ProtectedStack;
let logLines: string[];

before(async () => {
  logLines = [];
  s = await startProtectedStack({
    logLines,
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk], mask: [ROLES.viewer] }, search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
      },
      'public.people.name': {
        type: 'text', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk, EXPORTER], mask: [ROLES.viewer] },
        search: [ROLES.clerk, EXPORTER], write: [ROLES.clerk, EXPORTER], export: [EXPORTER], others: 'deny',
      },
    } as never,
  });
  await s.cluster.query(`CREATE ROLE ${EXPORTER} LOGIN PASSWORD '${PASSWORD}'`);
  // `plain` holds the same text unprotected: PostgreSQL's own conversion is the reference for every check.
  await s.cluster.query('CREATE TABLE public.people (id int PRIMARY KEY, name mamori.text, plain text)');
  for (const r of [ROLES.clerk, ROLES.viewer, ROLES.outsider, EXPORTER]) {
    await s.cluster.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.people, public.employees TO ${r}`);
  }
  const c = await s.connect(ROLES.clerk);
  try {
    await c.query('INSERT INTO people VALUES (1, $1, $2), (2, $3, $4), (3, $5, $6)', [JA, JA, LATIN, LATIN, BIG5_ONLY, BIG5_ONLY]);
    await c.query("INSERT INTO employees VALUES (1, 'Yamada', '123456789018')");
  } finally {
    await c.end();
  }
});

after(async () => {
  await s?.stop();
});

// ---- raw protocol helpers: exact bytes both ways ----------------------------------------------------------

async function raw(role: string, clientEncoding: string): Promise<RawClient> {
  return RawClient.connect('127.0.0.1', s.mamori.port, {
    user: role, password: PASSWORD, tls: { ca: s.cluster.ca.cert, servername: 'localhost' }, params: [['client_encoding', clientEncoding]],
  });
}

function query(sql: Buffer): Buffer {
  const out = Buffer.alloc(5 + sql.length + 1);
  out[0] = 0x51;
  out.writeInt32BE(4 + sql.length + 1, 1);
  sql.copy(out, 5);
  return out;
}

function parse(sql: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from([0]), sql, Buffer.from([0, 0, 0])]);
  const out = Buffer.alloc(5 + body.length);
  out[0] = 0x50;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** SQL text with `${}` parts given as bytes (already in the session's encoding). */
function sqlBytes(parts: TemplateStringsArray, ...values: Buffer[]): Buffer {
  const out: Buffer[] = [];
  parts.forEach((p, i) => {
    out.push(Buffer.from(p, 'latin1'));
    if (i < values.length) out.push(values[i]!);
  });
  return Buffer.concat(out);
}

interface Outcome {
  rows: (Buffer | null)[][];
  error: { code: string; severity: string; message: string } | null;
  frames: Frame[];
  /** The connection ended (after a FATAL) instead of a ReadyForQuery. */
  closed: boolean;
}

/** Messages up to ReadyForQuery, or up to the end of the connection (a FATAL error ends the session). */
async function outcome(c: RawClient): Promise<Outcome> {
  const frames: Frame[] = [];
  let closed = false;
  for (;;) {
    let f: Frame;
    try {
      f = await c.next();
    } catch (e) {
      if (c.closed) {
        closed = true;
        break;
      }
      throw e;
    }
    frames.push(f);
    if (f.type === BE.ReadyForQuery) break;
  }
  const rows = frames.filter((f) => f.type === BE.DataRow).map((f) => decodeDataRow(f.body).fields);
  const e = frames.find((f) => f.type === BE.ErrorResponse);
  const fields = e ? decodeNoticeFields(e.body) : null;
  return { rows, error: fields ? { code: fields.C!, severity: fields.S!, message: fields.M! } : null, frames, closed };
}

async function simple(c: RawClient, sql: Buffer): Promise<Outcome> {
  c.send(query(sql));
  return outcome(c);
}

/** Parse/Bind/Execute of `sql`, results in `format` (0 text, 1 binary), parameters as given (text format). */
async function extended(c: RawClient, sql: Buffer, format: 0 | 1, params: Buffer[] = []): Promise<Outcome> {
  c.send(parse(sql), encodeBind({ portal: '', statement: '', paramFormats: [], params, resultFormats: [format] }), encodeExecute({ portal: '', maxRows: 0 }), encodeSync());
  return outcome(c);
}

const enc = (text: string, encoding: string): Buffer => iconv.encode(text, encoding);

// ---- reads ------------------------------------------------------------------------------------------------

describe('plaintext and mask rendered in the client encoding', () => {
  for (const [encoding, ic] of [['EUC_JP', 'euc-jp'], ['SJIS', 'shift_jis']] as const) {
    test(`${encoding}: plaintext equals PostgreSQL's own conversion of the same text, in text and binary results`, async () => {
      const c = await raw(ROLES.clerk, encoding);
      try {
        for (const r of [
          await simple(c, Buffer.from('SELECT name, plain FROM people WHERE id = 1')),
          await extended(c, Buffer.from('SELECT name, plain FROM people WHERE id = 1'), 0),
          await extended(c, Buffer.from('SELECT name, plain FROM people WHERE id = 1'), 1),
        ]) {
          assert.equal(r.error, null);
          const [name, plain] = r.rows[0]!;
          assert.deepEqual(name, plain);
          assert.deepEqual(name, enc(JA, ic));
        }
      } finally {
        c.close();
      }
    });
  }

  test('a cell of unknown origin released into a text field (a function returning it as text) is in the client encoding too', async () => {
    await s.cluster.query(`CREATE OR REPLACE FUNCTION public.name_text(i int) RETURNS text LANGUAGE sql AS 'SELECT name::bytea::text FROM public.people WHERE id = i'`);
    await s.cluster.query(`GRANT EXECUTE ON FUNCTION public.name_text(int) TO ${ROLES.clerk}`);
    const c = await raw(ROLES.clerk, 'EUC_JP');
    try {
      const r = await simple(c, Buffer.from('SELECT public.name_text(1), plain FROM people WHERE id = 1'));
      assert.equal(r.error, null);
      assert.deepEqual(r.rows[0]![0], r.rows[0]![1]);
      assert.deepEqual(r.rows[0]![0], enc(JA, 'euc-jp'));
    } finally {
      c.close();
    }
  });

  test('the mask is sent in the client encoding too (EUC_JP, SJIS, LATIN1 — where the value itself is not representable)', async () => {
    for (const encoding of ['EUC_JP', 'SJIS', 'LATIN1']) {
      const c = await raw(ROLES.viewer, encoding);
      try {
        const r = await simple(c, Buffer.from('SELECT name FROM people WHERE id = 1'));
        assert.equal(r.error, null, encoding);
        assert.deepEqual(r.rows[0]![0], Buffer.from('****'));
      } finally {
        c.close();
      }
    }
  });

  test('LATIN1: representable text is converted; a character with no equivalent is 22P05 naming the column, never the bytes', async () => {
    const c = await raw(ROLES.clerk, 'LATIN1');
    try {
      const ok = await simple(c, Buffer.from('SELECT name, plain FROM people WHERE id = 2'));
      assert.equal(ok.error, null);
      assert.deepEqual(ok.rows[0]![0], ok.rows[0]![1]);
      assert.deepEqual(ok.rows[0]![0], Buffer.from('4dfc6c6c6572', 'hex'));
      // PostgreSQL's own error for the unprotected copy prints the character's bytes…
      const server = await simple(c, Buffer.from('SELECT plain FROM people WHERE id = 1'));
      assert.equal(server.error?.code, '22P05');
      assert.match(server.error!.message, /character with byte sequence 0x/);
    } finally {
      c.close();
    }
    // …mamori's names the column instead. The session ends (FATAL): the value is found mid-result, and rows
    // already sent cannot be taken back, so mamori fails closed rather than continue out of step.
    const d = await raw(ROLES.clerk, 'LATIN1');
    try {
      const r = await simple(d, Buffer.from('SELECT name FROM people WHERE id IN (1, 2) ORDER BY id'));
      assert.equal(r.error?.code, '22P05');
      assert.equal(r.error?.message, 'mamori: a character in protected column public.people.name has no equivalent in encoding "LATIN1"');
      assert.equal(r.rows.length, 0);
      assert.equal(r.closed, true);
    } finally {
      d.close();
    }
  });

  test('postgres.js (raw rows) in an EUC_JP session and psql with PGCLIENTENCODING=SJIS get the server\'s bytes', async () => {
    const sql = postgres({ host: '127.0.0.1', port: s.mamori.port, user: ROLES.clerk, password: PASSWORD, database: 'postgres',
      ssl: { ca: s.cluster.ca.cert, servername: 'localhost' }, max: 1, connection: { client_encoding: 'EUC_JP' }, onnotice: () => undefined });
    try {
      const rows = await sql`SELECT name, plain FROM people WHERE id = ${1}`.raw();
      assert.deepEqual(rows[0]![0], rows[0]![1]);
      assert.deepEqual(Buffer.from(rows[0]![0] as Uint8Array), enc(JA, 'euc-jp'));
    } finally {
      await sql.end();
    }
    const bindir = systemBindir();
    const psql = bindir ? join(bindir, 'psql') : 'psql';
    const rc = join(s.dir, 'root.crt');
    writeFileSync(rc, s.cluster.ca.cert);
    // The script itself is SJIS: a search by the SJIS bytes of the value (ソ ends in 0x5C).
    const file = join(s.dir, 'sjis.sql');
    writeFileSync(file, Buffer.concat([Buffer.from("SELECT name, plain FROM people WHERE name = '"), enc(JA, 'shift_jis'), Buffer.from("';\n")]));
    const { stdout } = await run(psql, ['-XAt', '-F', '|', '-f', file], {
      encoding: 'buffer',
      env: { ...process.env, PGHOST: '127.0.0.1', PGPORT: String(s.mamori.port), PGUSER: ROLES.clerk, PGPASSWORD: PASSWORD,
        PGDATABASE: 'postgres', PGSSLMODE: 'verify-full', PGSSLROOTCERT: rc, PGCLIENTENCODING: 'SJIS' },
    });
    const sj = enc(JA, 'shift_jis');
    assert.deepEqual(stdout, Buffer.concat([sj, Buffer.from('|'), sj, Buffer.from('\n')]));
  });
});

// ---- writes and searches -------------------------------------------------------------------------------

describe('writes and searches in the client encoding', () => {
  test('a literal written by an EUC_JP session reads back as the same text in a UTF8 session', async () => {
    const c = await raw(ROLES.clerk, 'EUC_JP');
    try {
      const e = enc(JA, 'euc-jp');
      const r = await simple(c, sqlBytes`INSERT INTO people VALUES (10, '${e}', '${e}')`);
      assert.equal(r.error, null);
    } finally {
      c.close();
    }
    const u = await s.connect(ROLES.clerk);
    try {
      assert.deepEqual((await u.query('SELECT name, plain FROM people WHERE id = 10')).rows, [{ name: JA, plain: JA }]);
    } finally {
      await u.end();
    }
  });

  test('parameters from an EUC_JP session (text format, and binary through pg) are stored as the same text', async () => {
    const c = await raw(ROLES.clerk, 'EUC_JP');
    try {
      const e = enc(JA, 'euc-jp');
      const r = await extended(c, Buffer.from('INSERT INTO people VALUES (11, $1, $2)'), 0, [e, e]);
      assert.equal(r.error, null);
    } finally {
      c.close();
    }
    const p = await s.connect(ROLES.clerk);
    try {
      await p.query("SET client_encoding = 'EUC_JP'");
      // pg sends a Buffer in binary format: PostgreSQL's textrecv converts it from the client encoding too.
      await p.query('INSERT INTO people VALUES (12, $1, $2)', [enc(JA, 'euc-jp'), enc(JA, 'euc-jp')]);
      await p.query("SET client_encoding = 'UTF8'");
      assert.deepEqual((await p.query('SELECT id, name, plain FROM people WHERE id IN (11, 12) ORDER BY id')).rows,
        [{ id: 11, name: JA, plain: JA }, { id: 12, name: JA, plain: JA }]);
    } finally {
      await p.end();
    }
  });

  test('an equality search from an SJIS session finds the value a UTF8 session wrote (literal, parameter, prepared)', async () => {
    const c = await raw(ROLES.clerk, 'SJIS');
    try {
      const sj = enc(JA, 'shift_jis');
      const lit = await simple(c, sqlBytes`SELECT id FROM people WHERE name = '${sj}' ORDER BY id`);
      assert.equal(lit.error, null);
      assert.deepEqual(lit.rows.map((r) => r[0]!.toString()), ['1', '10', '11', '12']);
      const param = await extended(c, Buffer.from('SELECT id FROM people WHERE name = $1 AND id = 1'), 0, [sj]);
      assert.deepEqual(param.rows.map((r) => r[0]!.toString()), ['1']);
      const parsed = await extended(c, sqlBytes`SELECT id FROM people WHERE name = '${sj}' AND id = 1`, 0);
      assert.deepEqual(parsed.rows.map((r) => r[0]!.toString()), ['1']);
    } finally {
      c.close();
    }
    const p = await s.connect(ROLES.clerk);
    try {
      await p.query("SET client_encoding = 'SJIS'");
      assert.deepEqual((await p.query('SELECT id FROM people WHERE name = $1 AND id = 1', [enc(JA, 'shift_jis')])).rows, [{ id: 1 }]);
    } finally {
      await p.end();
    }
  });

  test('an SJIS string whose trail byte is 0x5C cannot hide a protected column from the analysis', async () => {
    // Read byte by byte, E'ソ' would swallow the rest of the line as an escaped quote and the whole
    // statement would look like one string; the server reads ソ as one character.
    const c = await raw(ROLES.outsider, 'SJIS');
    try {
      const r = await simple(c, sqlBytes`SELECT E'${enc('ソ', 'shift_jis')}', my_number FROM employees --'`);
      assert.equal(r.error?.code, '42501');
      assert.equal(r.error?.message, 'mamori: permission denied to read column "public.employees.my_number"');
      assert.equal(r.rows.length, 0);
    } finally {
      c.close();
    }
  });

  test('a statement pipelined behind a change of client_encoding is not read in a guessed encoding', async () => {
    // c6 e6 is 'Ææ' in LATIN1 and a kanji in EUC_JP: read in the old encoding, mamori would store the kanji
    // while the server (which runs the SET first) reads 'Ææ'. Until the pipeline drains it is refused.
    const c = await raw(ROLES.clerk, 'EUC_JP');
    try {
      const latin1 = Buffer.from([0xc6, 0xe6]);
      assert.equal(iconv.decode(latin1, 'euc-jp').length, 1);
      c.send(
        parse(Buffer.from("SET client_encoding = 'LATIN1'")), encodeBind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }), encodeExecute({ portal: '', maxRows: 0 }),
        parse(sqlBytes`INSERT INTO people VALUES (40, '${latin1}', '${latin1}')`), encodeBind({ portal: '', statement: '', paramFormats: [], params: [], resultFormats: [] }), encodeExecute({ portal: '', maxRows: 0 }),
        encodeSync(),
      );
      const r = await outcome(c);
      assert.equal(r.error?.code, '0A000');
      assert.match(r.error!.message, /client_encoding EUC_JP \(a change of client_encoding is still running\)/);
      // The refusal aborted the batch's implicit transaction, the SET with it: the session is still EUC_JP,
      // and the same statement now is read as the server reads it (both columns get the kanji).
      const again = await simple(c, sqlBytes`INSERT INTO people VALUES (40, '${latin1}', '${latin1}')`);
      assert.equal(again.error, null);
    } finally {
      c.close();
    }
    const u = await s.connect(ROLES.clerk);
    try {
      const kanji = iconv.decode(Buffer.from([0xc6, 0xe6]), 'euc-jp');
      assert.deepEqual((await u.query('SELECT name, plain FROM people WHERE id = 40')).rows, [{ name: kanji, plain: kanji }]);
    } finally {
      await u.end();
    }
  });

  test('bytes that are not valid in the client encoding are refused before they reach a protected column', async () => {
    const c = await raw(ROLES.clerk, 'EUC_JP');
    try {
      const bad = await simple(c, sqlBytes`INSERT INTO people VALUES (20, '${Buffer.from([0xa4])}', 'x')`);
      assert.equal(bad.error?.code, '0A000');
      assert.match(bad.error!.message, /must be readable by mamori: the text is not valid in client_encoding EUC_JP/);
      const param = await extended(c, Buffer.from('INSERT INTO people VALUES (21, $1, NULL)'), 0, [Buffer.from([0xa4])]);
      assert.equal(param.error?.code, '22021');
      assert.equal(param.error?.message, 'mamori: invalid value for protected column public.people.name: invalid byte sequence for encoding "EUC_JP"');
    } finally {
      c.close();
    }
  });
});

// ---- COPY -----------------------------------------------------------------------------------------------

async function copyOut(c: pg.Client, sql: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  await pipeline(c.query(copyTo(sql)), new Writable({ write(chunk: Buffer, _e, cb) { chunks.push(chunk); cb(); } }));
  return Buffer.concat(chunks);
}

describe('COPY in other encodings', () => {
  test('COPY TO … (ENCODING \'EUC_JP\') and an EUC_JP session\'s COPY TO render protected text as the server renders the plain copy', async () => {
    const c = await s.connect(EXPORTER);
    try {
      for (const [setup, sql] of [
        ["SET client_encoding = 'UTF8'", "COPY people (id, name, plain) TO STDOUT (ENCODING 'EUC_JP')"],
        ["SET client_encoding = 'EUC_JP'", 'COPY people (id, name, plain) TO STDOUT (FORMAT csv)'],
      ] as const) {
        await c.query(setup);
        const out = await copyOut(c, sql);
        const lines = out.toString('latin1').split('\n').filter((l) => l !== '');
        assert.ok(lines.length >= 3);
        for (const line of lines) {
          const [, name, plain] = line.split(sql.includes('csv') ? ',' : '\t');
          assert.equal(name, plain, sql);
        }
        assert.ok(out.includes(enc(JA, 'euc-jp')));
      }
      await c.query("SET client_encoding = 'UTF8'");
    } finally {
      await c.end();
    }
  });

  test('COPY FROM … (ENCODING \'EUC_JP\') stores the same text a UTF8 session reads back', async () => {
    const c = await s.connect(EXPORTER);
    try {
      const data = Buffer.concat([Buffer.from('30\t'), enc(JA, 'euc-jp'), Buffer.from('\t'), enc(JA, 'euc-jp'), Buffer.from('\n')]);
      await pipeline(Readable.from([data]), c.query(copyFrom("COPY people (id, name, plain) FROM STDIN (ENCODING 'EUC_JP')")));
      assert.deepEqual((await c.query('SELECT name, plain FROM people WHERE id = 30')).rows, [{ name: JA, plain: JA }]);
    } finally {
      await c.end();
    }
  });

  test('COPY FROM data that is not valid in its encoding stores nothing: 22021 naming line and column, no bytes', async () => {
    const c = await s.connect(EXPORTER);
    try {
      const data = Buffer.concat([Buffer.from('31\t'), Buffer.from([0xa4]), Buffer.from('\tx\n')]);
      await assert.rejects(pipeline(Readable.from([data]), c.query(copyFrom("COPY people (id, name, plain) FROM STDIN (ENCODING 'EUC_JP')"))), (e: pg.DatabaseError) => {
        assert.equal(e.code, '22021');
        assert.equal(e.message, 'mamori: COPY line 1, column name: invalid value for protected column public.people.name: invalid byte sequence for encoding "EUC_JP"');
        return true;
      });
      assert.deepEqual((await c.query('SELECT count(*)::int AS n FROM people WHERE id = 31')).rows, [{ n: 0 }]);
    } finally {
      await c.end();
    }
  });

  test('COPY of protected columns in SJIS is refused (its trail bytes can be a backslash or a delimiter)', async () => {
    const c = await s.connect(EXPORTER);
    try {
      await assert.rejects(copyOut(c, "COPY people (id, name) TO STDOUT (ENCODING 'SJIS')"), (e: pg.DatabaseError) => {
        assert.equal(e.code, '0A000');
        assert.equal(e.message, "mamori: COPY of protected columns in ENCODING SJIS (SJIS) is not supported: its multibyte characters can contain ASCII bytes; use ENCODING 'UTF8' (or an EUC encoding)");
        return true;
      });
    } finally {
      await c.end();
    }
  });
});

// ---- what stays refused ----------------------------------------------------------------------------------

describe('encodings mamori has no converter for', () => {
  test('BIG5: protected text is refused (55000), non-ASCII statements on protected tables are refused (0A000), ASCII ones work', async () => {
    const b = await raw(ROLES.clerk, 'BIG5');
    try {
      const read = await simple(b, Buffer.from('SELECT name FROM people WHERE id = 3'));
      assert.equal(read.error?.code, '55000');
      assert.equal(read.error?.message, 'mamori: protected column public.people.name cannot be rendered in client_encoding BIG5: mamori has no converter for it (docs/results.md lists the encodings it converts)');
      assert.equal(read.rows.length, 0);
    } finally {
      b.close();
    }
    const c = await raw(ROLES.clerk, 'BIG5');
    try {
      const stmt = await simple(c, sqlBytes`SELECT id FROM people WHERE name = '${enc('中文', 'big5')}'`);
      assert.equal(stmt.error?.code, '0A000');
      assert.match(stmt.error!.message, /must be readable by mamori: the text is not valid in client_encoding BIG5, or mamori has no converter for it/);
      // My Numbers are ASCII: readable and searchable whatever the encoding.
      const mn = await simple(c, Buffer.from("SELECT my_number FROM employees WHERE my_number = '123456789018'"));
      assert.equal(mn.error, null);
      assert.deepEqual(mn.rows[0]![0], Buffer.from('123456789018'));
    } finally {
      c.close();
    }
  });
});

test('no protected plaintext appears in any log line', () => {
  const all = logLines.join('');
  assert.ok(all.length > 0);
  for (const v of [JA, LATIN, '123456789018', enc(JA, 'euc-jp').toString('latin1'), enc(JA, 'shift_jis').toString('latin1')]) {
    assert.ok(!all.includes(v), 'a log line contains a protected value');
  }
});
