// A small catalog and role set for the SQL analysis tests.
import type { AnalysisContext, CatalogSnapshot, ProtectedColumn, ResolvedRelation, RolePolicy } from '../../../proxy/sql/types.js';

const col = (schema: string, table: string, column: string, mode: 'deterministic' | 'randomized', domain: string, type = 'mynumber'): ProtectedColumn => ({
  schema,
  table,
  column,
  type: { type },
  mode,
  domain,
});

export const EMP_MYNUMBER = col('public', 'employees', 'my_number', 'deterministic', 'mynumber');
export const EMP_NOTE = col('public', 'employees', 'secret_note', 'randomized', 'public.employees.secret_note', 'text');
export const DEP_MYNUMBER = col('public', 'dependents', 'my_number', 'deterministic', 'mynumber');
export const CORP_NUMBER = col('public', 'corps', 'corp_number', 'deterministic', 'corp', 'corporate_number');
export const HR_MYNUMBER = col('hr', 'Staff', 'MyNumber', 'deterministic', 'mynumber');

const relations: Record<string, Record<string, { kind: ResolvedRelation['kind']; columns: string[] }>> = {
  public: {
    employees: { kind: 'table', columns: ['id', 'name', 'my_number', 'secret_note', 'dept_id', 'created_at'] },
    dependents: { kind: 'table', columns: ['id', 'employee_id', 'name', 'my_number'] },
    corps: { kind: 'table', columns: ['id', 'corp_number', 'name'] },
    departments: { kind: 'table', columns: ['id', 'name'] },
    audit_log: { kind: 'table', columns: ['id', 'msg', 'my_number'] },
    emp_view: { kind: 'view', columns: ['id', 'name', 'my_number'] },
    shadowed: { kind: 'table', columns: ['id', 'my_number'] },
  },
  hr: { Staff: { kind: 'table', columns: ['id', 'MyNumber'] } },
  pg_temp_3: { shadowed: { kind: 'table', columns: ['id', 'my_number'] } },
};

export const SHADOWED = col('public', 'shadowed', 'my_number', 'deterministic', 'mynumber');

export const catalog: CatalogSnapshot = {
  protectedColumns: [EMP_MYNUMBER, EMP_NOTE, DEP_MYNUMBER, CORP_NUMBER, HR_MYNUMBER, SHADOWED],
  protectedViews: [{ schema: 'public', view: 'emp_view', column: 'my_number', source: EMP_MYNUMBER }],
  resolveRelation(name, searchPath) {
    const look = (schema: string) => {
      const s = schema === 'pg_temp' ? 'pg_temp_3' : schema;
      const r = relations[s]?.[name.name];
      return r ? { schema: s, name: name.name, kind: r.kind, columns: r.columns } : null;
    };
    if (name.schema) return look(name.schema);
    for (const s of searchPath) {
      const r = look(s);
      if (r) return r;
    }
    return null;
  },
  epoch: 1,
};

export const clerk: RolePolicy = { canSearch: () => true, canWrite: () => true, read: () => 'plaintext' };
export const viewer: RolePolicy = { canSearch: () => false, canWrite: () => false, read: () => 'mask' };
export const outsider: RolePolicy = { canSearch: () => false, canWrite: () => false, read: () => 'deny' };

export function ctx(over: Partial<AnalysisContext> = {}): AnalysisContext {
  return { catalog, searchPath: ['pg_temp_3', 'public'], role: clerk, maxInListItems: 5, ...over };
}
