import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { canExport, canSearch, canWrite, NO_APPROVALS, readDecision, strongGrantRoles, type ColumnGrants, type GrantView, type ReadDecision } from '../../../proxy/policy/decide.js';
import type { Identity } from '../../../proxy/policy/membership.js';

function col(over: Partial<Omit<ColumnGrants, 'read'>> & { read?: Partial<ColumnGrants['read']> } = {}): ColumnGrants {
  const read = { plaintext: [], mask: [], ciphertext: [], null: [], ...over.read };
  return {
    search: over.search ?? [...read.plaintext],
    write: over.write ?? [],
    export: over.export ?? [],
    others: over.others ?? 'deny',
    requireClientCert: over.requireClientCert ?? false,
    read,
  };
}

function who(login: string, roles: string[] = [], over: Partial<Identity> = {}): Identity {
  return { login, roles: new Set([login, ...roles]), superuser: false, bypassRls: false, clientCert: false, ...over };
}

function approving(...pairs: [string, string][]): GrantView {
  const set = new Set(pairs.map((p) => p.join('\u0000')));
  return { isApproved: (role, member) => set.has(`${role}\u0000${member}`) };
}

const ALL_ON: GrantView = { isApproved: () => true };

describe('readDecision', () => {
  const policy = col({ read: { plaintext: ['hr_clerk'], ciphertext: ['etl'], mask: ['hr_viewer'], null: ['analyst'] }, others: 'deny' });
  const cases: { name: string; id: Identity; approvals: GrantView; required: boolean; want: ReadDecision }[] = [
    { name: 'named by login in plaintext', id: who('hr_clerk'), approvals: NO_APPROVALS, required: true, want: 'plaintext' },
    { name: 'via role, approvals off', id: who('alice', ['hr_clerk']), approvals: NO_APPROVALS, required: false, want: 'plaintext' },
    { name: 'via role, approvals on, not approved → others', id: who('alice', ['hr_clerk']), approvals: NO_APPROVALS, required: true, want: 'deny' },
    { name: 'via role, approvals on, approved', id: who('alice', ['hr_clerk']), approvals: approving(['hr_clerk', 'alice']), required: true, want: 'plaintext' },
    { name: 'approval for another member does not count', id: who('alice', ['hr_clerk']), approvals: approving(['hr_clerk', 'bob']), required: true, want: 'deny' },
    { name: 'mask via role needs no approval', id: who('v', ['hr_viewer']), approvals: NO_APPROVALS, required: true, want: 'mask' },
    { name: 'ciphertext via role', id: who('e', ['etl']), approvals: NO_APPROVALS, required: true, want: 'ciphertext' },
    { name: 'null via role', id: who('a', ['analyst']), approvals: NO_APPROVALS, required: true, want: 'null' },
    { name: 'no grant → others deny', id: who('nobody'), approvals: ALL_ON, required: false, want: 'deny' },
    { name: 'strongest wins: plaintext over mask', id: who('x', ['hr_viewer', 'hr_clerk']), approvals: NO_APPROVALS, required: false, want: 'plaintext' },
    { name: 'strongest wins: ciphertext over mask', id: who('x', ['hr_viewer', 'etl']), approvals: NO_APPROVALS, required: false, want: 'ciphertext' },
    { name: 'strongest wins: mask over null', id: who('x', ['analyst', 'hr_viewer']), approvals: NO_APPROVALS, required: false, want: 'mask' },
    { name: 'unapproved plaintext falls to mask', id: who('x', ['hr_viewer', 'hr_clerk']), approvals: NO_APPROVALS, required: true, want: 'mask' },
    { name: 'superuser via role: no plaintext even approved', id: who('dba', ['hr_clerk'], { superuser: true }), approvals: ALL_ON, required: true, want: 'deny' },
    { name: 'superuser via role, approvals off: still none', id: who('dba', ['hr_clerk'], { superuser: true }), approvals: ALL_ON, required: false, want: 'deny' },
    { name: 'superuser via role keeps a mask grant', id: who('dba', ['hr_clerk', 'hr_viewer'], { superuser: true }), approvals: ALL_ON, required: false, want: 'mask' },
    { name: 'superuser named by login', id: who('hr_clerk', [], { superuser: true }), approvals: NO_APPROVALS, required: true, want: 'plaintext' },
    { name: 'bypassrls via role: no plaintext', id: who('ops', ['hr_clerk'], { bypassRls: true }), approvals: ALL_ON, required: false, want: 'deny' },
    { name: 'bypassrls named by login', id: who('hr_clerk', [], { bypassRls: true }), approvals: NO_APPROVALS, required: true, want: 'plaintext' },
    { name: 'a role not in the closure is not matched', id: who('alice', ['hr_clerks']), approvals: ALL_ON, required: false, want: 'deny' },
  ];
  for (const c of cases) {
    test(c.name, () => assert.equal(readDecision(policy, c.id, c.approvals, c.required), c.want));
  }

  test('others: null', () => {
    assert.equal(readDecision(col({ read: { plaintext: ['p'] }, others: 'null' }), who('z'), ALL_ON, false), 'null');
  });

  describe('requireClientCert', () => {
    const certCol = col({ read: { plaintext: ['hr_clerk'], mask: ['hr_viewer'] }, requireClientCert: true, others: 'null' });
    test('plaintext with a certificate', () => {
      assert.equal(readDecision(certCol, who('hr_clerk', [], { clientCert: true }), NO_APPROVALS, true), 'plaintext');
    });
    test('named by login without a certificate falls to others', () => {
      assert.equal(readDecision(certCol, who('hr_clerk'), NO_APPROVALS, true), 'null');
    });
    test('without a certificate falls to the mask grant', () => {
      assert.equal(readDecision(certCol, who('hr_clerk', ['hr_viewer']), NO_APPROVALS, true), 'mask');
    });
    test('mask needs no certificate', () => {
      assert.equal(readDecision(certCol, who('v', ['hr_viewer']), NO_APPROVALS, true), 'mask');
    });
    test('ciphertext needs no certificate', () => {
      const c = col({ read: { plaintext: ['p'], ciphertext: ['p_ct'] }, requireClientCert: true });
      assert.equal(readDecision(c, who('u', ['p', 'p_ct']), ALL_ON, false), 'ciphertext');
    });
    test('search/write/export need the certificate too', () => {
      const c = col({ read: { plaintext: ['p'] }, write: ['p'], export: ['p'], requireClientCert: true });
      const without = who('p');
      const withCert = who('p', [], { clientCert: true });
      assert.deepEqual([canSearch(c, without, ALL_ON, false), canWrite(c, without, ALL_ON, false), canExport(c, without, ALL_ON, false)], [false, false, false]);
      assert.deepEqual([canSearch(c, withCert, ALL_ON, false), canWrite(c, withCert, ALL_ON, false), canExport(c, withCert, ALL_ON, false)], [true, true, true]);
    });
  });

  describe('held verifiers', () => {
    const held = (login: string): GrantView => ({ isApproved: () => true, verifierHeld: (l) => l === login });
    test('a held verifier suspends a plaintext grant by login', () => {
      assert.equal(readDecision(policy, who('hr_clerk'), held('hr_clerk'), true), 'deny');
    });
    test('a held verifier suspends a plaintext grant via role, mask remains', () => {
      assert.equal(readDecision(policy, who('a', ['hr_clerk', 'hr_viewer']), held('a'), true), 'mask');
    });
    test('another login held does not matter', () => {
      assert.equal(readDecision(policy, who('a', ['hr_clerk']), held('b'), true), 'plaintext');
    });
    test('search, write and export are suspended', () => {
      const c = col({ read: { plaintext: ['p'] }, write: ['p'], export: ['p'] });
      assert.deepEqual([canSearch(c, who('p'), held('p'), false), canWrite(c, who('p'), held('p'), false), canExport(c, who('p'), held('p'), false)], [false, false, false]);
    });
  });
});

describe('canSearch / canWrite / canExport', () => {
  const c = col({ read: { plaintext: ['reader'], mask: ['viewer'] }, search: ['searcher'], write: ['writer'], export: ['exporter'] });
  const grants = [
    ['search', canSearch, 'searcher'],
    ['write', canWrite, 'writer'],
    ['export', canExport, 'exporter'],
  ] as const;
  for (const [name, fn, role] of grants) {
    test(`${name}: by login`, () => assert.equal(fn(c, who(role), NO_APPROVALS, true), true));
    test(`${name}: via role needs approval when required`, () => {
      assert.equal(fn(c, who('m', [role]), NO_APPROVALS, true), false);
      assert.equal(fn(c, who('m', [role]), approving([role, 'm']), true), true);
      assert.equal(fn(c, who('m', [role]), NO_APPROVALS, false), true);
    });
    test(`${name}: superuser or bypassrls via role never`, () => {
      assert.equal(fn(c, who('m', [role], { superuser: true }), ALL_ON, false), false);
      assert.equal(fn(c, who('m', [role], { bypassRls: true }), ALL_ON, true), false);
      assert.equal(fn(c, who(role, [], { superuser: true, bypassRls: true }), NO_APPROVALS, true), true);
    });
    test(`${name}: other grants do not imply it`, () => {
      assert.equal(fn(c, who('m', ['reader', 'viewer']), ALL_ON, false), false);
    });
  }
  test('search defaults to plaintext readers (as config resolves it)', () => {
    const d = col({ read: { plaintext: ['reader'] } });
    assert.equal(canSearch(d, who('reader'), NO_APPROVALS, true), true);
    assert.equal(canSearch(d, who('m', ['viewer']), ALL_ON, false), false);
  });
  test('empty lists grant nothing', () => {
    const d = col();
    assert.equal(canWrite(d, who('x'), ALL_ON, false), false);
    assert.equal(readDecision(d, who('x'), ALL_ON, false), 'deny');
  });
});

test('strongGrantRoles: plaintext, search, write and export roles, once each', () => {
  const c = col({ read: { plaintext: ['a'], mask: ['m'] }, search: ['a', 's'], write: ['w'], export: ['e', 'a'] });
  assert.deepEqual(strongGrantRoles(c).sort(), ['a', 'e', 's', 'w']);
});

describe('properties (fast-check)', () => {
  const NAMES = ['a', 'b', 'c', 'd', 'e'];
  const list = fc.subarray(NAMES);
  const column = fc.record({
    plaintext: list, ciphertext: list, mask: list, nul: list, search: list, write: list, export: list,
    others: fc.constantFrom('deny' as const, 'null' as const), requireClientCert: fc.boolean(),
  }).map((r): ColumnGrants => ({
    read: { plaintext: r.plaintext, ciphertext: r.ciphertext, mask: r.mask, null: r.nul },
    search: r.search, write: r.write, export: r.export, others: r.others, requireClientCert: r.requireClientCert,
  }));
  const identity = fc.record({
    login: fc.constantFrom(...NAMES, 'z'), roles: list, superuser: fc.boolean(), bypassRls: fc.boolean(), clientCert: fc.boolean(),
  }).map((r): Identity => ({ ...r, roles: new Set([r.login, ...r.roles]) }));
  const pairs = fc.subarray(NAMES.flatMap((r) => [...NAMES, 'z'].map((m) => [r, m] as [string, string])));
  const RANK: Record<ReadDecision, number> = { plaintext: 4, ciphertext: 3, mask: 2, null: 1, deny: 0 };
  const rank = (c: ColumnGrants, d: ReadDecision) => (d === c.others ? -1 : RANK[d]);

  test('plaintext only through a grant that satisfies every strong rule', () => {
    fc.assert(fc.property(column, identity, pairs, fc.boolean(), (c, id, approved, required) => {
      if (readDecision(c, id, approving(...approved), required) !== 'plaintext') return;
      assert.ok(!c.requireClientCert || id.clientCert);
      const byLogin = c.read.plaintext.includes(id.login);
      const viaRole = !id.superuser && !id.bypassRls && c.read.plaintext.some((r) =>
        id.roles.has(r) && (!required || approved.some(([ar, am]) => ar === r && am === id.login)));
      assert.ok(byLogin || viaRole);
    }), { numRuns: 2000 });
  });

  test('more approvals, a certificate, or approvals off never give a weaker decision', () => {
    fc.assert(fc.property(column, identity, pairs, pairs, (c, id, some, more) => {
      const base = rank(c, readDecision(c, id, approving(...some), true));
      assert.ok(rank(c, readDecision(c, id, approving(...some, ...more), true)) >= base);
      assert.ok(rank(c, readDecision(c, { ...id, clientCert: true }, approving(...some), true)) >= base);
      assert.ok(rank(c, readDecision(c, id, approving(...some), false)) >= base);
      for (const fn of [canSearch, canWrite, canExport]) {
        if (fn(c, id, approving(...some), true)) assert.equal(fn(c, id, approving(...some, ...more), true), true);
      }
    }), { numRuns: 2000 });
  });

  test('for superusers and BYPASSRLS logins, roles in the closure add no strong grant', () => {
    fc.assert(fc.property(column, identity, fc.boolean(), (c, id, required) => {
      const privileged = { ...id, superuser: true };
      const alone = { ...privileged, roles: new Set([id.login]) };
      for (const fn of [canSearch, canWrite, canExport]) {
        assert.equal(fn(c, privileged, ALL_ON, required), fn(c, alone, ALL_ON, required));
      }
      const d = readDecision(c, privileged, ALL_ON, required);
      if (d === 'plaintext') assert.equal(readDecision(c, alone, ALL_ON, required), 'plaintext');
    }), { numRuns: 2000 });
  });
});
