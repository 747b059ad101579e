// The `audit:` section as the audit library reads it. The names and defaults follow config/schema.ts (the
// mamori.yaml schema), so `AuditTrail.open(config.audit, …)` takes the loaded config as is; this schema is not
// strict, adds the library's own optional settings (writeMode, maxInlineSubjects, a postgres sink's url and
// maxLagRecords), and is looser on minimums so tests can use tiny rotation sizes and intervals.
import { z } from 'zod';

const fileSink = z.object({
  type: z.literal('file'),
  path: z.string().min(1),
  /** Rotate when the active file would pass this many bytes (0 = never). */
  rotateBytes: z.number().int().nonnegative().default(100 * 1024 * 1024),
  /** Rotate when the active file is older than this (0 = never). */
  rotateSeconds: z.number().int().nonnegative().default(86_400),
});

const pgConnection = z.object({
  host: z.string().optional(),
  port: z.number().int().optional(),
  database: z.string().optional(),
  user: z.string().optional(),
  /** The password comes from this environment variable (resolved by config/load.ts into `sinkPasswords`). */
  passwordEnv: z.string().optional(),
  tls: z
    .object({
      mode: z.enum(['disable', 'require', 'verify-ca', 'verify-full']).default('disable'),
      ca: z.string().optional(),
      servername: z.string().optional(),
    })
    .optional(),
});

const IDENT = String.raw`(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)`;
const postgresSink = z.object({
  type: z.literal('postgres'),
  table: z
    .string()
    .regex(new RegExp(`^${IDENT}(?:\\.${IDENT})?$`), 'table must be [schema.]name')
    .default('mamori.audit_log'),
  connection: pgConnection.optional(),
  /** Alternatively a connection URL (tests; the password must then be in it). */
  url: z.string().min(1).optional(),
  batchSize: z.number().int().positive().default(500),
  /** How often to look for new records in the file when not woken by a write. */
  flushIntervalMs: z.number().int().positive().default(1000),
  /** With failMode closed, appends are refused once the table lags the file by more than this many records. */
  maxLagRecords: z.number().int().positive().default(100_000),
});

const stdoutSink = z.object({ type: z.literal('stdout') });

export const auditSinkSchema = z.discriminatedUnion('type', [fileSink, postgresSink, stdoutSink]);

export const auditConfigSchema = z
  .object({
    statements: z.enum(['protected', 'all', 'none']).default('protected'),
    failMode: z.enum(['closed', 'open']).default('closed'),
    fsync: z.enum(['none', 'interval', 'always']).default('interval'),
    fsyncIntervalMs: z.number().int().positive().default(1000),
    /** How the file sink writes: `sync` (write(2) on the event loop, microseconds) or `async` (thread pool). */
    writeMode: z.enum(['sync', 'async']).default('sync'),
    sinks: z.array(auditSinkSchema).min(1).default([{ type: 'file', path: './audit/mamori.jsonl', rotateBytes: 100 * 1024 * 1024, rotateSeconds: 86_400 }]),
    /** Records waiting for the writer; beyond this, closed mode refuses and open mode drops (and counts). */
    maxBufferedRecords: z.number().int().positive().default(10_000),
    /** 0 turns heartbeats off. */
    heartbeatSeconds: z.number().nonnegative().default(60),
    /** 0 turns periodic checkpoints off (one is still written at close). */
    checkpointEverySeconds: z.number().nonnegative().default(300),
    /** Subject hashes kept inline in one record; more go to a side file named by its SHA-256. */
    maxInlineSubjects: z.number().int().positive().default(64),
    /** Ed25519 private key (PEM, from `mamori audit keygen`); the CLI reads it, the proxy passes the KeyObject. */
    signingKeyFile: z.string().optional(),
    /** Where checkpoints are also written; `none` for nowhere else. Keep it out of reach of DBAs and host admins. */
    checkpointSink: z
      .union([z.literal('none').transform(() => null), z.null(), auditSinkSchema])
      .default({ type: 'file', path: './audit-checkpoints/mamori.jsonl', rotateBytes: 100 * 1024 * 1024, rotateSeconds: 86_400 }),
  })
  .superRefine((cfg, ctx) => {
    const files = cfg.sinks.filter((s) => s.type === 'file').length;
    if (files > 1) ctx.addIssue({ code: 'custom', path: ['sinks'], message: 'at most one file sink (it is the point of truth)' });
    if (files === 0 && cfg.sinks.some((s) => s.type === 'postgres'))
      ctx.addIssue({ code: 'custom', path: ['sinks'], message: 'a postgres sink is fed from the file sink: add one' });
  });

export type AuditConfig = z.infer<typeof auditConfigSchema>;
export type AuditConfigInput = z.input<typeof auditConfigSchema>;
export type AuditSinkConfig = z.infer<typeof auditSinkSchema>;
export type FileSinkConfig = z.infer<typeof fileSink>;
export type PostgresSinkConfig = z.infer<typeof postgresSink>;
