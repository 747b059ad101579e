// Command-line options shared by the pgbench-driven benchmarks (bench:policy, bench:origin): rounds, seconds,
// clients, jobs, --quick, --out, plus the flags a benchmark adds through `extra`.

export interface RunOptions {
  rounds: number;
  seconds: number;
  clients: number;
  jobs: number;
  out: string | null;
}

/**
 * Parses argv into a copy of `defaults`. `extra(flag, value, o)` handles a benchmark's own flags (`value()`
 * consumes the next argument) and returns false for an unknown one; unknown flags throw `usage`.
 */
export function parseRunOptions<T extends RunOptions>(argv: readonly string[], defaults: T, usage: string,
  extra: (flag: string, value: () => string, o: T) => boolean = () => false): T {
  const o: T = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => argv[++i] ?? '';
    const positive = (): number => {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} needs a positive integer`);
      return n;
    };
    if (a === '--quick') Object.assign(o, { rounds: 1, seconds: 3 });
    else if (a === '--rounds') o.rounds = positive();
    else if (a === '--seconds') o.seconds = positive();
    else if (a === '--clients') o.clients = positive();
    else if (a === '--jobs') o.jobs = positive();
    else if (a === '--out') o.out = argv[++i] ?? null;
    else if (!extra(a, value, o)) throw new Error(usage);
  }
  return o;
}

/** A comma-separated list of allowed names (unknown names dropped). */
export function nameList<N extends string>(text: string, allowed: readonly N[]): N[] {
  return text.split(',').filter((x): x is N => (allowed as readonly string[]).includes(x));
}
