// `mamori audit verify`: checks a trail with no secrets (the hash chain) and, for signatures, only the public key.
// Reports the FIRST problem precisely (file:line, instance, seq) and what kind it is: a modified, deleted,
// inserted or reordered record, a missing rotated file, a truncated tail (stale head), a rollback to an older
// copy (the checkpoint sink knows a later head), a bad signature.
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { verifyCheckpointSignature } from './checkpoint.js';
import {
  findSeries,
  listSeriesFiles,
  readLines,
  readJsonFile,
  readManifest,
  readRegistry,
  seriesPaths,
  type Manifest,
  type ManifestEntry,
} from './files.js';
import { ZERO_HASH, parseRecord, recordHash, serializeRecord, type AuditRecord, type ChainHead } from './record.js';

export type AuditProblemKind =
  | 'malformed'
  | 'truncated'
  | 'modified'
  | 'deleted'
  | 'inserted'
  | 'reordered'
  | 'missing_file'
  | 'missing_side_file'
  | 'stale_head'
  | 'rollback'
  | 'bad_signature';

export interface AuditProblem {
  kind: AuditProblemKind;
  message: string;
  file?: string;
  line?: number;
  instance?: string;
  seq?: number;
}

export interface VerifyReport {
  ok: boolean;
  problem: AuditProblem | null;
  records: number;
  files: string[];
  instances: string[];
  checkpoints: { total: number; signed: number; verified: number; sink: number };
  head: ChainHead | null;
  warnings: string[];
}

export interface VerifyOptions {
  /** Ed25519 public key (KeyObject or PEM) to check checkpoint signatures; without it they are not checked. */
  publicKey?: KeyObject | string;
  /** Check rotated files against the series manifest (default true when verifying a series), or against the
   * manifest at this path (e.g. an archived copy). */
  manifest?: boolean | string;
  /** Check the registry file's heads against the trail (default true when verifying a series). */
  registry?: boolean;
  /** A head known from elsewhere (e.g. a monitoring system): the trail must reach it. */
  expectedHead?: ChainHead;
  /** The checkpoint sink file(s): every checkpoint there must be in the trail. */
  checkpointSink?: string | string[];
}

interface Entry {
  file: string;
  line: number;
  record: AuditRecord;
}

class Found extends Error {
  constructor(readonly problem: AuditProblem) {
    super(problem.message);
  }
}

const at = (e: Entry): Pick<AuditProblem, 'file' | 'line' | 'instance' | 'seq'> => ({
  file: e.file,
  line: e.line,
  instance: e.record.instance,
  seq: e.record.seq,
});

const where = (e: Entry): string => `${e.file}:${e.line} (instance ${e.record.instance} seq ${e.record.seq})`;

/**
 * Verifies a trail: a directory (every series in it), the active file of a series (its rotated files, manifest
 * and registry are found next to it), or an explicit list of files in write order.
 */
export async function verifyAuditTrail(target: string | string[], opts: VerifyOptions = {}): Promise<VerifyReport> {
  const publicKey = typeof opts.publicKey === 'string' ? createPublicKey(opts.publicKey) : opts.publicKey;
  if (Array.isArray(target)) return verifyFiles(target, null, { ...opts, publicKey });
  const st = await stat(target).catch(() => null);
  if (st?.isDirectory()) {
    const series = await findSeries(target);
    const reports: VerifyReport[] = [];
    for (const active of series) {
      const r = await verifySeries(active, { ...opts, publicKey });
      if (!r.ok) return r;
      reports.push(r);
    }
    return mergeReports(reports);
  }
  return verifySeries(target, { ...opts, publicKey });
}

type ResolvedOptions = Omit<VerifyOptions, 'publicKey'> & { publicKey?: KeyObject };

async function verifySeries(active: string, opts: ResolvedOptions): Promise<VerifyReport> {
  const files = await listSeriesFiles(active);
  return verifyFiles(
    files.map((f) => f.path),
    active,
    opts,
  );
}

function mergeReports(reports: VerifyReport[]): VerifyReport {
  const base: VerifyReport = {
    ok: true,
    problem: null,
    records: 0,
    files: [],
    instances: [],
    checkpoints: { total: 0, signed: 0, verified: 0, sink: 0 },
    head: null,
    warnings: [],
  };
  for (const r of reports) {
    base.records += r.records;
    base.files.push(...r.files);
    base.instances.push(...r.instances);
    base.checkpoints.total += r.checkpoints.total;
    base.checkpoints.signed += r.checkpoints.signed;
    base.checkpoints.verified += r.checkpoints.verified;
    base.checkpoints.sink = Math.max(base.checkpoints.sink, r.checkpoints.sink);
    base.warnings.push(...r.warnings);
    base.head = r.head;
  }
  if (reports.length === 0) base.warnings.push('no audit files found');
  return base;
}

async function verifyFiles(files: string[], active: string | null, opts: ResolvedOptions): Promise<VerifyReport> {
  const report: VerifyReport = {
    ok: false,
    problem: null,
    records: 0,
    files,
    instances: [],
    checkpoints: { total: 0, signed: 0, verified: 0, sink: 0 },
    head: null,
    warnings: [],
  };
  try {
    const paths = active ? seriesPaths(active) : null;
    const manifest =
      typeof opts.manifest === 'string'
        ? await readJsonFile<Manifest>(opts.manifest)
        : paths && opts.manifest !== false
          ? await readManifest(paths)
          : null;
    const manifestDir = paths?.dir ?? (files[0] ? dirname(files[0]) : '.');
    if (manifest) checkManifestPresence(manifest.files, files, manifestDir, report);
    const { entries, lastByFile } = await loadEntries(files);
    report.records = entries.length;
    walkChain(entries, opts, report);
    if (manifest) checkManifestHeads(manifest.files, lastByFile, manifestDir);
    if (paths) await checkSideFiles(entries, paths.subjects);
    const heads = headsByInstance(entries);
    report.instances = [...heads.keys()];
    const last = entries.at(-1);
    report.head = last ? { instance: last.record.instance, seq: last.record.seq, hash: last.record.hash } : null;
    if (paths && opts.registry !== false) await checkRegistry(paths, entries, heads);
    if (opts.expectedHead) checkExpectedHead(opts.expectedHead, entries, heads);
    if (opts.checkpointSink) await checkCheckpointSink(opts.checkpointSink, paths?.stem ?? null, entries, heads, opts.publicKey, report);
    if (!opts.publicKey && report.checkpoints.signed > 0) report.warnings.push('checkpoint signatures not checked: no public key given');
    report.ok = true;
  } catch (e) {
    if (!(e instanceof Found)) throw e;
    report.problem = e.problem;
  }
  return report;
}

function checkManifestPresence(entries: ManifestEntry[], files: string[], dir: string, report: VerifyReport): void {
  const present = new Set(files.map((f) => basename(f)));
  for (const m of entries) {
    if (!present.has(m.name))
      throw new Found({
        kind: 'missing_file',
        file: join(dir, m.name),
        message: `rotated file ${m.name} (records ${m.firstSeq ?? '?'}..${m.lastSeq ?? '?'} of instance ${m.lastInstance ?? '?'}) is listed in the manifest but missing`,
        ...(m.lastInstance ? { instance: m.lastInstance } : {}),
        ...(m.firstSeq !== null ? { seq: m.firstSeq } : {}),
      });
  }
  const listed = new Set(entries.map((m) => m.name));
  for (const f of files.slice(0, -1)) if (!listed.has(basename(f))) report.warnings.push(`${basename(f)} is not in the manifest`);
}

function checkManifestHeads(entries: ManifestEntry[], lastByFile: Map<string, Entry | null>, dir: string): void {
  for (const m of entries) {
    const last = lastByFile.get(join(dir, m.name));
    if (last === undefined) continue;
    if ((last?.record.hash ?? null) !== m.lastHash) {
      const problem: AuditProblem = {
        kind: 'stale_head',
        file: join(dir, m.name),
        message: `rotated file ${m.name} does not end where the manifest says (seq ${m.lastSeq}): records were cut from its end`,
      };
      if (last) Object.assign(problem, { line: last.line, instance: last.record.instance, seq: last.record.seq });
      throw new Found(problem);
    }
  }
}

async function loadEntries(files: string[]): Promise<{ entries: Entry[]; lastByFile: Map<string, Entry | null> }> {
  const entries: Entry[] = [];
  const lastByFile = new Map<string, Entry | null>();
  for (const file of files) {
    let last: Entry | null = null;
    for await (const l of readLines(file)) {
      const loc = { file: l.file, line: l.line };
      if (!l.terminated)
        throw new Found({ kind: 'truncated', ...loc, message: `${l.file}:${l.line}: final record is cut short (a torn or truncated write)` });
      let record: AuditRecord;
      try {
        record = parseRecord(l.text);
      } catch (e) {
        throw new Found({ kind: 'modified', ...loc, message: `${l.file}:${l.line}: not a valid audit record (${(e as Error).message})` });
      }
      const entry = { ...loc, record };
      if (recordHash(record) !== record.hash)
        throw new Found({ kind: 'modified', ...at(entry), message: `${where(entry)}: content does not match its hash: the record was modified` });
      if (serializeRecord(record) !== l.text)
        throw new Found({ kind: 'modified', ...at(entry), message: `${where(entry)}: record is not in canonical form: the line was edited` });
      entries.push(entry);
      last = entry;
    }
    lastByFile.set(file, last);
  }
  return { entries, lastByFile };
}

function walkChain(entries: Entry[], opts: ResolvedOptions, report: VerifyReport): void {
  const byHash = new Map<string, number>();
  entries.forEach((e, i) => {
    if (!byHash.has(e.record.hash)) byHash.set(e.record.hash, i);
  });
  const seenInstances = new Set<string>();
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const r = e.record;
    const before = i > 0 ? entries[i - 1]! : null;
    const expectedPrev = before?.record.hash ?? ZERO_HASH;
    if (r.prev !== expectedPrev) classifyBreak(entries, i, byHash);
    // seq and instance continuity
    if (r.kind === 'genesis') {
      if (r.seq !== 1 || seenInstances.has(r.instance))
        throw new Found({ kind: 'inserted', ...at(e), message: `${where(e)}: a second genesis for an instance already seen` });
      const named = r.previous;
      const actual = before ? { instance: before.record.instance, seq: before.record.seq, hash: before.record.hash } : null;
      if ((named?.hash ?? null) !== (actual?.hash ?? null) || (named?.seq ?? null) !== (actual?.seq ?? null))
        throw new Found({ kind: 'modified', ...at(e), message: `${where(e)}: genesis names a previous head that is not the record before it` });
      seenInstances.add(r.instance);
    } else {
      if (!before) throw new Found({ kind: 'deleted', ...at(e), message: `${where(e)}: the trail does not start with a genesis record: earlier records are missing` });
      if (before.record.instance !== r.instance)
        throw new Found({ kind: 'inserted', ...at(e), message: `${where(e)}: a record of instance ${r.instance} without its genesis (follows instance ${before.record.instance})` });
      if (r.seq !== before.record.seq + 1)
        throw new Found({ kind: 'modified', ...at(e), message: `${where(e)}: seq does not follow ${before.record.seq} although the chain links: the record was rewritten` });
    }
    if (r.kind === 'checkpoint') {
      report.checkpoints.total++;
      const cp = r.checkpoint;
      if (cp.instance !== r.instance || cp.seq !== r.seq - 1 || cp.head !== r.prev)
        throw new Found({ kind: 'modified', ...at(e), message: `${where(e)}: checkpoint does not describe the record before it` });
      if (r.sig) {
        report.checkpoints.signed++;
        if (opts.publicKey) {
          if (!verifyCheckpointSignature(cp, r.sig, opts.publicKey))
            throw new Found({ kind: 'bad_signature', ...at(e), message: `${where(e)}: checkpoint signature does not verify with the given public key` });
          report.checkpoints.verified++;
        }
      } else if (opts.publicKey) report.warnings.push(`${where(e)}: unsigned checkpoint`);
    }
  }
}

/** Record i does not link to record i-1: work out what happened there. */
function classifyBreak(entries: Entry[], i: number, byHash: Map<string, number>): never {
  const e = entries[i]!;
  const r = e.record;
  const k = byHash.get(r.prev);
  if (i === 0) {
    throw new Found({ kind: 'deleted', ...at(e), message: `${where(e)}: the trail starts in the middle of a chain: earlier records (or files) are missing` });
  }
  const before = entries[i - 1]!;
  if (k !== undefined && k > i)
    throw new Found({ kind: 'reordered', ...at(e), message: `${where(e)}: appears before ${where(entries[k]!)}, which it follows in the chain: records were reordered` });
  const next = entries[i + 1];
  if ((next && next.record.prev === before.record.hash) || byHash.get(r.hash) !== i)
    throw new Found({ kind: 'inserted', ...at(e), message: `${where(e)}: not part of the chain (the next record links past it): inserted` });
  if (k !== undefined && k < i - 1) {
    const first = entries[k + 1]!;
    throw new Found({ kind: 'inserted', ...at(first), message: `${where(first)}: not part of the chain (${where(e)} links to the record before it): inserted` });
  }
  if (r.instance === before.record.instance && r.seq > before.record.seq + 1) {
    const missing = r.seq - before.record.seq - 1;
    throw new Found({
      kind: 'deleted',
      ...at(e),
      message: `${where(e)}: ${missing} record(s) missing before it (seq ${before.record.seq + 1}..${r.seq - 1}): deleted`,
    });
  }
  if (r.kind === 'genesis' && r.previous && r.previous.hash !== before.record.hash)
    throw new Found({
      kind: 'deleted',
      ...at(e),
      message: `${where(e)}: names previous head seq ${r.previous.seq} of instance ${r.previous.instance}, but the record before it is different: records were deleted`,
    });
  throw new Found({ kind: 'modified', ...at(before), message: `${where(before)}: its hash is not what the next record links to: the record was rewritten` });
}

async function checkSideFiles(entries: Entry[], dir: string): Promise<void> {
  for (const e of entries) {
    const ref = e.record.subjectsRef;
    if (!ref) continue;
    let content: Buffer;
    try {
      content = await readFile(join(dir, `${ref}.json`));
    } catch {
      throw new Found({ kind: 'missing_side_file', ...at(e), message: `${where(e)}: its subject side file ${ref}.json is missing` });
    }
    if (createHash('sha256').update(content).digest('hex') !== ref)
      throw new Found({ kind: 'modified', ...at(e), message: `${where(e)}: its subject side file ${ref}.json was modified` });
  }
}

function headsByInstance(entries: Entry[]): Map<string, Entry> {
  const heads = new Map<string, Entry>();
  for (const e of entries) heads.set(e.record.instance, e);
  return heads;
}

function findRecord(entries: Entry[], instance: string, seq: number): Entry | undefined {
  // records of one instance are contiguous and numbered from 1: locate the run, then index into it
  const first = entries.findIndex((e) => e.record.instance === instance);
  if (first < 0) return undefined;
  const e = entries[first + seq - entries[first]!.record.seq];
  return e && e.record.instance === instance && e.record.seq === seq ? e : undefined;
}

/** A head known from outside must be in the trail, with the same hash. `kind` says what a miss means. */
function requireHead(
  head: ChainHead,
  entries: Entry[],
  heads: Map<string, Entry>,
  kind: 'stale_head' | 'rollback',
  source: string,
  loc: { file?: string; line?: number } = {},
): void {
  const found = findRecord(entries, head.instance, head.seq);
  if (found && found.record.hash === head.hash) return;
  const last = heads.get(head.instance);
  const ends = last ? `the trail ends at seq ${last.record.seq}` : 'the trail has no records of that instance';
  const what =
    kind === 'stale_head'
      ? 'records were cut from the end (truncated)'
      : 'the trail was truncated or replaced by an older copy (rollback)';
  throw new Found({
    kind: found ? (kind === 'rollback' ? 'rollback' : 'modified') : kind,
    ...loc,
    instance: head.instance,
    seq: head.seq,
    message: found
      ? `${source} has seq ${head.seq} of instance ${head.instance} with a different hash: the trail's history was rewritten`
      : `${source} has seq ${head.seq} of instance ${head.instance} but ${ends}: ${what}`,
  });
}

async function checkRegistry(paths: ReturnType<typeof seriesPaths>, entries: Entry[], heads: Map<string, Entry>): Promise<void> {
  const registry = await readRegistry(paths);
  if (!registry) return;
  for (const [instance, reg] of Object.entries(registry.instances)) {
    if (reg.lastSeq < 1) continue;
    requireHead({ instance, seq: reg.lastSeq, hash: reg.head }, entries, heads, 'stale_head', `the registry ${basename(paths.registry)}`);
  }
}

function checkExpectedHead(head: ChainHead, entries: Entry[], heads: Map<string, Entry>): void {
  requireHead(head, entries, heads, 'stale_head', 'the expected head');
}

async function checkCheckpointSink(
  sink: string | string[],
  series: string | null,
  entries: Entry[],
  heads: Map<string, Entry>,
  publicKey: KeyObject | undefined,
  report: VerifyReport,
): Promise<void> {
  for (const file of Array.isArray(sink) ? sink : [sink]) {
    for await (const l of readLines(file)) {
      const loc = { file: l.file, line: l.line };
      let r: AuditRecord;
      try {
        r = parseRecord(l.text);
      } catch (e) {
        if (!l.terminated) continue; // a torn last write in the sink proves nothing either way
        throw new Found({ kind: 'modified', ...loc, message: `${l.file}:${l.line}: not a valid checkpoint record (${(e as Error).message})` });
      }
      if (r.kind !== 'checkpoint' || recordHash(r) !== r.hash)
        throw new Found({ kind: 'modified', ...loc, message: `${l.file}:${l.line}: checkpoint sink record was modified` });
      if (series !== null && r.series !== undefined && r.series !== series) continue; // another series' checkpoint
      report.checkpoints.sink++;
      if (publicKey && r.sig && !verifyCheckpointSignature(r.checkpoint, r.sig, publicKey))
        throw new Found({ kind: 'bad_signature', ...loc, message: `${l.file}:${l.line}: checkpoint signature does not verify with the given public key` });
      if (publicKey && !r.sig) report.warnings.push(`${l.file}:${l.line}: unsigned checkpoint in the checkpoint sink`);
      requireHead({ instance: r.instance, seq: r.seq, hash: r.hash }, entries, heads, 'rollback', `the checkpoint sink (${l.file}:${l.line})`, loc);
    }
  }
}
