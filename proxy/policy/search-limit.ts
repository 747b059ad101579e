// Search limits of one session. An equality predicate on a deterministic column is an oracle ("is this
// number in the table?"), so each session may only ask so often (a token bucket: config.search.ratePerSecond,
// burst) and only so many values at once (config.search.maxInListItems, for `= ANY($n)` arrays bound at
// Bind time; literal IN / ANY lists are capped by the analysis). Pure apart from the clock it is given.
import { MamoriError } from '../errors.js';
import type { StatementPlan } from '../sql/types.js';
import type { ProtectedColumn } from '../sql/types.js';
import { decodeBind, expandFormats } from '../wire/frontend.js';
import { parseArrayText, type ParamPlan } from '../results/params.js';

export interface SearchLimitConfig {
  ratePerSecond: number;
  burst: number;
  maxInListItems: number;
}

export interface SearchLimiterOptions {
  /** Milliseconds, monotonic; defaults to performance.now(). */
  now?: () => number;
  /** Called on each refusal (the metric hook); gets the column that was searched, never a value. */
  onRefused?: (column: string) => void;
  /** Every searching statement: whether the limit refused it (the searches / search-limit metrics). */
  onSearch?: (limitHit: boolean) => void;
}

/** A token bucket: starts full (`burst`), refills at `ratePerSecond`, one token per searching statement. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Takes one token; false (and nothing taken) when the bucket is empty. */
  take(): boolean {
    const t = this.now();
    // A clock that went backwards refills nothing rather than draining the bucket.
    const elapsed = Math.max(0, t - this.last);
    this.last = t;
    this.tokens = Math.min(this.burst, this.tokens + (elapsed / 1000) * this.ratePerSecond);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Tokens available now (for tests and diagnostics). */
  available(): number {
    const elapsed = Math.max(0, this.now() - this.last);
    return Math.min(this.burst, this.tokens + (elapsed / 1000) * this.ratePerSecond);
  }
}

/** The first protected column a statement searches (a `search` use), or null when it searches none. */
export function searchedColumn(statements: readonly StatementPlan[]): ProtectedColumn | null {
  for (const st of statements) {
    for (const t of st.touched) if (t.uses.includes('search')) return t.column;
    for (const p of st.params) if (p.purpose === 'search') return p.column;
    for (const l of st.literals) if (l.purpose === 'search') return l.column;
  }
  return null;
}

const qualified = (c: ProtectedColumn): string => `${c.schema}.${c.table}.${c.column}`;

/** One session's search limiter. */
export class SearchLimiter {
  private readonly bucket: TokenBucket;

  constructor(
    private readonly cfg: SearchLimitConfig,
    private readonly opts: SearchLimiterOptions = {},
  ) {
    this.bucket = new TokenBucket(cfg.ratePerSecond, cfg.burst, opts.now);
  }

  /**
   * One searching statement (Query, or Bind of a prepared statement that searches): null when allowed,
   * else the refusal (53400: the configured rate was exceeded). `column` is null for a statement that
   * searches nothing, which is always allowed and takes no token.
   */
  admit(column: ProtectedColumn | string | null): MamoriError | null {
    if (column === null) return null;
    const admitted = this.bucket.take();
    this.opts.onSearch?.(!admitted);
    if (admitted) return null;
    const name = typeof column === 'string' ? column : qualified(column);
    this.opts.onRefused?.(name);
    return new MamoriError('configuration_limit_exceeded',
      `too many searches on protected column ${name}: this session may search protected columns at most ${this.cfg.ratePerSecond} times per second (burst ${this.cfg.burst}); try again later`);
  }

  /** The IN/ANY cap applied to `= ANY($n)` array parameters of a Bind body: null when within it. */
  checkArrays(bindBody: Buffer, plans: readonly ParamPlan[]): MamoriError | null {
    return arrayCapError(bindBody, plans, this.cfg.maxInListItems);
  }
}

/**
 * Element counts of the array parameters a Bind carries for planned `= ANY($n)` positions, checked against
 * `max`. A malformed array is left to the encryption pass (which refuses it with 22P02 / 22P03).
 */
export function arrayCapError(bindBody: Buffer, plans: readonly ParamPlan[], max: number): MamoriError | null {
  if (!plans.some((p) => p.array === true)) return null;
  const bind = decodeBind(bindBody);
  const formats = expandFormats(bind.paramFormats, bind.params.length);
  for (const p of plans) {
    if (p.array !== true) continue;
    const v = bind.params[p.index - 1];
    if (v === undefined || v === null) continue;
    const n = formats[p.index - 1] === 1 ? binaryArrayLength(v) : textArrayLength(v);
    if (n !== null && n > max) {
      return new MamoriError('program_limit_exceeded',
        `column "${qualified(p.column)}" is protected: an ANY list of ${n} values (parameter $${p.index}) exceeds the limit of ${max}`);
    }
  }
  return null;
}

/** Element count of a one-dimensional binary array (header: ndim, flags, elemtype, then dim, lbound). */
export function binaryArrayLength(v: Buffer): number | null {
  if (v.length < 12) return null;
  const ndim = v.readInt32BE(0);
  if (ndim === 0) return 0;
  if (ndim !== 1 || v.length < 20) return null;
  return v.readInt32BE(12);
}

export function textArrayLength(v: Buffer): number | null {
  const parsed = parseArrayText(v.toString('utf8'));
  return parsed.ok ? parsed.items.length : null;
}
