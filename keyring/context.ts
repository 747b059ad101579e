// The encryption context bound to every wrapped key. The SDK authenticates it with the wrapped key; we
// compare every field on unwrap so a blob moved to another domain, version, purpose, keystore or database
// is refused even though the root could open it.
export type KeyPurpose = 'data' | 'subject' | 'audit' | 'integrity';

export interface WrapContext {
  purpose: KeyPurpose;
  domainId: number;
  version: number;
  keystoreId: string;
  databaseIdentity: string;
}

export function encryptionContext(c: WrapContext): Record<string, string> {
  return {
    'mamori:purpose': c.purpose,
    'mamori:domain': String(c.domainId),
    'mamori:version': String(c.version),
    'mamori:keystore': c.keystoreId,
    'mamori:database': c.databaseIdentity,
  };
}

export class ContextMismatchError extends Error {
  constructor(readonly field: string) {
    super(`wrapped key's encryption context does not match (field ${field})`);
    this.name = 'ContextMismatchError';
  }
}

/** Throws unless `actual` carries exactly the fields of `expected` (no more, no fewer, equal values). */
export function checkContext(expected: WrapContext, actual: Readonly<Record<string, string>>): void {
  const want = encryptionContext(expected);
  for (const [k, v] of Object.entries(want)) {
    if (actual[k] !== v) throw new ContextMismatchError(k);
  }
  for (const k of Object.keys(actual)) {
    if (!(k in want)) throw new ContextMismatchError(k);
  }
}

export function describeContext(c: WrapContext): string {
  return `${c.purpose} key domain ${c.domainId} version ${c.version}`;
}
