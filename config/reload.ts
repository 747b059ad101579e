// Keeps the running configuration in step with the file: on SIGHUP (the caller wires the signal to reload())
// and on file changes. A new file is loaded, schema-checked and validated (e.g. against the catalog) before it
// replaces the old one; a bad file is refused, reported, and the old configuration stays in force.
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { formatConfigIssues, type ConfigIssue } from './issues.js';
import { parseConfigText, type ConfigSecrets, type Env, type LoadOptions } from './load.js';
import type { MamoriConfig } from './schema.js';

export interface ChangeInfo {
  secrets: ConfigSecrets;
  /** The configuration being replaced (undefined on the first load). */
  previous: MamoriConfig | undefined;
}

export interface WatchOptions {
  /** Applies a new configuration; if it throws, the change counts as refused and the old one stays current. */
  onChange(config: MamoriConfig, info: ChangeInfo): void | Promise<void>;
  /** A new file was refused: these are the reasons (the old configuration stays in force). */
  onError(issues: ConfigIssue[]): void;
  /** Checks beyond the schema (e.g. columns against the catalog); any issue refuses the change. */
  validate?: (config: MamoriConfig) => Promise<ConfigIssue[]>;
  /**
   * The configuration already running. When given, watching starts from it; otherwise the file is loaded once at
   * start (see `ready`) and handed to onChange / onError like any reload.
   */
  initial?: { config: MamoriConfig; secrets: ConfigSecrets };
  env?: Env;
  loadOptions?: LoadOptions;
  logger?: Logger;
  /** Quiet time after the last file event before reloading (editors write in several steps). Default 150 ms. */
  debounceMs?: number;
}

export type ReloadOutcome =
  | { status: 'applied' }
  | { status: 'unchanged' }
  | { status: 'refused'; issues: ConfigIssue[] };

export interface ConfigWatcher {
  /** Re-reads the file now (SIGHUP). Applies it if the configuration or its secrets changed. */
  reload(): Promise<ReloadOutcome>;
  /** The outcome of the initial load (resolved `unchanged` at once when `initial` was given). */
  readonly ready: Promise<ReloadOutcome>;
  /** The configuration in force; switches to a new one once onChange has returned (onChange gets `previous`). */
  current(): MamoriConfig | undefined;
  close(): void;
}

export function watchConfig(file: string, opts: WatchOptions): ConfigWatcher {
  const absolute = path.resolve(file);
  const dir = path.dirname(absolute);
  const debounceMs = opts.debounceMs ?? 150;
  const log = opts.logger;

  let current = opts.initial?.config;
  let currentKey = opts.initial ? fingerprint(opts.initial.config, opts.initial.secrets) : undefined;
  let lastText: string | undefined; // last content seen from a file event, so one bad save is reported once
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let queue: Promise<unknown> = Promise.resolve();

  const refuse = (issues: ConfigIssue[]): ReloadOutcome => {
    log?.error(
      { file, issues: formatConfigIssues(issues).split('\n') },
      'configuration refused; keeping the previous configuration',
    );
    opts.onError(issues);
    return { status: 'refused', issues };
  };

  const run = async (fromFileEvent: boolean): Promise<ReloadOutcome> => {
    let text: string;
    try {
      text = await readFile(absolute, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'read failed';
      // Mid-replace (deleted, not yet renamed into place): the next event brings the new file.
      if (fromFileEvent && code === 'ENOENT') return { status: 'unchanged' };
      return refuse([{ file, path: '', message: `cannot read the config file: ${code === 'ENOENT' ? 'no such file' : code}` }]);
    }
    if (fromFileEvent && text === lastText) return { status: 'unchanged' };
    lastText = text;

    const loaded = parseConfigText(text, { ...opts.loadOptions, file, baseDir: dir, env: opts.env ?? process.env });
    if (!loaded.ok) return refuse(loaded.errors);
    const key = fingerprint(loaded.config, loaded.secrets);
    if (key === currentKey) return { status: 'unchanged' };
    if (opts.validate) {
      const issues = await opts.validate(loaded.config);
      if (issues.length > 0) return refuse(issues);
    }
    try {
      await opts.onChange(loaded.config, { secrets: loaded.secrets, previous: current });
    } catch (err) {
      return refuse([{ file, path: '', message: `applying the new configuration failed: ${(err as Error).message}` }]);
    }
    current = loaded.config;
    currentKey = key;
    log?.info({ file }, 'configuration applied');
    return { status: 'applied' };
  };

  // One reload at a time, in order.
  const enqueue = (fromFileEvent: boolean): Promise<ReloadOutcome> => {
    const next = queue.then(() => run(fromFileEvent));
    queue = next.catch(() => undefined);
    return next;
  };

  // Watch the directory, not the file: editors and config managers replace the file by rename, which would
  // leave a file watch on the old inode. Any event in the directory triggers a (debounced) content check.
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, () => {
      if (closed) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        enqueue(true).catch((err: unknown) => log?.error({ err, file }, 'configuration reload failed'));
      }, debounceMs);
    });
    watcher.on('error', (err) => log?.error({ err, file }, 'watching the configuration directory failed'));
  } catch (err) {
    log?.error({ err, file }, 'cannot watch the configuration directory; reload only on SIGHUP');
  }

  const ready: Promise<ReloadOutcome> = opts.initial ? Promise.resolve({ status: 'unchanged' }) : enqueue(false);

  return {
    reload: () => (closed ? Promise.reject(new Error('configuration watcher is closed')) : enqueue(false)),
    ready,
    current: () => current,
    close: () => {
      closed = true;
      clearTimeout(timer);
      watcher?.close();
    },
  };
}

// Secrets are compared by content so a rotated password in the environment counts as a change on SIGHUP.
function fingerprint(config: MamoriConfig, secrets: ConfigSecrets): string {
  return createHash('sha256').update(JSON.stringify([config, secrets])).digest('hex');
}
