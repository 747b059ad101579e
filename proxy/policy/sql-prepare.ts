// SQL-level PREPARE / EXECUTE. Values passed by `EXECUTE name(args)` are bound by the server to the
// statement prepared earlier; mamori does not (yet) track those statements per session to encrypt the
// arguments bound for protected columns, so a PREPARE whose parameters reach a protected column is refused
// before it exists. Then no EXECUTE can carry a protected value in plaintext to the server (the guard would
// reject a write, but a search would silently match nothing, and the value would sit in the server's logs).
// Protected literals inside the prepared body and protected result columns are handled like any statement.
import { MamoriError } from '../errors.js';
import type { StatementPlan } from '../sql/types.js';

export function sqlPrepareRefusal(statements: readonly StatementPlan[]): MamoriError | null {
  for (const st of statements) {
    if (!st.prepare) continue;
    const p = st.params[0];
    if (!p && st.prepare.typeSpans.length === 0) continue;
    const col = p ? `${p.column.schema}.${p.column.table}.${p.column.column}` : 'a protected column';
    return new MamoriError('feature_not_supported',
      `PREPARE ${st.prepare.name}: SQL-level prepared statements with parameters for protected columns are not supported (parameter $${p?.index ?? st.prepare.typeSpans[0]!.index} is bound for ${col}); use the driver's prepared statements (extended protocol) or literals`);
  }
  return null;
}
