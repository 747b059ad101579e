import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadConfig, formatConfigIssues, type LoadResult } from '../../config/load.js';

const ENV = { MAMORI_CONTROL_PASSWORD: 'control-pw-123' };
let dir: string;

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mamori-config-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function load(text: string, env: Record<string, string> = ENV, name = 'mamori.yaml'): Promise<LoadResult> {
  const file = path.join(dir, name);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, text);
  return loadConfig(file, env);
}

async function errorsOf(text: string, env: Record<string, string> = ENV) {
  const r = await load(text, env);
  assert.equal(r.ok, false, 'expected the file to be refused');
  return r.ok ? [] : r.errors.map(({ path: p, message, line, column }) => ({ path: p, message, line, column }));
}

describe('loadConfig', () => {
  test('an empty file loads with defaults and the control password from the environment', async () => {
    const r = await load('');
    assert.ok(r.ok);
    assert.equal(r.config.listen.port, 6432);
    assert.deepEqual(r.secrets, { controlPassword: 'control-pw-123', auditSinkPasswords: [undefined] });
  });

  test('relative paths resolve against the config file directory, not the working directory', async () => {
    const r = await load(
      [
        'tls: { cert: certs/server.crt, key: ./certs/server.key, clientCa: ../ca.crt }',
        'upstream: { tls: { mode: verify-ca, ca: /abs/ca.crt } }',
        'keyring: { keyFile: keys/root.key, escrow: { publicKeyFile: escrow.pub } }',
        'audit: { sinks: [ { type: file, path: audit/a.jsonl } ], signingKeyFile: sign.key }',
      ].join('\n'),
      ENV,
      'etc/mamori.yaml',
    );
    assert.ok(r.ok);
    const etc = path.join(dir, 'etc');
    assert.equal(r.config.tls!.cert, path.join(etc, 'certs/server.crt'));
    assert.equal(r.config.tls!.key, path.join(etc, 'certs/server.key'));
    assert.equal(r.config.tls!.clientCa, path.join(dir, 'ca.crt'));
    assert.equal(r.config.upstream.tls.ca, '/abs/ca.crt');
    assert.equal(r.config.keyring.keyFile, path.join(etc, 'keys/root.key'));
    assert.equal(r.config.keyring.escrow!.publicKeyFile, path.join(etc, 'escrow.pub'));
    assert.equal(r.config.keyring.store.type === 'file' && r.config.keyring.store.path, path.join(etc, '.mamori/keystore.json'));
    assert.equal(r.config.audit.sinks[0]!.type === 'file' && r.config.audit.sinks[0]!.path, path.join(etc, 'audit/a.jsonl'));
    assert.equal(r.config.audit.signingKeyFile, path.join(etc, 'sign.key'));
  });

  test('schema errors carry the path, the reason and the line of the offending key', async () => {
    const errors = await errorsOf(['listen:', '  host: 0.0.0.0', 'upstream:', '  tls:', '    mode: sometimes'].join('\n'));
    assert.deepEqual(errors, [
      {
        path: 'upstream.tls.mode',
        message: 'expected one of disable|require|verify-ca|verify-full, got "sometimes"',
        line: 5,
        column: 5,
      },
    ]);
  });

  test('formatConfigIssues prints one line per issue with the file name', async () => {
    const file = path.join(dir, 'mamori.yaml');
    await writeFile(file, 'upstream:\n  tls: { mode: sometimes }\nlisten: { prot: 1 }\n');
    const r = await loadConfig(file, ENV);
    assert.equal(r.ok, false);
    assert.equal(
      formatConfigIssues(r.ok ? [] : r.errors),
      [
        `${file}: listen.prot: unknown key; did you mean "port"? (line 3, column 11)`,
        `${file}: upstream.tls.mode: expected one of disable|require|verify-ca|verify-full, got "sometimes" (line 2, column 10)`,
      ].join('\n'),
    );
  });

  test('a missing required field points at its parent section', async () => {
    assert.deepEqual(await errorsOf('tls:\n  cert: a.crt\n'), [
      { path: 'tls.key', message: 'required (a string)', line: 1, column: 1 },
    ]);
  });

  test('bad column key and cross-field errors carry paths with quoted keys', async () => {
    const text = [
      'columns:',
      '  public.employees.my_number:',
      '    type: mynumber',
      '    mode: deterministic',
      '    read: { plaintext: [hr_clerk], mask: [hr_viewer, hr_clerk] }',
    ].join('\n');
    assert.deepEqual(await errorsOf(text), [
      {
        path: 'columns["public.employees.my_number"].read.mask[1]',
        message: 'role "hr_clerk" is also in read.plaintext; a role may be in only one read list of a column',
        line: 5,
        column: 54,
      },
    ]);
    assert.deepEqual(await errorsOf('columns:\n  employees.my_number: { type: mynumber }\n'), [
      {
        path: 'columns["employees.my_number"]',
        message: 'column key must be schema.table.column (three identifiers, "quoted" where needed): got 2 identifier(s)',
        line: 2,
        column: 3,
      },
    ]);
  });

  test('a literal password is refused, with a message pointing to environment variables', async () => {
    const message =
      "a password may not be written in the config file; put it in an environment variable and give that variable's name in passwordEnv";
    assert.deepEqual(await errorsOf('control:\n  user: mamori\n  password: hunter2\n'), [
      { path: 'control.password', message, line: 3, column: 3 },
    ]);
    assert.deepEqual(
      await errorsOf('audit:\n  sinks:\n    - type: postgres\n      connection: { user: a, Password: x }\n'),
      [{ path: 'audit.sinks[0].connection.Password', message, line: 4, column: 30 }],
    );
    // A column that happens to be called password is not a password.
    const col = await load('columns:\n  public.users.password: { type: bytea }\n');
    assert.ok(col.ok);
    assert.equal(col.config.columns['public.users.password']!.ref.column, 'password');
    // The value never appears in what is reported.
    const r = await load('control: { password: "s3cr3t-value" }\n');
    assert.ok(!r.ok && !formatConfigIssues(r.errors).includes('s3cr3t-value'));
  });

  test('a missing or empty password variable names the variable, never a value', async () => {
    assert.deepEqual(await errorsOf('control: { user: app_ctl, passwordEnv: CTL_PW }\n', { MAMORI_CONTROL_PASSWORD: 'x' }), [
      {
        path: 'control.passwordEnv',
        message: 'environment variable CTL_PW is not set (it must hold the password of the control role "app_ctl")',
        line: 1,
        column: 27,
      },
    ]);
    assert.deepEqual(await errorsOf('', { MAMORI_CONTROL_PASSWORD: '' }), [
      {
        path: 'control.passwordEnv',
        message:
          'environment variable MAMORI_CONTROL_PASSWORD is not set (it must hold the password of the control role "mamori")',
        line: undefined,
        column: undefined,
      },
    ]);
    const sink = 'audit: { sinks: [ { type: postgres, connection: { passwordEnv: AUDIT_PW } } ] }\n';
    assert.deepEqual(await errorsOf(sink), [
      {
        path: 'audit.sinks[0].connection.passwordEnv',
        message: 'environment variable AUDIT_PW is not set (it must hold the password of the role of audit sink 0)',
        line: 1,
        column: 51,
      },
    ]);
    const ok = await load(sink, { ...ENV, AUDIT_PW: 'audit-pw' });
    assert.ok(ok.ok);
    assert.deepEqual(ok.secrets.auditSinkPasswords, ['audit-pw']);
  });

  test('requireSecrets: false loads without the variables', async () => {
    const file = path.join(dir, 'mamori.yaml');
    await writeFile(file, 'log: { level: debug }\n');
    const r = await loadConfig(file, {}, { requireSecrets: false });
    assert.ok(r.ok);
    assert.equal(r.secrets.controlPassword, undefined);
  });

  test('YAML syntax errors report line and column', async () => {
    assert.deepEqual(await errorsOf('listen:\n  host: a\n  port: [1, 2\nlog: {}\n'), [
      {
        path: '',
        message: 'YAML syntax error: Flow sequence in block collection must be sufficiently indented and end with a ]',
        line: 4,
        column: 1,
      },
    ]);
    const dup = await errorsOf('listen: { port: 1 }\nlisten: { port: 2 }\n');
    assert.deepEqual(dup, [{ path: '', message: 'YAML syntax error: Map keys must be unique', line: 2, column: 1 }]);
  });

  test('a document that is not a mapping, and an unreadable file', async () => {
    assert.deepEqual(await errorsOf('- a\n- b\n'), [
      { path: '', message: 'the file must be a mapping of sections (listen:, upstream:, …)', line: undefined, column: undefined },
    ]);
    const missing = await loadConfig(path.join(dir, 'nope.yaml'), ENV);
    assert.deepEqual(missing, {
      ok: false,
      errors: [{ file: path.join(dir, 'nope.yaml'), path: '', message: 'cannot read the config file: no such file' }],
    });
    if (process.getuid?.() !== 0) {
      const locked = path.join(dir, 'locked.yaml');
      await writeFile(locked, '');
      await chmod(locked, 0);
      const r = await loadConfig(locked, ENV);
      assert.ok(!r.ok && r.errors[0]!.message === 'cannot read the config file: permission denied');
    }
  });

  test('null is a word here (read.null, others: null), while ~ is still YAML null', async () => {
    const r = await load('columns:\n  public.e.n: { type: text, read: { null: [viewer] }, others: null }\n');
    assert.ok(r.ok);
    assert.deepEqual(r.config.columns['public.e.n']!.read.null, ['viewer']);
    assert.equal(r.config.columns['public.e.n']!.others, 'null');
    assert.deepEqual(await errorsOf('tls: ~\n'), [{ path: 'tls', message: 'expected a mapping, got null', line: 1, column: 1 }]);
  });

  test('checkpointSink: none, a sink, or a clear error for anything else', async () => {
    const none = await load('audit: { checkpointSink: none }\n');
    assert.ok(none.ok);
    assert.equal(none.config.audit.checkpointSink, null);
    assert.deepEqual(await errorsOf('audit: { checkpointSink: nope }\n'), [
      { path: 'audit.checkpointSink', message: 'expected "none" or a mapping, got "nope"', line: 1, column: 10 },
    ]);
    assert.deepEqual(await errorsOf('audit: { checkpointSink: { type: ftp } }\n'), [
      { path: 'audit.checkpointSink.type', message: 'expected one of file|postgres|stdout, got "ftp"', line: 1, column: 28 },
    ]);
    assert.deepEqual(await errorsOf('audit: { checkpointSink: { type: file, path: x, rotatebytes: 3 } }\n'), [
      {
        path: 'audit.checkpointSink.rotatebytes',
        message: 'unknown key; did you mean "rotateBytes"?',
        line: 1,
        column: 49,
      },
    ]);
  });

  test('mamori.example.yaml at the repository root is valid', async () => {
    const r = await loadConfig(new URL('../../mamori.example.yaml', import.meta.url).pathname, {
      MAMORI_CONTROL_PASSWORD: 'x',
      MAMORI_AUDIT_PASSWORD: 'y',
    });
    assert.ok(r.ok, r.ok ? '' : formatConfigIssues(r.errors));
    assert.equal(r.config.columns['public.dependents.my_number']!.keyDomain, 'mynumber');
  });

  test('the full example in docs/configuration.md is valid', async () => {
    const doc = await readFile(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
    const block = /## Full example\s+```yaml\n([\s\S]*?)```/.exec(doc);
    assert.ok(block, 'the docs have a Full example yaml block');
    const r = await load(block[1]!);
    assert.ok(r.ok, r.ok ? '' : formatConfigIssues(r.errors));
    assert.equal(r.config.keyring.provider, 'aws-kms');
    assert.equal(r.config.columns['public.employees.birth_date']!.others, 'null');
  });

  test('alias bombs are refused', async () => {
    const lines = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 0; i < 8; i++) {
      const prev = String.fromCharCode(97 + i);
      const next = String.fromCharCode(98 + i);
      lines.push(`${next}: &${next} [${Array(10).fill(`*${prev}`).join(', ')}]`);
    }
    const errors = await errorsOf(lines.join('\n'));
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /^YAML error: .*alias/i);
  });
});
