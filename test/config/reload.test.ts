import { test, describe, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { watchConfig, type ConfigWatcher } from '../../config/reload.js';
import { loadConfig, type ConfigIssue } from '../../config/load.js';
import type { MamoriConfig } from '../../config/schema.js';
import { createLogger } from '../../proxy/log.js';

const ENV = { MAMORI_CONTROL_PASSWORD: 'pw' };

/** Collects callbacks and lets a test wait for the next one. */
class Events<T> {
  private items: T[] = [];
  private waiters: ((v: T) => void)[] = [];
  push = (v: T): void => {
    const w = this.waiters.shift();
    if (w) w(v);
    else this.items.push(v);
  };
  next(timeoutMs = 5000): Promise<T> {
    const v = this.items.shift();
    if (v !== undefined) return Promise.resolve(v);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for an event')), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }
  get pending(): number {
    return this.items.length;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let file: string;
let watcher: ConfigWatcher | undefined;
let changes: Events<MamoriConfig>;
let errors: Events<ConfigIssue[]>;
let logLines: string[];

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mamori-reload-'));
  file = path.join(dir, 'mamori.yaml');
  changes = new Events();
  errors = new Events();
  logLines = [];
});
afterEach(async () => {
  watcher?.close();
  watcher = undefined;
  await rm(dir, { recursive: true, force: true });
});

function start(extra: Partial<Parameters<typeof watchConfig>[1]> = {}): ConfigWatcher {
  watcher = watchConfig(file, {
    onChange: (c) => changes.push(c),
    onError: (i) => errors.push(i),
    env: ENV,
    debounceMs: 40,
    logger: createLogger({ level: 'info' }, { write: (s: string) => void logLines.push(s) }),
    ...extra,
  });
  return watcher;
}

describe('watchConfig', () => {
  test('a bad file is refused and the old config kept; fixing it applies the change', async () => {
    await writeFile(file, 'listen: { port: 7001 }\n');
    const w = start();
    assert.deepEqual(await w.ready, { status: 'applied' });
    assert.equal((await changes.next()).listen.port, 7001);

    await writeFile(file, 'listen: { port: 7002 }\nupstream: { tls: { mode: sometimes } }\n');
    const issues = await errors.next();
    assert.deepEqual(
      issues.map((i) => [i.path, i.message]),
      [['upstream.tls.mode', 'expected one of disable|require|verify-ca|verify-full, got "sometimes"']],
    );
    assert.equal(w.current()!.listen.port, 7001, 'the old configuration stays in force');
    const refusal = logLines.map((l) => JSON.parse(l) as { msg: string; issues?: string[] }).find((l) => l.issues);
    assert.equal(refusal?.msg, 'configuration refused; keeping the previous configuration');
    assert.match(refusal!.issues![0]!, /upstream\.tls\.mode: expected one of/);

    await writeFile(file, 'listen: { port: 7003 }\n');
    assert.equal((await changes.next()).listen.port, 7003);
    await new Promise(setImmediate); // current() switches once onChange has returned
    assert.equal(w.current()!.listen.port, 7003);
    assert.equal(errors.pending, 0);
  });

  test('an editor that replaces the file by rename is followed', async () => {
    await writeFile(file, 'log: { level: info }\n');
    const initial = await loadConfig(file, ENV);
    assert.ok(initial.ok);
    start({ initial: { config: initial.config, secrets: initial.secrets } });
    await sleep(50);
    // Write elsewhere, then rename over the original (vim's backupcopy=no, atomic config managers).
    const tmp = path.join(dir, '.mamori.yaml.swp');
    await writeFile(tmp, 'log: { level: debug }\n');
    await rename(tmp, file);
    assert.equal((await changes.next()).log.level, 'debug');
    // Delete then recreate: no error for the moment the file is missing, and the new file applies.
    await unlink(file);
    await sleep(10);
    await writeFile(file, 'log: { level: warn }\n');
    assert.equal((await changes.next()).log.level, 'warn');
    assert.equal(errors.pending, 0);
  });

  test('reload() (SIGHUP) re-reads: unchanged is reported, a changed secret applies, a missing file is refused', async () => {
    await writeFile(file, 'control: { passwordEnv: CTL_PW }\n');
    const env: Record<string, string> = { CTL_PW: 'one' };
    const secrets: (string | undefined)[] = [];
    const w = watchConfig(file, {
      onChange: (_c, info) => void secrets.push(info.secrets.controlPassword),
      onError: (i) => errors.push(i),
      env,
      debounceMs: 40,
    });
    watcher = w;
    assert.deepEqual(await w.ready, { status: 'applied' });
    assert.deepEqual(await w.reload(), { status: 'unchanged' });
    env.CTL_PW = 'two';
    assert.deepEqual(await w.reload(), { status: 'applied' });
    assert.deepEqual(secrets, ['one', 'two']);
    delete env.CTL_PW;
    const refused = await w.reload();
    assert.equal(refused.status, 'refused');
    assert.deepEqual(
      (await errors.next()).map((i) => i.message),
      ['environment variable CTL_PW is not set (it must hold the password of the control role "mamori")'],
    );
    await rm(file);
    const gone = await w.reload();
    assert.deepEqual(gone.status === 'refused' && gone.issues.map((i) => i.message), ['cannot read the config file: no such file']);
    assert.equal(w.current()!.control.passwordEnv, 'CTL_PW');
  });

  test('validate() can refuse a schema-valid file (e.g. a column missing from the catalog)', async () => {
    await writeFile(file, 'adminRoles: [dba]\n');
    const w = start({
      validate: async (c) =>
        c.columns['public.t.missing'] ? [{ path: 'columns["public.t.missing"]', message: 'no such column in database app' }] : [],
    });
    await w.ready;
    await changes.next();
    await writeFile(file, 'adminRoles: [dba]\ncolumns: { public.t.missing: { type: text } }\n');
    assert.deepEqual(await errors.next(), [{ path: 'columns["public.t.missing"]', message: 'no such column in database app' }]);
    assert.deepEqual(w.current()!.columns, {});
  });

  test('onChange throwing counts as refused and keeps the old config', async () => {
    await writeFile(file, 'listen: { port: 7100 }\n');
    let fail = false;
    const w = start({
      onChange: (c) => {
        if (fail) throw new Error('cannot bind 127.0.0.1:7101');
        changes.push(c);
      },
    });
    await w.ready;
    fail = true;
    await writeFile(file, 'listen: { port: 7101 }\n');
    assert.deepEqual(
      (await errors.next()).map((i) => i.message),
      ['applying the new configuration failed: cannot bind 127.0.0.1:7101'],
    );
    assert.equal(w.current()!.listen.port, 7100);
  });

  test('after close() file changes are ignored', async () => {
    await writeFile(file, 'listen: { port: 7200 }\n');
    const w = start();
    await w.ready;
    await changes.next();
    w.close();
    await writeFile(file, 'listen: { port: 7201 }\n');
    await sleep(200);
    assert.equal(changes.pending, 0);
    assert.equal(w.current()!.listen.port, 7200);
    await assert.rejects(w.reload(), /closed/);
  });
});
