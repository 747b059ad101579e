// The audit of cells that reach a client through fields of unknown origin (a function result): the intent
// record names the column and the decision and reaches the trail before the row carrying the cell is
// released; when it cannot be written (failMode closed), the session ends and the cell never leaves mamori.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';
import { RawClient } from '../../harness/raw-client.js';
import { encodeQuery } from '../../../proxy/wire/frontend.js';
import { decodeNoticeFields } from '../../../proxy/wire/backend.js';
import { BE } from '../../../proxy/wire/types.js';
import type { Frame } from '../../../proxy/wire/framer.js';
import { parseRecord, type AuditRecord } from '../../../proxy/audit/record.js';

const MY_NUMBER = '123456789018';
let s: ProtectedStack;
let dir: string;

function records(): AuditRecord[] {
  const out: AuditRecord[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.jsonl')).sort()) {
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) if (line.trim()) out.push(parseRecord(line));
  }
  return out;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mamori-origin-audit-'));
  s = await startProtectedStack({
    config: {
      audit: {
        statements: 'protected', failMode: 'closed', fsync: 'none',
        sinks: [{ type: 'file', path: join(dir, 'mamori.jsonl') }],
        checkpointSink: 'none',
        signingKeyFile: join(dir, 'no-signing.key'),
      },
    },
  });
  const c = await s.connect(ROLES.clerk);
  await c.query(`INSERT INTO employees VALUES (1, 'Sato', '${MY_NUMBER}')`);
  await c.end();
  await s.cluster.query(`CREATE FUNCTION public.f_num(int) RETURNS bytea LANGUAGE sql STABLE
    AS 'SELECT my_number FROM public.employees WHERE id = $1'`);
});

after(async () => {
  await s?.stop();
});

/** A simple Query over a raw connection: the frames up to ReadyForQuery, or up to the close. */
async function rawQuery(role: string, sql: string): Promise<{ types: string[]; error: Record<string, string> | null; closed: boolean; bytes: Buffer }> {
  const c = await RawClient.connect('127.0.0.1', s.mamori.port, { user: role, password: PASSWORD, tls: { ca: s.cluster.ca.cert } });
  try {
    c.send(encodeQuery(sql));
    const frames: Frame[] = [];
    for (;;) {
      const f = await c.next().catch(() => null); // null: the connection closed
      if (!f) break;
      frames.push(f);
      if (f.type === BE.ReadyForQuery) break;
    }
    const err = frames.find((f) => f.type === BE.ErrorResponse);
    return {
      types: frames.map((f) => String.fromCharCode(f.type)),
      error: err ? (decodeNoticeFields(err.body) as Record<string, string>) : null,
      closed: c.closed,
      bytes: Buffer.concat(frames.map((f) => f.raw)),
    };
  } finally {
    c.close();
  }
}

describe('audit of cells of unknown origin (real PostgreSQL)', () => {
  test('a function result read in plaintext: an intent naming the column and decision, completed with the row count', async () => {
    const c = await s.connect(ROLES.clerk);
    assert.equal(Buffer.from((await c.query('SELECT f_num(1) AS n')).rows[0].n as Buffer).toString('latin1'), MY_NUMBER);
    await c.end();
    const deadline = Date.now() + 5000;
    let intent: AuditRecord | undefined;
    let completion: AuditRecord | undefined;
    while (Date.now() < deadline) {
      const rs = records();
      intent = rs.find((r) => r.kind === 'statement_intent' && (r as { command?: string }).command === 'unknown-origin');
      const id = (intent as { statement?: string } | undefined)?.statement;
      completion = rs.find((r) => r.kind === 'statement_complete' && (r as { statement?: string }).statement === id);
      if (intent && completion) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(intent, 'an intent record for the unknown-origin read');
    assert.deepEqual((intent as unknown as { columns: unknown }).columns, [{ column: 'public.employees.my_number', decision: 'plaintext' }]);
    assert.ok(completion, 'a completion record');
    assert.equal((completion as unknown as { rows: number }).rows, 1);
    assert.ok(!readFileSync(join(dir, 'mamori.jsonl'), 'utf8').includes(MY_NUMBER), 'no protected value in the trail');
  });

  test('when the intent cannot be written (trail closed, failMode closed) the cell is never released and the session ends', async () => {
    // Close the trail under the running proxy: every later append fails as it would on a dead disk.
    await s.mamori.engine!.audit!.close();
    const r = await rawQuery(ROLES.clerk, 'SELECT f_num(1) AS n');
    assert.ok(!r.types.includes('D'), `no DataRow released (got ${r.types.join('')})`);
    assert.equal(r.error?.C, '58000', `frames ${r.types.join('')} closed ${r.closed}`);
    assert.match(r.error?.M ?? '', /audit trail cannot be written/);
    assert.ok(!r.bytes.includes(Buffer.from(MY_NUMBER)), 'no plaintext');
    assert.ok(!r.bytes.includes(Buffer.from([0xff, 0x6d, 0x01])), 'no cell');
    // Statements that release nothing protected still run.
    const ok = await rawQuery(ROLES.clerk, 'SELECT 41 + 1 AS n');
    assert.equal(ok.error, null);
    assert.ok(ok.types.includes('D'));
  });
});
