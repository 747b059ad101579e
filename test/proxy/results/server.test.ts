// Against a real PostgreSQL 15: the renderings the unit tests expect are the server's own, and a full round
// trip works — Parse/Bind rewritten by encryptBindParams store cells in bytea columns, DataRows rewritten by
// RowRewriter give the original values back (text and binary results, both bytea_output settings), array
// search matches, and a unique violation's DETAIL (which echoes the cell) is redacted.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { RawClient } from '../../harness/raw-client.js';
import type { Frame } from '../../../proxy/wire/framer.js';
import { decodeDataRow, decodeNoticeFields, decodeRowDescription } from '../../../proxy/wire/backend.js';
import { encodeBind, encodeDescribe, encodeExecute, encodeParse, encodeQuery, encodeSync } from '../../../proxy/wire/frontend.js';
import { BE, type Field } from '../../../proxy/wire/types.js';
import type { ProtectedColumn } from '../../../proxy/sql/types.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import {
  RowRewriter,
  StaticCellKeys,
  encryptBindParams,
  encryptLiteral,
  redactServerError,
  rewriteParseTypes,
  rewriteRowDescription,
  type FieldPlan,
  type ParamPlan,
} from '../../../proxy/results/index.js';
import { SAMPLES, column, newKey, seal } from './fixtures.js';

let cluster: Cluster;
let client: RawClient;

before(async () => {
  cluster = await startCluster({ tls: false });
  client = await RawClient.connect(cluster.host, cluster.port, { user: cluster.superuser, password: cluster.superPassword });
});

after(async () => {
  client?.close();
  await cluster?.stop();
});

/** Sends the messages and a Sync; returns everything up to ReadyForQuery. */
async function round(...msgs: Buffer[]): Promise<Frame[]> {
  client.send(...msgs, encodeSync());
  return client.until(BE.ReadyForQuery);
}

/** A simple Query (no Sync: it ends with its own ReadyForQuery). */
async function simple(sql: string): Promise<Frame[]> {
  client.send(encodeQuery(sql));
  return client.until(BE.ReadyForQuery);
}

function errorsOf(frames: Frame[]): string[] {
  return frames.filter((f) => f.type === BE.ErrorResponse).map((f) => decodeNoticeFields(f.body).M ?? '');
}

function rowsOf(frames: Frame[]): Field[][] {
  return frames.filter((f) => f.type === BE.DataRow).map((f) => decodeDataRow(f.body).fields);
}

const bindMsg = (params: Field[], paramFormats: number[], resultFormats: number[], statement = ''): Buffer =>
  encodeBind({ portal: '', statement, paramFormats, params, resultFormats });

describe('PostgreSQL renders the sample values as the fixtures say', () => {
  test('text (hex and escape bytea_output) and binary results', async () => {
    for (const s of SAMPLES) {
      const frames = await round(
        encodeParse({ name: '', sql: `select cast($1 as ${s.pgType})`, paramTypes: [] }),
        bindMsg([Buffer.from(s.text, 'utf8')], [], [0]),
        encodeExecute({ portal: '', maxRows: 0 }),
        bindMsg([Buffer.from(s.text, 'utf8')], [], [1]),
        encodeExecute({ portal: '', maxRows: 0 }),
      );
      assert.deepEqual(errorsOf(frames), [], s.pgType);
      const [[text], [binary]] = rowsOf(frames) as [[Field], [Field]];
      assert.equal(text!.toString('utf8'), s.text, `${s.pgType} text`);
      assert.equal(binary!.toString('hex'), s.binaryHex, `${s.pgType} binary`);
      if (s.escapeText !== undefined) {
        await simple('set bytea_output = escape');
        const esc = await round(
          encodeParse({ name: '', sql: `select cast($1 as ${s.pgType})`, paramTypes: [] }),
          bindMsg([Buffer.from(s.text, 'utf8')], [], [0]),
          encodeExecute({ portal: '', maxRows: 0 }),
        );
        assert.equal(rowsOf(esc)[0]![0]!.toString('latin1'), s.escapeText);
        await simple('reset bytea_output');
      }
    }
  });
});

describe('end to end through a real server', () => {
  const myNumber: ProtectedColumn = { ...column({ type: 'mynumber' }, 'deterministic', 'my_number'), table: 'emp' };
  const birth: ProtectedColumn = { ...column({ type: 'date' }, 'randomized', 'birth'), table: 'emp' };
  const kNum = newKey('deterministic', 101);
  const kBirth = newKey('randomized', 102);
  const keys = new StaticCellKeys().set(101, 1, kNum.key).set(102, 1, kBirth.key);
  const encrypt = (col: ProtectedColumn, c: Buffer): Buffer => seal(col === myNumber ? kNum : kBirth, c);
  const third = '98765432101' + String(myNumberCheckDigit('98765432101'));
  const insertPlans: ParamPlan[] = [
    { index: 2, column: myNumber, purpose: 'write' },
    { index: 3, column: birth, purpose: 'write' },
  ];
  const declared = [23, 25, 1082, 25];

  async function select(resultFormat: number, byteaOutput: 'hex' | 'escape' = 'hex'): Promise<Field[][]> {
    const frames = await round(
      encodeParse({ name: '', sql: 'select id, my_number, birth, name from emp order by id', paramTypes: [] }),
      bindMsg([], [], [resultFormat]),
      encodeDescribe({ target: 'P', name: '' }),
      encodeExecute({ portal: '', maxRows: 0 }),
    );
    assert.deepEqual(errorsOf(frames), []);
    const plans: FieldPlan[] = [
      { index: 1, column: myNumber, action: 'plaintext', domainId: 101 },
      { index: 2, column: birth, action: 'plaintext', domainId: 102 },
    ];
    const rd = frames.find((f) => f.type === BE.RowDescription)!;
    const shown = decodeRowDescription(rewriteRowDescription(rd.body, plans).subarray(5)).fields;
    assert.deepEqual(shown.map((f) => f.typeOid), [23, 25, 1082, 25]);
    const rw = new RowRewriter(plans, [resultFormat, resultFormat, resultFormat, resultFormat], keys, { byteaOutput });
    return frames.filter((f) => f.type === BE.DataRow).map((f) => decodeDataRow(rw.rewrite(f.body).subarray(5)).fields);
  }

  test('insert through rewritten Parse/Bind and literals, read back decrypted, search, redact', async () => {
    await simple('create table emp (id int primary key, my_number bytea unique, birth bytea, name text)');

    // Extended protocol: the declared types become bytea, the values cells (text and binary parameters).
    const parse = rewriteParseTypes(encodeParse({ name: 'ins', sql: 'insert into emp values ($1, $2, $3, $4)', paramTypes: declared }).subarray(5), insertPlans);
    const bind1 = encryptBindParams(
      bindMsg([Buffer.from('1'), Buffer.from('1234-5678-9018'), Buffer.from('2024-02-29'), Buffer.from('山田')], [], [], 'ins').subarray(5),
      insertPlans, encrypt, declared,
    );
    const bind2 = encryptBindParams(
      bindMsg([Buffer.from([0, 0, 0, 2]), Buffer.from('000000000019'), Buffer.from('fff4dbf9', 'hex'), Buffer.from('x')], [1, 1, 1, 0], [], 'ins').subarray(5),
      insertPlans, encrypt, declared,
    );
    let frames = await round(parse, bind1, encodeExecute({ portal: '', maxRows: 0 }), bind2, encodeExecute({ portal: '', maxRows: 0 }));
    assert.deepEqual(errorsOf(frames), []);

    // Simple protocol: a literal spliced as E'\\x…'::bytea.
    const lit = encryptLiteral(myNumber, third, encrypt);
    assert.ok(lit.ok);
    frames = await simple(`insert into emp values (3, ${lit.replacement.toString('latin1')}, NULL, 'z')`);
    assert.deepEqual(errorsOf(frames), []);

    // The database holds cells only.
    const direct = await cluster.query<{ my_number: Buffer; birth: Buffer | null }>('select my_number, birth from emp order by id');
    for (const r of direct.rows) {
      assert.equal(r.my_number.subarray(0, 3).toString('hex'), 'ff6d01');
      for (const plain of ['123456789018', '000000000019', third]) assert.ok(!r.my_number.includes(plain));
      if (r.birth !== null) assert.equal(r.birth.subarray(0, 3).toString('hex'), 'ff6d01');
    }

    const want = [
      ['1', '123456789018', '2024-02-29', '山田'],
      ['2', '000000000019', '0001-01-01', 'x'],
      ['3', third, null, 'z'],
    ];
    const asText = (rows: Field[][]): (string | null)[][] => rows.map((r) => r.map((f) => (f === null ? null : f.toString('utf8'))));
    assert.deepEqual(asText(await select(0)), want);
    await simple('set bytea_output = escape');
    assert.deepEqual(asText(await select(0, 'escape')), want);
    await simple('reset bytea_output');
    const bin = await select(1);
    assert.deepEqual(bin.map((r) => [r[0]!.readInt32BE(0), r[1]!.toString(), r[2] === null ? null : r[2].toString('hex'), r[3]!.toString()]), [
      [1, '123456789018', '00002279', '山田'],
      [2, '000000000019', 'fff4dbf9', 'x'],
      [3, third, null, 'z'],
    ]);

    // Search: = ANY($1) with a text array declared text[], and = $1 with a binary parameter.
    const anyPlans: ParamPlan[] = [{ index: 1, column: myNumber, purpose: 'search', array: true }];
    frames = await round(
      rewriteParseTypes(encodeParse({ name: '', sql: 'select id from emp where my_number = any($1) order by id', paramTypes: [1009] }).subarray(5), anyPlans),
      encryptBindParams(bindMsg([Buffer.from(`{"1234 5678 9018",${third},NULL}`)], [], []).subarray(5), anyPlans, encrypt, [1009]),
      encodeExecute({ portal: '', maxRows: 0 }),
    );
    assert.deepEqual(errorsOf(frames), []);
    assert.deepEqual(rowsOf(frames).map((r) => r[0]!.toString()), ['1', '3']);
    const eqPlans: ParamPlan[] = [{ index: 1, column: myNumber, purpose: 'search' }];
    frames = await round(
      rewriteParseTypes(encodeParse({ name: '', sql: 'select id from emp where my_number = $1', paramTypes: [25] }).subarray(5), eqPlans),
      encryptBindParams(bindMsg([Buffer.from('００００ ００００ ００１９')], [1], []).subarray(5), eqPlans, encrypt, [25]),
      encodeExecute({ portal: '', maxRows: 0 }),
    );
    assert.deepEqual(rowsOf(frames).map((r) => r[0]!.toString()), ['2']);

    // UNIQUE holds across spellings, and the violation's DETAIL (which prints the cell) is redacted.
    frames = await round(
      encryptBindParams(bindMsg([Buffer.from('4'), Buffer.from('123456789018'), null, Buffer.from('dup')], [], [], 'ins').subarray(5), insertPlans, encrypt, declared),
      encodeExecute({ portal: '', maxRows: 0 }),
    );
    const err = frames.find((f) => f.type === BE.ErrorResponse)!;
    const raw = decodeNoticeFields(err.body);
    assert.equal(raw.C, '23505');
    assert.match(raw.D ?? '', /\\xff6d01/, 'the server echoes the cell');
    const red = redactServerError(BE.ErrorResponse, err.body, ['public.emp']);
    const fields = decodeNoticeFields(red.subarray(5));
    assert.equal(fields.C, '23505');
    assert.equal(fields.D, undefined);
    assert.ok(!red.toString('latin1').includes('ff6d01'));
    // Named for another table, the DETAIL stays but the cell in it is still cut out (a deterministic cell
    // is an equality oracle wherever it appears).
    const other = decodeNoticeFields(redactServerError(BE.ErrorResponse, err.body, ['public.other']).subarray(5));
    assert.match(other.D ?? '', /^Key \(my_number\)=\(\\x…\) already exists\.$/);
    // An error without cells or protected tables passes as its original bytes.
    frames = await simple('select * from no_such_table');
    const plain = frames.find((f) => f.type === BE.ErrorResponse)!;
    assert.deepEqual(redactServerError(BE.ErrorResponse, plain.body, ['public.emp']).subarray(5), plain.body);
  });
});
