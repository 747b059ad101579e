// `mamori audit verify | search | tail | keygen`. Exit codes: 0 ok, 1 a problem found (or an error), 2 usage.
// A search is itself recorded (an `audit_query` record, subjects as hashes only) before any result is printed,
// in a series of its own next to the proxy's (`<stem>-cli.jsonl`: the proxy holds its own series' lock).
import { parseArgs } from 'node:util';
import { createPublicKey, createSecretKey, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { formatConfigIssues, loadConfig } from '../../config/load.js';
import { auditConfigSchema, type AuditConfig } from './config.js';
import { AuditTrail } from './trail.js';
import { generateSigningKey, loadPrivateKey } from './checkpoint.js';
import { verifyAuditTrail, type VerifyOptions } from './verify.js';
import { formatRecord, searchAudit, tailAudit, type AuditSearchFilter } from './search.js';
import { AUDIT_KINDS, type AuditKind, type AuditQueryDescription } from './record.js';
import { normalizeSubject, subjectHash } from './subject.js';

export interface AuditCliIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  /**
   * Hashes a searched value under every subject key (one per retention period), normalizing it first. The
   * proxy's CLI supplies one backed by the keyring; without it `--subject-key FILE` must be given.
   */
  hashSubject?: (value: string) => string[] | Promise<string[]>;
  /** Reads standard input (for `--subject -`, which keeps the number out of `ps` and shell history). */
  stdin?: () => Promise<string>;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

const defaultIO: AuditCliIO = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  stdin: readStdin,
};

class UsageError extends Error {}

const USAGE = `usage:
  mamori audit verify [PATH] [--config FILE] [--public-key PEM] [--checkpoints FILE] [--expected-head INSTANCE:SEQ:HASH] [--no-manifest] [--no-registry] [--json]
  mamori audit search [PATH] [--config FILE] [--user U] [--column C] [--session S] [--since TIME] [--until TIME]
                      [--decision D] [--kind K] [--subject VALUE|-] [--subject-hash H] [--subject-key FILE] [--limit N] [--json]
  mamori audit tail   [PATH] [--config FILE] [-n N] [--json]
  mamori audit keygen --out PRIVATE_PEM [--public-out PUBLIC_PEM (default PRIVATE_PEM.pub)]
PATH is a trail directory, a series' active file, or defaults to the directory of the configured file sink.
`;

/** The `audit:` section of mamori.yaml, through the project's config loader (secrets are not needed here). */
async function loadAuditConfig(path: string): Promise<AuditConfig> {
  const loaded = await loadConfig(path, process.env, { requireSecrets: false });
  if (!loaded.ok) throw new UsageError(`invalid configuration:\n${formatConfigIssues(loaded.errors)}`);
  return auditConfigSchema.parse(loaded.config.audit);
}

/** `--public-key`, else `<signingKeyFile>.pub` (keygen's default), else derived from the private key if readable. */
async function publicKeyFor(flag: string | undefined, cfg: AuditConfig | null): Promise<string | KeyObject | undefined> {
  if (flag) return readFile(flag, 'utf8');
  if (!cfg?.signingKeyFile) return undefined;
  const pub = await readFile(`${cfg.signingKeyFile}.pub`, 'utf8').catch(() => null);
  if (pub) return pub;
  return loadPrivateKey(cfg.signingKeyFile)
    .then((k) => createPublicKey(k))
    .catch(() => undefined);
}

function fileSinkPath(cfg: AuditConfig | null): string | null {
  const s = cfg?.sinks.find((x) => x.type === 'file');
  return s && s.type === 'file' ? s.path : null;
}

function trailTarget(positional: string[], cfg: AuditConfig | null): string {
  if (positional[0]) return positional[0];
  const p = fileSinkPath(cfg);
  if (!p) throw new UsageError('no trail given: pass PATH or --config with a file sink');
  return dirname(p);
}

function parseTime(s: string | undefined, name: string): Date | undefined {
  if (s === undefined) return undefined;
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) throw new UsageError(`${name}: not a date/time: ${s}`);
  return d;
}

export async function runAuditCommand(args: string[], io: AuditCliIO = defaultIO): Promise<number> {
  const [sub, ...rest] = args;
  try {
    switch (sub) {
      case 'verify':
        return await verifyCommand(rest, io);
      case 'search':
        return await searchCommand(rest, io);
      case 'tail':
        return await tailCommand(rest, io);
      case 'keygen':
        return await keygenCommand(rest, io);
      default:
        throw new UsageError(sub ? `unknown audit command: ${sub}` : 'missing audit command');
    }
  } catch (e) {
    if (e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr(`mamori audit: ${(e as Error).message}\n${USAGE}`);
      return 2;
    }
    io.stderr(`mamori audit: ${(e as Error).message}\n`);
    return 1;
  }
}

async function verifyCommand(args: string[], io: AuditCliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      'public-key': { type: 'string' },
      checkpoints: { type: 'string', multiple: true },
      'expected-head': { type: 'string' },
      'no-manifest': { type: 'boolean' },
      'no-registry': { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
  const cfg = values.config ? await loadAuditConfig(values.config) : null;
  const target = trailTarget(positionals, cfg);
  const opts: VerifyOptions = {};
  const pub = await publicKeyFor(values['public-key'], cfg);
  if (pub) opts.publicKey = pub;
  const cp = cfg?.checkpointSink;
  const sinks = values.checkpoints ?? (cp?.type === 'file' ? [cp.path] : []);
  if (!values.checkpoints && cp && cp.type !== 'file')
    io.stderr(`note: the ${cp.type} checkpoint sink is not read by verify; export it to a file and pass --checkpoints\n`);
  if (sinks.length) opts.checkpointSink = sinks;
  if (values['no-manifest']) opts.manifest = false;
  if (values['no-registry']) opts.registry = false;
  if (values['expected-head']) {
    const m = /^(.+):(\d+):([0-9a-f]{64})$/.exec(values['expected-head']);
    if (!m) throw new UsageError('--expected-head must be INSTANCE:SEQ:HASH');
    opts.expectedHead = { instance: m[1]!, seq: Number(m[2]), hash: m[3]! };
  }
  const report = await verifyAuditTrail(target, opts);
  if (values.json) io.stdout(JSON.stringify(report) + '\n');
  else if (report.ok) {
    io.stdout(
      `ok: ${report.records} records in ${report.files.length} file(s), ${report.instances.length} instance(s), ` +
        `${report.checkpoints.total} checkpoints (${report.checkpoints.verified} signatures verified, ${report.checkpoints.sink} in the checkpoint sink)` +
        (report.head ? `, head ${report.head.instance}#${report.head.seq} ${report.head.hash}` : '') +
        '\n',
    );
    for (const w of report.warnings) io.stdout(`warning: ${w}\n`);
  } else io.stdout(`FAILED (${report.problem!.kind}): ${report.problem!.message}\n`);
  return report.ok ? 0 : 1;
}

/** Hashes from `--subject-key FILE` (raw key, hex or base64, one file per retention period). */
async function keyFileHasher(paths: string[]): Promise<(value: string) => string[]> {
  const keys: KeyObject[] = [];
  for (const p of paths) {
    const text = (await readFile(p, 'utf8')).trim();
    const raw = /^[0-9a-f]+$/i.test(text) ? Buffer.from(text, 'hex') : Buffer.from(text, 'base64');
    if (raw.length < 32) throw new Error(`${p}: a subject key must be at least 32 bytes`);
    keys.push(createSecretKey(raw));
  }
  return (value) => {
    const n = normalizeSubject(value);
    return keys.map((k) => subjectHash(k, n.logicalType, n.canonical));
  };
}

async function searchCommand(args: string[], io: AuditCliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      user: { type: 'string' },
      column: { type: 'string' },
      session: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      decision: { type: 'string' },
      kind: { type: 'string', multiple: true },
      subject: { type: 'string' },
      'subject-hash': { type: 'string', multiple: true },
      'subject-key': { type: 'string', multiple: true },
      limit: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const cfg = values.config ? await loadAuditConfig(values.config) : null;
  const target = trailTarget(positionals, cfg);
  const filter: AuditSearchFilter = {};
  if (values.user !== undefined) filter.user = values.user;
  if (values.column !== undefined) filter.column = values.column;
  if (values.session !== undefined) filter.session = values.session;
  if (values.decision !== undefined) filter.decision = values.decision;
  const from = parseTime(values.since, '--since');
  const to = parseTime(values.until, '--until');
  if (from) filter.from = from;
  if (to) filter.to = to;
  if (values.kind) {
    const bad = values.kind.filter((k) => !(AUDIT_KINDS as readonly string[]).includes(k));
    if (bad.length) throw new UsageError(`unknown record kind: ${bad.join(', ')}`);
    filter.kinds = values.kind as AuditKind[];
  }
  if (values.limit !== undefined) {
    const n = Number(values.limit);
    if (!Number.isInteger(n) || n < 1) throw new UsageError('--limit must be a positive integer');
    filter.limit = n;
  }
  let hashes: string[] = [...(values['subject-hash'] ?? [])];
  if (values.subject === '-') {
    if (!io.stdin) throw new UsageError('--subject -: no standard input');
    values.subject = (await io.stdin()).split('\n')[0]!.trim();
  }
  if (values.subject !== undefined) {
    let hasher: ((v: string) => string[] | Promise<string[]>) | undefined = io.hashSubject;
    if (values['subject-key']?.length) hasher = await keyFileHasher(values['subject-key']);
    if (!hasher) throw new UsageError('--subject needs the subject keys: run through mamori with the keyring, or pass --subject-key FILE');
    hashes = [...hashes, ...(await hasher(values.subject))];
  }
  if (values.subject !== undefined || values['subject-hash']) filter.subjectHashes = hashes;
  const bySubject = filter.subjectHashes !== undefined;

  // the search is recorded before any result is shown; a subject search must not run unrecorded
  const described: AuditQueryDescription = {};
  for (const k of ['user', 'column', 'session', 'decision'] as const) if (filter[k] !== undefined) described[k] = filter[k];
  if (from) described.from = from.toISOString();
  if (to) described.to = to.toISOString();
  if (filter.kinds) described.kind = filter.kinds.join(',');
  if (bySubject) described.subjectHashes = hashes.length;
  let self: string | null = null;
  if (cfg) self = await recordQuery(cfg, described, bySubject ? hashes : undefined);
  else if (bySubject) throw new UsageError('a subject search is itself audited: pass --config so it can be recorded');

  let n = 0;
  for await (const hit of searchAudit(target, filter)) {
    if (hit.record.instance === self) continue; // this search's own record
    n++;
    io.stdout((values.json ? JSON.stringify(hit.record) : formatRecord(hit.record)) + '\n');
  }
  if (!values.json) io.stderr(`${n} record(s)\n`);
  return 0;
}

/** Appends the audit_query record as a CLI instance of its own; fails (closed) if it cannot. */
async function recordQuery(cfg: AuditConfig, query: AuditQueryDescription, subjects?: string[]): Promise<string> {
  const sinks = cfg.sinks
    .filter((s) => s.type !== 'postgres')
    .map((s) => (s.type === 'file' ? { ...s, path: join(dirname(s.path), `${stemOf(s.path)}-cli.jsonl`) } : s));
  let signingKey: KeyObject | undefined;
  if (cfg.signingKeyFile) signingKey = await loadPrivateKey(cfg.signingKeyFile).catch(() => undefined);
  const trail = await AuditTrail.open(
    { ...cfg, sinks, failMode: 'closed', heartbeatSeconds: 0, checkpointEverySeconds: 0 },
    { program: 'cli', ...(signingKey ? { signingKey } : {}) },
  );
  try {
    await trail.append({
      kind: 'audit_query',
      query,
      results: null,
      user: process.env.USER ?? null,
      ...(subjects?.length ? { subjects } : {}),
    });
  } finally {
    await trail.close();
  }
  return trail.instanceId;
}

function stemOf(p: string): string {
  const name = p.split('/').pop() ?? p;
  return name.endsWith('.jsonl') ? name.slice(0, -'.jsonl'.length) : name;
}

async function tailCommand(args: string[], io: AuditCliIO): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { config: { type: 'string' }, n: { type: 'string', short: 'n' }, json: { type: 'boolean' } },
  });
  const cfg = values.config ? await loadAuditConfig(values.config) : null;
  const target = trailTarget(positionals, cfg);
  const n = values.n === undefined ? 20 : Number(values.n);
  if (!Number.isInteger(n) || n < 1) throw new UsageError('-n must be a positive integer');
  if (!(await stat(target).catch(() => null))) throw new Error(`${target}: no such trail`);
  for (const hit of await tailAudit(target, n)) io.stdout((values.json ? JSON.stringify(hit.record) : formatRecord(hit.record)) + '\n');
  return 0;
}

async function keygenCommand(args: string[], io: AuditCliIO): Promise<number> {
  const { values } = parseArgs({ args, options: { out: { type: 'string' }, 'public-out': { type: 'string' }, json: { type: 'boolean' } } });
  if (!values.out) throw new UsageError('keygen needs --out PRIVATE_PEM');
  const publicOut = values['public-out'] ?? `${values.out}.pub`;
  const k = await generateSigningKey(values.out, publicOut);
  if (values.json) io.stdout(JSON.stringify({ keyId: k.keyId, publicKey: k.publicKeyPem, private: values.out, public: publicOut }) + '\n');
  else {
    io.stdout(`private key written to ${values.out} (mode 0600); key id ${k.keyId}\n`);
    io.stdout(`public key written to ${publicOut}\n`);
    io.stdout(k.publicKeyPem);
  }
  return 0;
}
