import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createLogger, sessionLogger, redact, isSecretKey, CENSOR } from '../../proxy/log.js';

function capture() {
  const lines: string[] = [];
  return { lines, dest: { write: (s: string) => void lines.push(s) } };
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

describe('createLogger', () => {
  test('no secret survives, at any level, depth, or in errors, bindings and buffers', () => {
    const { lines, dest } = capture();
    const log = createLogger({ level: 'trace' }, dest);
    const secrets: string[] = [];
    const s = (label: string) => {
      const v = `${label}-${randomBytes(8).toString('hex')}`;
      secrets.push(v);
      return v;
    };
    const session = sessionLogger(log, { sessionId: 's-1', user: 'hr_clerk', database: 'app', client: '10.0.0.5:50000' });
    const child = session.child({ password: s('binding-password'), stage: 'auth' });

    for (const level of LEVELS) {
      const pgError = Object.assign(new Error('duplicate key value violates unique constraint'), {
        code: '23505',
        detail: `Key (my_number)=(${s('detail')}) already exists.`,
        internalQuery: s('internalQuery'),
        where: s('where'),
      });
      const nested = {
        user: 'hr_clerk',
        keyArn: 'arn:aws:kms:ap-northeast-1:123456789012:key/abc',
        passwordEnv: 'MAMORI_CONTROL_PASSWORD',
        auth: { password: s('password'), clientKey: s('clientKey'), proof: s('proof'), salt: s('salt') },
        deep: { a: { b: { c: { token: s('token'), apiToken: s('apiToken'), controlPassword: s('controlPassword') } } } },
        cell: { value: s('value'), plaintext: s('plaintext'), dataKey: s('dataKey'), rootKey: s('rootKey') },
        params: [s('param0'), s('param1')],
        values: [s('v0')],
        rows: [[s('row')]],
        sql: `INSERT INTO t VALUES ('${s('sql-literal')}')`,
        query: `SELECT '${s('query-literal')}'`,
        key: s('key'),
        secret: s('secret'),
        bytes: Buffer.from(s('buffer')),
        map: new Map([['password', s('map-password')]]),
        list: [{ key: s('list-key') }],
      };
      child[level]({ ...nested, err: pgError }, `${level} line`);
      session[level]({ error: pgError }, 'nested error object');
      log[level](pgError); // an Error as the only argument goes through pino's err serializer
    }

    const out = lines.join('');
    assert.equal(lines.length, LEVELS.length * 3, 'every level wrote its lines');
    for (const secret of secrets) assert.ok(!out.includes(secret), `leaked ${secret.split('-')[0]}`);

    // Non-secret context is kept and fields are censored, not dropped.
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.equal(first.level, 'trace');
    assert.equal(first.sessionId, 's-1');
    assert.equal(first.user, 'hr_clerk');
    assert.equal(first.database, 'app');
    assert.equal(first.client, '10.0.0.5:50000');
    assert.equal(first.stage, 'auth');
    assert.equal(first.password, CENSOR);
    assert.equal(first.keyArn, 'arn:aws:kms:ap-northeast-1:123456789012:key/abc');
    assert.equal(first.passwordEnv, 'MAMORI_CONTROL_PASSWORD');
    assert.deepEqual(first.auth, { password: CENSOR, clientKey: CENSOR, proof: CENSOR, salt: CENSOR });
    assert.equal(first.msg, 'trace line');
    const err = first.err as Record<string, unknown>;
    assert.equal(err.code, '23505');
    assert.equal(err.detail, CENSOR);
    assert.equal(err.message, 'duplicate key value violates unique constraint');
  });

  test('the level filters lines and silent writes nothing', () => {
    const warn = capture();
    const log = createLogger({ level: 'warn' }, warn.dest);
    for (const level of LEVELS) log[level]({ n: 1 }, level);
    assert.deepEqual(
      warn.lines.map((l) => (JSON.parse(l) as { level: string }).level),
      ['warn', 'error', 'fatal'],
    );
    const silent = capture();
    const quiet = createLogger({ level: 'silent' }, silent.dest);
    for (const level of LEVELS) quiet[level]({ n: 1 }, level);
    assert.equal(silent.lines.length, 0);
  });
});

describe('redact', () => {
  test('secret-looking names, including suffixes, are recognized; ordinary ones are not', () => {
    for (const k of ['password', 'Password', 'clientKey', 'serverKey', 'rootKey', 'apiToken', 'proof', 'value', 'params', 'plaintext', 'secret', 'clientSecret']) {
      assert.ok(isSecretKey(k), k);
    }
    for (const k of ['passwordEnv', 'keyArn', 'keyFile', 'keyDomain', 'user', 'database', 'sessionId', 'fingerprint', 'port']) {
      assert.ok(!isSecretKey(k), k);
    }
  });

  test('circular structures and deep nesting do not throw', () => {
    const a: Record<string, unknown> = { name: 'a' };
    a.self = a;
    assert.deepEqual(redact(a), { name: 'a', self: '[circular]' });
    let deep: Record<string, unknown> = { password: 'x' };
    for (let i = 0; i < 20; i++) deep = { next: deep };
    assert.ok(!JSON.stringify(redact(deep)).includes('"x"'));
  });
});
