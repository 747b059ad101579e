// Shared fixtures for the audit tests: temp directories, a signing key pair, and a trail with some records.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { AuditTrail } from '../../../proxy/audit/trail.js';
import type { AuditConfigInput } from '../../../proxy/audit/config.js';
import type { AuditEvent } from '../../../proxy/audit/record.js';

export async function tempDir(prefix = 'mamori-audit-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export function keyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ed25519');
}

export function intent(i: number, user = 'alice'): AuditEvent {
  return {
    kind: 'statement_intent',
    statement: `st-${i}`,
    mode: 'protected',
    session: `sess-${i % 3}`,
    user,
    client: '127.0.0.1:5555',
    database: 'app',
    fingerprint: 'select name, my_number from people where id = $1',
    command: 'SELECT',
    columns: [{ column: 'public.people.my_number', decision: i % 2 ? 'plaintext' : 'mask' }],
  };
}

/** A file-sink config in `dir` with timers off (tests drive heartbeats and checkpoints explicitly). */
export function fileConfig(dir: string, extra: Partial<AuditConfigInput> = {}, rotateBytes = 0): AuditConfigInput {
  return {
    fsync: 'none',
    heartbeatSeconds: 0,
    checkpointEverySeconds: 0,
    checkpointSink: 'none',
    sinks: [{ type: 'file', path: join(dir, 'mamori.jsonl'), rotateBytes, rotateSeconds: 0 }],
    ...extra,
  };
}

/** Writes `n` intent records (one at a time) with a checkpoint after every `checkpointEvery`. */
export async function writeTrail(trail: AuditTrail, n: number, checkpointEvery = 0): Promise<void> {
  for (let i = 0; i < n; i++) {
    await trail.append(intent(i));
    if (checkpointEvery > 0 && (i + 1) % checkpointEvery === 0) await trail.checkpoint();
  }
}
