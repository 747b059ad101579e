// The audit record schema: one typed union keyed by `kind`, a set of common fields every record carries, and the
// canonical JSON form that is hashed into the chain. Records never hold protected values or SQL literals:
// statements appear only as fingerprints and data subjects only as keyed hashes.
import * as crypto from 'node:crypto';
import { createHash } from 'node:crypto';

export const AUDIT_RECORD_VERSION = 1;
/** `prev` of the very first record of a trail. */
export const ZERO_HASH = '0'.repeat(64);

export const AUDIT_KINDS = [
  'connect',
  'auth_failure',
  'disconnect',
  'statement_intent',
  'statement_complete',
  'refusal',
  'search',
  'deletion',
  'shredded_read',
  'policy_reload',
  'membership_change',
  'password_change',
  'key_event',
  'heartbeat',
  'genesis',
  'checkpoint',
  'instance_start',
  'audit_query',
  'shadow_decision',
] as const;
export type AuditKind = (typeof AUDIT_KINDS)[number];

/** The policy outcome for one protected column in one statement. */
export type ColumnDecisionKind = 'plaintext' | 'mask' | 'null' | 'ciphertext' | 'deny' | 'write' | 'search' | 'delete';
export interface ColumnDecision {
  /** `schema.table.column` */
  column: string;
  decision: ColumnDecisionKind;
}

/** Where the chain stood: enough to name a record without holding it. */
export interface ChainHead {
  instance: string;
  seq: number;
  hash: string;
}

/** One instance's state in the registry (see chain.ts). */
export interface RegistryEntry {
  started: string;
  lastSeq: number;
  head: string;
  ended?: string;
}
export type InstanceRegistry = Record<string, RegistryEntry>;

/** Fields every record carries; those that do not apply to a kind are null. */
export interface AuditCommon {
  v: number;
  time: string;
  instance: string;
  seq: number;
  session: string | null;
  user: string | null;
  client: string | null;
  tlsSubject: string | null;
  applicationName: string | null;
  database: string | null;
  /** Statement fingerprint (literals and comments removed), never SQL text with values. */
  fingerprint: string | null;
  command: string | null;
  columns: ColumnDecision[];
  rows: number | null;
  durationMs: number | null;
  sqlstate: string | null;
  /** Keyed hashes of the data subjects touched (subject.ts), at most `maxInlineSubjects`. */
  subjects?: string[];
  /** Id of the subject key the hashes were made with (one per retention period). */
  subjectKeyId?: string;
  /** When the subjects did not fit inline: sha256 (hex) of the side file holding them, and how many. */
  subjectsRef?: string;
  subjectCount?: number;
  /** Distinct subjects beyond the per-statement bound (statement-records.ts), not hashed into the record. */
  subjectsDropped?: number;
  /** A shadow-mode record: decisions the policy would take for `enforce: false` columns, not enforced. */
  shadow?: boolean;
  /** Hash of the previous record in this trail (hex SHA-256), ZERO_HASH for the first. */
  prev: string;
  /** SHA-256 (hex) of this record's canonical bytes without `hash`. */
  hash: string;
}

// `protect`: `mamori protect` encrypting a live column into a key domain (each step recorded, docs/protect.md).
export type KeyEventKind = 'init' | 'rotate' | 'reencrypt' | 'retire' | 'shred' | 'rewrap' | 'escrow' | 'unwrap' | 'protect';

/** The kind-specific part of each record. */
export type AuditPayload =
  | { kind: 'connect'; protocol?: string; tls: boolean }
  | { kind: 'auth_failure'; reason: string }
  | { kind: 'disconnect'; reason?: string }
  | { kind: 'statement_intent'; statement: string; mode: 'protected' | 'all' }
  | { kind: 'statement_complete'; statement: string }
  | { kind: 'refusal'; reason: string; statement?: string }
  | { kind: 'search'; statement?: string; limitHit?: boolean }
  | { kind: 'deletion'; table: string; how: 'delete' | 'update_null' | 'truncate' | 'shred' }
  | { kind: 'shredded_read'; keyId: string }
  | { kind: 'policy_reload'; ok: boolean; digest?: string; error?: string }
  | { kind: 'membership_change'; role: string; member: string; action: 'grant' | 'revoke' | 'approve' | 'reject' | 'pending'; by?: string }
  | { kind: 'password_change'; role: string; action: 'pending' | 'approve' | 'reject' | 'observed'; by?: string }
  | { kind: 'key_event'; event: KeyEventKind; keyId: string; purpose?: string; detail?: string }
  | { kind: 'heartbeat'; lost: number; uptimeS: number }
  | { kind: 'genesis'; previous: ChainHead | null; registry: InstanceRegistry; program: string; repairedTailBytes?: number }
  | { kind: 'checkpoint'; checkpoint: CheckpointBody; keyId: string | null; sig: string | null; registry: InstanceRegistry; series?: string }
  | { kind: 'instance_start'; program: string; version: string; pid: number; host: string }
  | { kind: 'audit_query'; query: AuditQueryDescription; results: number | null }
  /**
   * Shadow mode (columns with `enforce: false`): what the full policy would decide, never enforced. Columns carry
   * the would-be decisions; `outcome` says whether the statement would be refused (`reason`, `sqlstate` then).
   */
  | { kind: 'shadow_decision'; shadow: true; outcome: 'would_refuse' | 'would_allow'; reason?: string };

/** What a checkpoint signs: the head of the chain at a point in time. */
export interface CheckpointBody {
  instance: string;
  seq: number;
  head: string;
  time: string;
}

/** An `audit search` as recorded: subject values appear only as hashes. */
export interface AuditQueryDescription {
  user?: string;
  column?: string;
  session?: string;
  from?: string;
  to?: string;
  decision?: string;
  kind?: string;
  subjectHashes?: number;
}

export type AuditRecord = AuditCommon & AuditPayload;
export type RecordOf<K extends AuditKind> = AuditCommon & Extract<AuditPayload, { kind: K }>;

/** Common fields a caller may set; the trail fills time, instance, seq, prev, hash and defaults the rest to null. */
export type AuditEventCommon = Partial<Omit<AuditCommon, 'v' | 'time' | 'instance' | 'seq' | 'prev' | 'hash'>>;
/** What callers hand to `AuditTrail.append`. */
export type AuditEvent = AuditEventCommon & AuditPayload;


/**
 * Members a record takes from outside its event (passed apart, so no merged copy is built per record): the
 * session fields, and for a RecordTemplate's shared members also the statement's kind, fingerprint, command,
 * columns and mode. The event's own members win over the context's.
 */
export type RecordContext = Partial<
  Pick<AuditCommon, 'session' | 'user' | 'client' | 'tlsSubject' | 'applicationName' | 'database' | 'fingerprint' | 'command'>
> & { columns?: readonly ColumnDecision[]; kind?: AuditKind; mode?: 'protected' | 'all' };

/** Chain fields the trail fills in. */
export interface ChainFields {
  time: string;
  instance: string;
  seq: number;
  prev: string;
}

/** Common fields and their value when neither the event nor the context sets them. */
const DEFAULTS: Readonly<Record<string, null | readonly never[]>> = {
  session: null, user: null, client: null, tlsSubject: null, applicationName: null, database: null,
  fingerprint: null, command: null, columns: [], rows: null, durationMs: null, sqlstate: null,
};
const CHAIN_KEYS = new Set(['v', 'time', 'instance', 'seq', 'prev']);

/**
 * Every top-level member a record may have, in canonical (sorted) order, with its `"name":` prefix: the
 * template `sealLine` fills. An event with a member not listed here takes the generic canonicalJson path.
 */
const TEMPLATE_KEYS: readonly string[] = [
  ...Object.keys(DEFAULTS), ...CHAIN_KEYS,
  'kind', 'subjects', 'subjectKeyId', 'subjectsRef', 'subjectCount', 'subjectsDropped', 'shadow',
  // payload members of the kinds (record.ts AuditPayload) and the extras some events carry
  'protocol', 'tls', 'reason', 'statement', 'mode', 'limitHit', 'table', 'how', 'keyId', 'ok', 'digest', 'error',
  'role', 'member', 'action', 'by', 'event', 'purpose', 'detail', 'lost', 'uptimeS', 'program', 'version', 'pid',
  'host', 'query', 'results', 'outcome', 'bytesIn', 'bytesOut', 'previous', 'registry', 'repairedTailBytes', 'checkpoint',
  'sig', 'series',
].sort();
/** `"name":` of each template member, and `,"name":` for every member after the first. */
const PREFIXES = TEMPLATE_KEYS.map((k) => JSON.stringify(k) + ':');
const COMMA_PREFIXES = PREFIXES.map((p) => ',' + p);
const INDEX = new Map(TEMPLATE_KEYS.map((k, i) => [k, i]));
const at = (k: string): number => INDEX.get(k)!;
/** Defaults already serialized. */
const DEFAULT_SLOTS = Object.entries(DEFAULTS).map(([k, v]) => [at(k), canonicalJson(v)] as const);
const [V, TIME, INSTANCE, SEQ, PREV] = [at('v'), at('time'), at('instance'), at('seq'), at('prev')];
const VERSION_JSON = String(AUDIT_RECORD_VERSION);
/** Scratch slots of serialized members, one per template member (sealing is synchronous: one array serves all). */
const slots: Array<string | undefined> = new Array<string | undefined>(TEMPLATE_KEYS.length).fill(undefined);
/** Per template member, the last string value sealed there and its JSON. */
const lastString: Array<string | undefined> = new Array<string | undefined>(TEMPLATE_KEYS.length).fill(undefined);
const lastStringJson: Array<string | undefined> = new Array<string | undefined>(TEMPLATE_KEYS.length).fill(undefined);

/**
 * A frozen context's members serialized once ([slot, JSON] of those set): a session seals the same context into
 * every record it writes. Only frozen contexts are cached — a context that can change is serialized each time.
 */
const contextJson = new WeakMap<RecordContext, ReadonlyArray<readonly [number, string]>>();
function contextSlots(context: RecordContext): ReadonlyArray<readonly [number, string]> | null {
  const cached = contextJson.get(context);
  if (cached) return cached;
  const c = context as Record<string, unknown>;
  const out: Array<readonly [number, string]> = [];
  for (const k in c) {
    if (c[k] === undefined) continue;
    const i = INDEX.get(k);
    if (i === undefined || CHAIN_KEYS.has(k) || k === 'hash') return null; // not a member the template fills
    out.push([i, memberJson(c[k])]);
  }
  if (Object.isFrozen(context)) contextJson.set(context, out);
  return out;
}

/** The last chain `time` / `instance` and their JSON: every record of a batch has the same time, of a trail the same instance. */
let lastTime = '';
let lastTimeJson = '""';
function timeJson(time: string): string {
  if (time !== lastTime) {
    lastTime = time;
    lastTimeJson = JSON.stringify(time);
  }
  return lastTimeJson;
}
let lastInstance = '';
let lastInstanceJson = '""';

/**
 * canonicalJson of one member value, with the common cases inline: strings, finite numbers (JSON.stringify and
 * String agree on them), null, and arrays of strings (subjects), which JSON.stringify already writes canonically.
 */
function memberJson(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new TypeError('canonicalJson: non-finite number');
    return String(v);
  }
  if (v === null) return 'null';
  if (Array.isArray(v)) {
    if (Object.isFrozen(v)) return frozenArrayJson(v);
    if (v.every((x) => typeof x === 'string')) return JSON.stringify(v);
  }
  return canonicalJson(v);
}

/**
 * JSON of frozen arrays whose elements are frozen too (a statement's column decisions, frozen by SessionAudit:
 * its intent and completion, and every execution of a prepared statement, carry the same array), kept for the
 * last few such arrays by identity — a statement's completion is sealed a few records after its intent. A ring,
 * not a WeakMap: a weak entry per statement costs more than the serialization it saves.
 */
const FROZEN_RING = 32;
const frozenArrays: Array<readonly unknown[] | undefined> = new Array<readonly unknown[] | undefined>(FROZEN_RING).fill(undefined);
const frozenJsons: string[] = new Array<string>(FROZEN_RING).fill('');
let frozenNext = 0;
function frozenArrayJson(v: readonly unknown[]): string {
  for (let i = 0; i < FROZEN_RING; i++) if (frozenArrays[i] === v) return frozenJsons[i]!;
  const json = v.every((x) => typeof x === 'string') ? JSON.stringify(v) : canonicalJson(v);
  if (v.every(unchangeable)) {
    frozenArrays[frozenNext] = v;
    frozenJsons[frozenNext] = json;
    frozenNext = (frozenNext + 1) % FROZEN_RING;
  }
  return json;
}
/** A primitive, or a frozen object whose members are primitives (a column decision): nothing in it can change. */
function unchangeable(x: unknown): boolean {
  if (typeof x !== 'object' || x === null) return true;
  if (!Object.isFrozen(x)) return false;
  const o = x as Record<string, unknown>;
  for (const k in o) if (typeof o[k] === 'object' && o[k] !== null) return false;
  return true;
}

/**
 * Seals one record: fills the chain fields and defaults, serializes it canonically and hashes it — without
 * building the merged record object. Members come from the event first, then the context, then the defaults;
 * `undefined` members are left out. Produces exactly `canonicalJson` of the merged record (verify.ts checks the
 * line against it), through a precomputed, field-ordered template instead of sorting keys per record.
 */
export function sealLine(event: AuditEvent, context: RecordContext | null, chain: ChainFields): { line: string; hash: string } {
  const e = event as unknown as Record<string, unknown>;
  try {
    for (const k in e) {
      const v = e[k];
      if (v === undefined || k === 'hash') continue;
      const i = INDEX.get(k);
      if (i === undefined) return sealGeneric(event, context, chain);
      if (typeof v === 'string') {
        // the same member string as in the slot's last record (kind, fingerprint, command, mode, subject key
        // id): its JSON is the same too
        if (v !== lastString[i]) {
          lastString[i] = v;
          lastStringJson[i] = JSON.stringify(v);
        }
        slots[i] = lastStringJson[i];
      } else slots[i] = memberJson(v);
    }
    if (context !== null) {
      const fromContext = contextSlots(context);
      if (fromContext === null) return sealGeneric(event, context, chain);
      for (const [i, json] of fromContext) if (slots[i] === undefined) slots[i] = json;
    }
    for (const [i, json] of DEFAULT_SLOTS) if (slots[i] === undefined) slots[i] = json;
    if (chain.instance !== lastInstance) {
      lastInstance = chain.instance;
      lastInstanceJson = JSON.stringify(chain.instance);
    }
    slots[V] = VERSION_JSON;
    slots[TIME] = timeJson(chain.time);
    slots[INSTANCE] = lastInstanceJson;
    slots[SEQ] = memberJson(chain.seq);
    slots[PREV] = JSON.stringify(chain.prev);
    let body = '{';
    let prefixes = PREFIXES;
    for (let i = 0; i < slots.length; i++) {
      const json = slots[i];
      if (json === undefined) continue;
      body += prefixes[i]! + json;
      prefixes = COMMA_PREFIXES;
    }
    body += '}';
    const hash = sha256Hex(body);
    return { line: body.slice(0, -1) + ',"hash":"' + hash + '"}', hash };
  } finally {
    slots.fill(undefined);
  }
}
/** The same record through the generic path (an event with a member the template does not list). */
function sealGeneric(event: AuditEvent, context: RecordContext | null, chain: ChainFields): { line: string; hash: string } {
  const merged: Record<string, unknown> = {};
  if (context) for (const [k, v] of Object.entries(context)) if (v !== undefined && !CHAIN_KEYS.has(k) && k !== 'hash') merged[k] = v;
  const e = event as unknown as Record<string, unknown>;
  for (const k in e) if (e[k] !== undefined) merged[k] = e[k];
  const { record, line } = sealRecordLine(merged as unknown as AuditEvent, chain);
  return { line, hash: record.hash };
}

/**
 * The members of a record sealed through a RecordTemplate: only those that change from one record to the next
 * (the others are the template's). `kind` is the template's, never the values'.
 */
export type TemplateValues = Partial<
  Pick<AuditCommon, 'rows' | 'durationMs' | 'sqlstate' | 'subjects' | 'subjectKeyId' | 'subjectsRef' | 'subjectCount' | 'subjectsDropped'>
> & { statement?: string; kind?: undefined };

/** Holes of a compiled template that the chain fills (var holes are the var's index, ≥ 0). */
const TIME_HOLE = -1;
const SEQ_HOLE = -2;
const PREV_HOLE = -3;

/** A template compiled for one set of present vars: literal parts, and between each two the hole to fill. */
interface CompiledTemplate {
  instance: string;
  parts: string[];
  holes: number[];
}

/**
 * Records that share most of their members are sealed through a template: a statement's intent (or completion)
 * records in one session share the session fields, kind, fingerprint, command, columns and mode. Those shared
 * members are serialized once, in canonical order, around holes for the chain fields and for the members that
 * change per record (`vars`: statement id, duration, rows, outcome, subjects). A record sealed this way is byte
 * for byte what sealLine makes of the same members (test/proxy/audit/record.test.ts checks it); what it saves is
 * walking, looking up and serializing some twenty members per record.
 */
export class RecordTemplate {
  /**
   * The shared members, frozen: the context a record takes through the generic path when it cannot use the
   * template (its subject list moved to a side file, say).
   */
  readonly members: Readonly<RecordContext>;
  private readonly vars: readonly string[];
  private readonly varSlots: readonly number[];
  /** By bit mask of the vars present (an undefined member is left out, so each mask has its own layout). */
  private readonly compiled: Array<CompiledTemplate | undefined> = [];

  constructor(members: RecordContext, vars: readonly string[]) {
    const m = members as Record<string, unknown>;
    for (const k of [...Object.keys(m), ...vars]) {
      if (!INDEX.has(k) || CHAIN_KEYS.has(k) || k === 'hash') throw new TypeError(`RecordTemplate: ${k} is not a member a template can hold`);
    }
    for (const k of vars) if (m[k] !== undefined) throw new TypeError(`RecordTemplate: ${k} is both shared and per record`);
    if (vars.length > 16) throw new TypeError('RecordTemplate: too many vars');
    this.members = Object.isFrozen(members) ? members : Object.freeze({ ...members });
    this.vars = [...vars];
    this.varSlots = vars.map(at);
    this.got = new Array<unknown>(vars.length).fill(undefined);
  }

  /** Seals one record: `values` holds the vars (any other member of it would be ignored; there are none by type). */
  seal(values: TemplateValues, chain: ChainFields): { line: string; hash: string } {
    const v = values as Record<string, unknown>;
    const vars = this.vars;
    // each var read once (a keyed load by a name from a list is the slow kind): into `got`, by var index
    const got = this.got;
    let mask = 0;
    for (let i = 0; i < vars.length; i++) {
      const x = v[vars[i]!];
      got[i] = x;
      if (x !== undefined) mask |= 1 << i;
    }
    let c = this.compiled[mask];
    if (c === undefined || c.instance !== chain.instance) c = this.compiled[mask] = this.compile(mask, chain.instance);
    const { parts, holes } = c;
    let body = parts[0]!;
    for (let j = 0; j < holes.length; j++) {
      const h = holes[j]!;
      let json: string;
      if (h >= 0) {
        const x = got[h];
        // the common member types inline (memberJson's own rules): string, finite number, null
        if (typeof x === 'string') json = JSON.stringify(x);
        else if (typeof x === 'number' && Number.isFinite(x)) json = String(x);
        else if (x === null) json = 'null';
        else json = memberJson(x);
      } else json = h === TIME_HOLE ? timeJson(chain.time) : h === SEQ_HOLE ? String(chain.seq) : JSON.stringify(chain.prev);
      body += json + parts[j + 1]!;
    }
    got.fill(undefined); // hold no value past the record
    const hash = sha256Hex(body);
    return { line: body.slice(0, -1) + ',"hash":"' + hash + '"}', hash };
  }
  /** Scratch for seal (synchronous): the vars of the record being sealed. */
  private readonly got: unknown[];

  /** The layout sealLine would give: the same member order, prefixes and defaults, with holes left open. */
  private compile(mask: number, instance: string): CompiledTemplate {
    const layout: Array<string | number | undefined> = new Array<string | number | undefined>(TEMPLATE_KEYS.length).fill(undefined);
    const m = this.members as Record<string, unknown>;
    for (const k in m) if (m[k] !== undefined) layout[at(k)] = memberJson(m[k]);
    for (let i = 0; i < this.vars.length; i++) if (mask & (1 << i)) layout[this.varSlots[i]!] = i;
    layout[V] = VERSION_JSON;
    layout[INSTANCE] = JSON.stringify(instance);
    layout[TIME] = TIME_HOLE;
    layout[SEQ] = SEQ_HOLE;
    layout[PREV] = PREV_HOLE;
    for (const [i, json] of DEFAULT_SLOTS) if (layout[i] === undefined) layout[i] = json;
    const parts: string[] = [];
    const holes: number[] = [];
    let part = '{';
    let prefixes = PREFIXES;
    for (let i = 0; i < layout.length; i++) {
      const x = layout[i];
      if (x === undefined) continue;
      part += prefixes[i]!;
      prefixes = COMMA_PREFIXES;
      if (typeof x === 'string') part += x;
      else {
        parts.push(part);
        holes.push(x);
        part = '';
      }
    }
    parts.push(part + '}');
    return { instance, parts, holes };
  }
}

const oneShotHash = (crypto as { hash?: (alg: string, data: string, enc: 'hex') => string }).hash;
/** SHA-256 hex; the one-shot crypto.hash (Node ≥ 20.12) is about twice as fast as createHash for short inputs. */
function sha256Hex(data: string): string {
  return oneShotHash ? oneShotHash('sha256', data, 'hex') : createHash('sha256').update(data).digest('hex');
}

/** Fills in the chain fields and defaults, hashes, and serializes: the generic path, and the reference for sealLine. */
export function sealRecordLine(event: AuditEvent, chain: ChainFields): { record: AuditRecord; line: string } {
  // built by assignment, not object spread: spreading three sources costs ~20 µs per record in V8
  const r: Record<string, unknown> = { ...DEFAULTS, columns: [] };
  const e = event as unknown as Record<string, unknown>;
  for (const k in e) {
    const v = e[k];
    if (v !== undefined && k !== 'hash') r[k] = v;
  }
  r.v = AUDIT_RECORD_VERSION;
  r.time = chain.time;
  r.instance = chain.instance;
  r.seq = chain.seq;
  r.prev = chain.prev;
  const body = canonicalJson(r);
  const hash = sha256Hex(body);
  r.hash = hash;
  return { record: r as unknown as AuditRecord, line: withHash(body, hash) };
}

export function sealRecord(event: AuditEvent, chain: ChainFields): AuditRecord {
  return sealRecordLine(event, chain).record;
}

/**
 * Canonical JSON: object keys sorted by UTF-16 code unit order at every level, no whitespace, `undefined`
 * members dropped, numbers must be finite. Two equal records always serialize to the same bytes.
 */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('canonicalJson: non-finite number');
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) {
        let out = '[';
        for (let i = 0; i < value.length; i++) {
          if (i > 0) out += ',';
          const v: unknown = value[i];
          out += v === undefined ? 'null' : canonicalJson(v);
        }
        return out + ']';
      }
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj);
      // small plain objects (a column decision) usually come with their keys in order and string values:
      // JSON.stringify then writes exactly the canonical form, natively
      let sorted = true;
      let strings = true;
      for (let i = 0; i < keys.length; i++) {
        if (i > 0 && keys[i - 1]! > keys[i]!) sorted = false;
        if (typeof obj[keys[i]!] !== 'string') strings = false;
      }
      if (sorted && strings && Object.getPrototypeOf(obj) === Object.prototype) return JSON.stringify(obj);
      if (!sorted) keys.sort();
      let out = '{';
      let first = true;
      for (const k of keys) {
        const v = obj[k];
        if (v === undefined) continue;
        out += (first ? '' : ',') + JSON.stringify(k) + ':' + canonicalJson(v);
        first = false;
      }
      return out + '}';
    }
    default:
      throw new TypeError(`canonicalJson: unsupported ${typeof value}`);
  }
}

/** SHA-256 (hex) over the canonical bytes of the record without its `hash` member. */
export function recordHash(record: Omit<AuditRecord, 'hash'> | AuditRecord): string {
  const { hash: _hash, ...rest } = record as AuditRecord;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
}

/** The hashed body with `"hash"` appended as the last member. */
function withHash(body: string, hash: string): string {
  return `${body.slice(0, -1)},"hash":${JSON.stringify(hash)}}`;
}

/**
 * The line written to a JSON Lines sink (no trailing newline): the canonical JSON of the record without
 * `hash` — exactly the bytes that were hashed — with `"hash"` appended as the last member.
 */
export function serializeRecord(record: AuditRecord): string {
  const { hash, ...rest } = record;
  return withHash(canonicalJson(rest), hash);
}

export class AuditParseError extends Error {
  override readonly name = 'AuditParseError';
}

/** Parses one JSON Lines record and checks its shape (not its hash; see verify.ts). */
export function parseRecord(line: string): AuditRecord {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new AuditParseError('not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AuditParseError('not an object');
  const r = value as Record<string, unknown>;
  if (typeof r.kind !== 'string' || !(AUDIT_KINDS as readonly string[]).includes(r.kind)) throw new AuditParseError('unknown kind');
  if (typeof r.instance !== 'string' || typeof r.time !== 'string') throw new AuditParseError('missing instance or time');
  if (typeof r.seq !== 'number' || !Number.isSafeInteger(r.seq) || r.seq < 1) throw new AuditParseError('bad seq');
  if (typeof r.prev !== 'string' || typeof r.hash !== 'string') throw new AuditParseError('missing prev or hash');
  if (!Array.isArray(r.columns)) throw new AuditParseError('missing columns');
  return value as AuditRecord;
}
