// Records for changes the proxy observes outside statements: role membership and password (verifier) changes
// seen by the membership cache, and key events from the keyring (every unwrap included).
import type { KeyEvent, Keyring } from '../../keyring/index.js';
import type { MembershipChange } from '../policy/membership.js';
import type { AuditEvent } from './record.js';
import type { AuditTrail } from './trail.js';

/** One record per role gained (grant) or lost (revoke) by a login; `observed` for a changed verifier. */
export function membershipRecords(change: MembershipChange): AuditEvent[] {
  if (change.kind === 'password') return [{ kind: 'password_change', role: change.role, action: 'observed' }];
  return [
    ...change.added.map((role): AuditEvent => ({ kind: 'membership_change', role, member: change.login, action: 'grant' })),
    ...change.removed.map((role): AuditEvent => ({ kind: 'membership_change', role, member: change.login, action: 'revoke' })),
  ];
}

export function keyEventRecord(ev: KeyEvent): AuditEvent {
  const keyId = ev.domain !== undefined ? `${ev.domain}:v${ev.version ?? 0}` : `keystore:${ev.keystoreId}`;
  return { kind: 'key_event', event: ev.type, keyId, ...(ev.detail ? { detail: ev.detail } : {}) };
}

/**
 * Subscribes to the keyring's key events as soon as it is open; events before the trail exists are held
 * (bounded) and written once `attach` gives the trail.
 */
export function recordKeyEvents(keyring: Keyring, maxHeld = 1000): { attach(trail: AuditTrail | null): void; close(): void } {
  let trail: AuditTrail | null | undefined;
  const held: AuditEvent[] = [];
  const onKey = (ev: KeyEvent): void => {
    const r = keyEventRecord(ev);
    if (trail) void trail.append(r).catch(() => undefined);
    else if (trail === undefined && held.length < maxHeld) held.push(r);
  };
  keyring.events.on('key', onKey);
  return {
    attach(t) {
      trail = t;
      if (t) for (const r of held.splice(0)) void t.append(r).catch(() => undefined);
      else held.length = 0;
    },
    close() {
      keyring.events.off('key', onKey);
    },
  };
}
