// The `mamori` command: start, setup-db, config check, and the keys / audit command groups.
// Exit codes: 0 ok, 1 failed or refused, 2 usage.
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { formatConfigIssues, loadConfig } from '../config/load.js';
import { watchConfig } from '../config/reload.js';
import type { MamoriConfig } from '../config/schema.js';
import type { ConfigSecrets } from '../config/load.js';
import { createLogger, type Logger } from './log.js';
import { installLookupFunction } from './session/auth-lookup.js';
import { installCatalogSetup } from './policy/catalog.js';
import { startMamori, type MamoriServer } from './server.js';

export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

const USAGE = `usage: mamori <command> [options]

commands:
  start [--config FILE] [--port N] [--metrics-port N]
                                 run the proxy (no --config: the embedded default, for trying it out);
                                 --port overrides listen.port (0: any free port, printed at start);
                                 --metrics-port overrides metrics.port (0: any free port)
  setup-db [--config FILE] [-d DB]
                                 install mamori's lookup function, guard domains and DDL epoch in a database (superuser via PGHOST/PGUSER/...)
  config check --config FILE     validate a configuration file
  policy check -d DB [--config FILE]
                                 report unprotected columns, missing guards, plaintext rows, risky roles and logging
  policy pending|approve --config FILE -d DB [--role R --member M | --login L | --all-pending] [--yes]
                                 separation of duties: list / approve new members of plaintext, search, write grants
  policy lint FILE --config FILE [-d DB] [--json]
                                 run a file of statements through the analyser and print each decision
  protect schema.table.column -d DB [--config FILE] [--yes] [--batch N] [--throttle-ms N]
                                 encrypt a live plaintext column online (docs/protect.md)
  unprotect schema.table.column -d DB --yes-decrypt-to-plaintext [--config FILE]
                                 decrypt it back to plaintext (plaintext readers only; audited)
  keys <init|list|rotate|reencrypt|retire|shred|rewrap|escrow> ...
  audit <verify|search|tail|keygen> ...
  --version                      print the version
`;

/** Minimal option parsing: --name value, --name=value, -d value, --flag. */
export function parseArgs(args: string[]): { positional: string[]; options: Map<string, string | true> } {
  const positional: string[] = [];
  const options = new Map<string, string | true>();
  const valued = new Set(['config', 'c', 'database', 'd', 'port', 'metrics-port']);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a.startsWith('--') && a.includes('=')) {
      const eq = a.indexOf('=');
      options.set(a.slice(2, eq), a.slice(eq + 1));
    } else if (a.startsWith('-') && a !== '-') {
      const name = a.replace(/^--?/, '');
      if (valued.has(name) && i + 1 < args.length) options.set(name, args[++i]!);
      else options.set(name, true);
    } else positional.push(a);
  }
  return { positional, options };
}

function opt(options: Map<string, string | true>, ...names: string[]): string | undefined {
  for (const n of names) {
    const v = options.get(n);
    if (typeof v === 'string') return v;
  }
  return undefined;
}

async function loadOrFail(file: string, io: CliIo, requireSecrets = true): Promise<{ config: MamoriConfig; secrets: ConfigSecrets } | null> {
  const r = await loadConfig(file, process.env, { requireSecrets });
  if (!r.ok) {
    io.stderr.write(`mamori: the configuration was refused:\n${formatConfigIssues(r.errors)}\n`);
    return null;
  }
  return { config: r.config, secrets: r.secrets };
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
      return start(rest, io);
    case 'setup-db':
      return setupDb(rest, io);
    case 'policy':
      if (rest[0] === 'check') return (await import('./policy/check.js')).runPolicyCheck(rest.slice(1), io);
      if (rest[0] === 'approve' || rest[0] === 'pending') return (await import('./policy/cli.js')).runPolicyCommand(rest, io);
      if (rest[0] === 'lint') return (await import('./policy/lint.js')).runPolicyLint(rest.slice(1), io);
      io.stderr.write(USAGE);
      return 2;
    case 'config': {
      const { positional, options } = parseArgs(rest);
      const file = opt(options, 'config', 'c');
      if (positional[0] !== 'check' || !file) {
        io.stderr.write(USAGE);
        return 2;
      }
      const loaded = await loadOrFail(file, io, false);
      if (!loaded) return 1;
      io.stdout.write(`${file}: ok\n`);
      return 0;
    }
    case 'protect':
      return (await import('./protect/cli.js')).runProtectCommand(rest, io);
    case 'unprotect':
      return (await import('./protect/cli.js')).runUnprotectCommand(rest, io);
    case 'keys': {
      const { runKeysCommand } = await import('../keyring/cli.js');
      return runKeysCommand(rest, io);
    }
    case 'audit': {
      const { runAuditCommand } = await import('./audit/cli.js');
      // --subject with --config: hash under the keyring's subject keys (opening the keyring needs its root)
      const keys = await (await import('./audit/cli-keys.js')).subjectHasherFor(rest).catch((err: unknown) => {
        io.stderr.write(`mamori audit: the keyring could not be opened for a subject search: ${(err as Error).message}\n`);
        return null;
      });
      try {
        return await runAuditCommand(rest, {
          stdout: (t: string) => io.stdout.write(t), stderr: (t: string) => io.stderr.write(t),
          ...(keys ? { hashSubject: keys.hashSubject } : {}),
        });
      } finally {
        await keys?.close();
      }
    }
    case '--version':
    case 'version':
      io.stdout.write(`mamori ${version()}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      io.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      io.stderr.write(`mamori: unknown command "${command}"\n${USAGE}`);
      return 2;
  }
}

async function start(args: string[], io: CliIo): Promise<number> {
  const { options } = parseArgs(args);
  const file = opt(options, 'config', 'c');
  const portText = opt(options, 'port');
  const portOverride = portText === undefined ? undefined : Number(portText);
  if (options.get('port') === true || (portText !== undefined && !(/^\d{1,5}$/.test(portText) && portOverride! <= 65535))) {
    io.stderr.write(`mamori: --port must be a port number (0-65535), got "${portText ?? ''}"\n`);
    return 2;
  }
  const metricsText = opt(options, 'metrics-port');
  if (options.get('metrics-port') === true || (metricsText !== undefined && !(/^\d{1,5}$/.test(metricsText) && Number(metricsText) <= 65535))) {
    io.stderr.write(`mamori: --metrics-port must be a port number (0-65535), got "${metricsText ?? ''}"\n`);
    return 2;
  }
  let config: MamoriConfig;
  let secrets: ConfigSecrets;
  let embedded: Awaited<ReturnType<typeof import('./embedded.js')['startEmbedded']>> | null = null;
  let log: Logger;
  if (file) {
    const loaded = await loadOrFail(file, io);
    if (!loaded) return 1;
    ({ config, secrets } = loaded);
    log = createLogger(config.log);
  } else {
    const { defaultConfig } = await import('../config/load.js');
    log = createLogger(defaultConfig().log);
    const { startEmbedded } = await import('./embedded.js');
    try {
      embedded = await startEmbedded(log);
    } catch (err) {
      io.stderr.write(`mamori: could not start the embedded PostgreSQL: ${(err as Error).message}\n`);
      return 1;
    }
    ({ config, secrets } = embedded);
  }
  // --port wins over the file's listen.port (and the embedded default's 6432): tests and side-by-side runs.
  if (portOverride !== undefined) config = { ...config, listen: { ...config.listen, port: portOverride } };
  if (metricsText !== undefined) config = { ...config, metrics: { ...config.metrics, port: Number(metricsText) } };
  let server: MamoriServer;
  try {
    server = await startMamori({ config, secrets, log });
  } catch (err) {
    io.stderr.write(`mamori: could not start: ${(err as Error).message}\n`);
    await embedded?.stop();
    return 1;
  }
  if (embedded) {
    const dir = embedded.dir.replace(process.cwd() + '/', '');
    const url = (user: string): string =>
      `PGPASSWORD="$(cat ${dir}/${user}.password)" psql "postgresql://${user}@${server.host}:${server.port}/postgres?sslmode=require"`;
    const { DEMO_ROLES } = await import('./embedded.js');
    io.stdout.write([
      '',
      `mamori is listening on ${server.host}:${server.port} (TLS with a self-signed certificate in ${dir}),`,
      `in front of an embedded PostgreSQL on 127.0.0.1:${embedded.upstreamPort} with its data in ${dir}/pgdata.`,
      '',
      'The demo table public.employees(id, name, department, my_number) protects my_number (a My Number,',
      'encrypted deterministically with a local key in ' + dir + '). Connect as each role to see the policy:',
      '',
      ...DEMO_ROLES.flatMap((r) => [`  ${r.name}: sees ${r.sees}`, `    ${url(r.name)}`]),
      '',
      'For example, as hr_clerk:',
      "  INSERT INTO employees VALUES (1, 'Sato', 'HR', '1234-5678-9018');",
      '  SELECT * FROM employees;                -- then the same as hr_viewer and as outsider',
      '',
      'The superuser (sees only what the policy gives it: outsider rules):',
      `    ${url('postgres')}`,
      '',
      `The audit trail is in ${dir}/audit; verify it with: mamori audit verify ${dir}/audit`,
      ...(server.metricsPort !== null ? [`Metrics and health: http://${config.metrics.host}:${server.metricsPort}/metrics, /healthz, /readyz`] : []),
      '',
      'Stop with Ctrl-C.',
      '',
    ].join('\n'));
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      void server.shutdown().then(async () => {
        await embedded?.stop();
        resolve(0);
      });
    };
    // The policy (columns, approvals, admin roles, search limits) reloads on SIGHUP and when the file changes:
    // validated against the schema and the catalog first; a bad file is refused and the old policy stays.
    const watcher = file && server.engine ? watchConfig(file, {
      initial: { config, secrets },
      logger: log,
      validate: (next) => server.engine!.validatePolicy(next),
      onChange: (next) => server.engine!.applyPolicy(next),
      onError: () => server.engine?.reloadRefused(), // the watcher logs the reasons
    }) : null;
    process.on('SIGTERM', () => {
      watcher?.close();
      stop('SIGTERM');
    });
    process.on('SIGINT', () => {
      watcher?.close();
      stop('SIGINT');
    });
    process.on('SIGHUP', () => {
      void server.reload();
      void watcher?.reload();
    });
  });
}

async function setupDb(args: string[], io: CliIo): Promise<number> {
  const { options } = parseArgs(args);
  const file = opt(options, 'config', 'c');
  let controlUser = 'mamori';
  let fn = 'mamori.get_auth';
  if (file) {
    const loaded = await loadOrFail(file, io, false);
    if (!loaded) return 1;
    controlUser = loaded.config.control.user;
    fn = loaded.config.auth.lookupFunction;
  }
  const database = opt(options, 'database', 'd');
  // Superuser credentials come from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE…).
  const client = new pg.Client(database ? { database } : {});
  try {
    await client.connect();
    const role = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [controlUser]);
    if (!role.rowCount) {
      io.stderr.write(`mamori: the control role "${controlUser}" does not exist; create it first:\n` +
        `  CREATE ROLE ${controlUser} LOGIN PASSWORD '…';   -- and export its password in the variable control.passwordEnv names\n`);
      return 1;
    }
    await installLookupFunction(client, fn, controlUser);
    io.stdout.write(`installed ${fn}(text) in database "${client.database}", executable by ${controlUser} only\n`);
    await installCatalogSetup(client, controlUser);
    io.stdout.write(`installed guard domains mamori.<type>, mamori.catalog_epoch and its DDL event triggers; ${controlUser} may read the epoch\n`);
    return 0;
  } catch (err) {
    io.stderr.write(`mamori: setup-db failed: ${(err as Error).message}\n`);
    return 1;
  } finally {
    await client.end().catch(() => undefined);
  }
}
