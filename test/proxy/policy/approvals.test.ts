import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSecretKey, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { loadConfig } from '../../../config/load.js';
import type { MamoriConfig } from '../../../config/schema.js';
import { Keyring, keyringConfigFrom } from '../../../keyring/index.js';
import { Approvals, ApprovalsIntegrityError, approvalsMacKey, approvalsPath, grantView, watchApprovals } from '../../../proxy/policy/approvals.js';
import { runPolicyCommand } from '../../../proxy/policy/cli.js';
import { readDecision } from '../../../proxy/policy/decide.js';
import { MembershipCache } from '../../../proxy/policy/membership.js';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { CONTROL_PASSWORD, CONTROL_USER, setupDatabase } from '../../harness/mamori.js';

const key = () => createSecretKey(randomBytes(32));

describe('Approvals file', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'mamori-appr-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('a missing file approves nothing', () => {
    const a = Approvals.load(join(dir, 'none.json'), key());
    assert.equal(a.isApproved('r', 'm'), false);
    assert.deepEqual(a.pairs(), []);
  });

  test('round trip: pairs and verifiers survive save and load; file is 0600', () => {
    const k = key();
    const path = join(dir, 'rt.json');
    const a = Approvals.load(path, k);
    a.approve('hr_clerk', 'alice');
    a.approve('writer', 'Bob "B"');
    a.approveVerifier('alice', 'ab'.repeat(32));
    a.save();
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const b = Approvals.load(path, k);
    assert.equal(b.isApproved('hr_clerk', 'alice'), true);
    assert.equal(b.isApproved('writer', 'Bob "B"'), true);
    assert.equal(b.isApproved('alice', 'hr_clerk'), false, 'pairs are ordered');
    assert.equal(b.isVerifierApproved('alice', 'ab'.repeat(32)), true);
    assert.equal(b.isVerifierApproved('alice', 'cd'.repeat(32)), false);
    assert.equal(b.isVerifierApproved('alice', null), false);
    assert.equal(b.revoke('hr_clerk', 'alice'), true);
    b.save();
    assert.equal(Approvals.load(path, k).isApproved('hr_clerk', 'alice'), false);
  });

  test('any edit of the content is refused', () => {
    const k = key();
    const path = join(dir, 'tamper.json');
    const a = Approvals.load(path, k);
    a.approve('hr_clerk', 'alice');
    a.approveVerifier('alice', 'ab'.repeat(32));
    a.save();
    const original = readFileSync(path, 'utf8');
    const doc = JSON.parse(original) as { members: string[][]; verifiers: Record<string, string>; updatedAt: string; mac: string };
    const edits: ((d: typeof doc) => void)[] = [
      (d) => d.members.push(['hr_clerk', 'mallory']),
      (d) => (d.members[0]![1] = 'mallory'),
      (d) => (d.verifiers.alice = 'cd'.repeat(32)),
      (d) => (d.verifiers.mallory = 'ab'.repeat(32)),
      (d) => (d.updatedAt = '2020-01-01T00:00:00.000Z'),
      (d) => (d.mac = d.mac.slice(0, -2) + (d.mac.endsWith('AA') ? 'BB' : 'AA')),
      (d) => (d.mac = ''),
    ];
    for (const edit of edits) {
      const d = JSON.parse(original) as typeof doc;
      edit(d);
      writeFileSync(path, JSON.stringify(d));
      assert.throws(() => Approvals.load(path, k), ApprovalsIntegrityError);
    }
    writeFileSync(path, 'not json');
    assert.throws(() => Approvals.load(path, k), ApprovalsIntegrityError);
    writeFileSync(path, original);
    assert.throws(() => Approvals.load(path, key()), ApprovalsIntegrityError, 'another key');
    assert.equal(Approvals.load(path, k).isApproved('hr_clerk', 'alice'), true, 'the original still loads');
  });

  test('grantView: held unless the current verifier is the approved one; null approvals approve nothing', () => {
    const a = Approvals.empty(join(dir, 'gv.json'), key());
    a.approve('r', 'alice');
    a.approveVerifier('alice', 'h1');
    const id = { login: 'alice', roles: new Set(['alice', 'r']), superuser: false, bypassRls: false, clientCert: false, verifierHash: 'h1' };
    assert.equal(grantView(a, 'held', id).verifierHeld!('alice'), false);
    assert.equal(grantView(a, 'held', { ...id, verifierHash: 'h2' }).verifierHeld!('alice'), true);
    assert.equal(grantView(a, 'held', { ...id, verifierHash: null }).verifierHeld!('alice'), true);
    assert.equal(grantView(a, 'allowed', { ...id, verifierHash: 'h2' }).verifierHeld!('alice'), false);
    assert.equal(grantView(a, 'held', id).isApproved('r', 'alice'), true);
    assert.equal(grantView(null, 'allowed', id).isApproved('r', 'alice'), false);
    assert.equal(grantView(null, 'held', id).verifierHeld!('alice'), true);
  });
});

class Capture {
  text = '';
  write(s: string): boolean {
    this.text += s;
    return true;
  }
}

describe('mamori policy pending/approve against PostgreSQL', () => {
  let cluster: Cluster;
  let dir: string;
  let configPath: string;
  let config: MamoriConfig;
  let db: string;

  const cli = async (...args: string[]): Promise<{ code: number; out: string; err: string }> => {
    const stdout = new Capture();
    const stderr = new Capture();
    const code = await runPolicyCommand([...args, '--config', configPath, '-d', db], { stdout, stderr });
    return { code, out: stdout.text, err: stderr.text };
  };
  const macKey = async () => {
    const kr = await Keyring.open(keyringConfigFrom(config.keyring));
    try {
      return await approvalsMacKey(kr);
    } finally {
      await kr.close();
    }
  };
  const state = async () => Approvals.load(approvalsPath(config), await macKey());

  before(async () => {
    cluster = await startCluster({ tls: false });
    await setupDatabase(cluster);
    for (const r of ['hr_clerk', 'hr_viewer', 'hr_writer']) await cluster.query(`CREATE ROLE ${r} NOLOGIN`);
    await cluster.createRole('alice', 'alice-pw');
    await cluster.createRole('bob', 'bob-pw');
    await cluster.createRole('carol', 'carol-pw');
    await cluster.createRole('dba', 'dba-pw', 'SUPERUSER');
    await cluster.query('GRANT hr_clerk TO alice');
    await cluster.query('GRANT hr_viewer TO bob');
    await cluster.query('GRANT hr_clerk TO dba');
    db = cluster.url({ user: CONTROL_USER, password: CONTROL_PASSWORD });

    dir = mkdtempSync(join(tmpdir(), 'mamori-policy-cli-'));
    mkdirSync(join(dir, '.mamori'));
    configPath = join(dir, 'mamori.yaml');
    writeFileSync(configPath, [
      'keyring:',
      '  keyFile: ./.mamori/root.key',
      '  store: { type: file, path: ./.mamori/keystore.json }',
      'approval: { members: required, passwords: held }',
      'audit:',
      '  sinks: [{ type: file, path: ./audit/mamori.jsonl }]',
      'columns:',
      '  public.employees.my_number:',
      '    type: mynumber',
      '    mode: deterministic',
      '    read: { plaintext: [hr_clerk], mask: [hr_viewer] }',
      '    write: [hr_writer, carol]',
      '',
    ].join('\n'));
    const loaded = await loadConfig(configPath, {}, { requireSecrets: false });
    assert.ok(loaded.ok);
    config = loaded.config;
    const kr = await Keyring.init(keyringConfigFrom(config.keyring), { databaseIdentity: 'policy-cli-test' });
    await kr.close();
  });

  after(async () => {
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('the MAC key is stable across keyring reopenings', async () => {
    const a = await macKey();
    const b = await macKey();
    assert.equal(a.export().equals(b.export()), true);
  });

  test('pending lists members, never-approved verifiers and superusers that approval cannot help', async () => {
    const r = await cli('pending');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /members awaiting approval[^\n]*\n  hr_clerk  alice\n/);
    assert.doesNotMatch(r.out, /bob/, 'a mask grant needs no approval');
    assert.match(r.out, /passwords awaiting approval[^\n]*\n  alice  never approved\n  carol  never approved\n/);
    assert.match(r.out, /superuser\/BYPASSRLS members[^\n]*\n  hr_clerk  dba\n/);
  });

  test('approve without --yes writes nothing', async () => {
    const r = await cli('approve', '--role', 'hr_clerk', '--member', 'alice');
    assert.equal(r.code, 1);
    assert.match(r.out, /approve member: alice may use the grants of hr_clerk/);
    assert.match(r.out, /nothing written/);
    assert.equal(existsSync(approvalsPath(config)), false);
  });

  test('approve refuses pairs that approval cannot or need not cover', async () => {
    const viewer = await cli('approve', '--role', 'hr_viewer', '--member', 'bob', '--yes');
    assert.equal(viewer.code, 1);
    assert.match(viewer.err, /not named in any plaintext, search, write or export grant/);
    const su = await cli('approve', '--role', 'hr_clerk', '--member', 'dba', '--yes');
    assert.equal(su.code, 1);
    assert.match(su.err, /superuser or has BYPASSRLS/);
    const notMember = await cli('approve', '--role', 'hr_clerk', '--member', 'bob', '--yes');
    assert.equal(notMember.code, 1);
    assert.match(notMember.err, /not a member of "hr_clerk"/);
    const usage = await cli('approve', '--role', 'hr_clerk');
    assert.equal(usage.code, 2);
    assert.equal(existsSync(approvalsPath(config)), false);
  });

  test('approve --role --member --yes: recorded in the trail and in the MACed state', async () => {
    const r = await cli('approve', '--role', 'hr_clerk', '--member', 'alice', '--yes');
    assert.equal(r.code, 0, r.err);
    const a = await state();
    assert.equal(a.isApproved('hr_clerk', 'alice'), true);
    assert.equal(a.isApproved('hr_clerk', 'dba'), false);
    const trail = readFileSync(join(dir, 'audit', 'mamori-cli.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const rec = trail.find((x) => x.kind === 'membership_change');
    assert.equal(rec?.role, 'hr_clerk');
    assert.equal(rec?.member, 'alice');
    assert.equal(rec?.action, 'approve');
    const after = await cli('pending');
    assert.match(after.out, /no members awaiting approval/);
  });

  test('held verifiers: approved, then a password reset holds the grant until approved again', async () => {
    const all = await cli('approve', '--all-pending', '--yes');
    assert.equal(all.code, 0, all.err);
    assert.match(all.out, /approve verifier: the current password of alice/);
    assert.match(all.out, /approve verifier: the current password of carol/);
    assert.match((await cli('pending')).out, /no passwords awaiting approval/);

    const control = new pg.Client(db);
    await control.connect();
    try {
      const cache = new MembershipCache({ query: (s, p) => control.query(s, p), lookupFunction: config.auth.lookupFunction });
      const column = config.columns['public.employees.my_number']!;
      const decide = async () => {
        await cache.refreshAll();
        const id = await cache.identity('alice', { clientCert: false });
        return readDecision(column, id, grantView(await state(), 'held', id), true);
      };
      assert.equal(await decide(), 'plaintext');

      await cluster.query("ALTER ROLE alice PASSWORD 'reset-by-a-dba'");
      assert.equal(await decide(), 'deny', 'held until approved');
      const p = await cli('pending');
      assert.match(p.out, /passwords awaiting approval[^\n]*\n  alice  changed since approved\n/);
      assert.equal((await cli('approve', '--login', 'alice', '--yes')).code, 0);
      assert.equal(await decide(), 'plaintext');
    } finally {
      await control.end();
    }
  });

  test('an ended membership is withdrawn, so a re-grant waits for approval again', async () => {
    await cluster.query('REVOKE hr_clerk FROM alice');
    const p = await cli('pending');
    assert.match(p.out, /approvals of ended memberships[^\n]*\n  hr_clerk  alice\n/);
    const r = await cli('approve', '--all-pending', '--yes');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /withdraw: alice is no longer a member of hr_clerk/);
    assert.equal((await state()).isApproved('hr_clerk', 'alice'), false);
    await cluster.query('GRANT hr_clerk TO alice');
    assert.match((await cli('pending')).out, /members awaiting approval[^\n]*\n  hr_clerk  alice\n/);
  });

  test('a tampered approvals file is refused by the CLI and by load', async () => {
    const path = approvalsPath(config);
    const doc = JSON.parse(readFileSync(path, 'utf8')) as { members: string[][] };
    doc.members.push(['hr_clerk', 'dba']);
    writeFileSync(path, JSON.stringify(doc));
    const r = await cli('pending');
    assert.equal(r.code, 1);
    assert.match(r.err, /failed its integrity check/);
    await assert.rejects(async () => Approvals.load(path, await macKey()), ApprovalsIntegrityError);
    const approve = await cli('approve', '--all-pending', '--yes');
    assert.equal(approve.code, 1, 'approve does not overwrite a refused file');
    assert.match(readFileSync(path, 'utf8'), /dba/);
  });
});

test('watchApprovals hands over each new state, and null for a refused file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-appr-watch-'));
  const k = key();
  const path = join(dir, 'approvals.json');
  const seen: (Approvals | null)[] = [];
  const stop = watchApprovals(path, k, (a) => {
    seen.push(a);
  }, 20);
  // Polled with a deadline: stat polling may report one save more than once, or late on a loaded machine.
  const until = async (ok: () => boolean): Promise<void> => {
    const deadline = Date.now() + 10_000;
    while (!ok()) {
      if (Date.now() > deadline) assert.fail('watchApprovals did not report the change within 10 s');
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  try {
    const a = Approvals.empty(path, k);
    a.approve('hr_clerk', 'alice');
    a.save();
    await until(() => seen.at(-1)?.isApproved('hr_clerk', 'alice') === true);
    writeFileSync(path, readFileSync(path, 'utf8').replace('alice', 'mallory'));
    await until(() => seen.at(-1) === null);
  } finally {
    stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
