// Who a login is, as the policy sees it: the closure of its role memberships that it inherits privileges
// through, superuser and BYPASSRLS, read over mamori's control connection and cached for a short TTL.
// Re-reads are diffed so granted/revoked memberships and changed verifiers can be recorded and held.
import { createHash } from 'node:crypto';
import { lookupQuery } from '../session/auth-lookup.js';

export interface Identity {
  login: string;
  /** The login itself plus every role it inherits from (pg_auth_members, INHERIT), as of the last refresh. */
  roles: ReadonlySet<string>;
  superuser: boolean;
  bypassRls: boolean;
  /** The session presented a client certificate the listener verified. */
  clientCert: boolean;
  /**
   * SHA-256 (hex) of the login's stored secret as the lookup function returns it; null when it returns none
   * (no such login, NOLOGIN, expired); absent when the cache runs without a lookup function.
   */
  verifierHash?: string | null;
}

export type MembershipChange =
  | { kind: 'membership'; login: string; added: string[]; removed: string[] }
  | { kind: 'password'; role: string };

/** Any query runner: pg's Client/Pool `query` fits. */
export type QueryFn = (sql: string, params: unknown[]) => Promise<{ rows: readonly unknown[] }>;

export interface MembershipCacheOptions {
  query: QueryFn;
  /** How long a login's identity is reused before it is read again (default 5000 ms). */
  ttlMs?: number;
  /** Called for every change a re-read finds (identity() after the TTL as well as refreshAll()). */
  onChange?: (change: MembershipChange) => void;
  /** `schema.function` of the verifier lookup (config `auth.lookupFunction`); enables password-change detection. */
  lookupFunction?: string;
  /** refreshAll() forgets logins not asked for in this long (default 10 minutes). */
  maxIdleMs?: number;
  now?: () => number;
}

/** PostgreSQL 16 made INHERIT a property of each grant (pg_auth_members.inherit_option). */
export const PG16 = 160000;

/**
 * One row for the login: rolsuper, rolbypassrls and the names of the roles whose privileges it uses.
 * Before 16 a role passes on what it is a member of only when it has rolinherit (the login included:
 * a NOINHERIT login inherits nothing); from 16 each grant says whether it is inherited. This is
 * pg_has_role(login, role, 'USAGE') without the superuser shortcut, for every role at once.
 */
export function membershipSql(serverVersionNum: number): string {
  const inherit = serverVersionNum >= PG16 ? 'm.inherit_option' : 'mr.rolinherit';
  return [
    'WITH RECURSIVE closure(oid) AS (',
    '  SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) $1',
    '  UNION',
    '  SELECT m.roleid',
    '    FROM closure AS c',
    '    JOIN pg_catalog.pg_auth_members AS m ON m.member OPERATOR(pg_catalog.=) c.oid',
    '    JOIN pg_catalog.pg_roles AS mr ON mr.oid OPERATOR(pg_catalog.=) c.oid',
    `   WHERE ${inherit}`,
    ')',
    'SELECT l.rolsuper, l.rolbypassrls,',
    '       ARRAY(SELECT r.rolname::text FROM closure AS c JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) c.oid) AS roles',
    '  FROM pg_catalog.pg_roles AS l',
    ' WHERE l.rolname OPERATOR(pg_catalog.=) $1',
  ].join('\n');
}

/** SHA-256 of a stored secret; the secret itself is never kept. */
export function verifierHash(secret: string | null): string | null {
  return secret === null ? null : createHash('sha256').update(secret, 'utf8').digest('hex');
}

interface Entry {
  superuser: boolean;
  bypassRls: boolean;
  roles: ReadonlySet<string>;
  verifierHash?: string | null;
  fetchedAt: number;
  usedAt: number;
}

function rowOf(rows: readonly unknown[]): Record<string, unknown> | undefined {
  const r = rows[0];
  return typeof r === 'object' && r !== null ? (r as Record<string, unknown>) : undefined;
}

export class MembershipCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<{ entry: Entry; changes: MembershipChange[] }>>();
  private sql: Promise<string> | null = null;
  private readonly ttlMs: number;
  private readonly maxIdleMs: number;
  private readonly now: () => number;

  constructor(private readonly opts: MembershipCacheOptions) {
    this.ttlMs = opts.ttlMs ?? 5000;
    this.maxIdleMs = opts.maxIdleMs ?? 600_000;
    this.now = opts.now ?? Date.now;
  }

  /** The login's identity, from the cache while fresh; concurrent calls for one login share one read. */
  async identity(login: string, opts: { clientCert: boolean }): Promise<Identity> {
    const now = this.now();
    let entry = this.entries.get(login);
    if (!entry || now - entry.fetchedAt >= this.ttlMs) entry = (await this.reload(login)).entry;
    entry.usedAt = now;
    return toIdentity(login, entry, opts.clientCert);
  }

  /** Re-reads every cached login now, regardless of TTL; returns (and reports) what changed. */
  async refreshAll(): Promise<MembershipChange[]> {
    const now = this.now();
    const changes: MembershipChange[] = [];
    const logins: string[] = [];
    for (const [login, e] of this.entries) {
      if (now - e.usedAt > this.maxIdleMs) this.entries.delete(login);
      else logins.push(login);
    }
    // One at a time: the control connection is a single session.
    for (const login of logins) changes.push(...(await this.reload(login)).changes);
    return changes;
  }

  /** Drops a login from the cache (its next identity() reads it again, without diffing). */
  forget(login: string): void {
    this.entries.delete(login);
  }

  /** The logins currently cached. */
  logins(): string[] {
    return [...this.entries.keys()];
  }

  /** One read of a login at a time; whoever joins it gets the same entry and the same changes. */
  private reload(login: string): Promise<{ entry: Entry; changes: MembershipChange[] }> {
    const running = this.inflight.get(login);
    if (running) return running;
    const p = this.fetch(login)
      .then((fresh) => {
        const prev = this.entries.get(login);
        let changes: MembershipChange[] = [];
        if (prev) {
          fresh.usedAt = prev.usedAt;
          changes = diff(login, prev, fresh);
          for (const c of changes) this.opts.onChange?.(c);
        }
        this.entries.set(login, fresh);
        return { entry: fresh, changes };
      })
      .finally(() => this.inflight.delete(login));
    this.inflight.set(login, p);
    return p;
  }

  private async fetch(login: string): Promise<Entry> {
    if (!this.sql) {
      const sql = this.opts
        .query("SELECT pg_catalog.current_setting('server_version_num') AS v", [])
        .then((r) => membershipSql(Number(rowOf(r.rows)?.v)));
      sql.catch(() => {
        this.sql = null; // try again on the next read
      });
      this.sql = sql;
    }
    const r = await this.opts.query(await this.sql, [login]);
    const row = rowOf(r.rows);
    const names = Array.isArray(row?.roles) ? row.roles.filter((x): x is string => typeof x === 'string') : [];
    const roles = new Set<string>(names);
    roles.add(login);
    const now = this.now();
    const entry: Entry = {
      superuser: row?.rolsuper === true,
      bypassRls: row?.rolbypassrls === true,
      roles,
      fetchedAt: now,
      usedAt: now,
    };
    if (this.opts.lookupFunction !== undefined) {
      const s = await this.opts.query(lookupQuery(this.opts.lookupFunction), [login]);
      const secret = rowOf(s.rows)?.secret;
      entry.verifierHash = verifierHash(typeof secret === 'string' ? secret : null);
    }
    return entry;
  }
}

function toIdentity(login: string, e: Entry, clientCert: boolean): Identity {
  const id: Identity = { login, roles: e.roles, superuser: e.superuser, bypassRls: e.bypassRls, clientCert };
  if (e.verifierHash !== undefined) id.verifierHash = e.verifierHash;
  return id;
}

/** Membership and verifier differences between two reads of one login. */
function diff(login: string, prev: Entry, next: Entry): MembershipChange[] {
  const out: MembershipChange[] = [];
  const added = [...next.roles].filter((r) => !prev.roles.has(r)).sort();
  const removed = [...prev.roles].filter((r) => !next.roles.has(r)).sort();
  if (added.length > 0 || removed.length > 0) out.push({ kind: 'membership', login, added, removed });
  if (prev.verifierHash !== undefined && next.verifierHash !== undefined && prev.verifierHash !== next.verifierHash) {
    out.push({ kind: 'password', role: login });
  }
  return out;
}

/** Every role and every membership edge, for computing all logins' closures at once (the approval CLI). */
export interface RoleGraph {
  roles: Map<string, { canLogin: boolean; superuser: boolean; bypassRls: boolean }>;
  /** member → roles it inherits from directly (only grants that pass privileges on). */
  inherits: Map<string, string[]>;
}

export async function readRoleGraph(query: QueryFn): Promise<RoleGraph> {
  const v = rowOf((await query("SELECT pg_catalog.current_setting('server_version_num') AS v", [])).rows)?.v;
  const inherit = Number(v) >= PG16 ? 'm.inherit_option' : 'u.rolinherit';
  const roles = await query('SELECT rolname::text AS name, rolcanlogin, rolsuper, rolbypassrls FROM pg_catalog.pg_roles', []);
  const edges = await query(
    [
      'SELECT r.rolname::text AS role, u.rolname::text AS member',
      '  FROM pg_catalog.pg_auth_members AS m',
      '  JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) m.roleid',
      '  JOIN pg_catalog.pg_roles AS u ON u.oid OPERATOR(pg_catalog.=) m.member',
      ` WHERE ${inherit}`,
    ].join('\n'),
    [],
  );
  const graph: RoleGraph = { roles: new Map(), inherits: new Map() };
  for (const raw of roles.rows) {
    const r = raw as Record<string, unknown>;
    if (typeof r.name !== 'string') continue;
    graph.roles.set(r.name, { canLogin: r.rolcanlogin === true, superuser: r.rolsuper === true, bypassRls: r.rolbypassrls === true });
  }
  for (const raw of edges.rows) {
    const e = raw as Record<string, unknown>;
    if (typeof e.role !== 'string' || typeof e.member !== 'string') continue;
    const list = graph.inherits.get(e.member) ?? [];
    list.push(e.role);
    graph.inherits.set(e.member, list);
  }
  return graph;
}

/** The same closure membershipSql computes, over a RoleGraph: the login and every role it inherits from. */
export function inheritedRoles(graph: RoleGraph, login: string): Set<string> {
  const seen = new Set<string>([login]);
  const queue = [login];
  while (queue.length > 0) {
    for (const role of graph.inherits.get(queue.pop()!) ?? []) {
      if (!seen.has(role)) {
        seen.add(role);
        queue.push(role);
      }
    }
  }
  return seen;
}
