// COPY feeds the subject trail as row results and INSERTs do: COPY FROM records the subjects it writes, and the plaintext My Numbers an export sends are hashed into
// its completion record (inline up to maxInlineSubjects, beyond that in a side file the record hashes), so
// `mamori audit search --subject N` finds the exporting session; a masked COPY TO adds no subjects. Real
// PostgreSQL, pg-copy-streams, and the `mamori` CLI entry point.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { startProtectedStack, ROLES, PASSWORD, type ProtectedStack } from '../../harness/protected.js';
import { parseRecord, type AuditRecord } from '../../../proxy/audit/record.js';
import { myNumberCheckDigit } from '../../../keyring/mynumber.js';
import { runAuditCommand } from '../../../proxy/audit/cli.js';
import { main } from '../../../proxy/cli.js';

const EXPORTER = 'hr_exporter';
const ROWS = 150; // beyond maxInlineSubjects (64): the export's subjects go to a side file
const mn = (i: number): string => {
  const d = String(200_000_000_00 + i).padStart(11, '0');
  return d + String(myNumberCheckDigit(d));
};

let s: ProtectedStack;
const auditDir = mkdtempSync(join(tmpdir(), 'mamori-copy-audit-'));
const records = (): AuditRecord[] =>
  readFileSync(join(auditDir, 'mamori.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => parseRecord(l));

before(async () => {
  s = await startProtectedStack({
    columns: {
      'public.employees.my_number': {
        type: 'mynumber', mode: 'deterministic',
        read: { plaintext: [ROLES.clerk, EXPORTER], mask: [ROLES.viewer] },
        search: [ROLES.clerk, EXPORTER], write: [ROLES.clerk, EXPORTER], export: [EXPORTER], others: 'deny',
      },
    } as never,
    config: {
      audit: {
        statements: 'protected', fsync: 'none', checkpointSink: 'none',
        sinks: [{ type: 'file', path: join(auditDir, 'mamori.jsonl') }],
        signingKeyFile: join(auditDir, 'no-signing.key'),
      },
    },
  });
  await s.cluster.query(`CREATE ROLE ${EXPORTER} LOGIN PASSWORD '${PASSWORD}'; GRANT SELECT ON public.employees TO ${EXPORTER}`);
});

after(async () => {
  await s?.stop();
});

async function copyOut(c: pg.Client, sql: string): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of c.query(copyTo(sql))) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

/** The session id of the newest connect record of an application name. */
async function sessionOf(app: string): Promise<string> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const hit = records().filter((r) => r.kind === 'connect' && r.applicationName === app).at(-1);
    if (hit) return hit.session!;
    if (Date.now() > deadline) throw new Error(`no connect record for ${app}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function searchSessions(value: string): Promise<Set<string>> {
  const cfgFile = join(auditDir, 'mamori.yaml');
  const kc = s.config.keyring as unknown as { keyFile: string; store: { path: string } };
  writeFileSync(cfgFile, [
    `upstream: { host: 127.0.0.1, port: ${s.cluster.port} }`,
    `keyring: { keyFile: ${JSON.stringify(kc.keyFile)}, store: { type: file, path: ${JSON.stringify(kc.store.path)} } }`,
    `audit: { sinks: [ { type: file, path: ${JSON.stringify(join(auditDir, 'mamori.jsonl'))} } ], checkpointSink: none, signingKeyFile: ${JSON.stringify(join(auditDir, 'no-signing.key'))} }`,
  ].join('\n'));
  const out: string[] = [];
  const errs: string[] = [];
  const sink = (to: string[]): NodeJS.WritableStream => new Writable({ write(c: Buffer, _e, cb) { to.push(c.toString()); cb(); } });
  const rc = await main(['audit', 'search', '--config', cfgFile, '--subject', value, '--json'], { stdout: sink(out), stderr: sink(errs) });
  assert.equal(rc, 0, errs.join(''));
  const hits = out.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditRecord);
  return new Set(hits.filter((r) => r.kind !== 'audit_query').map((r) => r.session!));
}

test('COPY FROM records the subjects of the values it writes; search finds the loading session', async () => {
  const copier = await s.connect(ROLES.clerk, { application_name: 'copier' });
  const session = await sessionOf('copier');
  const stream = copier.query(copyFrom('COPY employees (id, name, my_number) FROM STDIN'));
  await pipeline(Readable.from([Buffer.from(`9001\tc1\t${mn(9001)}\n9002\tc2\t${mn(9002)}\n`)]), stream);
  await copier.end();
  const deadline = Date.now() + 5000;
  const complete = (): AuditRecord | undefined => records().find((r) => r.kind === 'statement_complete' && r.session === session);
  while (!complete() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(complete()?.subjects?.length, 2);
  assert.deepEqual(await searchSessions(mn(9001)), new Set([session]));
  await s.cluster.query('DELETE FROM employees WHERE id > 9000');
});

test('a plaintext COPY TO puts its subjects in the trail (side file past the inline bound); search finds the exporter, not the masked viewer', async () => {
  // the rows are written directly (no mamori session wrote them), through mamori's encryption by the clerk
  const clerk = await s.connect(ROLES.clerk, { application_name: 'loader' });
  const values = Array.from({ length: ROWS }, (_, i) => `(${i + 1}, 'e${i + 1}', '${mn(i + 1)}')`);
  await clerk.query(`INSERT INTO employees VALUES ${values.join(',')}`);
  await clerk.end();

  const exporter = await s.connect(EXPORTER, { application_name: 'exporter' });
  const exportSession = await sessionOf('exporter');
  const text = await copyOut(exporter, 'COPY (SELECT id, my_number FROM employees ORDER BY id) TO STDOUT');
  assert.equal(text.split('\n').filter(Boolean).length, ROWS);
  assert.ok(text.includes(`1\t${mn(1)}\n`));
  const small = await copyOut(exporter, 'COPY (SELECT my_number FROM employees WHERE id = 7) TO STDOUT (FORMAT csv)');
  assert.equal(small, `${mn(7)}\n`);
  await exporter.end();

  const viewer = await s.connect(ROLES.viewer, { application_name: 'viewer' });
  const viewSession = await sessionOf('viewer');
  const masked = await copyOut(viewer, 'COPY employees (my_number) TO STDOUT');
  assert.ok(!masked.includes(mn(1)));
  await viewer.end();

  // the completion records of the two exports: the big one by reference, the small one inline
  // completion records are not awaited by the session (they follow within a few ms)
  const deadline = Date.now() + 5000;
  const completes = (session: string): AuditRecord[] => records().filter((r) => r.kind === 'statement_complete' && r.session === session);
  while ((completes(exportSession).length < 2 || completes(viewSession).length < 1) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const [big, one] = completes(exportSession);
  assert.ok(big && one);
  assert.equal(big.subjectCount, ROWS);
  assert.match(big.subjectsRef ?? '', /^[0-9a-f]{64}$/);
  assert.equal(big.subjects, undefined);
  assert.equal(one.subjects?.length, 1);
  assert.equal(one.rows, 1);
  // the masked export released no plaintext: its completion carries no subjects
  const viewComplete = completes(viewSession)[0];
  assert.ok(viewComplete);
  assert.equal(viewComplete.subjects, undefined);
  assert.equal(viewComplete.subjectsRef, undefined);

  // `mamori audit search --subject`: the writer (loader) and the exporter, never the viewer
  const loader = await sessionOf('loader');
  assert.deepEqual(await searchSessions(mn(1)), new Set([loader, exportSession]));
  assert.deepEqual(await searchSessions(mn(7)), new Set([loader, exportSession]));
  assert.ok(!readFileSync(join(auditDir, 'mamori.jsonl'), 'utf8').includes(mn(1)), 'no My Number in the trail');

  const out: string[] = [];
  const io = { stdout: (t: string) => out.push(t), stderr: (t: string) => out.push(t) };
  assert.equal(await runAuditCommand(['verify', auditDir, '--no-registry'], io), 0, out.join(''));
});
