// `mamori keys …`: init | list | add | rotate | reencrypt | retire | shred | rewrap | escrow.
// Exit codes: 0 ok, 1 refused or failed, 2 usage.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { loadConfig, formatConfigIssues } from '../config/load.js';
import type { MamoriConfig } from '../config/schema.js';
import type { KeyringConfig } from './config-types.js';
import { Keyring, type KeyringOptions } from './keyring.js';
import type { KmsProviderOptions } from './providers/index.js';
import { reencryptColumn, retireVersion, rotateAndReencrypt, type ReencryptProgress } from './rotation.js';

export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

/** Test seams only: the KMS client (KMS is not reachable from tests). */
export interface CliDeps {
  kms?: KmsProviderOptions;
}

const USAGE = `usage: mamori keys <command> [--config FILE] [options]
  init      [--identity NAME]                   create the root key (local) and the keystore
  list                                          domains, versions, status, encryption counts
  add       <domain> --mode randomized|deterministic [--purpose data|subject|audit]
  rotate    <domain> [--column S.T.C ... -d DB] [--settle SECONDS]
                                                new version; with --column (always for deterministic
                                                domains) the rows are reencrypted in the same job
  reencrypt <domain> [--column S.T.C ...] -d DB [--batch N]
  retire    <domain> <version> [--column S.T.C ...] -d DB
  shred     <domain> --version V --yes [--new-key-arn ARN]
  rewrap    [--new-key-arn ARN]                 rewrap every key under a new root
  escrow    export [--out DIR] | verify --private-key FILE | backfill
            | recover --private-key FILE [--new-key-arn ARN]
  -d, --database  connection string or database name (PGHOST/PGPORT/PGUSER/PGPASSWORD apply)
  Columns default to the domain name when it is a schema.table.column path.
`;

class UsageError extends Error {}

/** Maps the validated config section (config/schema.ts) onto the keyring's own interface. */
export function keyringConfigFrom(k: MamoriConfig['keyring']): KeyringConfig {
  const out: KeyringConfig = {
    provider: k.provider,
    keyFile: k.keyFile,
    store: k.store.type === 'file' ? { type: 'file', path: k.store.path } : { type: 'postgres', table: k.store.table },
    cacheTtlSeconds: k.cacheTtlSeconds,
    rotateAfterEncryptions: k.rotateAfterEncryptions,
  };
  if (k.kms?.keyArn && k.kms.region) {
    out.kms = { keyArn: k.kms.keyArn, region: k.kms.region, multiRegion: k.kms.multiRegion };
    if (k.kms.hmacKeyArn) out.kms.hmacKeyArn = k.kms.hmacKeyArn;
  }
  if (k.escrow) out.escrow = { publicKeyFile: k.escrow.publicKeyFile };
  const extra = k as { keystoreId?: unknown; stateFile?: unknown; escrow?: { exportDir?: unknown } };
  if (typeof extra.keystoreId === 'string') out.keystoreId = extra.keystoreId;
  if (typeof extra.stateFile === 'string') out.stateFile = extra.stateFile;
  if (out.escrow && typeof extra.escrow?.exportDir === 'string') out.escrow.exportDir = extra.escrow.exportDir;
  return out;
}

function pgConfig(database: string | undefined): pg.PoolConfig {
  if (!database) return {}; // libpq environment defaults
  return /^postgres(ql)?:\/\//.test(database) ? { connectionString: database } : { database };
}

export async function runKeysCommand(args: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }, deps: CliDeps = {}): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        database: { type: 'string', short: 'd' },
        column: { type: 'string', multiple: true },
        version: { type: 'string' },
        yes: { type: 'boolean' },
        identity: { type: 'string' },
        out: { type: 'string' },
        'private-key': { type: 'string' },
        'new-key-arn': { type: 'string' },
        batch: { type: 'string' },
        settle: { type: 'string' },
        mode: { type: 'string' },
        purpose: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    io.stderr.write(`mamori keys: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values: v, positionals: pos } = parsed;
  const cmd = pos[0];
  if (v.help || !cmd) {
    (v.help ? io.stdout : io.stderr).write(USAGE);
    return v.help ? 0 : 2;
  }
  const known = ['init', 'list', 'add', 'rotate', 'reencrypt', 'retire', 'shred', 'rewrap', 'escrow'];
  if (!known.includes(cmd)) {
    io.stderr.write(`mamori keys: unknown command ${JSON.stringify(cmd)}\n${USAGE}`);
    return 2;
  }

  const configFile = v.config ?? 'mamori.yaml';
  const loaded = await loadConfig(configFile, process.env, { requireSecrets: false });
  if (!loaded.ok) {
    io.stderr.write(`mamori keys: invalid config:\n${formatConfigIssues(loaded.errors)}\n`);
    return 1;
  }
  const cfg = keyringConfigFrom(loaded.config.keyring);
  let pool: pg.Pool | null = null;
  const db = (): pg.Pool => {
    if (!pool) {
      pool = new pg.Pool({ ...pgConfig(v.database), max: 2 });
      pool.on('error', () => undefined); // an idle connection dropped by the server; the next query reconnects
    }
    return pool;
  };
  const opts = (): KeyringOptions => {
    const o: KeyringOptions = {};
    if (cfg.store.type === 'postgres') o.pg = db();
    if (deps.kms) o.kms = deps.kms;
    return o;
  };
  const int = (s: string | undefined, what: string): number => {
    if (s === undefined || !/^\d+$/.test(s)) throw new UsageError(`${what} must be a non-negative integer`);
    return Number(s);
  };
  const domainArg = (): string => {
    if (!pos[1]) throw new UsageError(`${cmd} needs a key domain`);
    return pos[1];
  };
  const columnsFor = (domain: string): string[] => v.column ?? (domain.split('.').length === 3 ? [domain] : []);
  const newRoot = v['new-key-arn'] ? { keyArn: v['new-key-arn'] } : {};
  const say = (s: string): void => void io.stdout.write(s + '\n');
  const progress = (p: ReencryptProgress): void =>
    say(`  ${p.column}: ${p.done}/${p.total} moved${p.conflicts ? `, ${p.conflicts} changed concurrently` : ''}${p.shredded ? `, ${p.shredded} shredded` : ''}`);

  let kr: Keyring | null = null;
  try {
    if (cmd === 'init') {
      const identity = v.identity ?? process.env.MAMORI_DATABASE_IDENTITY ?? v.database ?? process.env.PGDATABASE;
      if (!identity) throw new UsageError('init needs --identity NAME (the database identity bound into every key)');
      kr = await Keyring.init(cfg, { ...opts(), databaseIdentity: identity });
      say(`keystore ${kr.keystoreId} created (${cfg.store.type === 'file' ? cfg.store.path : cfg.store.table})`);
      say(`root: ${kr.rootIdentity}${cfg.provider === 'local' ? ` (${cfg.keyFile}, mode 0600)` : ''}`);
      say(`database identity: ${identity}`);
      return 0;
    }
    if (cmd === 'escrow' && pos[1] === 'recover') {
      if (!v['private-key']) throw new UsageError('escrow recover needs --private-key FILE');
      kr = await Keyring.recoverWithEscrow(cfg, readFileSync(v['private-key'], 'utf8'), opts(), newRoot);
      say(`recovered keystore ${kr.keystoreId}: every key is now wrapped under ${kr.rootIdentity}`);
      return 0;
    }
    kr = await Keyring.open(cfg, opts());
    switch (cmd) {
      case 'list': {
        const domains = kr.list();
        say(`keystore ${kr.keystoreId}  database ${kr.databaseIdentity}  root ${kr.rootIdentity}  generation ${kr.generation}`);
        if (domains.length === 0) say('no key domains');
        for (const d of domains) {
          say(`${d.id}\t${d.name}\t${d.mode}\t${d.purpose}${d.rotating ? `\tROTATING ${d.rotating.from}→${d.rotating.to} (writes frozen)` : ''}`);
          for (const ver of d.versions) {
            say(`\tv${ver.version}\t${ver.status}${ver.current ? ' (current)' : ''}\t${ver.encryptions} encryptions${ver.escrowed ? '\tescrowed' : ''}`);
          }
        }
        return 0;
      }
      case 'add': {
        const mode = v.mode;
        if (mode !== 'randomized' && mode !== 'deterministic') throw new UsageError('add needs --mode randomized|deterministic');
        const purpose = v.purpose ?? 'data';
        if (purpose !== 'data' && purpose !== 'subject' && purpose !== 'audit') throw new UsageError('--purpose must be data, subject or audit');
        const d = await kr.ensureDomain(domainArg(), mode, purpose);
        say(`key domain ${d.name}: id ${d.id}, ${d.mode}, version ${d.current}`);
        return 0;
      }
      case 'rotate': {
        const domain = domainArg();
        const info = kr.domain(domain);
        if (info.mode === 'randomized' && !v.column) {
          const ver = await kr.rotate(domain);
          say(`${domain}: new writes use version ${ver}; move old rows with \`mamori keys reencrypt ${domain} -d …\``);
          return 0;
        }
        const cols = columnsFor(domain);
        if (cols.length === 0) throw new UsageError(`name the columns of ${domain} with --column`);
        const settleMs = v.settle === undefined ? 3000 : int(v.settle, '--settle') * 1000;
        say(`${domain}: rotating${info.mode === 'deterministic' ? ' (writes to the domain are refused until done)' : ''}`);
        const r = await rotateAndReencrypt(kr, db(), domain, cols, { settleMs, onProgress: progress, batchSize: v.batch ? int(v.batch, '--batch') : 500 });
        if (!r.finished) {
          say(`${domain}: version ${r.version}; rows changed during the job, run the same command again to finish`);
          return 1;
        }
        say(`${domain}: now at version ${r.version}`);
        return 0;
      }
      case 'reencrypt': {
        const domain = domainArg();
        const cols = columnsFor(domain);
        if (cols.length === 0) throw new UsageError(`name the columns of ${domain} with --column`);
        let conflicts = 0;
        for (const col of cols) {
          const r = await reencryptColumn(kr, db(), domain, col, { onProgress: progress, batchSize: v.batch ? int(v.batch, '--batch') : 500 });
          conflicts += r.conflicts;
        }
        say(conflicts ? `${conflicts} rows changed concurrently; run again to move them` : `${domain}: every row is at version ${kr.domain(domain).current}`);
        return conflicts ? 1 : 0;
      }
      case 'retire': {
        const domain = domainArg();
        const version = int(pos[2] ?? v.version, 'version');
        await retireVersion(kr, db(), domain, version, columnsFor(domain));
        say(`${domain} version ${version} retired`);
        return 0;
      }
      case 'shred': {
        const domain = domainArg();
        const version = int(v.version ?? pos[2], '--version');
        if (!v.yes) {
          io.stderr.write(`mamori keys: shredding ${domain} version ${version} destroys it for good and replaces the root; add --yes\n`);
          return 1;
        }
        say(await kr.shred(domain, version, newRoot));
        say(`${domain} version ${version} shredded: its cells now read as NULL`);
        return 0;
      }
      case 'rewrap': {
        say(await kr.rewrap(newRoot));
        return 0;
      }
      case 'escrow': {
        const sub = pos[1];
        if (sub === 'export') {
          const files = kr.escrowExport(v.out ?? cfg.escrow?.exportDir);
          say(`${files.length} cohort escrow copies written${files.length ? ` under ${v.out ?? cfg.escrow?.exportDir}` : ''}`);
          return 0;
        }
        if (sub === 'verify') {
          if (!v['private-key']) throw new UsageError('escrow verify needs --private-key FILE');
          const r = await kr.escrowVerify(readFileSync(v['private-key'], 'utf8'));
          say(`${r.recoverable} keys recoverable with the escrow key`);
          if (r.missing.length) say(`not recoverable: ${r.missing.join(', ')} (run \`mamori keys escrow backfill\`)`);
          return r.missing.length ? 1 : 0;
        }
        if (sub === 'backfill') {
          say(`${await kr.escrowBackfill()} keys now carry an escrow copy`);
          return 0;
        }
        throw new UsageError('escrow needs export | verify | backfill | recover');
      }
    }
    return 2;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`mamori keys: ${err.message}\n${USAGE}`);
      return 2;
    }
    io.stderr.write(`mamori keys ${cmd}: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await kr?.close().catch(() => undefined);
    if (pool) await (pool as pg.Pool).end().catch(() => undefined);
  }
}
