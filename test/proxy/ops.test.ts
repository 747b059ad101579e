// The operations side on a running proxy and real PostgreSQL: bytes counted in both directions on both legs,
// and /readyz following the audit trail when it becomes unwritable during the run, and back.
// "Unwritable" is made real with `chattr +i` (immutable): the tests run as root, which chmod does not stop,
// while an immutable file refuses writes even through the descriptor mamori already holds (EPERM), and an
// immutable directory refuses the rename a rotation needs. Both are undone in `finally`.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startProtectedStack, ROLES, type ProtectedStack } from '../harness/protected.js';
import { runAuditCommand } from '../../proxy/audit/cli.js';
import { myNumberCheckDigit } from '../../keyring/mynumber.js';

const chattr = (flag: '+i' | '-i', path: string): void => void execFileSync('chattr', [flag, path]);

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: await r.text() };
}

function sample(text: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{')) continue;
    const inside = line.slice(name.length + 1, line.indexOf('}'));
    if (want.every((w) => inside.split(',').includes(w))) total += Number(line.split(' ').at(-1));
  }
  return total;
}

async function auditStack(dir: string, rotateBytes?: number): Promise<ProtectedStack> {
  return startProtectedStack({
    config: {
      audit: {
        statements: 'protected', failMode: 'closed', fsync: 'none',
        sinks: [{ type: 'file', path: join(dir, 'mamori.jsonl'), ...(rotateBytes ? { rotateBytes } : {}) }],
        checkpointSink: 'none',
        signingKeyFile: join(dir, 'no-signing.key'),
      },
      metrics: { enabled: true, host: '127.0.0.1', port: 0 },
    },
  });
}

const NUMBER = '12345678901' + String(myNumberCheckDigit('12345678901'));

async function verifies(dir: string): Promise<void> {
  const out: string[] = [];
  const io = { stdout: (t: string) => out.push(t), stderr: (t: string) => out.push(t) };
  assert.equal(await runAuditCommand(['verify', dir, '--no-registry'], io), 0, out.join(''));
}

describe('bytes in and out (real PostgreSQL)', () => {
  test('a large result and a long statement move every side/direction counter by at least their size', async () => {
    const stack = await startProtectedStack({ config: { metrics: { enabled: true, host: '127.0.0.1', port: 0 } } });
    try {
      const port = stack.mamori.metricsPort!;
      const before = (await get(port, '/metrics')).body;
      const c = await stack.connect(ROLES.clerk);
      const pad = 'p'.repeat(50_000);
      const r = await c.query(`SELECT repeat('x', 300000) AS big, length('${pad}') AS n`);
      assert.equal(r.rows[0].big.length, 300_000);
      await c.end();
      const after = (await get(port, '/metrics')).body;
      const delta = (side: string, direction: string): number =>
        sample(after, 'mamori_bytes_total', { side, direction }) - sample(before, 'mamori_bytes_total', { side, direction });
      assert.ok(delta('client', 'in') >= 50_000, `client in ${delta('client', 'in')}`); // the statement, from the client
      assert.ok(delta('upstream', 'out') >= 50_000, `upstream out ${delta('upstream', 'out')}`); // … relayed upstream
      assert.ok(delta('upstream', 'in') >= 300_000, `upstream in ${delta('upstream', 'in')}`); // the row, from the server
      assert.ok(delta('client', 'out') >= 300_000, `client out ${delta('client', 'out')}`); // … relayed to the client
    } finally {
      await stack.stop();
    }
  });
});

describe('/readyz and an audit trail that becomes unwritable during the run (real PostgreSQL)', () => {
  test('the active file turns immutable: protected reads refused, /readyz 503; writable again: both recover', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mamori-ready-'));
    const stack = await auditStack(dir);
    const active = join(dir, 'mamori.jsonl');
    let locked = false;
    try {
      const port = stack.mamori.metricsPort!;
      const c = await stack.connect(ROLES.clerk);
      await c.query(`INSERT INTO employees VALUES (1, 'a', '${NUMBER}')`);
      assert.equal((await get(port, '/readyz')).status, 200);

      chattr('+i', active);
      locked = true;
      await assert.rejects(c.query('SELECT my_number FROM employees WHERE id = 1'), (e: Error & { code?: string }) => {
        assert.equal(e.code, '58000');
        assert.match(e.message, /audit trail cannot be written/);
        return true;
      });
      assert.equal((await c.query('SELECT 1 AS x')).rows[0].x, 1); // nothing protected: still runs
      const down = await get(port, '/readyz');
      assert.equal(down.status, 503);
      assert.equal((JSON.parse(down.body) as { checks: Record<string, boolean> }).checks.audit, false);

      chattr('-i', active);
      locked = false;
      // no statement in between: the readiness probe's own heartbeat finds the trail writable again
      assert.equal((await get(port, '/readyz')).status, 200);
      assert.equal((await c.query('SELECT my_number FROM employees WHERE id = 1')).rows[0].my_number, NUMBER);
      await c.end();
    } finally {
      if (locked) chattr('-i', active);
      await stack.stop();
    }
    await verifies(dir); // the refused write left no partial record and no gap in the chain
  });

  test('the directory turns immutable so a due rotation fails: refused and 503, then rotated and ready again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mamori-ready-rot-'));
    const stack = await auditStack(dir, 4096);
    let locked = false;
    try {
      const port = stack.mamori.metricsPort!;
      const c = await stack.connect(ROLES.clerk);
      await c.query(`INSERT INTO employees VALUES (1, 'a', '${NUMBER}')`);
      chattr('+i', dir);
      locked = true;
      // appends go on into the open file until the next one would pass rotateBytes: that one is refused
      let refused = 0;
      for (let i = 0; i < 40 && refused === 0; i++) {
        await c.query('SELECT my_number FROM employees WHERE id = 1').catch((e: Error & { code?: string }) => {
          assert.equal(e.code, '58000');
          refused++;
        });
      }
      assert.equal(refused, 1, 'a read was refused once the rotation was due');
      assert.equal((await get(port, '/readyz')).status, 503);

      chattr('-i', dir);
      locked = false;
      assert.equal((await get(port, '/readyz')).status, 200);
      assert.equal((await c.query('SELECT my_number FROM employees WHERE id = 1')).rows[0].my_number, NUMBER);
      await c.end();
    } finally {
      if (locked) chattr('-i', dir);
      await stack.stop();
    }
    assert.ok(readdirSync(dir).some((n) => n !== 'mamori.jsonl' && n.endsWith('.jsonl')), 'the file was rotated once the directory allowed it');
    await verifies(dir);
  });
});
