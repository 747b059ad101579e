// `mamori audit search` and `tail`: stream records from a trail and keep those matching every given filter.
// Subjects are matched by keyed hash only: the caller hashes the searched value under each retention period's
// subject key (`hashSubject`), so this module never sees a key and the trail never sees a value.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { findSeries, listSeriesFiles, readLines, seriesPaths } from './files.js';
import { parseRecord, type AuditKind, type AuditRecord } from './record.js';

export interface AuditSearchFilter {
  user?: string;
  /** `schema.table.column`, or a dotted suffix of it (`people.my_number`, `my_number`). */
  column?: string;
  session?: string;
  /** Inclusive lower and exclusive upper bound on the record time. */
  from?: Date;
  to?: Date;
  decision?: string;
  kinds?: AuditKind[];
  /** Subject hashes to look for (already computed). */
  subjectHashes?: string[];
  /** A value to look for, hashed by `hashSubject` (one hash per subject key / retention period). */
  subject?: string;
  hashSubject?: (value: string) => string[];
  limit?: number;
}

export interface SearchHit {
  file: string;
  line: number;
  record: AuditRecord;
}

async function* seriesFilesOf(target: string | string[]): AsyncGenerator<{ file: string; subjectsDir: string | null }> {
  if (Array.isArray(target)) {
    for (const file of target) yield { file, subjectsDir: null };
    return;
  }
  const st = await stat(target).catch(() => null);
  const actives = st?.isDirectory() ? await findSeries(target) : [target];
  for (const active of actives) {
    const subjectsDir = seriesPaths(active).subjects;
    for (const f of await listSeriesFiles(active)) yield { file: f.path, subjectsDir };
  }
}

/** Every record of a trail in write order (a torn final line is skipped; `verify` reports it). */
export async function* readTrail(target: string | string[]): AsyncGenerator<SearchHit & { subjectsDir: string | null }> {
  for await (const { file, subjectsDir } of seriesFilesOf(target)) {
    for await (const l of readLines(file)) {
      if (!l.terminated) continue;
      let record: AuditRecord;
      try {
        record = parseRecord(l.text);
      } catch {
        continue;
      }
      yield { file, line: l.line, record, subjectsDir };
    }
  }
}

function columnMatches(column: string, wanted: string): boolean {
  return column === wanted || column.endsWith(`.${wanted}`);
}

async function subjectsOf(record: AuditRecord, subjectsDir: string | null): Promise<string[]> {
  if (record.subjects) return record.subjects;
  if (record.subjectsRef && subjectsDir) {
    try {
      const side = JSON.parse(await readFile(join(subjectsDir, `${record.subjectsRef}.json`), 'utf8')) as { subjects?: string[] };
      return side.subjects ?? [];
    } catch {
      return [];
    }
  }
  return [];
}

/** Matching records in trail order. */
export async function* searchAudit(target: string | string[], filter: AuditSearchFilter): AsyncGenerator<SearchHit> {
  const hashes = new Set(filter.subjectHashes ?? []);
  if (filter.subject !== undefined) {
    if (!filter.hashSubject) throw new Error('searching by subject value needs a hashSubject function (the subject keys)');
    for (const h of filter.hashSubject(filter.subject)) hashes.add(h);
  }
  const bySubject = filter.subject !== undefined || filter.subjectHashes !== undefined;
  const from = filter.from?.getTime();
  const to = filter.to?.getTime();
  let found = 0;
  for await (const hit of readTrail(target)) {
    const r = hit.record;
    if (filter.user !== undefined && r.user !== filter.user) continue;
    if (filter.session !== undefined && r.session !== filter.session) continue;
    if (filter.kinds && !filter.kinds.includes(r.kind)) continue;
    if (filter.column !== undefined && !r.columns.some((c) => columnMatches(c.column, filter.column!))) continue;
    if (filter.decision !== undefined && !r.columns.some((c) => c.decision === filter.decision && (filter.column === undefined || columnMatches(c.column, filter.column))))
      continue;
    if (from !== undefined || to !== undefined) {
      const t = Date.parse(r.time);
      if (from !== undefined && t < from) continue;
      if (to !== undefined && t >= to) continue;
    }
    if (bySubject) {
      const subjects = await subjectsOf(r, hit.subjectsDir);
      if (!subjects.some((s) => hashes.has(s))) continue;
    }
    yield { file: hit.file, line: hit.line, record: r };
    if (filter.limit !== undefined && ++found >= filter.limit) return;
  }
}

/** The last `n` records of a trail. */
export async function tailAudit(target: string | string[], n: number): Promise<SearchHit[]> {
  const ring: SearchHit[] = [];
  for await (const hit of readTrail(target)) {
    ring.push({ file: hit.file, line: hit.line, record: hit.record });
    if (ring.length > n) ring.shift();
  }
  return ring;
}

function field(name: string, value: unknown): string {
  if (value === null || value === undefined) return '';
  const s = String(value);
  return ` ${name}=${/[\s"]/.test(s) ? JSON.stringify(s) : s}`;
}

/** One readable line per record (for terminals; use --json for tools). */
export function formatRecord(r: AuditRecord): string {
  const cols = r.columns.map((c) => `${c.column}:${c.decision}`).join(',');
  let detail = '';
  switch (r.kind) {
    case 'auth_failure':
    case 'refusal':
      detail = field('reason', r.reason);
      break;
    case 'deletion':
      detail = field('table', r.table) + field('how', r.how);
      break;
    case 'key_event':
      detail = field('event', r.event) + field('key', r.keyId);
      break;
    case 'membership_change':
      detail = field('role', r.role) + field('member', r.member) + field('action', r.action);
      break;
    case 'password_change':
      detail = field('role', r.role) + field('action', r.action);
      break;
    case 'policy_reload':
      detail = field('ok', r.ok) + field('digest', r.digest);
      break;
    case 'checkpoint':
      detail = field('head', `${r.checkpoint.seq}:${r.checkpoint.head.slice(0, 12)}`) + field('signed', r.sig !== null);
      break;
    case 'genesis':
      detail = field('previous', r.previous ? `${r.previous.instance}#${r.previous.seq}` : 'none');
      break;
    case 'audit_query':
      detail = field('query', JSON.stringify(r.query)) + field('results', r.results);
      break;
    case 'shadow_decision':
      detail = field('shadow', r.outcome) + field('reason', r.reason);
      break;
    default:
      break;
  }
  const subjects = r.subjects?.length ?? r.subjectCount;
  return (
    `${r.time} ${r.instance}#${r.seq} ${r.kind}` +
    field('user', r.user) +
    field('session', r.session) +
    field('client', r.client) +
    field('db', r.database) +
    field('app', r.applicationName) +
    field('cmd', r.command) +
    (cols ? ` cols=${cols}` : '') +
    field('rows', r.rows) +
    field('ms', r.durationMs) +
    field('sqlstate', r.sqlstate) +
    field('subjects', subjects) +
    detail +
    field('fp', r.fingerprint)
  );
}
