#!/usr/bin/env node
// Runs every test/**/*.test.ts file with node's built-in test runner (through tsx).
// Usage: node scripts/run-tests.mjs [substring-filter ...]
// Node 20 has no glob support in --test, so the file list is built here.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = walk('test')
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const concurrency = process.env.MAMORI_TEST_CONCURRENCY ?? '2';
// A test that waits forever fails after this long instead of holding up the whole run (the slowest test, the
// embedded default's first start, takes well under it).
const timeout = process.env.MAMORI_TEST_TIMEOUT_MS ?? '240000';
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, `--test-timeout=${timeout}`, '--test-reporter=spec', ...files],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
