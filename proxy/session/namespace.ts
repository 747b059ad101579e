// SQL PREPARE / DEALLOCATE / DISCARD ALL share the protocol's prepared-statement namespace. The pipeline
// asks for their effects only when a command tag says one ran, so the parse cost is off the hot path.
import { parseSync } from 'libpg-query';
import type { SqlNamespaceEffect } from './pipeline.js';

interface Node {
  [key: string]: unknown;
}

export function namespaceEffects(sql: string): SqlNamespaceEffect[] {
  let tree: { stmts?: Array<{ stmt: Node }> };
  try {
    tree = parseSync(sql) as typeof tree;
  } catch {
    return []; // the server accepted it, so this is a parser difference: leave the namespace as it was
  }
  const out: SqlNamespaceEffect[] = [];
  for (const { stmt } of tree.stmts ?? []) {
    const prep = stmt.PrepareStmt as { name?: string } | undefined;
    if (prep?.name !== undefined) out.push({ kind: 'prepare', name: prep.name });
    const dealloc = stmt.DeallocateStmt as { name?: string; isall?: boolean } | undefined;
    if (dealloc) out.push({ kind: 'deallocate', name: dealloc.isall || dealloc.name === undefined ? null : dealloc.name });
    const discard = stmt.DiscardStmt as { target?: string } | undefined;
    if (discard?.target === 'DISCARD_ALL') out.push({ kind: 'discard-all' });
  }
  return out;
}
