import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import pg from 'pg';
import {
  MamoriError,
  PG_ERRORS,
  SQLSTATES,
  errorNamesTable,
  errorResponse,
  postgresStyleError,
  redactErrorFields,
  toMamoriError,
  type MamoriErrorCode,
} from '../../proxy/errors.js';
import { decodeBackend } from '../../proxy/wire/backend.js';
import { encodeStartupPacket } from '../../proxy/wire/startup.js';
import { BE, ProtocolError, STARTUP, type NoticeFields, type StartupPacket } from '../../proxy/wire/types.js';
import { startCluster, type Cluster } from '../harness/cluster.js';

/** Decodes a complete 'E' message to its fields. */
function fieldsOf(msg: Buffer): NoticeFields {
  assert.equal(msg[0], BE.ErrorResponse);
  assert.equal(msg.readInt32BE(1), msg.length - 1);
  const m = decodeBackend(msg[0]!, msg.subarray(5));
  assert.equal(m.kind, 'ErrorResponse');
  return m.kind === 'ErrorResponse' ? m.fields : {};
}

describe('SQLSTATE table', () => {
  test('codes are well-formed, unique and documented in docs/sqlstates.md', () => {
    const doc = readFileSync(new URL('../../docs/sqlstates.md', import.meta.url), 'utf8');
    const seen = new Set<string>();
    for (const [name, { code, description }] of Object.entries(SQLSTATES)) {
      assert.match(code, /^[0-9A-Z]{5}$/, name);
      assert.ok(!seen.has(code), `duplicate ${code}`);
      seen.add(code);
      assert.ok(description.length > 0);
      assert.ok(doc.includes(`| ${code} |`) && doc.includes(`\`${name}\``), `${name} (${code}) is documented`);
    }
    assert.equal(SQLSTATES.too_many_connections.code, '53300');
    assert.equal(SQLSTATES.protocol_violation.code, '08P01');
    assert.equal(SQLSTATES.insufficient_privilege.code, '42501');
  });
});

describe('mamori errors', () => {
  test('errorResponse: S and V severity, SQLSTATE, message with the prefix once, detail and hint', () => {
    const err = new MamoriError('insufficient_privilege', 'permission denied for column people.my_number', {
      detail: 'The read policy for role "clerk" is deny.',
      hint: 'Ask for the masked view.',
    });
    assert.ok(err instanceof Error);
    assert.equal(err.sqlstate, '42501');
    assert.equal(err.severity, 'ERROR');
    assert.deepEqual(fieldsOf(errorResponse(err)), {
      S: 'ERROR',
      V: 'ERROR',
      C: '42501',
      M: 'mamori: permission denied for column people.my_number',
      D: 'The read policy for role "clerk" is deny.',
      H: 'Ask for the masked view.',
    });
    const fatal = new MamoriError('feature_not_supported', 'mamori: replication connections are not supported', { severity: 'FATAL' });
    assert.deepEqual(fieldsOf(errorResponse(fatal)), {
      S: 'FATAL',
      V: 'FATAL',
      C: '0A000',
      M: 'mamori: replication connections are not supported',
    });
  });

  test('every table entry builds a valid ErrorResponse', () => {
    for (const name of Object.keys(SQLSTATES) as MamoriErrorCode[]) {
      const f = fieldsOf(errorResponse(new MamoriError(name, 'x')));
      assert.equal(f.C, SQLSTATES[name].code);
      assert.equal(f.M, 'mamori: x');
    }
  });

  test('toMamoriError keeps MamoriErrors, maps ProtocolError to a FATAL 08P01 and hides other texts', () => {
    const m = new MamoriError('query_canceled', 'q');
    assert.equal(toMamoriError(m), m);
    const p = toMamoriError(new ProtocolError('Bind: message is truncated'));
    assert.equal(p.sqlstate, '08P01');
    assert.equal(p.severity, 'FATAL');
    assert.equal(p.message, 'Bind: message is truncated');
    const other = toMamoriError(new Error('key material 0xdeadbeef leaked'));
    assert.equal(other.sqlstate, 'XX000');
    assert.equal(fieldsOf(errorResponse(other)).M, 'mamori: internal error');
    assert.ok(other.cause instanceof Error, 'the original stays available to the log');
  });

  test('postgresStyleError and PG_ERRORS carry no prefix', () => {
    assert.deepEqual(fieldsOf(postgresStyleError('invalid_parameter_value', 'invalid value for parameter "x"', { hint: 'h' })), {
      S: 'ERROR',
      V: 'ERROR',
      C: '22023',
      M: 'invalid value for parameter "x"',
      H: 'h',
    });
    assert.deepEqual(fieldsOf(PG_ERRORS.tooManyClients()), { S: 'FATAL', V: 'FATAL', C: '53300', M: 'sorry, too many clients already' });
    assert.deepEqual(fieldsOf(PG_ERRORS.passwordAuthFailed('alice')), {
      S: 'FATAL',
      V: 'FATAL',
      C: '28P01',
      M: 'password authentication failed for user "alice"',
    });
    assert.equal(fieldsOf(PG_ERRORS.unsupportedProtocol(4, 1)).M, 'unsupported frontend protocol 4.1: server supports 3.0 to 3.2');
    assert.deepEqual(PG_ERRORS.unsupportedProtocol(2, 0), Buffer.from('EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.2\n\0'));
  });
});

describe('redactErrorFields on PostgreSQL error texts', () => {
  const unique: NoticeFields = {
    S: 'ERROR', V: 'ERROR', C: '23505',
    M: 'duplicate key value violates unique constraint "people_my_number_key"',
    D: 'Key (my_number)=(123456789018) already exists.',
    s: 'public', t: 'people', n: 'people_my_number_key', F: 'nbtinsert.c', L: '664', R: '_bt_check_unique',
  };
  const check: NoticeFields = {
    S: 'ERROR', V: 'ERROR', C: '23514',
    M: 'new row for relation "people" violates check constraint "people_my_number_check"',
    D: 'Failing row contains (1, 12345, 山田).',
    s: 'public', t: 'people', n: 'people_my_number_check',
  };
  const copy: NoticeFields = {
    S: 'ERROR', V: 'ERROR', C: '22P02',
    M: 'invalid input syntax for type integer: "x"',
    W: 'COPY people, line 1, column id: "x"',
  };
  const internal: NoticeFields = {
    S: 'ERROR', V: 'ERROR', C: '23505', M: 'duplicate key value violates unique constraint "people_my_number_key"',
    D: 'Key (my_number)=(123456789018) already exists.', W: 'SQL statement "insert into people values (2, \'123456789018\')"\nPL/pgSQL function f() line 1 at SQL statement',
    q: "insert into people values (2, '123456789018')", p: '1', P: '15', s: 'kojin', t: 'people',
  };

  test('drops D, W, q, p and P when the error names a protected table; keeps the rest', () => {
    const r = redactErrorFields(unique, ['public.people']);
    assert.deepEqual(r, { S: 'ERROR', V: 'ERROR', C: '23505', M: unique.M, s: 'public', t: 'people', n: 'people_my_number_key', F: 'nbtinsert.c', L: '664', R: '_bt_check_unique' });
    assert.equal(redactErrorFields(check, ['people']).D, undefined);
    const ri = redactErrorFields(internal, ['kojin.people']);
    for (const code of ['D', 'W', 'q', 'p', 'P']) assert.equal(ri[code], undefined, code);
    assert.ok(!JSON.stringify(ri).includes('123456789018'));
  });

  test('finds the table through the context of a COPY error and case-insensitively', () => {
    assert.equal(errorNamesTable(copy, ['public.people']), true);
    assert.equal(redactErrorFields(copy, ['PEOPLE']).W, undefined);
  });

  test('leaves errors about other tables alone, matching whole names and schemas', () => {
    assert.deepEqual(redactErrorFields(unique, ['public.orders']), unique);
    assert.deepEqual(redactErrorFields(unique, ['peop']), unique);
    assert.deepEqual(redactErrorFields({ ...unique, t: 'people_archive', M: 'duplicate key value violates unique constraint "people_archive_pkey"' }, ['people']).D, unique.D);
    assert.deepEqual(redactErrorFields({ ...unique, s: 'kojin' }, ['public.people']).D, unique.D, 'schema kojin is not public');
    // an unqualified mention in statement text could be any schema: redacted (over-matching is the safe side)
    assert.equal(redactErrorFields(internal, ['public.people']).D, undefined);
    assert.deepEqual(redactErrorFields(unique, []), unique);
  });

  test('without a table list the caller asserts the error is protected: always redacts; never mutates its input', () => {
    const before = { ...internal };
    const r = redactErrorFields(internal);
    assert.equal(r.D, undefined);
    assert.equal(r.q, undefined);
    assert.deepEqual(internal, before);
    assert.notEqual(redactErrorFields(unique, ['x']), unique, 'a copy even when nothing is dropped');
  });
});

describe('PostgreSQL-worded errors match a real PostgreSQL', () => {
  let cluster: Cluster;
  before(async () => {
    cluster = await startCluster({ tls: false, settings: { max_connections: 4, superuser_reserved_connections: 0 } });
  });
  after(async () => {
    await cluster.stop();
  });

  const compared = (f: NoticeFields) => ({ S: f.S, V: f.V, C: f.C, M: f.M });

  /** Sends one startup packet on a raw socket and returns the ErrorResponse PostgreSQL answers with. */
  async function rawStartupReply(p: StartupPacket): Promise<Buffer> {
    const sock = connect(cluster.port, cluster.host);
    const chunks: Buffer[] = [];
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.write(encodeStartupPacket(p));
    await new Promise<void>((resolve, reject) => {
      sock.on('close', () => resolve());
      sock.on('error', reject);
    });
    return Buffer.concat(chunks);
  }

  async function rawStartupError(p: StartupPacket): Promise<NoticeFields> {
    const all = await rawStartupReply(p);
    return fieldsOf(all.subarray(0, 1 + all.readInt32BE(1)));
  }

  test('unsupported protocol and missing user, over a raw socket', async () => {
    // PostgreSQL 15 offers 3.0 only; mamori passes the newest minor it offers.
    const latest = cluster.major >= 18 ? 2 : 0;
    const real = await rawStartupError({ kind: 'UnsupportedProtocol', protocol: 0x40000, major: 4, minor: 0 });
    assert.deepEqual(compared(fieldsOf(PG_ERRORS.unsupportedProtocol(4, 0, latest))), compared(real));
    // A pre-3.0 client gets the old protocol's error: 'E' and one "FATAL:  …\n" string, byte for byte.
    for (const major of [1, 2]) {
      const old = await rawStartupReply({ kind: 'UnsupportedProtocol', protocol: major << 16, major, minor: 0 });
      assert.deepEqual(PG_ERRORS.unsupportedProtocol(major, 0, latest), old);
    }
    const noUser = await rawStartupError({ kind: 'StartupMessage', protocol: STARTUP.Protocol30, params: [['database', 'postgres']] });
    assert.deepEqual(compared(fieldsOf(PG_ERRORS.noUserName())), compared(noUser));
  });

  test('wrong password, too many clients, cancel, terminate and idle timeout', async () => {
    await cluster.createRole('alice', 'right-pw');
    const opts = { host: cluster.host, port: cluster.port, database: 'postgres', ssl: false } as const;
    const bad = new pg.Client({ ...opts, user: 'alice', password: 'wrong' });
    const pwErr = await bad.connect().then(
      () => assert.fail('login should fail'),
      (e: pg.DatabaseError) => e,
    );
    assert.deepEqual(compared(fieldsOf(PG_ERRORS.passwordAuthFailed('alice'))), { S: pwErr.severity, V: pwErr.severity, C: pwErr.code, M: pwErr.message });

    // an unknown role gets the same words (PostgreSQL runs a mock SCRAM exchange), so roles cannot be probed
    const ghost = new pg.Client({ ...opts, user: 'nobody', password: 'x' });
    const ghostErr = await ghost.connect().then(
      () => assert.fail('login should fail'),
      (e: pg.DatabaseError) => e,
    );
    assert.deepEqual(compared(fieldsOf(PG_ERRORS.passwordAuthFailed('nobody'))), { S: ghostErr.severity, V: ghostErr.severity, C: ghostErr.code, M: ghostErr.message });

    const clients: pg.Client[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const c = new pg.Client({ ...opts, user: 'alice', password: 'right-pw' });
        await c.connect();
        clients.push(c);
      }
      const extra = new pg.Client({ ...opts, user: 'alice', password: 'right-pw' });
      const full = await extra.connect().then(
        () => assert.fail('the fifth connection should be refused'),
        (e: pg.DatabaseError) => e,
      );
      assert.deepEqual(compared(fieldsOf(PG_ERRORS.tooManyClients())), { S: full.severity, V: full.severity, C: full.code, M: full.message });

      const [victim, killer] = clients as [pg.Client, pg.Client];
      const pid = (await victim.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const sleeping = victim.query('select pg_sleep(30)').then(
        () => assert.fail('should be cancelled'),
        (e: pg.DatabaseError) => e,
      );
      // cancel only once the sleep is running, or the cancel would hit an idle backend
      for (;;) {
        const st = await killer.query<{ n: number }>(
          "select count(*)::int as n from pg_stat_activity where pid = $1 and state = 'active' and query like 'select pg_sleep%'",
          [pid],
        );
        if (st.rows[0]!.n === 1) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      await killer.query('select pg_cancel_backend($1)', [pid]);
      const canceled = await sleeping;
      assert.deepEqual(compared(fieldsOf(PG_ERRORS.queryCanceled())), { S: canceled.severity, V: canceled.severity, C: canceled.code, M: canceled.message });

      // pg emits the server's FATAL first, then a 'Connection terminated' error: keep the first, swallow the rest
      const victimErr = new Promise<pg.DatabaseError>((resolve) => {
        let first = true;
        victim.on('error', (e) => {
          if (first) resolve(e as pg.DatabaseError);
          first = false;
        });
      });
      await killer.query('select pg_terminate_backend($1)', [pid]);
      const terminated = await victimErr;
      assert.deepEqual(compared(fieldsOf(PG_ERRORS.adminShutdown())), { S: terminated.severity, V: terminated.severity, C: terminated.code, M: terminated.message });
      clients.shift();

      const idle = clients[1]!;
      const idleErr = new Promise<pg.DatabaseError>((resolve) => {
        let first = true;
        idle.on('error', (e) => {
          if (first) resolve(e as pg.DatabaseError);
          first = false;
        });
      });
      await idle.query("set idle_session_timeout = '100ms'");
      const timedOut = await idleErr;
      assert.deepEqual(compared(fieldsOf(PG_ERRORS.idleSessionTimeout())), { S: timedOut.severity, V: timedOut.severity, C: timedOut.code, M: timedOut.message });
      clients.splice(1, 1);
    } finally {
      await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
    }
  });
});
