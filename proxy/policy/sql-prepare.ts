// SQL-level PREPARE / EXECUTE (docs/sql-support.md). `PREPARE name(types) AS <statement>` is analysed like a
// Parse of its statement: which $n are bound for which protected column. Its declared types and `$n::type`
// casts of those parameters become bytea (the columns store cells), and its plan is kept with the statement
// once the server confirms it. `EXECUTE name(args)` then has the constants it passes for protected
// parameters validated, encrypted and spliced in as bytea constants; anything else bound for a protected
// parameter is refused, and so is an EXECUTE with arguments of a statement mamori does not know.
// These are the pure parts; proxy/policy/session-policy.ts wires them in.
import { MamoriError } from '../errors.js';
import { paramCastEdit, typeNameEdit, type ExpectedEdit } from '../sql/index.js';
import type { ExecuteArg, LiteralSite, ProtectedColumn, StatementPlan } from '../sql/types.js';
import type { ParamPlan } from '../results/params.js';

const qualified = (c: ProtectedColumn): string => `${c.schema}.${c.table}.${c.column}`;

/** The parameters of a PREPARE's statement bound for protected columns, and the edits that make them bytea. */
export function preparedParams(st: StatementPlan & { prepare: NonNullable<StatementPlan['prepare']> }): { params: ParamPlan[]; edits: ExpectedEdit[] } | MamoriError {
  const params: ParamPlan[] = [];
  const edits: ExpectedEdit[] = [];
  const name = st.prepare.name;
  for (const ps of st.params) {
    if (ps.array) {
      return new MamoriError('feature_not_supported',
        `PREPARE ${name}: parameter $${ps.index} is an array of values for protected column ${qualified(ps.column)} (= ANY); SQL-level prepared statements take protected values one per parameter (use IN ($1, $2, …)), or use the driver's prepared statements`);
    }
    const prev = params.find((x) => x.index === ps.index);
    if (prev && prev.column !== ps.column) {
      return new MamoriError('feature_not_supported', `PREPARE ${name}: parameter $${ps.index} is used for two different protected positions`);
    }
    if (!prev) params.push({ index: ps.index, column: ps.column, purpose: ps.purpose });
    if (ps.cast) edits.push(paramCastEdit(ps.cast, ps.index, false));
  }
  for (const t of st.prepare.typeSpans) edits.push(typeNameEdit(t));
  return { params, edits };
}

/**
 * Maps the arguments of `EXECUTE name(args)` onto the protected parameters of its statement: the constants
 * (optionally cast; value null for NULL, left as it is) to validate, encrypt and splice in. Anything else
 * bound for a protected parameter is refused; so is a `$n` of a Parse (PostgreSQL takes none there either).
 */
export function executeBinding(name: string, args: readonly ExecuteArg[], params: readonly ParamPlan[]): { sites: LiteralSite[] } | MamoriError {
  const sites: LiteralSite[] = [];
  for (const p of params) {
    const arg = args[p.index - 1];
    if (!arg) continue; // too few arguments: the server refuses the EXECUTE
    const col = qualified(p.column);
    if (p.array) {
      return new MamoriError('feature_not_supported',
        `EXECUTE ${name}: argument ${p.index} is an array of values for protected column ${col} (= ANY), which EXECUTE cannot encrypt; use the driver's prepared statements`);
    }
    if (arg.kind === 'literal') {
      sites.push({ start: arg.start, end: arg.end, column: p.column, purpose: p.purpose, value: arg.value });
      continue;
    }
    const what = arg.kind === 'param' ? `a parameter ($${arg.index ?? '?'}); PostgreSQL does not accept parameters in EXECUTE arguments` : 'an expression';
    return new MamoriError('feature_not_supported',
      `EXECUTE ${name}: argument ${p.index} is bound for protected column ${col} and is ${what}; only constants (optionally cast) can be encrypted for it`);
  }
  return { sites };
}

/** EXECUTE with arguments of a statement mamori has not seen prepared: its arguments could be protected values. */
export function unknownStatementRefusal(name: string): MamoriError {
  return new MamoriError('feature_not_supported',
    `EXECUTE ${name}: prepared statement "${name}" is not known to mamori in this session (not prepared through it, or deallocated), so it cannot tell whether its arguments are bound for protected columns`);
}
