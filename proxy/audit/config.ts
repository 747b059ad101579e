// The `audit:` section of mamori.yaml (zod). Kept here so the audit library validates its own input; the
// top-level config schema can embed `auditConfigSchema` as is.
import { z } from 'zod';

const fileSink = z.object({
  type: z.literal('file'),
  path: z.string().min(1),
  /** Rotate when the active file would exceed this many bytes (0 = never). */
  maxBytes: z.number().int().nonnegative().default(64 * 1024 * 1024),
  /** Rotate when the active file is older than this (0 = never). */
  maxAgeSeconds: z.number().int().nonnegative().default(86400),
});

const postgresSink = z.object({
  type: z.literal('postgres'),
  url: z.string().min(1),
  table: z.string().regex(/^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$/).default('mamori_audit'),
  batchSize: z.number().int().positive().default(500),
  /** With failMode closed, appends are refused once the table lags the file by more than this many records. */
  maxLagRecords: z.number().int().positive().default(100_000),
  /** How often to look for new records when not woken by a write. */
  pollMs: z.number().int().positive().default(1000),
});

const stdoutSink = z.object({ type: z.literal('stdout') });

export const auditSinkSchema = z.discriminatedUnion('type', [fileSink, postgresSink, stdoutSink]);

export const auditConfigSchema = z
  .object({
    statements: z.enum(['protected', 'all']).default('protected'),
    failMode: z.enum(['closed', 'open']).default('closed'),
    fsync: z.enum(['none', 'interval', 'always']).default('interval'),
    fsyncIntervalMs: z.number().int().positive().default(1000),
    /** How the file sink writes: `sync` (write(2) on the event loop, microseconds) or `async` (thread pool). */
    writeMode: z.enum(['sync', 'async']).default('sync'),
    heartbeatSeconds: z.number().nonnegative().default(60),
    checkpointSeconds: z.number().nonnegative().default(300),
    /** Records waiting for the writer; beyond this, closed mode refuses and open mode drops (and counts). */
    maxPending: z.number().int().positive().default(10_000),
    /** Subject hashes kept inline in one record; more go to a side file named by its SHA-256. */
    maxInlineSubjects: z.number().int().positive().default(64),
    /** Ed25519 private key (PEM, from `mamori audit keygen`) for checkpoint signatures. */
    signingKey: z.string().optional(),
    /** The matching public key, used by `audit verify`. */
    publicKey: z.string().optional(),
    /** Where checkpoints are also shipped: keep it out of reach of DBAs and host admins. */
    checkpointSink: z.object({ type: z.literal('file'), path: z.string().min(1) }).optional(),
    sinks: z.array(auditSinkSchema).min(1).default([{ type: 'file', path: './audit/mamori.jsonl', maxBytes: 64 * 1024 * 1024, maxAgeSeconds: 86400 }]),
  })
  .superRefine((cfg, ctx) => {
    const files = cfg.sinks.filter((s) => s.type === 'file').length;
    if (files > 1) ctx.addIssue({ code: 'custom', path: ['sinks'], message: 'at most one file sink (it is the point of truth)' });
    if (files === 0 && cfg.sinks.some((s) => s.type === 'postgres'))
      ctx.addIssue({ code: 'custom', path: ['sinks'], message: 'a postgres sink is fed from the file sink: add one' });
  });

export type AuditConfig = z.infer<typeof auditConfigSchema>;
export type AuditConfigInput = z.input<typeof auditConfigSchema>;
export type FileSinkConfig = z.infer<typeof fileSink>;
export type PostgresSinkConfig = z.infer<typeof postgresSink>;
