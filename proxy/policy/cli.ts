// `mamori policy pending|approve`: the security officer's side of separation of duties. Lists the members of
// plaintext/search/write/export grants and the verifiers of their logins that are not approved yet, and records
// approvals in mamori's MACed state (approvals.ts), never in the database a DBA controls.
import { userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { formatConfigIssues, loadConfig } from '../../config/load.js';
import type { MamoriConfig } from '../../config/schema.js';
import { Keyring, keyringConfigFrom, type KeyringOptions } from '../../keyring/index.js';
import { auditConfigSchema } from '../audit/config.js';
import type { AuditEvent } from '../audit/record.js';
import { AuditTrail } from '../audit/trail.js';
import { lookupQuery } from '../session/auth-lookup.js';
import { Approvals, approvalsMacKey, approvalsPath } from './approvals.js';
import { strongGrantRoles } from './decide.js';
import { inheritedRoles, readRoleGraph, verifierHash, type QueryFn, type RoleGraph } from './membership.js';

export interface PolicyCliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const USAGE = `usage: mamori policy <command> --config FILE -d DB [options]
  pending                                   list members and verifiers awaiting approval
  approve --role R --member M [--yes]       approve login M using the grants of role R through membership
  approve --login L [--yes]                 approve the current verifier (password) of login L
  approve --all-pending [--yes]             approve everything pending; withdraw approvals of ended memberships
  -d, --database  connection string or database name (PGHOST/PGPORT/PGUSER/PGPASSWORD apply); connect as
                  mamori's control role so the verifier lookup function can be used
  Without --yes, approve only prints what it would do.
`;

class UsageError extends Error {}

export interface PendingMember {
  role: string;
  member: string;
}

export interface PendingPassword {
  login: string;
  /** SHA-256 of the current stored secret (null: none). */
  hash: string | null;
  /** Whether an earlier verifier of this login was approved (a change) or none ever was. */
  changed: boolean;
}

export interface PendingState {
  /** (role, login) pairs reaching a strong grant through membership, not approved. */
  members: PendingMember[];
  /** Superuser/BYPASSRLS logins reaching a strong grant through a role: approval would not help them. */
  ineligible: PendingMember[];
  /** Verifiers of logins holding a strong grant that differ from the approved one (passwords: held). */
  passwords: PendingPassword[];
  /** Approved pairs whose membership has ended: withdrawn on approve, so a later re-grant waits again. */
  stale: PendingMember[];
  /** Every (role, login) pair currently reaching a strong grant through membership, approved or not. */
  current: PendingMember[];
}

/** The roles named in any column's plaintext, search, write or export grant. */
export function grantRoles(config: Pick<MamoriConfig, 'columns'>): string[] {
  const all = new Set<string>();
  for (const col of Object.values(config.columns)) for (const r of strongGrantRoles(col)) all.add(r);
  return [...all].sort();
}

/** What awaits approval; `verifiers` maps logins to their current verifier hash (only needed for passwords: held). */
export function pendingApprovals(
  config: Pick<MamoriConfig, 'columns' | 'approval'>,
  graph: RoleGraph,
  approvals: Approvals,
  verifiers: ReadonlyMap<string, string | null>,
): PendingState {
  const roles = new Set(grantRoles(config));
  const out: PendingState = { members: [], ineligible: [], passwords: [], stale: [], current: [] };
  const holders = new Set<string>();
  const logins = [...graph.roles].filter(([, r]) => r.canLogin).map(([name]) => name).sort();
  for (const login of logins) {
    const info = graph.roles.get(login)!;
    if (roles.has(login)) holders.add(login);
    for (const role of [...inheritedRoles(graph, login)].sort()) {
      if (role === login || !roles.has(role)) continue;
      const pair = { role, member: login };
      if (info.superuser || info.bypassRls) {
        out.ineligible.push(pair);
        continue;
      }
      out.current.push(pair);
      holders.add(login);
      if (config.approval.members === 'required' && !approvals.isApproved(role, login)) out.members.push(pair);
    }
  }
  const current = new Set(out.current.map((p) => JSON.stringify([p.role, p.member])));
  for (const [role, member] of approvals.pairs()) {
    if (!current.has(JSON.stringify([role, member]))) out.stale.push({ role, member });
  }
  if (config.approval.passwords === 'held') {
    for (const login of [...holders].sort()) {
      const hash = verifiers.get(login) ?? null;
      if (!approvals.isVerifierApproved(login, hash)) {
        out.passwords.push({ login, hash, changed: approvals.approvedVerifier(login) !== undefined });
      }
    }
  }
  return out;
}

function pgConfig(database: string | undefined): pg.ClientConfig {
  if (!database) return {}; // libpq environment defaults
  return /^postgres(ql)?:\/\//.test(database) ? { connectionString: database } : { database };
}

async function readVerifiers(query: QueryFn, fn: string, logins: Iterable<string>): Promise<Map<string, string | null>> {
  const out = new Map<string, string | null>();
  for (const login of logins) {
    let r;
    try {
      r = await query(lookupQuery(fn), [login]);
    } catch (err) {
      throw new Error(`cannot run the verifier lookup function ${fn} (connect as mamori's control role): ${(err as Error).message}`);
    }
    const secret = (r.rows[0] as { secret?: unknown } | undefined)?.secret;
    out.set(login, verifierHash(typeof secret === 'string' ? secret : null));
  }
  return out;
}

/** Records the officer's decisions as a CLI instance of the trail (file sinks get a `-cli` sibling file). */
async function recordApprovals(config: MamoriConfig, events: AuditEvent[]): Promise<void> {
  const cfg = auditConfigSchema.parse(config.audit);
  const stem = (p: string) => (p.split('/').pop() ?? p).replace(/\.jsonl$/, '');
  const sinks = cfg.sinks
    .filter((s) => s.type === 'file')
    .map((s) => ({ ...s, path: join(dirname(s.path), `${stem(s.path)}-cli.jsonl`) }));
  if (sinks.length === 0) throw new Error('no audit file sink to record the approval in');
  const trail = await AuditTrail.open(
    { ...cfg, sinks, checkpointSink: null, failMode: 'closed', heartbeatSeconds: 0, checkpointEverySeconds: 0 },
    { program: 'cli' },
  );
  try {
    for (const e of events) await trail.append(e);
  } finally {
    await trail.close();
  }
}

function officer(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'unknown';
  }
}

export async function runPolicyCommand(args: string[], io: PolicyCliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  try {
    return await run(args, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`mamori policy: ${err.message}\n${USAGE}`);
      return 2;
    }
    io.stderr.write(`mamori policy: ${(err as Error).message}\n`);
    return 1;
  }
}

async function run(args: string[], io: PolicyCliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        database: { type: 'string', short: 'd' },
        role: { type: 'string' },
        member: { type: 'string' },
        login: { type: 'string' },
        'all-pending': { type: 'boolean' },
        yes: { type: 'boolean' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  const cmd = positionals[0];
  if (cmd !== 'pending' && cmd !== 'approve') throw new UsageError(cmd ? `unknown command ${JSON.stringify(cmd)}` : 'a command is needed');
  if (!v.config) throw new UsageError('--config FILE is needed');
  const single = v.role !== undefined || v.member !== undefined;
  if (cmd === 'approve') {
    const forms = [single, v.login !== undefined, v['all-pending'] === true].filter(Boolean).length;
    if (forms !== 1) throw new UsageError('approve needs exactly one of --role R --member M, --login L, --all-pending');
    if (single && (v.role === undefined || v.member === undefined)) throw new UsageError('--role and --member go together');
  }

  const loaded = await loadConfig(v.config, process.env, { requireSecrets: false });
  if (!loaded.ok) {
    io.stderr.write(`mamori policy: invalid config:\n${formatConfigIssues(loaded.errors)}\n`);
    return 1;
  }
  const config = loaded.config;
  const say = (s: string): void => void io.stdout.write(s + '\n');

  const client = new pg.Client(pgConfig(v.database));
  client.on('error', () => undefined); // reported by the failing query
  let pool: pg.Pool | null = null;
  let kr: Keyring | null = null;
  try {
    await client.connect();
    const query: QueryFn = (sql, params) => client.query(sql, params);

    const krCfg = keyringConfigFrom(config.keyring);
    const krOpts: KeyringOptions = {};
    if (krCfg.store.type === 'postgres') {
      pool = new pg.Pool({ ...pgConfig(v.database), max: 1 });
      pool.on('error', () => undefined);
      krOpts.pg = pool;
    }
    kr = await Keyring.open(krCfg, krOpts);
    const path = approvalsPath(config);
    // A refused file stops here: the officer must see it, and saving would silently replace the evidence.
    const approvals = Approvals.load(path, await approvalsMacKey(kr));

    const graph = await readRoleGraph(query);
    const logins = [...graph.roles].filter(([, r]) => r.canLogin).map(([n]) => n);
    const verifiers = config.approval.passwords === 'held' ? await readVerifiers(query, config.auth.lookupFunction, logins) : new Map<string, string | null>();
    const pending = pendingApprovals(config, graph, approvals, verifiers);

    if (cmd === 'pending') {
      printPending(config, pending, say);
      return 0;
    }

    const approveMembers: PendingMember[] = [];
    const approveLogins: PendingPassword[] = [];
    let withdraw: PendingMember[] = [];
    if (single) {
      const role = v.role!;
      const member = v.member!;
      if (!grantRoles(config).includes(role)) throw new Error(`role ${JSON.stringify(role)} is not named in any plaintext, search, write or export grant`);
      const info = graph.roles.get(member);
      if (!info?.canLogin) throw new Error(`${JSON.stringify(member)} is not a login role`);
      if (!inheritedRoles(graph, member).has(role)) throw new Error(`${JSON.stringify(member)} is not a member of ${JSON.stringify(role)} (with INHERIT)`);
      if (info.superuser || info.bypassRls) {
        throw new Error(`${JSON.stringify(member)} is a superuser or has BYPASSRLS: only a grant naming the login counts, approval cannot change that`);
      }
      approveMembers.push({ role, member });
    } else if (v.login !== undefined) {
      const login = v.login;
      if (!graph.roles.get(login)?.canLogin) throw new Error(`${JSON.stringify(login)} is not a login role`);
      const hash = config.approval.passwords === 'held' ? verifiers.get(login) ?? null : (await readVerifiers(query, config.auth.lookupFunction, [login])).get(login) ?? null;
      if (hash === null) throw new Error(`${JSON.stringify(login)} has no verifier the lookup function returns (NOLOGIN, expired or no password)`);
      approveLogins.push({ login, hash, changed: approvals.approvedVerifier(login) !== undefined });
    } else {
      approveMembers.push(...pending.members);
      approveLogins.push(...pending.passwords.filter((p) => p.hash !== null));
      withdraw = pending.stale;
    }

    if (approveMembers.length + approveLogins.length + withdraw.length === 0) {
      say('nothing to approve');
      return 0;
    }
    for (const p of approveMembers) say(`approve member: ${p.member} may use the grants of ${p.role}`);
    for (const p of approveLogins) say(`approve verifier: the current password of ${p.login}`);
    for (const p of withdraw) say(`withdraw: ${p.member} is no longer a member of ${p.role}`);
    for (const p of pending.passwords.filter((x) => x.hash === null)) say(`skipped: ${p.login} has no verifier to approve`);
    if (!v.yes) {
      say('nothing written: add --yes to approve');
      return 1;
    }

    const by = officer();
    const events: AuditEvent[] = [
      ...approveMembers.map((p): AuditEvent => ({ kind: 'membership_change', role: p.role, member: p.member, action: 'approve', by })),
      ...withdraw.map((p): AuditEvent => ({ kind: 'membership_change', role: p.role, member: p.member, action: 'revoke', by })),
      ...approveLogins.map((p): AuditEvent => ({ kind: 'password_change', role: p.login, action: 'approve', by })),
    ];
    // Recorded first: an approval the trail does not show must not take effect.
    await recordApprovals(config, events);
    for (const p of approveMembers) approvals.approve(p.role, p.member);
    for (const p of withdraw) approvals.revoke(p.role, p.member);
    for (const p of approveLogins) approvals.approveVerifier(p.login, p.hash!);
    approvals.save();
    say(`approved ${approveMembers.length} member(s) and ${approveLogins.length} verifier(s), withdrew ${withdraw.length}; written to ${path}`);
    return 0;
  } finally {
    await kr?.close().catch(() => undefined);
    await pool?.end().catch(() => undefined);
    await client.end().catch(() => undefined);
  }
}

function printPending(config: MamoriConfig, p: PendingState, say: (s: string) => void): void {
  if (config.approval.members === 'none') say('approval.members is none: members need no approval');
  else if (p.members.length === 0) say('no members awaiting approval');
  else {
    say('members awaiting approval (role  member):');
    for (const m of p.members) say(`  ${m.role}  ${m.member}`);
  }
  if (config.approval.passwords === 'allowed') say('approval.passwords is allowed: password changes need no approval');
  else if (p.passwords.length === 0) say('no passwords awaiting approval');
  else {
    say('passwords awaiting approval (login):');
    for (const x of p.passwords) say(`  ${x.login}  ${x.hash === null ? 'no verifier' : x.changed ? 'changed since approved' : 'never approved'}`);
  }
  if (p.ineligible.length > 0) {
    say('superuser/BYPASSRLS members (a grant through a role never counts for them; name the login to grant):');
    for (const m of p.ineligible) say(`  ${m.role}  ${m.member}`);
  }
  if (p.stale.length > 0) {
    say('approvals of ended memberships (withdrawn by approve --all-pending):');
    for (const m of p.stale) say(`  ${m.role}  ${m.member}`);
  }
}
