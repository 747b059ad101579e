// Small statistics for bench results: medians across rounds, exact percentiles of per-transaction latencies.

/** Median of the finite values, or null when there are none. */
export function median(values: readonly number[]): number | null {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/** The p-th percentile (0 < p ≤ 100, nearest-rank) of values sorted ascending in place. */
export function percentileSorted(sorted: Float64Array, p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** a / b, or null when either side is missing or b is 0. */
export function ratio(a: number | null, b: number | null): number | null {
  if (a === null || b === null || b === 0) return null;
  return a / b;
}

/** Fixed-width number for tables; '—' when missing. */
export function fmt(v: number | null, digits = 0): string {
  return v === null ? '—' : v.toFixed(digits);
}
