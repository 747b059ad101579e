// pollFile: every change after the call returns is reported — including one made in the same tick, which
// fs.watchFile can take as its baseline (its first stat runs later on the thread pool) and never report.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pollFile, writeFileDurable } from '../../keyring/fsutil.js';

const until = async (ok: () => boolean, what: string): Promise<void> => {
  const deadline = Date.now() + 10_000;
  while (!ok()) {
    if (Date.now() > deadline) assert.fail(`pollFile did not report ${what} within 10 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test('pollFile reports a file created in the same tick, then a replacement, an in-place change and removal', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-poll-'));
  const path = join(dir, 'f.json');
  let calls = 0;
  const stop = pollFile(path, 10, () => calls++);
  try {
    writeFileDurable(path, 'one'); // same tick as the start: must not become the baseline
    await until(() => calls >= 1, 'the creation');
    let before = calls;
    writeFileDurable(path, 'two'); // temp file + rename: a new inode of the same size
    await until(() => calls > before, 'the atomic replacement');
    before = calls;
    writeFileSync(path, 'three'); // in place
    await until(() => calls > before, 'the in-place write');
    before = calls;
    unlinkSync(path);
    await until(() => calls > before, 'the removal');
    before = calls;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(calls, before, 'no change, no report');
  } finally {
    stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('pollFile stops reporting after stop()', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mamori-poll-'));
  const path = join(dir, 'f');
  let calls = 0;
  const stop = pollFile(path, 10, () => calls++);
  stop();
  writeFileSync(path, 'x');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(calls, 0);
  rmSync(dir, { recursive: true, force: true });
});
