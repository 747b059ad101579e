// `mamori audit verify | search | tail | keygen` through runAuditCommand: exit codes, output, a search recorded
// before its results (and findable itself), keygen's file modes.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runAuditCommand, type AuditCliIO } from '../../../proxy/audit/cli.js';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import { normalizeSubject, subjectHash } from '../../../proxy/audit/subject.js';
import { createSecretKey } from 'node:crypto';
import { parseRecord } from '../../../proxy/audit/record.js';
import { intent, tempDir } from './fixtures.js';

function capture(): AuditCliIO & { out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return { stdout: (t) => void (out += t), stderr: (t) => void (err += t), out: () => out, err: () => err };
}

async function setup(): Promise<{ dir: string; auditDir: string; config: string; keyFile: string; cleanup: () => Promise<void> }> {
  const t = await tempDir();
  const auditDir = join(t.dir, 'audit');
  const keyFile = join(t.dir, 'subject-2026.key');
  const subjectKey = randomBytes(32);
  await writeFile(keyFile, subjectKey.toString('hex'), { mode: 0o600 });
  const io = capture();
  assert.equal(await runAuditCommand(['keygen', '--out', join(t.dir, 'keys', 'audit.pem'), '--public-out', join(t.dir, 'keys', 'audit.pub')], io), 0);
  const config = join(t.dir, 'mamori.yaml');
  await writeFile(
    config,
    [
      'audit:',
      '  fsync: none',
      `  signingKeyFile: ${join(t.dir, 'keys', 'audit.pem')}`,
      `  checkpointSink: { type: file, path: ${join(t.dir, 'offsite', 'cp.jsonl')} }`,
      `  sinks: [ { type: file, path: ${join(auditDir, 'mamori.jsonl')} } ]`,
      '',
    ].join('\n'),
  );
  const { loadPrivateKey } = await import('../../../proxy/audit/checkpoint.js');
  const trail = await AuditTrail.open(
    { fsync: 'none', heartbeatSeconds: 0, checkpointEverySeconds: 0, checkpointSink: { type: 'file', path: join(t.dir, 'offsite', 'cp.jsonl') }, sinks: [{ type: 'file', path: join(auditDir, 'mamori.jsonl') }] },
    { signingKey: await loadPrivateKey(join(t.dir, 'keys', 'audit.pem')) },
  );
  const n = normalizeSubject('123456789018');
  const hash = subjectHash(createSecretKey(subjectKey), n.logicalType, n.canonical);
  await trail.append({ ...intent(1, 'alice'), session: 'S1', subjects: [hash], subjectKeyId: 'subject-2026' });
  await trail.append({ ...intent(2, 'bob'), session: 'S2' });
  await trail.close();
  return { dir: t.dir, auditDir, config, keyFile, cleanup: t.cleanup };
}

describe('mamori audit CLI', () => {
  test('keygen writes a 0600 private key, prints the public key, and never overwrites', async () => {
    const s = await setup();
    try {
      const st = await stat(join(s.dir, 'keys', 'audit.pem'));
      assert.equal(st.mode & 0o777, 0o600);
      const io = capture();
      assert.equal(await runAuditCommand(['keygen', '--out', join(s.dir, 'k2.pem')], io), 0);
      assert.match(io.out(), /BEGIN PUBLIC KEY/);
      const again = capture();
      assert.equal(await runAuditCommand(['keygen', '--out', join(s.dir, 'k2.pem')], again), 1);
      assert.match(again.err(), /EEXIST|exists/);
    } finally {
      await s.cleanup();
    }
  });

  test('verify: 0 on an intact trail (signatures checked via the config), 1 with the problem after tampering', async () => {
    const s = await setup();
    try {
      const io = capture();
      assert.equal(await runAuditCommand(['verify', '--config', s.config], io), 0, io.out() + io.err());
      assert.match(io.out(), /^ok: 5 records .*\(1 signatures verified, 1 in the checkpoint sink\)/);
      const file = join(s.auditDir, 'mamori.jsonl');
      const text = await readFile(file, 'utf8');
      await writeFile(file, text.replace('"user":"bob"', '"user":"eve"'));
      const bad = capture();
      assert.equal(await runAuditCommand(['verify', '--config', s.config, '--json'], bad), 1);
      const report = JSON.parse(bad.out()) as { ok: boolean; problem: { kind: string; line: number } };
      assert.equal(report.ok, false);
      assert.equal(report.problem.kind, 'modified');
      assert.equal(report.problem.line, 4);
    } finally {
      await s.cleanup();
    }
  });

  test('search --subject is recorded before results, never stores the value, and is itself findable', async () => {
    const s = await setup();
    try {
      const io = capture();
      const code = await runAuditCommand(['search', '--config', s.config, '--subject', '1234 5678 9018', '--subject-key', s.keyFile, '--json'], io);
      assert.equal(code, 0, io.err());
      const hits = io.out().trim().split('\n').map((l) => parseRecord(l));
      assert.deepEqual(hits.map((r) => r.session), ['S1']);
      const names = await readdir(s.auditDir);
      assert.ok(names.includes('mamori-cli.jsonl'), 'the CLI wrote its own series');
      const cliText = await readFile(join(s.auditDir, 'mamori-cli.jsonl'), 'utf8');
      const query = cliText.trim().split('\n').map((l) => parseRecord(l)).find((r) => r.kind === 'audit_query')!;
      assert.equal(query.kind === 'audit_query' && query.query.subjectHashes, 1);
      for (const n of names.filter((x) => x.endsWith('.jsonl'))) {
        const t = await readFile(join(s.auditDir, n), 'utf8');
        assert.ok(!t.includes('123456789018') && !t.includes('1234 5678 9018'), `${n} holds no subject value`);
      }
      // the second search finds the first one's record too (searching is part of the subject trail)
      const io2 = capture();
      assert.equal(await runAuditCommand(['search', '--config', s.config, '--subject', '123456789018', '--subject-key', s.keyFile, '--json'], io2), 0);
      const kinds = io2.out().trim().split('\n').map((l) => parseRecord(l).kind);
      assert.deepEqual(kinds.sort(), ['audit_query', 'statement_intent']);
      // the value can come from standard input instead of the command line
      const io3 = { ...capture(), stdin: async () => '1234-5678-9018\n' };
      assert.equal(await runAuditCommand(['search', '--config', s.config, '--subject', '-', '--subject-key', s.keyFile, '--json', '--kind', 'statement_intent'], io3), 0);
      assert.deepEqual(io3.out().trim().split('\n').map((l) => parseRecord(l).session), ['S1']);
      // and everything, CLI series included, still verifies
      const v = capture();
      assert.equal(await runAuditCommand(['verify', '--config', s.config], v), 0, v.out());
    } finally {
      await s.cleanup();
    }
  });

  test('search and tail readable output; usage errors exit 2', async () => {
    const s = await setup();
    try {
      const io = capture();
      assert.equal(await runAuditCommand(['search', join(s.auditDir, 'mamori.jsonl'), '--user', 'bob'], io), 0);
      assert.equal(io.out().trim().split('\n').length, 1);
      assert.match(io.out(), /statement_intent user=bob session=S2/);
      const tail = capture();
      assert.equal(await runAuditCommand(['tail', join(s.auditDir, 'mamori.jsonl'), '-n', '2'], tail), 0);
      assert.equal(tail.out().trim().split('\n').length, 2);
      for (const args of [[], ['frobnicate'], ['verify', '--bogus'], ['search', s.auditDir, '--subject', '123456789018', '--subject-key', s.keyFile], ['tail', s.auditDir, '-n', 'x'], ['keygen']]) {
        const u = capture();
        assert.equal(await runAuditCommand(args, u), 2, `${args.join(' ')}: ${u.err()}`);
        assert.match(u.err(), /usage:/);
      }
    } finally {
      await s.cleanup();
    }
  });
});
