// The Node floor for the passthrough bench: a framing-only relay. Per client connection it opens one upstream
// connection, splits both directions into protocol messages and forwards each message's original bytes, with
// backpressure both ways. It answers the untyped startup phase itself (SSLRequest → 'S' and terminates TLS when
// a certificate is given, 'N' otherwise; GSSENCRequest → 'N') and always talks plaintext upstream, as mamori and
// PgBouncer do in the bench. No auth, no state machine: whatever mamori costs beyond this is mamori's own.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { TLSSocket, createSecureContext, type SecureContext } from 'node:tls';
import { pathToFileURL } from 'node:url';
import { TypedSplitter, UntypedReader, FramingError, SSL_REQUEST, GSSENC_REQUEST } from './lib/framer.js';

export interface RelayOptions {
  listenPort: number;
  listenHost?: string;
  upstreamHost: string;
  upstreamPort: number;
  /** PEM certificate and key: answer SSLRequest with 'S' and terminate TLS here. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** false: after startup, forward chunks as they come without framing (a bare pipe, to price the framing). */
  framing?: boolean;
}

export interface Relay {
  port: number;
  /** Number of messages framed so far in each direction (a sanity check that framing happened). */
  stats(): { frontend: number; backend: number; sessions: number };
  close(): Promise<void>;
}

type Duplex = Socket | TLSSocket;

const SSL_YES = Buffer.from('S');
const SSL_NO = Buffer.from('N');

/** Forwards src → dst through a splitter (or as raw chunks); pauses src while dst's buffer is full. */
function pump(src: Duplex, dst: Duplex, splitter: TypedSplitter | null, fail: (err: Error) => void): void {
  const resume = (): void => {
    src.resume();
  };
  src.on('data', (chunk: Buffer) => {
    let out: Buffer[];
    try {
      out = splitter ? splitter.push(chunk) : [chunk];
    } catch (err) {
      fail(err as Error);
      return;
    }
    if (out.length === 0) return;
    let ok = true;
    if (out.length === 1) {
      ok = dst.write(out[0]!);
    } else {
      dst.cork();
      for (const b of out) ok = dst.write(b) && ok;
      dst.uncork();
    }
    if (!ok) {
      src.pause();
      dst.once('drain', resume);
    }
  });
  src.on('end', () => dst.end());
}

export async function startRelay(options: RelayOptions): Promise<Relay> {
  const secureContext: SecureContext | null = options.tls
    ? createSecureContext({ cert: options.tls.cert, key: options.tls.key })
    : null;
  const live = new Set<Duplex>();
  let frontend = 0;
  let backend = 0;
  let sessions = 0;

  const track = (s: Duplex): void => {
    live.add(s);
    s.once('close', () => live.delete(s));
  };

  /** Runs the untyped startup phase on `client` (raw, or TLS after an SSLRequest). */
  const startup = (client: Duplex, raw: Socket, tlsDone: boolean): void => {
    const reader = new UntypedReader();
    const onData = (chunk: Buffer): void => {
      let r: ReturnType<UntypedReader['push']>;
      try {
        r = reader.push(chunk);
      } catch {
        raw.destroy();
        return;
      }
      if (!r) return;
      if (r.code === SSL_REQUEST || r.code === GSSENC_REQUEST) {
        // Bytes after a TLS/GSS request and before the answer are an injection attempt: drop the connection.
        if (r.rest.length > 0 || tlsDone) {
          raw.destroy();
          return;
        }
        client.off('data', onData);
        if (r.code === SSL_REQUEST && secureContext) {
          client.write(SSL_YES);
          const secure = new TLSSocket(raw, { isServer: true, secureContext });
          secure.setNoDelay?.(true);
          secure.on('error', () => raw.destroy());
          track(secure);
          startup(secure, raw, true);
        } else {
          client.write(SSL_NO);
          startup(client, raw, tlsDone);
        }
        return;
      }
      // StartupMessage or CancelRequest: from here on it is typed messages, relayed upstream.
      client.off('data', onData);
      client.pause();
      const upstream = connect({ host: options.upstreamHost, port: options.upstreamPort, noDelay: true });
      track(upstream);
      sessions++;
      const closeBoth = (): void => {
        upstream.destroy();
        client.destroy();
        raw.destroy();
      };
      // Errors drop both legs; an orderly close lets the other leg flush what it still holds, then end.
      upstream.on('error', closeBoth);
      client.on('error', closeBoth);
      upstream.on('close', () => client.end());
      client.on('close', () => upstream.end());
      const toServer = new TypedSplitter(1 << 30, () => frontend++);
      const toClient = new TypedSplitter(1 << 30, () => backend++);
      const fail = (err: Error): void => {
        if (err instanceof FramingError) closeBoth();
        else throw err;
      };
      upstream.write(r.message);
      if (r.rest.length > 0) {
        try {
          for (const b of toServer.push(r.rest)) upstream.write(b);
        } catch (err) {
          fail(err as Error);
          return;
        }
      }
      const framing = options.framing ?? true;
      pump(client, upstream, framing ? toServer : null, fail);
      pump(upstream, client, framing ? toClient : null, fail);
      client.resume();
    };
    client.on('data', onData);
  };

  const server: Server = createServer({ noDelay: true }, (raw) => {
    track(raw);
    raw.on('error', () => raw.destroy());
    startup(raw, raw, false);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listenPort, options.listenHost ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : options.listenPort;
  return {
    port,
    stats: () => ({ frontend, backend, sessions }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of live) s.destroy();
      }),
  };
}

// Standalone: node --import tsx bench/relay.ts [--pipe] <listenPort> <upstreamHost> <upstreamPort> [certPath keyPath]
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2);
  const pipe = args[0] === '--pipe';
  const [listen, host, up, certPath, keyPath] = pipe ? args.slice(1) : args;
  if (!listen || !host || !up) {
    console.error('usage: relay.ts [--pipe] <listenPort> <upstreamHost> <upstreamPort> [certPath keyPath]');
    process.exit(2);
  }
  const { readFileSync } = await import('node:fs');
  const relay = await startRelay({
    listenPort: Number(listen), upstreamHost: host, upstreamPort: Number(up), framing: !pipe,
    ...(certPath && keyPath ? { tls: { cert: readFileSync(certPath), key: readFileSync(keyPath) } } : {}),
  });
  console.log(`${pipe ? 'pipe' : 'relay'} listening on 127.0.0.1:${relay.port} → ${host}:${up}${certPath ? ' (TLS)' : ''}`);
  const stop = (): void => {
    void relay.close().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
