// Two more real drivers through mamori, from Debian packages (libpostgresql-jdbc-java, python3-psycopg2;
// .ci/run installs them): pgJDBC uses the extended protocol with server-side prepared statements,
// parameters declared varchar, and binary transfer; psycopg2 interpolates literals client-side and sends
// simple Query messages. Each writes, reads plaintext as hr_clerk, masks as hr_viewer, is refused as
// outsider; the server holds only cells.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startProtectedStack, PASSWORD, type ProtectedStack } from '../../harness/protected.js';

const run = promisify(execFile);
const JAR = '/usr/share/java/postgresql.jar';
const PYTHON = '/usr/bin/python3';

/** Why a driver cannot run here (printed, and the driver's tests are skipped), or null. */
async function missing(): Promise<{ jdbc: string | null; psycopg: string | null }> {
  let jdbc: string | null = null;
  if (!existsSync(JAR)) jdbc = `${JAR} not found (apt-get install libpostgresql-jdbc-java)`;
  else {
    try {
      await run('javac', ['-version']);
    } catch {
      jdbc = 'javac not found';
    }
  }
  let psycopg: string | null = null;
  try {
    await run(PYTHON, ['-c', 'import psycopg2']);
  } catch {
    psycopg = `${PYTHON} cannot import psycopg2 (apt-get install python3-psycopg2)`;
  }
  return { jdbc, psycopg };
}

const why = await missing();
if (why.jdbc) console.log(`# JDBC driver tests skipped: ${why.jdbc}`);
if (why.psycopg) console.log(`# psycopg2 driver tests skipped: ${why.psycopg}`);

let s: ProtectedStack;
let dir: string;

before(async () => {
  s = await startProtectedStack({ config: { metrics: { enabled: false } } });
  dir = mkdtempSync(join(tmpdir(), 'mamori-drivers-'));
});

after(async () => {
  await s?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** `key=value` lines → object (values as printed). */
function parseOut(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

async function storedCells(ids: number[]): Promise<Map<number, Buffer | null>> {
  const r = await s.cluster.query<{ id: number; c: Buffer | null }>('SELECT id, my_number::bytea AS c FROM public.employees WHERE id = ANY($1)', [ids]);
  return new Map(r.rows.map((x) => [x.id, x.c]));
}

const JAVA = `
import java.sql.*;
import java.util.Properties;

public class Drivers {
  static Connection connect(String url, String user, String password) throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", user);
    p.setProperty("password", password);
    return DriverManager.getConnection(url, p);
  }

  public static void main(String[] a) throws Exception {
    String url = a[0];
    String pw = a[1];
    try (Connection c = connect(url, "hr_clerk", pw)) {
      try (PreparedStatement ins = c.prepareStatement("INSERT INTO employees (id, name, my_number) VALUES (?, ?, ?)")) {
        Object[][] rows = { { 11, "Java1", "1234-5678-9018" }, { 12, "Java2", "\\uff10\\uff10\\uff10\\uff10\\uff10\\uff10\\uff10\\uff10\\uff10\\uff10\\uff11\\uff19" }, { 13, "Java3", null } };
        for (Object[] r : rows) {
          ins.setInt(1, (Integer) r[0]);
          ins.setString(2, (String) r[1]);
          if (r[2] == null) ins.setNull(3, Types.VARCHAR); else ins.setString(3, (String) r[2]);
          System.out.println("insert." + r[0] + "=" + ins.executeUpdate());
        }
      }
      // Repeated executions: past prepareThreshold the driver switches to a named server-side statement.
      try (PreparedStatement q = c.prepareStatement("SELECT id, name, my_number FROM employees WHERE id = ?")) {
        for (int round = 0; round < 4; round++) {
          for (int id = 11; id <= 13; id++) {
            q.setInt(1, id);
            try (ResultSet rs = q.executeQuery()) {
              rs.next();
              System.out.println("clerk.byid." + id + "=" + rs.getString("my_number"));
            }
          }
        }
      }
      try (PreparedStatement q = c.prepareStatement("SELECT id FROM employees WHERE my_number = ?")) {
        for (int round = 0; round < 3; round++) {
          q.setString(1, "123456789018");
          try (ResultSet rs = q.executeQuery()) {
            rs.next();
            System.out.println("clerk.search=" + rs.getInt(1));
          }
        }
      }
      try (PreparedStatement q = c.prepareStatement("INSERT INTO employees (id, name, my_number) VALUES (?, ?, ?)")) {
        q.setInt(1, 14);
        q.setString(2, "Bad");
        q.setString(3, "123456789012");
        q.executeUpdate();
        System.out.println("clerk.invalid=stored");
      } catch (SQLException e) {
        System.out.println("clerk.invalid=" + e.getSQLState());
      }
    }
    try (Connection c = connect(url, "hr_viewer", pw);
         PreparedStatement q = c.prepareStatement("SELECT my_number FROM employees WHERE id = ?")) {
      q.setInt(1, 11);
      try (ResultSet rs = q.executeQuery()) {
        rs.next();
        System.out.println("viewer.byid.11=" + rs.getString(1));
      }
    }
    try (Connection c = connect(url, "outsider", pw);
         PreparedStatement q = c.prepareStatement("SELECT my_number FROM employees WHERE id = ?")) {
      q.setInt(1, 11);
      try (ResultSet rs = q.executeQuery()) {
        System.out.println("outsider.read=allowed");
      } catch (SQLException e) {
        System.out.println("outsider.read=" + e.getSQLState());
        System.out.println("outsider.message=" + e.getMessage().split("\\n")[0]);
      }
    }
  }
}
`;

const PY = `
import sys, psycopg2
dsn = sys.argv[1]
pw = sys.argv[2]
def conn(user):
    c = psycopg2.connect(dsn, user=user, password=pw)
    c.autocommit = True
    return c
c = conn('hr_clerk')
cur = c.cursor()
for (i, name, n) in [(21, 'Py1', '2222-3333-4440'), (22, 'Py2', '333344445558'), (23, 'Py3', None)]:
    cur.execute('INSERT INTO employees (id, name, my_number) VALUES (%s, %s, %s)', (i, name, n))
    print('insert.%d=%d' % (i, cur.rowcount))
for i in (21, 22, 23):
    cur.execute('SELECT my_number FROM employees WHERE id = %s', (i,))
    print('clerk.byid.%d=%s' % (i, cur.fetchone()[0]))
cur.execute('SELECT id FROM employees WHERE my_number = %s', ('2222 3333 4440',))
print('clerk.search=%d' % cur.fetchone()[0])
cur.execute('SELECT id FROM employees WHERE my_number IN %s ORDER BY id', (('222233334440', '333344445558'),))
print('clerk.in=%s' % ','.join(str(r[0]) for r in cur.fetchall()))
cur.execute('SELECT id FROM employees WHERE my_number = ANY(%s) ORDER BY id', (['222233334440', '333344445558'],))
print('clerk.any=%s' % ','.join(str(r[0]) for r in cur.fetchall()))
try:
    cur.execute('INSERT INTO employees (id, name, my_number) VALUES (%s, %s, %s)', (24, 'Bad', '123456789012'))
    print('clerk.invalid=stored')
except psycopg2.Error as e:
    print('clerk.invalid=%s' % e.pgcode)
c.close()
v = conn('hr_viewer').cursor()
v.execute('SELECT my_number FROM employees WHERE id = %s', (21,))
print('viewer.byid.21=%s' % v.fetchone()[0])
o = conn('outsider').cursor()
try:
    o.execute('SELECT my_number FROM employees WHERE id = %s', (21,))
    print('outsider.read=allowed')
except psycopg2.Error as e:
    print('outsider.read=%s' % e.pgcode)
    print('outsider.message=%s' % e.pgerror.splitlines()[0])
`;

describe('pgJDBC (extended protocol, varchar parameters, binary transfer)', { skip: why.jdbc ?? false }, () => {
  test('writes, reads plaintext / mask, is refused as outsider; the server holds cells', async () => {
    writeFileSync(join(dir, 'Drivers.java'), JAVA);
    await run('javac', ['-cp', JAR, '-d', dir, join(dir, 'Drivers.java')], { timeout: 120_000 });
    const url = `jdbc:postgresql://127.0.0.1:${s.mamori.port}/postgres?sslmode=verify-ca&sslrootcert=${s.cluster.caCertPath}` +
      '&binaryTransfer=true&prepareThreshold=2&stringtype=unspecified';
    // stringtype=unspecified is common in JDBC apps; run once with it and once with the default (varchar).
    for (const [tag, u] of [['unspecified', url], ['varchar', url.replace('&stringtype=unspecified', '')]] as const) {
      await s.cluster.query('DELETE FROM public.employees WHERE id BETWEEN 11 AND 14');
      const { stdout } = await run('java', ['-cp', `${dir}:${JAR}`, 'Drivers', u, PASSWORD], { timeout: 120_000 });
      const o = parseOut(stdout);
      assert.equal(o['insert.11'], '1', tag);
      assert.equal(o['insert.12'], '1', tag);
      assert.equal(o['insert.13'], '1', tag);
      assert.equal(o['clerk.byid.11'], '123456789018', tag);
      assert.equal(o['clerk.byid.12'], '000000000019', tag);
      assert.equal(o['clerk.byid.13'], 'null', tag);
      assert.equal(o['clerk.search'], '11', tag);
      assert.equal(o['clerk.invalid'], '22P02', tag);
      assert.equal(o['viewer.byid.11'], '********9018', tag);
      assert.equal(o['outsider.read'], '42501', tag);
      assert.match(o['outsider.message']!, /permission denied to read column "public\.employees\.my_number"/);
      const cells = await storedCells([11, 12, 13, 14]);
      assert.equal(cells.get(11)!.subarray(0, 3).toString('hex'), 'ff6d01');
      assert.equal(cells.get(12)!.subarray(0, 3).toString('hex'), 'ff6d01');
      assert.equal(cells.get(13), null);
      assert.equal(cells.has(14), false);
    }
  });
});

describe('psycopg2 (simple protocol, client-side interpolated literals)', { skip: why.psycopg ?? false }, () => {
  test('writes, reads plaintext / mask, searches by =, IN and ANY, is refused as outsider; the server holds cells', async () => {
    writeFileSync(join(dir, 'drivers.py'), PY);
    const dsn = `host=127.0.0.1 port=${s.mamori.port} dbname=postgres sslmode=verify-ca sslrootcert=${s.cluster.caCertPath}`;
    const { stdout } = await run(PYTHON, [join(dir, 'drivers.py'), dsn, PASSWORD], { timeout: 60_000 });
    const o = parseOut(stdout);
    assert.deepEqual([o['insert.21'], o['insert.22'], o['insert.23']], ['1', '1', '1']);
    assert.equal(o['clerk.byid.21'], '222233334440');
    assert.equal(o['clerk.byid.22'], '333344445558');
    assert.equal(o['clerk.byid.23'], 'None');
    assert.equal(o['clerk.search'], '21');
    assert.equal(o['clerk.in'], '21,22');
    assert.equal(o['clerk.any'], '21,22');
    assert.equal(o['clerk.invalid'], '22P02');
    assert.equal(o['viewer.byid.21'], '********4440');
    assert.equal(o['outsider.read'], '42501');
    assert.match(o['outsider.message']!, /permission denied to read column "public\.employees\.my_number"/);
    const cells = await storedCells([21, 22, 23, 24]);
    for (const id of [21, 22]) {
      const cell = cells.get(id)!;
      assert.equal(cell.subarray(0, 3).toString('hex'), 'ff6d01');
      assert.equal(cell.includes(Buffer.from(id === 21 ? '222233334440' : '333344445558')), false);
    }
    assert.equal(cells.get(23), null);
    assert.equal(cells.has(24), false);
  });
});
