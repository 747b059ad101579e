// `mamori policy check` against real PostgreSQL: passes on a clean setup (installed by `mamori setup-db`),
// then finds each kind of problem: missing columns, wrong storage, missing guards, plaintext rows, superusers
// and CREATEROLE holders among plaintext members, settings that log values, and a database without setup.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { cellKeyFromBytes, encryptCell } from '../../../keyring/cells/index.js';
import { main } from '../../../proxy/cli.js';
import { runPolicyCheck, settingProblem } from '../../../proxy/policy/check.js';
import { startCluster, type Cluster } from '../../harness/cluster.js';

function capture() {
  const out = new PassThrough();
  const err = new PassThrough();
  let o = '';
  let e = '';
  out.on('data', (b: Buffer) => (o += b.toString()));
  err.on('data', (b: Buffer) => (e += b.toString()));
  return { io: { stdout: out, stderr: err }, text: () => o, errors: () => e };
}

function envOf(c: Cluster): NodeJS.ProcessEnv {
  return { PGHOST: c.host, PGPORT: String(c.port), PGUSER: c.superuser, PGPASSWORD: c.superPassword };
}

async function check(c: Cluster, config: string, db = 'postgres') {
  const cap = capture();
  const code = await runPolicyCheck(['-d', db, '--config', config], { ...cap.io, env: envOf(c) });
  const lines = cap.text().trim().split('\n');
  return { code, lines, errors: cap.errors() };
}

const det = cellKeyFromBytes('deterministic', randomBytes(64));
const cell = (): Buffer => encryptCell({ mode: 'deterministic', domainId: 1, version: 1 }, det, Buffer.from(randomBytes(6).toString('hex')));

describe('policy check', () => {
  let c: Cluster;
  let dir: string;
  let cleanConfig: string;
  before(async () => {
    c = await startCluster({ tls: false, settings: { log_min_error_statement: "'panic'" } });
    dir = mkdtempSync(join(tmpdir(), 'mamori-check-'));
    await c.query(`CREATE ROLE mamori LOGIN; CREATE ROLE hr_clerk; CREATE ROLE alice LOGIN; GRANT hr_clerk TO alice`);
    cleanConfig = join(dir, 'clean.yaml');
    writeFileSync(cleanConfig, [
      'columns:',
      '  public.employees.my_number:',
      '    type: mynumber',
      '    mode: deterministic',
      '    read: { plaintext: [hr_clerk] }',
      '  public.elsewhere.gone:',
      '    type: text',
      '    databases: [other]',
      '',
    ].join('\n'));
  });
  after(async () => {
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('setup-db installs the catalog SQL, and a clean database passes', async () => {
    const cap = capture();
    const saved = { ...process.env };
    Object.assign(process.env, envOf(c), { PGDATABASE: 'postgres' });
    let code: number;
    try {
      code = await main(['setup-db', '-d', 'postgres'], cap.io);
    } finally {
      for (const k of ['PGHOST', 'PGPORT', 'PGUSER', 'PGPASSWORD', 'PGDATABASE']) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    }
    assert.equal(code, 0, cap.errors());
    assert.match(cap.text(), /installed guard domains mamori\.<type>, mamori\.catalog_epoch/);
    await c.query('CREATE TABLE employees (id int, my_number mamori.mynumber)');
    await c.query('INSERT INTO employees VALUES (1, $1), (2, $2), (3, NULL)', [cell(), cell()]);
    const r = await check(c, cleanConfig);
    assert.deepEqual(r.lines, ['no problems in database "postgres"']);
    assert.equal(r.code, 0);
  });

  test('each problem is found and the exit code is 1', async () => {
    await c.query(`
      CREATE TABLE staff (id int, email text);
      INSERT INTO staff VALUES (1, 'a@example.jp'), (2, 'b@example.jp'), (3, NULL);
      CREATE TABLE raw (v bytea);
      CREATE TABLE raw_child () INHERITS (raw);
      CREATE ROLE boss SUPERUSER; GRANT hr_clerk TO boss;
      CREATE ROLE team; GRANT hr_clerk TO team; CREATE ROLE mgr CREATEROLE; GRANT team TO mgr;
      ALTER ROLE alice SET log_statement = 'all';
    `);
    await c.query('ALTER SYSTEM SET log_parameter_max_length_on_error = -1');
    await c.query('SELECT pg_reload_conf()');
    await c.query(`INSERT INTO raw VALUES ($1), ('plain'); INSERT INTO raw_child VALUES ('\\x0102'), ('\\x0304')`.replace('$1', `'\\x${cell().toString('hex')}'`));
    const config = join(dir, 'problems.yaml');
    writeFileSync(config, [
      'columns:',
      '  public.employees.my_number: { type: mynumber, mode: deterministic, read: { plaintext: [hr_clerk] } }',
      '  public.staff.email: { type: text, read: { plaintext: [hr_clerk] }, enforce: false }',
      '  public.raw.v: { type: bytea, read: { plaintext: [nobody_here] } }',
      '  public.ghost.x: { type: int4 }',
      '',
    ].join('\n'));
    await new Promise((r) => setTimeout(r, 300)); // the reload reaches new sessions
    const r = await check(c, config);
    assert.equal(r.code, 1, r.errors);
    assert.deepEqual(r.lines.sort(), [
      'column: public.ghost.x: column public.ghost.x does not exist in database "postgres"',
      'column: public.raw.v: stored as bytea without the guard domain mamori.bytea: writes that bypass mamori are not refused',
      'column: public.raw.v (in public.raw_child): stored as bytea without the guard domain mamori.bytea: writes that bypass mamori are not refused',
      'column: public.staff.email: stored as text: not protected yet (run mamori protect)',
      'role: boss: superuser is a member of plaintext role hr_clerk (public.employees.my_number, public.staff.email)',
      'role: mgr: CREATEROLE holder is a member of plaintext role hr_clerk (public.employees.my_number, public.staff.email): it can grant plaintext access to others',
      'role: nobody_here: plaintext role for public.raw.v does not exist',
      'rows: public.raw.v (in public.raw_child): 2 row(s) hold plaintext, not mamori cells',
      'rows: public.raw.v: 1 row(s) hold plaintext, not mamori cells',
      'rows: public.staff.email: 2 row(s) hold plaintext, not mamori cells',
      "setting: log_parameter_max_length_on_error: is -1: bind parameters of failing statements are logged; set it to 0",
      "setting: log_statement (role alice): is 'all': statements (and their literals) are logged; set it to 'none'",
      '12 problem(s) in database "postgres"',
    ].sort());
    // counts and names only: no stored value appears in the report
    assert.ok(!r.lines.join('\n').includes('example.jp'));
    assert.ok(!r.lines.join('\n').includes('plain\''));
  });

  test('a database without setup-db: the epoch table, triggers and guards are reported', async () => {
    await c.query('CREATE DATABASE nosetup');
    const r = await check(c, cleanConfig, 'nosetup');
    assert.equal(r.code, 1);
    assert.ok(r.lines.includes('setup: mamori.catalog_epoch: missing: run mamori setup-db'));
    assert.ok(r.lines.includes('setup: event trigger mamori_ddl_end: missing or disabled: DDL does not bump the catalog epoch (run mamori setup-db)'));
    assert.ok(r.lines.includes('setup: mamori.mynumber: guard domain missing or without its CHECK mamori_cell (run mamori setup-db)'));
    assert.ok(r.lines.includes('column: public.employees.my_number: column public.employees.my_number does not exist in database "nosetup"'));
  });

  test('a disabled event trigger is reported', async () => {
    await c.query('ALTER EVENT TRIGGER mamori_sql_drop DISABLE');
    try {
      const r = await check(c, cleanConfig);
      assert.ok(r.lines.includes('setup: event trigger mamori_sql_drop: missing or disabled: DDL does not bump the catalog epoch (run mamori setup-db)'));
    } finally {
      await c.query('ALTER EVENT TRIGGER mamori_sql_drop ENABLE ALWAYS');
    }
  });

  test('usage errors exit 2', async () => {
    const cap = capture();
    assert.equal(await runPolicyCheck(['--bogus'], { ...cap.io, env: {} }), 2);
    assert.equal(await runPolicyCheck([], { ...cap.io, env: {} }), 2);
  });
});

describe('policy check: server settings that log values', () => {
  let c: Cluster;
  let dir: string;
  before(async () => {
    c = await startCluster({
      tls: false,
      settings: { shared_preload_libraries: "'auto_explain,pg_stat_statements'", log_statement: "'mod'" },
    });
    dir = mkdtempSync(join(tmpdir(), 'mamori-check-'));
    await c.query('CREATE ROLE mamori LOGIN');
  });
  after(async () => {
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('log_statement, log_min_error_statement, auto_explain and pg_stat_statements.track_utility', async () => {
    const config = join(dir, 'empty.yaml');
    writeFileSync(config, 'columns: {}\n');
    const r = await check(c, config);
    assert.equal(r.code, 1);
    const settings = r.lines.filter((l) => l.startsWith('setting: '));
    assert.deepEqual(settings.sort(), [
      "setting: log_min_error_statement: is 'error': the text of failing statements is logged; set it to 'panic'",
      "setting: log_statement: is 'mod': statements (and their literals) are logged; set it to 'none'",
      'setting: pg_stat_statements.track_utility: is on: utility statements (PREPARE/EXECUTE, DO …) are stored with their literals; set it to off',
      'setting: shared_preload_libraries: loads auto_explain, which logs statement text and plans',
    ]);
  });
});

test('settingProblem: thresholds', () => {
  assert.equal(settingProblem('log_min_error_statement', 'log'), null);
  assert.equal(settingProblem('log_min_error_statement', 'panic'), null);
  assert.notEqual(settingProblem('log_min_error_statement', 'warning'), null);
  assert.notEqual(settingProblem('log_min_duration_statement', '0'), null);
  assert.equal(settingProblem('log_min_duration_statement', '-1'), null);
  assert.notEqual(settingProblem('session_preload_libraries', '"$libdir/plugins/auto_explain"'), null);
  assert.equal(settingProblem('shared_preload_libraries', 'pg_stat_statements'), null);
  assert.equal(settingProblem('log_transaction_sample_rate', '0'), null);
});
