// `mamori keys` on the file store (no database needed): init, add, list, rewrap, the escrow commands with a
// restore drill through the CLI, and exit codes (0 ok, 1 refused, 2 usage).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runKeysCommand } from '../../keyring/cli.js';
import { Keyring } from '../../keyring/keyring.js';
import { tmpLocal, rsaPair } from './helpers.js';

test('keys CLI on the file store: escrow export / verify / recover and exit codes', async () => {
  const t = tmpLocal();
  const out: string[] = [];
  const err: string[] = [];
  const io = { stdout: { write: (s: string) => out.push(s) }, stderr: { write: (s: string) => err.push(s) } };
  const cfgFile = join(t.dir, 'mamori.yaml');
  const run = (...args: string[]) => runKeysCommand([...args, '--config', cfgFile], io);
  const { publicKey, privateKey } = rsaPair();
  try {
    writeFileSync(join(t.dir, 'escrow.pub'), publicKey);
    writeFileSync(join(t.dir, 'escrow.key'), privateKey, { mode: 0o600 });
    writeFileSync(
      cfgFile,
      'keyring:\n  provider: local\n  keyFile: ./root.key\n  store: { type: file, path: ./keystore.json }\n  escrow: { publicKeyFile: ./escrow.pub }\n',
    );
    assert.equal(await run('init'), 2); // no identity anywhere
    assert.match(err.join(''), /init needs --identity/);
    assert.equal(await run('init', '--identity', 'prod'), 0);
    assert.equal(await run('add', 'public.p.mynumber', '--mode', 'deterministic'), 0);
    assert.equal(await run('add', 'subject:2026', '--mode', 'randomized', '--purpose', 'subject'), 0);
    assert.equal(await run('add', 'x', '--mode', 'randomized', '--purpose', 'weird'), 2);
    assert.equal(await run('retire'), 2);

    const cfg = { ...t.cfg, escrow: { publicKeyFile: join(t.dir, 'escrow.pub') } };
    const kr = await Keyring.open(cfg);
    const cell = await kr.encrypt('public.p.mynumber', Buffer.from('123456789018'));
    await kr.close();

    out.length = 0;
    assert.equal(await run('list'), 0);
    assert.match(out.join(''), /1\tpublic\.p\.mynumber\tdeterministic\tdata\n\tv1\tactive \(current\)\t\d+ encryptions\tescrowed/);
    assert.match(out.join(''), /2\tsubject:2026\trandomized\tsubject/);

    out.length = 0;
    assert.equal(await run('escrow', 'export', '--out', join(t.dir, 'esc')), 0);
    assert.match(out.join(''), /2 cohort escrow copies written/);
    assert.equal(await run('escrow', 'verify', '--private-key', join(t.dir, 'escrow.key')), 0);
    assert.match(out.join(''), /2 keys recoverable/);
    assert.equal(await run('escrow', 'bogus'), 2);

    assert.equal(await run('rewrap'), 0);
    assert.match(out.join(''), /2 keys rewrapped under local:/);

    // The root is lost: the CLI refuses, then recovers with the escrow key.
    renameSync(t.cfg.keyFile!, join(t.dir, 'gone.key'));
    err.length = 0;
    assert.equal(await run('list'), 1);
    assert.match(err.join(''), /root key file .* not found/);
    assert.equal(await run('escrow', 'recover', '--private-key', join(t.dir, 'escrow.key')), 0);
    const back = await Keyring.open(cfg);
    assert.equal((await back.decrypt(cell))!.toString(), '123456789018');
    await back.close();
  } finally {
    t.cleanup();
  }
});
