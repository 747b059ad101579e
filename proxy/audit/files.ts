// The on-disk layout of one audit file series, shared by the writer (sinks/file.ts), the postgres feeder, verify
// and search. For `dir/mamori.jsonl`:
//   dir/mamori.jsonl                              the active file (JSON Lines, one record per line)
//   dir/mamori.00000001.20261127T043212Z.jsonl    rotated files: index first, so names sort in write order
//   dir/mamori.manifest.json                      every rotated file ever closed (a deleted one is detected)
//   dir/mamori.registry.json                      the instance registry (last seq and head per instance)
//   dir/mamori.subjects/<sha256>.json             subject lists too large to inline (see subject side files)
//   dir/mamori.lock                               one writer per series
import { readFile, readdir, rename, writeFile, open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { InstanceRegistry } from './record.js';

export interface SeriesPaths {
  dir: string;
  stem: string;
  active: string;
  manifest: string;
  registry: string;
  subjects: string;
  lock: string;
  pgCursor: string;
}

export function seriesPaths(activePath: string): SeriesPaths {
  const dir = dirname(activePath);
  const name = basename(activePath);
  const stem = name.endsWith('.jsonl') ? name.slice(0, -'.jsonl'.length) : name;
  const p = (suffix: string): string => join(dir, `${stem}${suffix}`);
  return {
    dir,
    stem,
    active: activePath,
    manifest: p('.manifest.json'),
    registry: p('.registry.json'),
    subjects: p('.subjects'),
    lock: p('.lock'),
    pgCursor: p('.pg-cursor.json'),
  };
}

const INDEX_DIGITS = 8;

/** `20261127T043212Z` — sortable, no characters awkward in file names. */
export function compactTime(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
}

export function rotatedName(stem: string, index: number, closedAt: Date): string {
  return `${stem}.${String(index).padStart(INDEX_DIGITS, '0')}.${compactTime(closedAt)}.jsonl`;
}

/** The rotation index of a rotated file of this series, or null if the name is not one. */
export function rotatedIndex(stem: string, name: string): number | null {
  if (!name.startsWith(`${stem}.`) || !name.endsWith('.jsonl')) return null;
  const m = /^(\d{8,})\.\d{8}T\d{6}Z$/.exec(name.slice(stem.length + 1, -'.jsonl'.length));
  return m ? Number(m[1]) : null;
}

export interface ManifestEntry {
  index: number;
  name: string;
  records: number;
  bytes: number;
  firstSeq: number | null;
  firstInstance: string | null;
  lastSeq: number | null;
  lastInstance: string | null;
  lastHash: string | null;
  closed: string;
}

export interface Manifest {
  version: 1;
  series: string;
  /** The index the active file will get when it is rotated. */
  next: number;
  /** When the active file was started (for time-based rotation). */
  activeSince: string;
  files: ManifestEntry[];
}

export async function readJsonFile<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** Write-then-rename so a crash never leaves half a manifest or registry. */
export async function writeJsonAtomic(path: string, value: unknown, sync: boolean): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, JSON.stringify(value, null, 1) + '\n', { mode: 0o640 });
  if (sync) {
    const fh = await open(tmp, 'r+');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }
  await rename(tmp, path);
}

export async function readManifest(paths: SeriesPaths): Promise<Manifest | null> {
  return readJsonFile<Manifest>(paths.manifest);
}

export interface RegistryFile {
  version: 1;
  series: string;
  updated: string;
  instances: InstanceRegistry;
}

export async function readRegistry(paths: SeriesPaths): Promise<RegistryFile | null> {
  return readJsonFile<RegistryFile>(paths.registry);
}

export interface SeriesFile {
  path: string;
  name: string;
  /** Rotation index, or null for the active file. */
  index: number | null;
}

/** The series' files in write order: rotated files by index, then the active file (if present). */
export async function listSeriesFiles(activePath: string): Promise<SeriesFile[]> {
  const paths = seriesPaths(activePath);
  let names: string[];
  try {
    names = await readdir(paths.dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const rotated: SeriesFile[] = [];
  for (const name of names) {
    const index = rotatedIndex(paths.stem, name);
    if (index !== null) rotated.push({ path: join(paths.dir, name), name, index });
  }
  rotated.sort((a, b) => a.index! - b.index! || (a.name < b.name ? -1 : 1));
  const activeName = basename(activePath);
  if (names.includes(activeName)) rotated.push({ path: activePath, name: activeName, index: null });
  return rotated;
}

/** Active files of every series in a directory (a name ending .jsonl that is not a rotated file of another). */
export async function findSeries(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  const jsonl = names.filter((n) => n.endsWith('.jsonl'));
  const stems = new Set<string>();
  for (const n of names) if (n.endsWith('.manifest.json')) stems.add(n.slice(0, -'.manifest.json'.length));
  for (const n of jsonl) {
    const stem = n.slice(0, -'.jsonl'.length);
    const isRotated = [...stems, ...jsonl.map((j) => j.slice(0, -'.jsonl'.length))].some(
      (s) => s !== stem && rotatedIndex(s, n) !== null,
    );
    if (!isRotated && !/\.\d{8,}\.\d{8}T\d{6}Z$/.test(stem)) stems.add(stem);
  }
  return [...stems].sort().map((s) => join(dir, `${s}.jsonl`));
}

/** One line of a JSON Lines file with its location (1-based line number). */
export interface LocatedLine {
  file: string;
  line: number;
  text: string;
  /** False for a final line without a newline: a torn or truncated write. */
  terminated: boolean;
}

/** Reads a file's lines without loading it whole (records are small; files are bounded by rotation). */
export async function* readLines(path: string): AsyncGenerator<LocatedLine> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let carry = Buffer.alloc(0);
    let line = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      let chunk = carry.length ? Buffer.concat([carry, buf.subarray(0, bytesRead)]) : Buffer.from(buf.subarray(0, bytesRead));
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(10, start);
        if (nl < 0) break;
        line++;
        yield { file: path, line, text: chunk.toString('utf8', start, nl), terminated: true };
        start = nl + 1;
      }
      chunk = chunk.subarray(start);
      carry = chunk;
    }
    if (carry.length > 0) yield { file: path, line: line + 1, text: carry.toString('utf8'), terminated: false };
  } finally {
    await fh.close();
  }
}
