import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { defaultConfig } from '../../config/load.js';
import { configSchema, type MamoriConfigInput } from '../../config/schema.js';
import { fromZodIssues } from '../../config/issues.js';
import { parseLogicalType } from '../../config/column-type.js';

const BASE = '/etc/mamori';

function issuesOf(input: unknown): { path: string; message: string }[] {
  const schema = configSchema(BASE);
  const r = schema.safeParse(input, { reportInput: true });
  assert.equal(r.success, false, 'expected the input to be refused');
  return fromZodIssues(r.error!.issues, schema).map(({ path, message }) => ({ path, message }));
}

function parse(input: MamoriConfigInput) {
  return defaultConfig(input, BASE);
}

describe('defaults', () => {
  test('an empty file gives every documented default, with paths resolved against the config directory', () => {
    assert.deepEqual(parse({}), {
      listen: { host: '127.0.0.1', port: 6432 },
      upstream: { host: '127.0.0.1', port: 5432, tls: { mode: 'disable' }, connectTimeoutSeconds: 10 },
      control: { user: 'mamori', passwordEnv: 'MAMORI_CONTROL_PASSWORD', database: 'postgres' },
      auth: { lookupFunction: 'mamori.get_auth' },
      limits: {
        maxConnections: 1000,
        maxRewriteMessageBytes: 67108864,
        maxMessageBytes: 1073741824,
        idleTimeoutSeconds: 0,
        startupTimeoutSeconds: 10,
        shutdownGraceSeconds: 30,
      },
      log: { level: 'info' },
      keyring: {
        provider: 'local',
        keyFile: '/etc/mamori/.mamori/root.key',
        store: { type: 'file', path: '/etc/mamori/.mamori/keystore.json' },
        cacheTtlSeconds: 300,
        rotateAfterEncryptions: 1_000_000_000,
      },
      columns: {},
      approval: { members: 'required', passwords: 'allowed' },
      adminRoles: [],
      search: { maxInListItems: 100, ratePerSecond: 50, burst: 100 },
      audit: {
        statements: 'protected',
        failMode: 'closed',
        fsync: 'interval',
        fsyncIntervalMs: 1000,
        sinks: [{ type: 'file', path: '/etc/mamori/audit/mamori.jsonl', rotateBytes: 104857600, rotateSeconds: 86400 }],
        maxBufferedRecords: 10000,
        heartbeatSeconds: 60,
        checkpointEverySeconds: 300,
        signingKeyFile: '/etc/mamori/.mamori/audit-signing.key',
        checkpointSink: {
          type: 'file',
          path: '/etc/mamori/audit-checkpoints/mamori.jsonl',
          rotateBytes: 104857600,
          rotateSeconds: 86400,
        },
      },
      metrics: { enabled: true, host: '127.0.0.1', port: 9930, userLabels: false },
    });
  });

  test('the client-leg TLS section is optional as a whole; when present require and minVersion default', () => {
    assert.equal(parse({}).tls, undefined);
    assert.deepEqual(parse({ tls: { cert: 'c.crt', key: 'k.key' } }).tls, {
      cert: '/etc/mamori/c.crt',
      key: '/etc/mamori/k.key',
      require: false,
      minVersion: 'TLSv1.2',
    });
  });

  test('a column gets its defaults, normalized type, parsed name and key domain', () => {
    const c = parse({
      columns: { 'public.employees.my_number': { type: 'mynumber', read: { plaintext: ['hr_clerk'], mask: ['hr_viewer'] } } },
    }).columns['public.employees.my_number']!;
    assert.deepEqual(c, {
      type: 'mynumber',
      logicalType: { name: 'mynumber' },
      mode: 'randomized',
      read: { plaintext: ['hr_clerk'], mask: ['hr_viewer'], ciphertext: [], null: [] },
      search: ['hr_clerk'],
      write: [],
      export: [],
      others: 'deny',
      requireClientCert: false,
      enforce: true,
      ref: { schema: 'public', table: 'employees', column: 'my_number' },
      keyDomain: 'public.employees.my_number',
    });
  });

  test('search defaults to the plaintext readers and an explicit list wins', () => {
    const cols = parse({
      columns: {
        'public.a.x': { type: 'text', mode: 'deterministic', read: { plaintext: ['r1', 'r2'] } },
        'public.a.y': { type: 'text', mode: 'deterministic', read: { plaintext: ['r1'] }, search: ['s'] },
      },
    }).columns;
    assert.deepEqual(cols['public.a.x']!.search, ['r1', 'r2']);
    assert.deepEqual(cols['public.a.y']!.search, ['s']);
  });

  test('quoted identifiers keep case; unquoted fold to lower case; domain names the canonical path', () => {
    const cols = parse({ columns: { 'HR."Staff Table"."MyNo"': { type: 'char(12)' } } }).columns;
    const c = cols['HR."Staff Table"."MyNo"']!;
    assert.deepEqual(c.ref, { schema: 'hr', table: 'Staff Table', column: 'MyNo' });
    assert.equal(c.keyDomain, 'hr."Staff Table"."MyNo"');
    assert.deepEqual(c.logicalType, { name: 'char', length: 12 });
  });

  test('SQL type spellings normalize to the logical type names', () => {
    const spellings: [string, string][] = [
      ['integer', 'int4'],
      ['INT', 'int4'],
      ['bigint', 'int8'],
      ['smallint', 'int2'],
      ['character varying(20)', 'varchar(20)'],
      ['VARCHAR( 5 )', 'varchar(5)'],
      ['character(3)', 'char(3)'],
      ['char', 'char(1)'],
      ['corporate_number', 'corporate_number'],
      ['date', 'date'],
      ['bytea', 'bytea'],
    ];
    for (const [written, normalized] of spellings) {
      const c = parse({ columns: { 's.t.c': { type: written } } }).columns['s.t.c']!;
      assert.equal(c.type, normalized, written);
    }
  });
});

describe('errors', () => {
  test('unknown keys are refused with their path, and a near miss is suggested', () => {
    assert.deepEqual(issuesOf({ listen: { prot: 1 } }), [{ path: 'listen.prot', message: 'unknown key; did you mean "port"?' }]);
    assert.deepEqual(issuesOf({ upstrem: {} }), [{ path: 'upstrem', message: 'unknown key; did you mean "upstream"?' }]);
    assert.deepEqual(issuesOf({ audit: { sinks: [{ type: 'file', path: 'a', rotatebytes: 1 }] } }), [
      { path: 'audit.sinks[0].rotatebytes', message: 'unknown key; did you mean "rotateBytes"?' },
    ]);
    assert.deepEqual(issuesOf({ zzz: 1 }), [{ path: 'zzz', message: 'unknown key' }]);
  });

  test('bad enums name the allowed values and what was found', () => {
    assert.deepEqual(issuesOf({ upstream: { tls: { mode: 'sometimes' } } }), [
      { path: 'upstream.tls.mode', message: 'expected one of disable|require|verify-ca|verify-full, got "sometimes"' },
    ]);
    assert.deepEqual(issuesOf({ log: { level: 'loud' } }), [
      { path: 'log.level', message: 'expected one of trace|debug|info|warn|error|fatal|silent, got "loud"' },
    ]);
    assert.deepEqual(issuesOf({ audit: { sinks: [{ type: 's3' }] } }), [
      { path: 'audit.sinks[0].type', message: 'expected one of file|postgres|stdout, got "s3"' },
    ]);
    assert.deepEqual(issuesOf({ keyring: { store: { path: 'x' } } }), [
      { path: 'keyring.store.type', message: 'required (one of file|postgres)' },
    ]);
  });

  test('wrong types and missing required fields', () => {
    assert.deepEqual(issuesOf({ listen: { port: '6432' } }), [{ path: 'listen.port', message: 'expected a number, got "6432"' }]);
    assert.deepEqual(issuesOf({ limits: { maxConnections: 1.5 } }), [
      { path: 'limits.maxConnections', message: 'expected an integer, got 1.5' },
    ]);
    assert.deepEqual(issuesOf({ tls: { cert: 'c' } }), [{ path: 'tls.key', message: 'required (a string)' }]);
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { mode: 'deterministic' } } }), [
      { path: 'columns["a.b.c"].type', message: 'required (a string)' },
    ]);
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'text', read: { plaintext: 'hr' } } } }), [
      { path: 'columns["a.b.c"].read.plaintext', message: 'expected a list, got "hr"' },
    ]);
    assert.deepEqual(issuesOf({ adminRoles: [''] }), [{ path: 'adminRoles[0]', message: 'must not be empty' }]);
    assert.deepEqual(issuesOf({ audit: { sinks: [] } }), [{ path: 'audit.sinks', message: 'must not be empty' }]);
  });

  test('port ranges', () => {
    assert.deepEqual(issuesOf({ listen: { port: 70000 } }), [{ path: 'listen.port', message: 'must be <= 65535, got 70000' }]);
    assert.deepEqual(issuesOf({ upstream: { port: 0 } }), [{ path: 'upstream.port', message: 'must be >= 1, got 0' }]);
    assert.deepEqual(issuesOf({ metrics: { port: -1 } }), [{ path: 'metrics.port', message: 'must be >= 0, got -1' }]);
    assert.equal(parse({ listen: { port: 0 } }).listen.port, 0, 'port 0 (pick a free port) is allowed for listeners');
    assert.deepEqual(issuesOf({ listen: { port: 9930 } }), [
      { path: 'metrics.port', message: 'same address as listen (127.0.0.1:9930)' },
    ]);
  });

  test('bad column keys', () => {
    const prefix = 'column key must be schema.table.column (three identifiers, "quoted" where needed): ';
    const cases: [string, string][] = [
      ['employees.my_number', 'got 2 identifier(s)'],
      ['a.b.c.d', 'got 4 identifier(s)'],
      ['public.employees.', 'name ends with "."'],
      ['public.1table.c', 'unexpected character "1" at position 8'],
      ['public."open.c', 'unterminated quoted identifier'],
      ['public."".c', 'zero-length quoted identifier'],
      ['public.emp loyees.c', 'unexpected character " " at position 11'],
      [`public.${'x'.repeat(64)}.c`, 'identifier longer than 63 bytes'],
    ];
    for (const [key, why] of cases) {
      assert.deepEqual(issuesOf({ columns: { [key]: { type: 'text' } } }), [
        { path: `columns[${JSON.stringify(key)}]`, message: prefix + why },
      ]);
    }
  });

  test('column types and lengths', () => {
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'varchar(0)' } } }), [
      { path: 'columns["a.b.c"].type', message: 'length of varchar(n) must be between 1 and 10485760, got 0' },
    ]);
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'char(-3)' } } }), [
      { path: 'columns["a.b.c"].type', message: 'length of char(n) must be between 1 and 10485760, got -3' },
    ]);
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'varchar' } } }), [
      { path: 'columns["a.b.c"].type', message: 'varchar needs a length, e.g. varchar(20); use text for unbounded strings' },
    ]);
    // A bare bpchar is unbounded in PostgreSQL (not char(1)): refused like a bare varchar.
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'bpchar' } } }), [
      { path: 'columns["a.b.c"].type', message: 'bpchar needs a length, e.g. bpchar(20); use text for unbounded strings' },
    ]);
    assert.deepEqual(parseLogicalType('bpchar(12)'), { ok: true, type: { name: 'char', length: 12 } });
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'int4(3)' } } }), [
      { path: 'columns["a.b.c"].type', message: 'int4 takes no length' },
    ]);
    assert.deepEqual(issuesOf({ columns: { 'a.b.c': { type: 'jsonb' } } }), [
      {
        path: 'columns["a.b.c"].type',
        message:
          'expected one of text, varchar(n), char(n), mynumber, corporate_number, int2, int4, int8, date, bytea, got "jsonb"',
      },
    ]);
  });
});

describe('cross-field rules', () => {
  test('verify-ca and verify-full need a CA', () => {
    for (const mode of ['verify-ca', 'verify-full'] as const) {
      assert.deepEqual(issuesOf({ upstream: { tls: { mode } } }), [
        {
          path: 'upstream.tls.ca',
          message: `required when mode is ${mode} (the CA certificate that signed the server's certificate)`,
        },
      ]);
    }
    assert.equal(parse({ upstream: { tls: { mode: 'verify-full', ca: 'ca.crt' } } }).upstream.tls.ca, '/etc/mamori/ca.crt');
  });

  test('aws-kms needs kms.keyArn and kms.region', () => {
    assert.deepEqual(issuesOf({ keyring: { provider: 'aws-kms' } }), [
      { path: 'keyring.kms.keyArn', message: 'required when provider is aws-kms' },
      { path: 'keyring.kms.region', message: 'required when provider is aws-kms' },
    ]);
    const arn = 'arn:aws:kms:ap-northeast-1:123456789012:key/mrk-1234abcd';
    const k = parse({ keyring: { provider: 'aws-kms', kms: { keyArn: arn, region: 'ap-northeast-1', multiRegion: true } } }).keyring;
    assert.deepEqual(k.kms, { keyArn: arn, region: 'ap-northeast-1', multiRegion: true });
    assert.deepEqual(issuesOf({ keyring: { kms: { keyArn: 'my-key' } } }), [
      { path: 'keyring.kms.keyArn', message: 'must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)' },
    ]);
    assert.deepEqual(
      issuesOf({
        keyring: { provider: 'aws-kms', kms: { keyArn: 'arn:aws:kms:us-east-1:123456789012:key/abc', region: 'us-east-1', multiRegion: true } },
      }),
      [{ path: 'keyring.kms.keyArn', message: 'multiRegion: true needs a multi-Region key (key/mrk-…)' }],
    );
  });

  test('a role may be in only one read list of a column', () => {
    assert.deepEqual(
      issuesOf({ columns: { 'public.e.n': { type: 'mynumber', read: { plaintext: ['hr'], mask: ['v'], null: ['x', 'hr'] } } } }),
      [
        {
          path: 'columns["public.e.n"].read.null[1]',
          message: 'role "hr" is also in read.plaintext; a role may be in only one read list of a column',
        },
      ],
    );
  });

  test('columns sharing a domain must share mode, read policy and value encoding', () => {
    const read = { plaintext: ['hr'], mask: ['v'] };
    assert.deepEqual(
      issuesOf({
        columns: {
          'public.a.n': { type: 'mynumber', mode: 'deterministic', domain: 'mn', read },
          'public.b.n': { type: 'text', mode: 'randomized', domain: 'mn', read: { plaintext: ['hr'] }, others: 'null' },
        },
      }),
      [
        {
          path: 'columns["public.b.n"].mode',
          message: 'columns sharing domain "mn" must have the same mode: public.a.n is deterministic, this column is randomized',
        },
        {
          path: 'columns["public.b.n"].read',
          message: 'columns sharing domain "mn" must have the same read policy (read lists and others) as public.a.n',
        },
        {
          path: 'columns["public.b.n"].type',
          message: 'columns sharing domain "mn" must have the same value encoding: public.a.n is mynumber, this column is text',
        },
      ],
    );
    // Naming another column's path as the domain joins that column's (implicit) domain.
    assert.deepEqual(
      issuesOf({
        columns: {
          'public.a.n': { type: 'int4', mode: 'deterministic', read },
          'public.b.n': { type: 'int8', mode: 'deterministic', domain: 'public.a.n', read },
        },
      }).map((i) => i.path),
      ['columns["public.b.n"].type'],
    );
    // Same encoding family (text and varchar), same mode and read lists in another order: accepted.
    const ok = parse({
      columns: {
        'public.a.n': { type: 'text', mode: 'deterministic', domain: 'code', read: { plaintext: ['a', 'b'] } },
        'public.b.n': { type: 'varchar(12)', mode: 'deterministic', domain: 'code', read: { plaintext: ['b', 'a'] } },
      },
    });
    assert.equal(ok.columns['public.b.n']!.keyDomain, 'code');
  });

  test('two keys naming the same column are refused', () => {
    assert.deepEqual(issuesOf({ columns: { 'public.e.n': { type: 'text' }, 'PUBLIC."e".N': { type: 'text' } } }), [
      { path: 'columns["PUBLIC.\\"e\\".N"]', message: 'names the same column as "public.e.n"' },
    ]);
  });

  test('search on a randomized column is refused', () => {
    assert.deepEqual(issuesOf({ columns: { 'public.e.n': { type: 'text', mode: 'randomized', search: ['hr'] } } }), [
      {
        path: 'columns["public.e.n"].search',
        message: 'search needs mode: deterministic (randomized columns support only IS [NOT] NULL)',
      },
    ]);
  });

  test('limits, audit sinks and qualified names', () => {
    assert.deepEqual(issuesOf({ limits: { maxRewriteMessageBytes: 2048, maxMessageBytes: 1024 } }), [
      { path: 'limits.maxRewriteMessageBytes', message: 'must not exceed maxMessageBytes (1024), got 2048' },
    ]);
    assert.deepEqual(issuesOf({ audit: { sinks: [{ type: 'file', path: 'a.jsonl' }, { type: 'file', path: './a.jsonl' }] } }), [
      { path: 'audit.sinks[1]', message: 'same destination as sinks[0]' },
    ]);
    assert.deepEqual(
      issuesOf({ audit: { sinks: [{ type: 'file', path: 'a.jsonl' }], checkpointSink: { type: 'file', path: 'a.jsonl' } } }),
      [{ path: 'audit.checkpointSink.path', message: 'must differ from the audit sinks (checkpoints are the second, independent copy)' }],
    );
    assert.deepEqual(issuesOf({ auth: { lookupFunction: 'get_auth' } }), [
      { path: 'auth.lookupFunction', message: 'lookupFunction must be schema-qualified (schema.name), got 1 part(s)' },
    ]);
    assert.deepEqual(issuesOf({ control: { passwordEnv: 'hunter2!' } }), [
      { path: 'control.passwordEnv', message: 'must be the name of an environment variable (letters, digits and _), not a value' },
    ]);
  });

  test('keyring extras used by the keyring CLI resolve like other paths', () => {
    const k = parse({ keyring: { keystoreId: 'prod-1', stateFile: 'state/pin', escrow: { publicKeyFile: 'e.pub', exportDir: 'escrow' } } }).keyring;
    assert.equal(k.keystoreId, 'prod-1');
    assert.equal(k.stateFile, '/etc/mamori/state/pin');
    assert.deepEqual(k.escrow, { publicKeyFile: '/etc/mamori/e.pub', exportDir: '/etc/mamori/escrow' });
    assert.deepEqual(issuesOf({ keyring: { keystoreId: 'has space' } }), [
      { path: 'keyring.keystoreId', message: 'must be 1–128 letters, digits or . _ : -' },
    ]);
  });

  test('a full production-style config parses', () => {
    const c = parse({
      tls: { cert: 'certs/server.crt', key: 'certs/server.key', clientCa: 'certs/ca.crt', require: true },
      upstream: { host: 'db.internal', tls: { mode: 'verify-full', ca: '/etc/ssl/db-ca.crt', servername: 'db.internal' } },
      keyring: { store: { type: 'postgres' }, escrow: { publicKeyFile: 'escrow.pub' } },
      audit: {
        sinks: [{ type: 'file', path: 'audit/a.jsonl' }, { type: 'postgres', connection: { passwordEnv: 'AUDIT_PW' } }, { type: 'stdout' }],
        checkpointSink: 'none',
      },
    });
    assert.equal(c.tls!.clientCa, '/etc/mamori/certs/ca.crt');
    assert.equal(c.upstream.tls.ca, '/etc/ssl/db-ca.crt', 'absolute paths stay as written');
    assert.deepEqual(c.keyring.store, { type: 'postgres', table: 'mamori.data_keys' });
    assert.deepEqual(c.audit.sinks[1], {
      type: 'postgres',
      table: 'mamori.audit_log',
      connection: { passwordEnv: 'AUDIT_PW' },
      batchSize: 500,
      flushIntervalMs: 1000,
    });
    assert.equal(c.audit.checkpointSink, null);
  });
});
