// The whole mamori.yaml as one zod schema: defaults, strict objects (an unknown key is an error, so typos are
// caught), and the cross-field rules. File paths are resolved against the config file's directory while parsing,
// so every path in a MamoriConfig is absolute.
import path from 'node:path';
import { z } from 'zod';
import { canonicalName, MAX_IDENTIFIER_BYTES, parseQualifiedName } from './identifiers.js';
import { encodingFamily, formatLogicalType, parseLogicalType, type LogicalType } from './column-type.js';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export const UPSTREAM_TLS_MODES = ['disable', 'require', 'verify-ca', 'verify-full'] as const;
export const READ_DECISIONS = ['plaintext', 'mask', 'ciphertext', 'null'] as const;

const MIB = 1024 * 1024;
/** The protocol's length word is a signed int32. */
const MAX_PROTOCOL_MESSAGE = 2 ** 31 - 1;
/** Random 96-bit GCM nonces: NIST's bound is 2^32 per key; stay well below it (instances reserve counts in blocks). */
export const MAX_ROTATE_AFTER_ENCRYPTIONS = 2 ** 31;

const utf8Bytes = (s: string): number => Buffer.byteLength(s, 'utf8');

const int = () => z.number().int();
const port = (allowZero: boolean) => int().min(allowZero ? 0 : 1).max(65535);
const host = z.string().min(1);
const roleName = z
  .string()
  .min(1)
  .refine((s) => utf8Bytes(s) <= MAX_IDENTIFIER_BYTES, { error: `role name longer than ${MAX_IDENTIFIER_BYTES} bytes` });
const roleList = z.array(roleName);
const envVarName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, {
  error: 'must be the name of an environment variable (letters, digits and _), not a value',
});

/** A schema-qualified name (`schema.name`, parts may be "quoted"), kept as written after validation. */
const qualifiedName = (what: string) =>
  z.string().superRefine((s, ctx) => {
    const parsed = parseQualifiedName(s);
    if (!parsed.ok) ctx.addIssue({ code: 'custom', message: `${what} must be schema.name: ${parsed.reason}` });
    else if (parsed.parts.length !== 2) {
      ctx.addIssue({
        code: 'custom',
        message: `${what} must be schema-qualified (schema.name), got ${parsed.parts.length} part(s)`,
      });
    }
  });

/** Builds the schema; relative file paths resolve against baseDir (the config file's directory). */
export function configSchema(baseDir: string) {
  const file = () => z.string().min(1).transform((p) => path.resolve(baseDir, p));
  const fileWithDefault = (def: string) => file().prefault(def);

  const listen = z
    .strictObject({ host: host.default('127.0.0.1'), port: port(true).default(6432) })
    .prefault({});

  const tls = z.strictObject({
    cert: file(),
    key: file(),
    clientCa: file().optional(),
    require: z.boolean().default(false),
    minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  });

  const upstreamTls = z
    .strictObject({
      mode: z.enum(UPSTREAM_TLS_MODES).default('disable'),
      ca: file().optional(),
      servername: z.string().min(1).optional(),
    })
    .superRefine((t, ctx) => {
      if ((t.mode === 'verify-ca' || t.mode === 'verify-full') && t.ca === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['ca'],
          message: `required when mode is ${t.mode} (the CA certificate that signed the server's certificate)`,
        });
      }
    });

  const upstream = z
    .strictObject({
      host: host.default('127.0.0.1'),
      port: port(false).default(5432),
      tls: upstreamTls.prefault({}),
      connectTimeoutSeconds: int().min(1).default(10),
    })
    .prefault({});

  const control = z
    .strictObject({
      user: roleName.default('mamori'),
      passwordEnv: envVarName.default('MAMORI_CONTROL_PASSWORD'),
      database: z.string().min(1).default('postgres'),
    })
    .prefault({});

  const auth = z.strictObject({ lookupFunction: qualifiedName('lookupFunction').default('mamori.get_auth') }).prefault({});

  const limits = z
    .strictObject({
      maxConnections: int().min(1).default(1000),
      maxRewriteMessageBytes: int().min(1024).max(MAX_PROTOCOL_MESSAGE).default(64 * MIB),
      maxMessageBytes: int().min(1024).max(MAX_PROTOCOL_MESSAGE).default(1024 * MIB),
      idleTimeoutSeconds: int().min(0).default(0),
      startupTimeoutSeconds: int().min(1).default(10),
      shutdownGraceSeconds: int().min(0).default(30),
    })
    .superRefine((l, ctx) => {
      if (l.maxRewriteMessageBytes > l.maxMessageBytes) {
        ctx.addIssue({
          code: 'custom',
          path: ['maxRewriteMessageBytes'],
          message: `must not exceed maxMessageBytes (${l.maxMessageBytes}), got ${l.maxRewriteMessageBytes}`,
        });
      }
    })
    .prefault({});

  const log = z.strictObject({ level: z.enum(LOG_LEVELS).default('info') }).prefault({});

  const kms = z.strictObject({
    keyArn: z
      .string()
      .regex(/^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)\/.+$/, {
        error: 'must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)',
      })
      .optional(),
    region: z.string().min(1).optional(),
    multiRegion: z.boolean().default(false),
    hmacKeyArn: z
      .string()
      .regex(/^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)\/.+$/, {
        error: 'must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)',
      })
      .optional(),
  });

  const store = z
    .discriminatedUnion('type', [
      z.strictObject({ type: z.literal('file'), path: fileWithDefault('./.mamori/keystore.json') }),
      z.strictObject({ type: z.literal('postgres'), table: qualifiedName('table').default('mamori.data_keys') }),
    ])
    .prefault({ type: 'file' });

  const keyring = z
    .strictObject({
      provider: z.enum(['local', 'aws-kms']).default('local'),
      keyFile: fileWithDefault('./.mamori/root.key'),
      kms: kms.optional(),
      store,
      escrow: z.strictObject({ publicKeyFile: file(), exportDir: file().optional() }).optional(),
      cacheTtlSeconds: int().min(1).default(300),
      rotateAfterEncryptions: int().min(1).max(MAX_ROTATE_AFTER_ENCRYPTIONS).default(1_000_000_000),
      // Fixed keystore identity (default: generated by `keys init`); in every key's encryption context.
      keystoreId: z
        .string()
        .regex(/^[A-Za-z0-9._:-]{1,128}$/, { error: 'must be 1–128 letters, digits or . _ : -' })
        .optional(),
      // The generation pin used to detect a keystore rolled back from a backup (default: next to the key file).
      stateFile: file().optional(),
    })
    .superRefine((k, ctx) => {
      if (k.provider === 'aws-kms') {
        for (const field of ['keyArn', 'region'] as const) {
          if (k.kms?.[field] === undefined) {
            ctx.addIssue({ code: 'custom', path: ['kms', field], message: 'required when provider is aws-kms' });
          }
        }
      }
      if (k.kms?.multiRegion && k.kms.keyArn !== undefined && !/:key\/mrk-/.test(k.kms.keyArn)) {
        ctx.addIssue({
          code: 'custom',
          path: ['kms', 'keyArn'],
          message: 'multiRegion: true needs a multi-Region key (key/mrk-…)',
        });
      }
    })
    .prefault({});

  const read = z
    .strictObject({
      plaintext: roleList.default([]),
      mask: roleList.default([]),
      ciphertext: roleList.default([]),
      null: roleList.default([]),
    })
    .prefault({});

  const column = z.strictObject({
    type: z.string().superRefine((s, ctx) => {
      const t = parseLogicalType(s);
      if (!t.ok) ctx.addIssue({ code: 'custom', message: t.reason });
    }),
    mode: z.enum(['deterministic', 'randomized']).default('randomized'),
    domain: z
      .string()
      .min(1)
      .max(200)
      .regex(/^[^\s\p{Cc}]+$/u, { error: 'must not contain whitespace or control characters' })
      .optional(),
    read,
    search: roleList.optional(),
    write: roleList.default([]),
    export: roleList.default([]),
    others: z.enum(['deny', 'null']).default('deny'),
    requireClientCert: z.boolean().default(false),
    enforce: z.boolean().default(true),
    databases: z.array(z.string().min(1)).min(1).optional(),
  });

  // Validated as a record key so a bad key is reported even when other columns have errors.
  const columnKey = z.string().superRefine((key, ctx) => {
    const parsed = parseQualifiedName(key);
    if (!parsed.ok || parsed.parts.length !== 3) {
      const why = parsed.ok ? `got ${parsed.parts.length} identifier(s)` : parsed.reason;
      ctx.addIssue({
        code: 'custom',
        message: `column key must be schema.table.column (three identifiers, "quoted" where needed): ${why}`,
      });
    }
  });

  const pgConnection = z.strictObject({
    host: host.optional(),
    port: port(false).optional(),
    database: z.string().min(1).optional(),
    user: roleName.optional(),
    passwordEnv: envVarName.optional(),
    tls: upstreamTls.optional(),
  });

  const sink = z.discriminatedUnion('type', [
    z.strictObject({
      type: z.literal('file'),
      path: file(),
      rotateBytes: int().min(4096).default(100 * MIB),
      rotateSeconds: int().min(0).default(86_400),
    }),
    z.strictObject({
      type: z.literal('postgres'),
      table: qualifiedName('table').default('mamori.audit_log'),
      connection: pgConnection.optional(),
      batchSize: int().min(1).max(10_000).default(500),
      flushIntervalMs: int().min(1).default(1000),
    }),
    z.strictObject({ type: z.literal('stdout') }),
  ]);

  const audit = z
    .strictObject({
      statements: z.enum(['protected', 'all', 'none']).default('protected'),
      failMode: z.enum(['closed', 'open']).default('closed'),
      fsync: z.enum(['none', 'interval', 'always']).default('interval'),
      fsyncIntervalMs: int().min(1).default(1000),
      sinks: z.array(sink).min(1).prefault([{ type: 'file', path: './audit/mamori.jsonl' }]),
      maxBufferedRecords: int().min(1).default(10_000),
      heartbeatSeconds: int().min(1).default(60),
      checkpointEverySeconds: int().min(1).default(300),
      signingKeyFile: fileWithDefault('./.mamori/audit-signing.key'),
      // `none`: checkpoints only in the main sinks (not recommended: the second copy is what defeats rollback).
      checkpointSink: z
        .union([z.literal('none').transform(() => null), sink])
        .prefault({ type: 'file', path: './audit-checkpoints/mamori.jsonl' }),
    })
    .superRefine((a, ctx) => {
      const seen = new Map<string, number>();
      a.sinks.forEach((s, i) => {
        const id = s.type === 'file' ? `file:${s.path}` : s.type === 'stdout' ? 'stdout' : undefined;
        if (id === undefined) return;
        const first = seen.get(id);
        if (first !== undefined) {
          ctx.addIssue({ code: 'custom', path: ['sinks', i], message: `same destination as sinks[${first}]` });
        } else seen.set(id, i);
      });
      const cp = a.checkpointSink;
      if (cp?.type === 'file' && seen.has(`file:${cp.path}`)) {
        ctx.addIssue({
          code: 'custom',
          path: ['checkpointSink', 'path'],
          message: `must differ from the audit sinks (checkpoints are the second, independent copy)`,
        });
      }
    })
    .prefault({});

  const metrics = z
    .strictObject({
      enabled: z.boolean().default(true),
      host: host.default('127.0.0.1'),
      port: port(true).default(9930),
      userLabels: z.boolean().default(false),
    })
    .prefault({});

  return z
    .strictObject({
      listen,
      tls: tls.optional(),
      upstream,
      control,
      auth,
      limits,
      log,
      keyring,
      columns: z.record(columnKey, column).superRefine(checkColumns).default({}),
      approval: z
        .strictObject({
          members: z.enum(['required', 'none']).default('required'),
          passwords: z.enum(['held', 'allowed']).default('allowed'),
        })
        .prefault({}),
      adminRoles: roleList.default([]),
      search: z
        .strictObject({
          maxInListItems: int().min(1).max(100_000).default(100),
          ratePerSecond: z.number().positive().default(50),
          burst: int().min(1).default(100),
        })
        .prefault({}),
      audit,
      metrics,
    })
    .superRefine((c, ctx) => {
      if (c.metrics.enabled && c.metrics.port !== 0 && c.metrics.port === c.listen.port && c.metrics.host === c.listen.host) {
        ctx.addIssue({ code: 'custom', path: ['metrics', 'port'], message: `same address as listen (${c.listen.host}:${c.listen.port})` });
      }
    })
    .transform((c) => ({ ...c, columns: resolveColumns(c.columns) }));
}

interface RawColumn {
  type: string;
  mode: 'deterministic' | 'randomized';
  domain?: string | undefined;
  read: Record<(typeof READ_DECISIONS)[number], string[]>;
  search?: string[] | undefined;
  others: 'deny' | 'null';
}

type Ctx = z.RefinementCtx;

function checkColumns(columns: Record<string, RawColumn>, ctx: Ctx): void {
  const byCanonical = new Map<string, string>();
  const domains = new Map<string, { key: string; col: RawColumn; type: LogicalType }>();
  for (const [key, col] of Object.entries(columns)) {
    const parsed = parseQualifiedName(key);
    if (!parsed.ok || parsed.parts.length !== 3) continue; // reported by the key schema
    const canonical = canonicalName(parsed.parts);
    const dup = byCanonical.get(canonical);
    if (dup !== undefined) {
      ctx.addIssue({ code: 'custom', path: [key], message: `names the same column as ${JSON.stringify(dup)}` });
      continue;
    }
    byCanonical.set(canonical, key);

    const seen = new Map<string, string>();
    for (const list of READ_DECISIONS) {
      col.read[list].forEach((role, i) => {
        const other = seen.get(role);
        if (other !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: [key, 'read', list, i],
            message: `role ${JSON.stringify(role)} is also in read.${other}; a role may be in only one read list of a column`,
          });
        } else seen.set(role, list);
      });
    }

    if (col.mode === 'randomized' && col.search !== undefined && col.search.length > 0) {
      ctx.addIssue({
        code: 'custom',
        path: [key, 'search'],
        message: 'search needs mode: deterministic (randomized columns support only IS [NOT] NULL)',
      });
    }

    const type = parseLogicalType(col.type);
    if (!type.ok) continue;
    const domain = col.domain ?? canonical;
    const first = domains.get(domain);
    if (first === undefined) {
      domains.set(domain, { key, col, type: type.type });
      continue;
    }
    const prefix = `columns sharing domain ${JSON.stringify(domain)} must have the same`;
    if (first.col.mode !== col.mode) {
      ctx.addIssue({
        code: 'custom',
        path: [key, 'mode'],
        message: `${prefix} mode: ${first.key} is ${first.col.mode}, this column is ${col.mode}`,
      });
    }
    if (!sameReadPolicy(first.col, col)) {
      ctx.addIssue({
        code: 'custom',
        path: [key, 'read'],
        message: `${prefix} read policy (read lists and others) as ${first.key}`,
      });
    }
    if (encodingFamily(first.type) !== encodingFamily(type.type)) {
      ctx.addIssue({
        code: 'custom',
        path: [key, 'type'],
        message: `${prefix} value encoding: ${first.key} is ${formatLogicalType(first.type)}, this column is ${formatLogicalType(type.type)}`,
      });
    }
  }
}

function sameReadPolicy(a: RawColumn, b: RawColumn): boolean {
  const sameSet = (x: string[], y: string[]) => {
    const sx = new Set(x);
    const sy = new Set(y);
    return sx.size === sy.size && [...sx].every((r) => sy.has(r));
  };
  return a.others === b.others && READ_DECISIONS.every((d) => sameSet(a.read[d], b.read[d]));
}

/** Adds what consumers need but the file leaves implicit; runs only on a valid config. */
function resolveColumns<C extends RawColumn>(columns: Record<string, C>) {
  const out: Record<
    string,
    Omit<C, 'search'> & {
      /** Normalized spelling, e.g. `integer` → `int4`, `character varying(12)` → `varchar(12)`. */
      type: string;
      logicalType: LogicalType;
      search: string[];
      /** Parsed (case-folded) schema, table and column names. */
      ref: { schema: string; table: string; column: string };
      /** The key domain: `domain` if set, else the canonical column path. */
      keyDomain: string;
    }
  > = {};
  for (const [key, col] of Object.entries(columns)) {
    const parsed = parseQualifiedName(key);
    const t = parseLogicalType(col.type);
    // checkColumns has rejected anything else, so these are unreachable on a config that got here.
    if (!parsed.ok || parsed.parts.length !== 3 || !t.ok) throw new Error(`unvalidated column ${key}`);
    const [schema, table, column] = parsed.parts as [string, string, string];
    out[key] = {
      ...col,
      type: formatLogicalType(t.type),
      logicalType: t.type,
      search: col.search ?? [...col.read.plaintext],
      ref: { schema, table, column },
      keyDomain: col.domain ?? canonicalName(parsed.parts),
    };
  }
  return out;
}

export type MamoriConfig = z.output<ReturnType<typeof configSchema>>;
/** The YAML as written (before defaults): what defaultConfig() overrides and tests construct. */
export type MamoriConfigInput = z.input<ReturnType<typeof configSchema>>;
export type ListenConfig = MamoriConfig['listen'];
export type TlsConfig = NonNullable<MamoriConfig['tls']>;
export type UpstreamConfig = MamoriConfig['upstream'];
export type UpstreamTlsConfig = UpstreamConfig['tls'];
export type ControlConfig = MamoriConfig['control'];
export type AuthConfig = MamoriConfig['auth'];
export type LimitsConfig = MamoriConfig['limits'];
export type LogConfig = MamoriConfig['log'];
export type LogLevel = LogConfig['level'];
export type KeyringConfig = MamoriConfig['keyring'];
export type ColumnPolicy = MamoriConfig['columns'][string];
export type ApprovalConfig = MamoriConfig['approval'];
export type SearchConfig = MamoriConfig['search'];
export type AuditConfig = MamoriConfig['audit'];
export type AuditSinkConfig = AuditConfig['sinks'][number];
export type MetricsConfig = MamoriConfig['metrics'];
