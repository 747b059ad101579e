// `mamori policy lint`: an application's SQL checked against the policy before its columns are protected.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { splitStatements } from '../../../proxy/policy/lint.js';

const run = promisify(execFile);
let cluster: Cluster;
let dir: string;

before(async () => {
  cluster = await startCluster({ tls: false });
  await cluster.query('CREATE TABLE employees (id int PRIMARY KEY, name text, my_number text)');
  dir = mkdtempSync(join(tmpdir(), 'mamori-lint-'));
  writeFileSync(join(dir, 'mamori.yaml'), [
    'columns:',
    '  public.employees.my_number:',
    '    type: mynumber',
    '    mode: deterministic',
    '    read: { plaintext: [hr_clerk] }',
    '',
  ].join('\n'));
  writeFileSync(join(dir, 'statements.sql'), [
    'SELECT id, name FROM employees WHERE id = $1;',
    'SELECT my_number FROM employees WHERE my_number = $1;',
    "SELECT id FROM employees WHERE my_number LIKE '1234%';",
    'SELECT 1;',
    '',
  ].join('\n'));
});

after(async () => {
  await cluster?.stop();
});

test('splits a file by the parser\'s statement boundaries, or by line when it does not parse as a whole', () => {
  assert.deepEqual(splitStatements("SELECT 1; SELECT ';' ;\nSELECT 2"), ['SELECT 1', "SELECT ';'", 'SELECT 2']);
  assert.deepEqual(splitStatements('SELECT 1\nSELEC broken\n\nSELECT $1'), ['SELECT 1', 'SELEC broken', 'SELECT $1']);
});

test('prints a decision per statement and exits 1 when any would be refused', async () => {
  const env = { ...process.env, ...cluster.env(), MAMORI_CONTROL_PASSWORD: 'unused' };
  const r = await run(process.execPath, ['bin/mamori.js', 'policy', 'lint', join(dir, 'statements.sql'), '--config', join(dir, 'mamori.yaml'), '--json'], { env }).catch((e: { code: number; stdout: string }) => e);
  assert.equal((r as { code?: number }).code, 1);
  const results = JSON.parse((r as { stdout: string }).stdout) as Array<{ decision: string; sqlstate?: string; message?: string; columns?: string[] }>;
  // A statement on a protected table that uses none of its protected columns is 'unprotected'.
  assert.deepEqual(results.map((x) => x.decision), ['unprotected', 'allowed', 'refused', 'unprotected']);
  assert.match(results[1]!.columns!.join(), /public\.employees\.my_number \(read\+search|search\+read/);
  assert.equal(results[2]!.sqlstate, '0A000');
  assert.match(results[2]!.message!, /public\.employees\.my_number/);
  assert.match(results[2]!.message!, /LIKE/);
});
