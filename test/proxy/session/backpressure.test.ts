// Backpressure both ways, measured on mamori running as its own process (VmRSS from /proc): a 270 MB
// result to a deliberately slow reader, a single 300 MB DataRow (beyond maxRewriteMessageBytes, so it can
// only pass streamed), and a 256 MB COPY FROM stdin into a deliberately slow server. mamori's RSS must
// grow by less than 100 MB in each.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { Framer } from '../../../proxy/wire/framer.js';
import { encodeCopyData, encodeCopyDone, encodeQuery } from '../../../proxy/wire/frontend.js';
import { BE } from '../../../proxy/wire/types.js';
import { startCluster, type Cluster } from '../../harness/cluster.js';
import { startMamoriProcess, type MamoriProcess } from '../../harness/mamori-process.js';
import { RawClient } from '../../harness/raw-client.js';

const USER = 'bp';
const PASSWORD = 'bp-pw';
const MB = 1024 * 1024;
const RSS_GROWTH_LIMIT = 100 * MB;

let cluster: Cluster;
let mamori: MamoriProcess;
/** RSS after the first warm-up: the tests' peaks are also held to the limit against it, not only their own start. */
let fileBaseline = 0;

function assertGrowth(what: string, peak: number, baseline: number): void {
  const growth = peak - baseline;
  const total = peak - fileBaseline;
  console.log(`${what}: mamori RSS +${(growth / MB).toFixed(1)} MiB (+${(total / MB).toFixed(1)} MiB since the first warm-up)`);
  assert.ok(growth < RSS_GROWTH_LIMIT, `RSS grew by ${(growth / MB).toFixed(1)} MiB`);
  assert.ok(total < RSS_GROWTH_LIMIT, `RSS grew by ${(total / MB).toFixed(1)} MiB since the first warm-up`);
}

before(async () => {
  cluster = await startCluster({ tls: false });
  await cluster.createRole(USER, PASSWORD);
  await cluster.query(`create table sink (v text);
    create function slow_insert() returns trigger language plpgsql as $$ begin perform pg_sleep(0.005); return new; end $$;
    create trigger slow before insert on sink for each row execute function slow_insert();
    grant insert, select on sink to ${USER}`);
  mamori = await startMamoriProcess(cluster, {
    limits: { maxRewriteMessageBytes: 64 * MB, maxMessageBytes: 1024 * MB, startupTimeoutSeconds: 30, shutdownGraceSeconds: 0 },
  });
});

after(async () => {
  await mamori?.stop();
  await cluster?.stop();
});

/** Samples mamori's RSS every 50 ms until stopped; returns the peak. */
function sampleRss(): { stop(): number } {
  let peak = mamori.rss();
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, mamori.rss());
    } catch {
      // the process is gone; the test will fail on its own
    }
  }, 50);
  return {
    stop() {
      clearInterval(t);
      return Math.max(peak, mamori.rss());
    },
  };
}

/**
 * Reads backend messages off a socket slowly, without keeping them: counts bytes and DataRows, keeps the
 * small messages (CommandComplete, ErrorResponse), and ends at ReadyForQuery.
 */
class SlowReader {
  bytes = 0;
  rows = 0;
  largestRow = 0;
  small: Array<{ type: number; body: Buffer }> = [];
  private header = Buffer.alloc(0);
  private type = 0;
  private left = 0;
  private body: Buffer[] | null = null;
  private rowSize = 0;
  readonly done: Promise<void>;

  constructor(sock: Socket, opts: { stallMs: number; pauseMs: number }) {
    sock.removeAllListeners('data');
    let finish!: () => void;
    let fail!: (e: Error) => void;
    this.done = new Promise((resolve, reject) => {
      finish = resolve;
      fail = reject;
    });
    sock.once('close', () => fail(new Error('connection closed before ReadyForQuery')));
    sock.pause();
    const onData = (chunk: Buffer): void => {
      this.bytes += chunk.length;
      if (this.consume(chunk)) {
        sock.off('data', onData);
        finish();
        return;
      }
      sock.pause();
      setTimeout(() => sock.resume(), opts.pauseMs);
    };
    sock.on('data', onData);
    setTimeout(() => sock.resume(), opts.stallMs);
  }

  /** Returns true once ReadyForQuery has been read. */
  private consume(chunk: Buffer): boolean {
    let off = 0;
    while (off < chunk.length) {
      if (this.left === 0 && this.header.length < 5) {
        const take = Math.min(5 - this.header.length, chunk.length - off);
        this.header = Buffer.concat([this.header, chunk.subarray(off, off + take)]);
        off += take;
        if (this.header.length < 5) return false;
        this.type = this.header[0]!;
        this.left = this.header.readInt32BE(1) - 4;
        this.body = this.type === BE.DataRow || this.left > 64 * 1024 ? null : [];
        this.rowSize = this.left;
        if (this.left === 0 && this.end()) return true;
        continue;
      }
      const take = Math.min(this.left, chunk.length - off);
      this.body?.push(chunk.subarray(off, off + take));
      this.left -= take;
      off += take;
      if (this.left === 0 && this.end()) return true;
    }
    return false;
  }

  private end(): boolean {
    if (this.type === BE.DataRow) {
      this.rows++;
      this.largestRow = Math.max(this.largestRow, this.rowSize);
    } else if (this.body) {
      this.small.push({ type: this.type, body: Buffer.concat(this.body) });
    }
    this.header = Buffer.alloc(0);
    return this.type === BE.ReadyForQuery;
  }

  tag(): string | undefined {
    const c = this.small.find((m) => m.type === BE.CommandComplete);
    return c?.body.subarray(0, c.body.length - 1).toString();
  }

  error(): string | undefined {
    const e = this.small.find((m) => m.type === BE.ErrorResponse);
    return e?.body.toString('latin1');
  }
}

async function login(): Promise<RawClient> {
  return RawClient.connect(mamori.host, mamori.port, { user: USER, password: PASSWORD });
}

/** Runs one query through mamori to a slow reader and returns the reader and mamori's RSS growth. */
async function slowQuery(sql: string): Promise<{ reader: SlowReader; peak: number; baseline: number; seconds: number }> {
  const c = await login();
  // Warm-up: the same code paths with a small result, so the baseline is not first-use allocation.
  c.send(encodeQuery("select repeat('y', 1000000) from generate_series(1, 8)"));
  await c.until(BE.ReadyForQuery, 30_000);
  const baseline = mamori.rss();
  if (!fileBaseline) fileBaseline = baseline;
  const sampler = sampleRss();
  const started = Date.now();
  const reader = new SlowReader(c.sock as Socket, { stallMs: 2000, pauseMs: 1 });
  c.send(encodeQuery(sql));
  try {
    await reader.done;
  } finally {
    c.close();
  }
  const peak = sampler.stop();
  return { reader, peak, baseline, seconds: (Date.now() - started) / 1000 };
}

describe('backpressure', () => {
  test('a 270 MB result to a slow reader: mamori RSS grows by < 100 MB', async () => {
    const { reader, peak, baseline, seconds } = await slowQuery("select repeat('x', 1000000) from generate_series(1, 270)");
    assert.equal(reader.error(), undefined);
    assert.equal(reader.rows, 270);
    assert.equal(reader.tag(), 'SELECT 270');
    assert.ok(reader.bytes >= 270_000_000, `${reader.bytes} bytes read`);
    assertGrowth(`270 MB result (${(reader.bytes / MB).toFixed(0)} MiB in ${seconds.toFixed(1)} s)`, peak, baseline);
  });

  test('one 300 MB DataRow (over maxRewriteMessageBytes 64 MiB) streams through without being buffered whole', async () => {
    const { reader, peak, baseline, seconds } = await slowQuery(`select repeat('x', ${300 * MB})`);
    assert.equal(reader.error(), undefined, 'not refused as too large: it was streamed');
    assert.equal(reader.rows, 1);
    assert.equal(reader.largestRow, 2 + 4 + 300 * MB, 'the whole field arrived');
    assert.equal(reader.tag(), 'SELECT 1');
    assertGrowth(`300 MB DataRow (${seconds.toFixed(1)} s)`, peak, baseline);
  });

  test('COPY FROM stdin, 256 MB as fast as the client can write into a slow server: mamori RSS grows by < 100 MB', async () => {
    const c = await login();
    c.send(encodeQuery('truncate sink'));
    await c.until(BE.ReadyForQuery, 30_000);
    const baseline = mamori.rss();
    if (!fileBaseline) fileBaseline = baseline;
    const sampler = sampleRss();
    c.send(encodeQuery('copy sink (v) from stdin'));
    await c.until(BE.CopyInResponse, 30_000);
    const line = encodeCopyData(Buffer.from('z'.repeat(256 * 1024 - 1) + '\n'));
    const sock = c.sock as Socket;
    let waits = 0;
    for (let i = 0; i < 1024; i++) {
      if (!sock.write(line)) {
        waits++;
        await new Promise<void>((resolve, reject) => {
          const onClose = (): void => reject(new Error('connection closed during COPY'));
          sock.once('close', onClose);
          sock.once('drain', () => {
            sock.off('close', onClose);
            resolve();
          });
        });
      }
    }
    c.send(encodeCopyDone());
    const frames = await c.until(BE.ReadyForQuery, 120_000);
    const peak = sampler.stop();
    c.close();
    const err = frames.find((f) => f.type === BE.ErrorResponse);
    assert.equal(err, undefined, err?.body.toString('latin1'));
    const cc = frames.find((f) => f.type === BE.CommandComplete)!;
    assert.equal(cc.body.subarray(0, cc.body.length - 1).toString(), 'COPY 1024');
    assert.ok(waits > 10, `the client was held back (${waits} waits for drain)`);
    assertGrowth(`256 MB COPY FROM (${waits} drain waits)`, peak, baseline);
  });

  test('a streamable DataRow whose header straddles two reads is streamed, not buffered whole', () => {
    const pieces: Buffer[] = [];
    let started = 0;
    const framer = new Framer(
      { frame: () => undefined, streamStart: () => started++, streamChunk: (b) => pieces.push(b), streamEnd: () => undefined },
      { maxBufferedBytes: 1024 * 1024, maxMessageBytes: 64 * MB, streamable: (t) => t === BE.DataRow },
    );
    const header = Buffer.alloc(5);
    header[0] = BE.DataRow;
    header.writeInt32BE(4 + 8 * MB, 1);
    framer.push(header.subarray(0, 3));
    framer.push(Buffer.concat([header.subarray(3), Buffer.alloc(1000)]));
    assert.equal(started, 1, 'streaming began on the header');
    assert.equal(framer.buffered, 0, 'nothing held back');
    framer.push(Buffer.alloc(4000));
    assert.equal(pieces.reduce((n, b) => n + b.length, 0), 5000);
  });
});
