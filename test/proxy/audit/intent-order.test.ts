// The intent record of a protected statement is on disk before the first row reaches the client, on the simple
// and the extended protocol, with 8 sessions at once (records of several sessions share writes); every intent
// has its completion after it, seq numbers are gapless, the chain verifies and no value is in the trail.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startProtectedStack, ROLES, type ProtectedStack } from '../../harness/protected.js';
import { parseRecord, type AuditRecord } from '../../../proxy/audit/record.js';
import { verifyAuditTrail } from '../../../proxy/audit/verify.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';

const ROWS = 20;
const numberOf = (i: number): string => {
  const d = String(20_000_000_000 + i);
  return d + String(myNumberCheckDigit(d));
};

function trail(dir: string): AuditRecord[] {
  const out: AuditRecord[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.jsonl')).sort())
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) if (line.trim()) out.push(parseRecord(line));
  return out;
}

describe('intent before the first row (real PostgreSQL, concurrent sessions)', () => {
  let stack: ProtectedStack;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mamori-intent-order-'));
    stack = await startProtectedStack({
      config: {
        audit: {
          statements: 'protected', failMode: 'closed', fsync: 'none',
          sinks: [{ type: 'file', path: join(dir, 'mamori.jsonl') }],
          checkpointSink: { type: 'file', path: join(dir, 'checkpoints', 'mamori.jsonl') },
          signingKeyFile: join(dir, 'no-signing.key'),
        },
      },
    });
    const c = await stack.connect(ROLES.clerk);
    const values = Array.from({ length: ROWS }, (_, i) => `(${i + 1}, 'e${i + 1}', '${numberOf(i + 1)}')`);
    await c.query(`INSERT INTO employees VALUES ${values.join(',')}`);
    await c.end();
  });
  after(async () => {
    await stack?.stop();
  });

  test('each first row finds its statement\'s intent already written; completions follow; the chain verifies', async () => {
    const PER_SESSION = 15;
    let checked = 0;
    const session = async (n: number): Promise<void> => {
      const c = await stack.connect(ROLES.clerk, { application_name: `order-${n}` });
      try {
        for (let i = 0; i < PER_SESSION; i++) {
          const id = ((n * PER_SESSION + i) % ROWS) + 1;
          // alternate the simple protocol (literal) and the extended one (parameter)
          const q = i % 2 === 0 ? new pg.Query(`SELECT my_number FROM employees WHERE id = ${id}`) : new pg.Query('SELECT my_number FROM employees WHERE id = $1', [id]);
          const intentsBefore = new Promise<number>((resolve, reject) => {
            let first = true;
            q.on('row', (row: { my_number: string }) => {
              if (!first) return;
              first = false;
              assert.equal(row.my_number, numberOf(id));
              // synchronously, as the row arrives: how many intents of this session are on disk
              resolve(trail(dir).filter((r) => r.kind === 'statement_intent' && r.applicationName === `order-${n}`).length);
            });
            q.on('error', reject);
            q.on('end', () => first && reject(new Error('no row')));
          });
          c.query(q);
          const written = await intentsBefore;
          assert.ok(written >= i + 1, `session ${n} statement ${i}: ${written} intents on disk at its first row`);
          checked++;
        }
      } finally {
        await c.end();
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, n) => session(n)));
    assert.equal(checked, 8 * PER_SESSION);

    const deadline = Date.now() + 5000;
    const done = (): AuditRecord[] => trail(dir).filter((r) => r.kind === 'statement_complete' && r.applicationName?.startsWith('order-'));
    while (done().length < 8 * PER_SESSION && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const rs = trail(dir);
    const intents = rs.filter((r) => r.kind === 'statement_intent' && r.applicationName?.startsWith('order-'));
    const completes = rs.filter((r) => r.kind === 'statement_complete' && r.applicationName?.startsWith('order-'));
    assert.equal(intents.length, 8 * PER_SESSION);
    assert.equal(completes.length, 8 * PER_SESSION);
    const position = new Map(rs.map((r, i) => [r, i]));
    for (const c of completes) {
      if (c.kind !== 'statement_complete') continue;
      const i = intents.find((r) => r.kind === 'statement_intent' && r.statement === c.statement);
      assert.ok(i, `intent of ${c.statement}`);
      assert.ok(position.get(i)! < position.get(c)!, 'completion after its intent');
      assert.equal(c.rows, 1);
      assert.equal(c.subjects?.length, 1, 'the plaintext returned is in the subject trail');
    }
    const mine = rs.filter((r) => r.instance === intents[0]!.instance);
    assert.deepEqual(mine.map((r) => r.seq), mine.map((_, k) => mine[0]!.seq + k), 'gapless sequence numbers');
    const raw = readdirSync(dir).filter((n) => n.endsWith('.jsonl')).map((f) => readFileSync(join(dir, f), 'utf8')).join('');
    for (let i = 1; i <= ROWS; i++) assert.ok(!raw.includes(numberOf(i)), 'no My Number in the trail');
    const v = await verifyAuditTrail(join(dir, 'mamori.jsonl'));
    assert.equal(v.ok, true, v.problem?.message);
  });
});
