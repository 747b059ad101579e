// The per-column decision: what one identity gets from one column's policy. Pure: the identity (membership
// closure, superuser/BYPASSRLS, client certificate) and the approval state come in, a decision goes out.
// The rules are written down in docs/policy.md; the order of the checks below follows that page.
import type { ColumnPolicy } from '../../config/schema.js';
import type { Identity } from './membership.js';

export type ReadDecision = 'plaintext' | 'mask' | 'null' | 'ciphertext' | 'deny';

/** The security officer's approvals as the decision sees them. */
export interface GrantView {
  /** The officer approved `member` (a login) reaching the grants of `role` through membership. */
  isApproved(role: string, member: string): boolean;
  /**
   * `approval.passwords: held` and the login's current verifier is not the approved one: every
   * plaintext/search/write/export grant of this login is suspended (also those naming it by login).
   */
  verifierHeld?(login: string): boolean;
}

/** The parts of a configured column the decision reads (tests build these directly). */
export type ColumnGrants = Pick<ColumnPolicy, 'read' | 'search' | 'write' | 'export' | 'others' | 'requireClientCert'>;

/** No approvals at all: what a missing or refused approval file means. */
export const NO_APPROVALS: GrantView = { isApproved: () => false };

/**
 * Whether `id` holds a grant listing `roles`. `strong` grants (plaintext, search, write, export) carry the
 * separation-of-duties rules: superusers and BYPASSRLS logins count only when named by login, a grant reached
 * through membership needs the officer's approval when approvals are required, a held verifier suspends it,
 * and `requireClientCert` needs a client certificate.
 */
function holds(
  roles: readonly string[],
  strong: boolean,
  col: ColumnGrants,
  id: Identity,
  approvals: GrantView,
  approvalRequired: boolean,
): boolean {
  if (roles.length === 0) return false;
  if (strong) {
    if (col.requireClientCert && !id.clientCert) return false;
    if (approvals.verifierHeld?.(id.login) === true) return false;
  }
  for (const role of roles) {
    if (role === id.login) return true;
    if (!id.roles.has(role)) continue;
    if (!strong) return true;
    // A DBA can grant himself any role: for the roles that can read everything anyway, only the login counts.
    if (id.superuser || id.bypassRls) continue;
    if (approvalRequired && !approvals.isApproved(role, id.login)) continue;
    return true;
  }
  return false;
}

/** Strongest first; `plaintext` is the only read level that reveals values, so the only strong one. */
const READ_ORDER = ['plaintext', 'ciphertext', 'mask', 'null'] as const;

/**
 * What a read of the column returns for `id`: the strongest read grant it holds (plaintext > ciphertext >
 * mask > null), else the column's `others`. A plaintext grant that does not count (no certificate, not
 * approved, superuser via a role, held verifier) falls through to the next weaker grant the identity holds.
 */
export function readDecision(col: ColumnGrants, id: Identity, approvals: GrantView, approvalRequired: boolean): ReadDecision {
  for (const level of READ_ORDER) {
    if (holds(col.read[level], level === 'plaintext', col, id, approvals, approvalRequired)) return level;
  }
  return col.others;
}

/** May filter, join or group by the column (search defaults to the plaintext readers in config/schema.ts). */
export function canSearch(col: ColumnGrants, id: Identity, approvals: GrantView, approvalRequired: boolean): boolean {
  return holds(col.search, true, col, id, approvals, approvalRequired);
}

export function canWrite(col: ColumnGrants, id: Identity, approvals: GrantView, approvalRequired: boolean): boolean {
  return holds(col.write, true, col, id, approvals, approvalRequired);
}

export function canExport(col: ColumnGrants, id: Identity, approvals: GrantView, approvalRequired: boolean): boolean {
  return holds(col.export, true, col, id, approvals, approvalRequired);
}

/** The roles named in a column's strong grants: the grants whose new members and verifiers need approval. */
export function strongGrantRoles(col: ColumnGrants): string[] {
  return [...new Set([...col.read.plaintext, ...col.search, ...col.write, ...col.export])];
}
