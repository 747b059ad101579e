// What the proxy does with a configured column whose storage is still plaintext: before `mamori protect`, and
// while it runs (the values are then split between the old column and the shadow, so no read of either alone is
// right). Statements that touch such a column are refused with a clear error instead of being served wrong:
// values would be read as NULL (moved rows) or fail to decrypt (rows not yet moved), and writes would put cells
// into a plaintext column. Columns with `enforce: false` are exempt (they are meant to stay plaintext).
import type { ColumnStorage } from '../policy/catalog.js';
import type { ProtectedColumn, StatementPlan } from '../sql/types.js';

export function plaintextStorageRefusal(
  statements: readonly StatementPlan[],
  storage: ReadonlyMap<string, ColumnStorage>,
  enforced: (c: ProtectedColumn) => boolean,
): string | null {
  for (const st of statements) {
    for (const { column: c } of st.touched) {
      const s = storage.get(`${c.tableOid}:${c.attnum}`);
      if (s?.kind !== 'plaintext' || !enforced(c)) continue;
      return (
        `protected column ${c.schema}.${c.table}.${c.column} is stored as ${s.type}, not encrypted yet or being converted by ` +
        '`mamori protect`: statements that touch it are refused until protect has finished (docs/protect.md)'
      );
    }
  }
  return null;
}
