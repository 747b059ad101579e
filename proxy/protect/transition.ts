// What the proxy does with a configured column whose storage is still plaintext: before `mamori protect`, and
// after protect has started if its shadow column or state row is not what the catalog expects. Statements that
// touch such a column are refused with a clear error instead of being served wrong: values would fail to
// decrypt, and writes would put cells into a plaintext column. A column in protect's transition (the catalog's
// `transitions`) is left to proxy/protect/transition-rewrite.ts, which serves the common forms from both
// columns; so is one `mamori unprotect` is decrypting (the table then has the plaintext shadow
// `<col>__mamori_plain`) once the catalog has seen its state row; before that, statements touching it are refused. Columns with `enforce: false` are exempt (they stay plaintext).
import type { ColumnStorage } from '../policy/catalog.js';
import type { CatalogSnapshot, ProtectedColumn, StatementPlan } from '../sql/types.js';
import { PLAIN_SHADOW_SUFFIX } from './plan.js';

export function plaintextStorageRefusal(
  statements: readonly StatementPlan[],
  catalog: Pick<CatalogSnapshot, 'resolveRelation'> & { storage: ReadonlyMap<string, ColumnStorage>; transitions?: ReadonlyMap<string, unknown> },
  enforced: (c: ProtectedColumn) => boolean,
): string | null {
  for (const st of statements) {
    for (const { column: c } of st.touched) {
      const s = catalog.storage.get(`${c.tableOid}:${c.attnum}`);
      if (!enforced(c)) continue;
      if (catalog.transitions?.has(`${c.tableOid}:${c.attnum}`)) continue; // served by transition-rewrite.ts
      const rel = catalog.resolveRelation({ schema: c.schema, name: c.table }, []);
      if (rel?.columns.includes(c.column + PLAIN_SHADOW_SUFFIX)) {
        return `protected column ${c.schema}.${c.table}.${c.column} is being decrypted by \`mamori unprotect\`: statements that touch it are refused until that has finished (docs/protect.md)`;
      }
      if (s?.kind !== 'plaintext') continue;
      return (
        `protected column ${c.schema}.${c.table}.${c.column} is stored as ${s.type}, not encrypted yet or being converted by ` +
        '`mamori protect`: statements that touch it are refused until protect has finished (docs/protect.md)'
      );
    }
  }
  return null;
}
