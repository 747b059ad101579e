// The pure SCRAM halves: RFC 7677's vector, the server driven by node-postgres's own SASL client
// (with and without channel binding), tls-server-end-point against pg's own certificate parser,
// and malformed input.
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import {
  ScramClientWithKey,
  ScramServerExchange,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
  formatScramVerifier,
  mockScramSalt,
  parseScramVerifier,
  scramFailureError,
  scramKeysFromPassword,
  tlsServerEndPointHash,
  tlsServerEndPointHashFromPem,
  wipeSecret,
  type ScramVerifier,
} from '../../../proxy/session/scram.js';
import { makeCert, peerCertStream, pgCertSignatures, pgSasl, type TestCert } from './scram-helpers.js';

const RFC_SALT = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64');

describe('RFC 7677 SCRAM-SHA-256 example', () => {
  test('both halves reproduce the RFC messages byte for byte', () => {
    const { clientKey, verifier } = scramKeysFromPassword('pencil', RFC_SALT, 4096);
    const server = new ScramServerExchange({ verifier, channelBinding: null, nonceSource: () => '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0' });
    const client = new ScramClientWithKey({
      clientKey: Buffer.from(clientKey),
      verifier,
      channelBinding: null,
      username: 'user',
      nonceSource: () => 'rOprNGfwEbeRWgbNEkqO',
    });
    assert.deepEqual(server.mechanisms(), ['SCRAM-SHA-256']);
    assert.equal(client.chooseMechanism(server.mechanisms()), SCRAM_SHA_256);
    const c1 = client.clientFirst();
    assert.equal(c1.toString(), 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO');
    const s1 = server.clientFirst(SCRAM_SHA_256, c1);
    assert.ok(s1.ok);
    assert.equal(s1.serverFirst.toString(), 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096');
    const c2 = client.serverFirst(s1.serverFirst);
    assert.ok(c2.ok);
    assert.equal(
      c2.clientFinal.toString(),
      'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
    );
    const s2 = server.clientFinal(c2.clientFinal);
    assert.ok(s2.ok);
    assert.equal(s2.serverFinal.toString(), 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=');
    // The server recovered exactly the ClientKey the password yields.
    assert.ok(s2.clientKey.equals(clientKey));
    assert.deepEqual(client.serverFinal(s2.serverFinal), { ok: true });
  });

  test('the client wipes its ClientKey after the final message, and wipeSecret zeroes buffers', () => {
    const { clientKey, verifier } = scramKeysFromPassword('pencil', RFC_SALT, 4096);
    const key = Buffer.from(clientKey);
    const server = new ScramServerExchange({ verifier, channelBinding: null });
    const client = new ScramClientWithKey({ clientKey: key, verifier, channelBinding: null });
    client.chooseMechanism(server.mechanisms());
    const s1 = server.clientFirst(SCRAM_SHA_256, client.clientFirst());
    assert.ok(s1.ok);
    const c2 = client.serverFirst(s1.serverFirst);
    assert.ok(c2.ok);
    const s2 = server.clientFinal(c2.clientFinal);
    assert.ok(s2.ok);
    assert.deepEqual(client.serverFinal(s2.serverFinal), { ok: true });
    assert.ok(key.equals(Buffer.alloc(32)));
    wipeSecret(s2.clientKey, null);
    assert.ok(s2.clientKey.equals(Buffer.alloc(32)));
  });
});

describe('verifiers', () => {
  test('parse, format round trip, and keys derived from the password', () => {
    const { clientKey, verifier } = scramKeysFromPassword('pencil', RFC_SALT, 4096);
    const text = formatScramVerifier(verifier);
    const parsed = parseScramVerifier(text);
    assert.ok(parsed);
    assert.equal(parsed.iterations, 4096);
    assert.ok(parsed.salt.equals(RFC_SALT));
    assert.ok(parsed.storedKey.equals(createHash('sha256').update(clientKey).digest()));
    assert.ok(parsed.serverKey.equals(verifier.serverKey));
  });

  test('md5, plaintext and malformed verifiers give null', () => {
    const good = formatScramVerifier(scramKeysFromPassword('x', randomBytes(16), 4096).verifier);
    assert.ok(parseScramVerifier(good));
    for (const bad of [
      'md5' + 'a'.repeat(32),
      'pencil',
      '',
      good.replace('SCRAM-SHA-256$', 'SCRAM-SHA-1$'),
      good.replace('$4096:', '$0:'),
      good.replace('$4096:', '$-1:'),
      good.replace('$4096:', '$99999999999:'),
      good.slice(0, -4), // ServerKey truncated
      good + 'AAAA', // ServerKey too long
      good.replace(/\$[^$]*:/, '$4096:!!!!:'),
      good.replace('$4096:', '$4096:$'),
    ]) {
      assert.equal(parseScramVerifier(bad), null, bad);
    }
  });
});

// ---- the server half driven by node-postgres's SASL client ----------------------------------------

interface Outcome {
  clientFirstReason?: string;
  finalReason?: string;
  clientKey?: Buffer;
  clientAccepted?: boolean;
}

async function runPgClient(opts: {
  verifier: ScramVerifier | null;
  serverBinding: Buffer | null;
  password: string;
  offered?: string[];
  stream?: unknown;
  user?: string;
  mockSecret?: Buffer;
  onServerFirst?: (serverFirst: string) => void;
}): Promise<Outcome> {
  const server = new ScramServerExchange({
    verifier: opts.verifier,
    channelBinding: opts.serverBinding,
    user: opts.user ?? 'alice',
    mockSecret: opts.mockSecret,
  });
  const session = pgSasl.startSession(opts.offered ?? server.mechanisms(), opts.stream);
  const s1 = server.clientFirst(session.mechanism, Buffer.from(session.response));
  if (!s1.ok) return { clientFirstReason: s1.reason };
  opts.onServerFirst?.(s1.serverFirst.toString());
  await pgSasl.continueSession(session, opts.password, s1.serverFirst.toString(), opts.stream);
  const s2 = server.clientFinal(Buffer.from(session.response));
  if (!s2.ok) return { finalReason: s2.reason };
  pgSasl.finalizeSession(session, s2.serverFinal.toString()); // throws unless our ServerSignature is right
  return { clientKey: s2.clientKey, clientAccepted: true };
}

describe('server half against node-postgres SASL client', () => {
  const password = 'correct horse battery staple';
  const salt = randomBytes(16);
  const { clientKey, verifier } = scramKeysFromPassword(password, salt, 4096);
  let cert: TestCert;
  let otherCert: TestCert;
  before(() => {
    cert = makeCert(['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'sha256');
    otherCert = makeCert(['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'], 'sha256');
  });

  test('SCRAM-SHA-256 without TLS: accepted, ClientKey recovered, server signature accepted by pg', async () => {
    const r = await runPgClient({ verifier, serverBinding: null, password });
    assert.equal(r.clientAccepted, true);
    assert.ok(r.clientKey!.equals(clientKey));
  });

  test('wrong password gives bad_proof', async () => {
    const r = await runPgClient({ verifier, serverBinding: null, password: 'Tr0ub4dor&3' });
    assert.equal(r.finalReason, 'bad_proof');
  });

  test('SCRAM-SHA-256-PLUS with matching tls-server-end-point data', async () => {
    const binding = tlsServerEndPointHash(cert.der);
    const server = new ScramServerExchange({ verifier, channelBinding: binding });
    assert.deepEqual(server.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    const r = await runPgClient({ verifier, serverBinding: binding, password, stream: peerCertStream(cert.der) });
    assert.equal(r.clientAccepted, true);
    assert.ok(r.clientKey!.equals(clientKey));
  });

  test('SCRAM-SHA-256-PLUS with a different certificate (a man in the middle) gives channel_binding_mismatch', async () => {
    const r = await runPgClient({
      verifier,
      serverBinding: tlsServerEndPointHash(cert.der),
      password,
      stream: peerCertStream(otherCert.der),
    });
    assert.equal(r.finalReason, 'channel_binding_mismatch');
  });

  test("a TLS client sending 'y' when -PLUS was offered is refused as a downgrade", async () => {
    // A middlebox stripped -PLUS from the list the client saw; the flag 'y' is how the server notices.
    const r = await runPgClient({
      verifier,
      serverBinding: tlsServerEndPointHash(cert.der),
      password,
      stream: peerCertStream(cert.der),
      offered: [SCRAM_SHA_256],
    });
    assert.equal(r.clientFirstReason, 'channel_binding_downgrade');
  });

  test("'y' is accepted when the server did not offer -PLUS (no TLS on this leg)", async () => {
    const r = await runPgClient({ verifier, serverBinding: null, password, stream: peerCertStream(cert.der) });
    assert.equal(r.clientAccepted, true);
  });

  test('unknown user: a mock exchange with a deterministic salt that then fails as unknown_user', async () => {
    const secret = randomBytes(32);
    const seen: string[] = [];
    for (const user of ['ghost', 'ghost', 'phantom']) {
      const r = await runPgClient({
        verifier: null,
        serverBinding: null,
        password,
        user,
        mockSecret: secret,
        onServerFirst: (s) => seen.push(s.replace(/^r=[^,]*,/, '')),
      });
      assert.equal(r.finalReason, 'unknown_user');
    }
    assert.equal(seen[0], seen[1]);
    assert.notEqual(seen[0], seen[2]);
    assert.equal(seen[0], `s=${mockScramSalt('ghost', secret).toString('base64')},i=4096`);
    // The mock server-first looks like a real one: 16-byte salt, same shape.
    assert.match(seen[0]!, /^s=[A-Za-z0-9+/]{22}==,i=4096$/);
  });
});

describe('client-facing errors', () => {
  test('worded as PostgreSQL; unknown user and wrong password are the same error', () => {
    assert.deepEqual(scramFailureError('bad_proof', 'alice'), { code: '28P01', message: 'password authentication failed for user "alice"' });
    assert.deepEqual(scramFailureError('unknown_user', 'alice'), scramFailureError('bad_proof', 'alice'));
    assert.equal(scramFailureError('channel_binding_mismatch', 'a').code, '28000');
    assert.equal(scramFailureError('channel_binding_downgrade', 'a').message, 'SCRAM channel binding negotiation error');
    for (const r of ['bad_message', 'channel_binding', 'unsupported_mechanism'] as const) assert.equal(scramFailureError(r, 'a').code, '08P01');
  });
});

describe('gs2 header rules (PostgreSQL server behaviour)', () => {
  const { verifier } = scramKeysFromPassword('pw', randomBytes(16), 4096);
  const binding = randomBytes(32);
  const first = (cb: Buffer | null, mech: string, msg: string) =>
    new ScramServerExchange({ verifier, channelBinding: cb }).clientFirst(mech, Buffer.from(msg));
  const reason = (r: ReturnType<typeof first>) => (r.ok ? 'ok' : r.reason);

  test('flags against mechanism and connection', () => {
    assert.equal(reason(first(null, SCRAM_SHA_256, 'n,,n=,r=abc')), 'ok');
    assert.equal(reason(first(null, SCRAM_SHA_256, 'y,,n=,r=abc')), 'ok');
    assert.equal(reason(first(null, SCRAM_SHA_256, 'p=tls-server-end-point,,n=,r=abc')), 'channel_binding');
    assert.equal(reason(first(null, SCRAM_SHA_256_PLUS, 'p=tls-server-end-point,,n=,r=abc')), 'unsupported_mechanism');
    assert.equal(reason(first(binding, SCRAM_SHA_256, 'n,,n=,r=abc')), 'ok');
    assert.equal(reason(first(binding, SCRAM_SHA_256, 'y,,n=,r=abc')), 'channel_binding_downgrade');
    assert.equal(reason(first(binding, SCRAM_SHA_256, 'p=tls-server-end-point,,n=,r=abc')), 'channel_binding');
    assert.equal(reason(first(binding, SCRAM_SHA_256_PLUS, 'n,,n=,r=abc')), 'channel_binding');
    assert.equal(reason(first(binding, SCRAM_SHA_256_PLUS, 'y,,n=,r=abc')), 'channel_binding');
    assert.equal(reason(first(binding, SCRAM_SHA_256_PLUS, 'p=tls-unique,,n=,r=abc')), 'channel_binding');
    assert.equal(reason(first(binding, SCRAM_SHA_256_PLUS, 'p=tls-server-end-point,,n=,r=abc')), 'ok');
    assert.equal(reason(first(binding, 'SCRAM-SHA-1', 'n,,n=,r=abc')), 'unsupported_mechanism');
  });

  test('authzid, mandatory extensions and malformed nonces are refused', () => {
    for (const msg of ['n,a=bob,n=,r=abc', 'n,,m=x,n=,r=abc', 'n,,n=,r=', 'n,,n=,r=a b', 'n,,r=abc', 'x,,n=,r=abc', 'n,n=,r=abc', '']) {
      assert.equal(reason(first(null, SCRAM_SHA_256, msg)), 'bad_message', msg);
    }
    assert.equal(reason(first(null, SCRAM_SHA_256, 'n,,n=bob,r=abc,x=ext')), 'ok');
  });

  test('client-final: nonce, binding attribute and proof are checked; calls out of order fail', () => {
    const make = () => {
      const s = new ScramServerExchange({ verifier, channelBinding: null, nonceSource: () => 'SRV' });
      assert.ok(s.clientFirst(SCRAM_SHA_256, Buffer.from('n,,n=,r=CLI')).ok);
      return s;
    };
    const proof = Buffer.alloc(32, 7).toString('base64');
    const fin = (msg: string) => {
      const r = make().clientFinal(Buffer.from(msg));
      return r.ok ? 'ok' : r.reason;
    };
    assert.equal(fin(`c=biws,r=CLISRV,p=${proof}`), 'bad_proof');
    assert.equal(fin(`c=eSws,r=CLISRV,p=${proof}`), 'channel_binding'); // 'y,,' but the client said 'n'
    assert.equal(fin(`c=biws,r=CLIXXX,p=${proof}`), 'bad_message');
    assert.equal(fin(`c=biws,r=CLISRV,p=AAAA`), 'bad_message');
    assert.equal(fin(`c=biws,r=CLISRV`), 'bad_message');
    assert.equal(fin(`r=CLISRV,c=biws,p=${proof}`), 'bad_message');
    const s = make();
    assert.equal((s.clientFirst(SCRAM_SHA_256, Buffer.from('n,,n=,r=CLI')) as { reason: string }).reason, 'bad_message');
    const s2 = new ScramServerExchange({ verifier, channelBinding: null });
    assert.equal((s2.clientFinal(Buffer.from(`c=biws,r=x,p=${proof}`)) as { reason: string }).reason, 'bad_message');
  });

  test('arbitrary bytes never throw and never authenticate', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 200 }), fc.boolean(), (a, b, tls) => {
        const s = new ScramServerExchange({ verifier, channelBinding: tls ? binding : null });
        const r1 = s.clientFirst(s.mechanisms()[0]!, Buffer.from(a));
        const r2 = s.clientFinal(Buffer.from(b));
        assert.equal(r2.ok, false);
        return r1.ok || !r1.ok;
      }),
      { numRuns: 2000 },
    );
  });

  test('a flipped byte anywhere in a valid client-final never authenticates', async () => {
    const password = 'pw2';
    const keys = scramKeysFromPassword(password, randomBytes(16), 4096);
    const fresh = () => new ScramServerExchange({ verifier: keys.verifier, channelBinding: null, nonceSource: () => 'SRVNONCE' });
    const session = pgSasl.startSession([SCRAM_SHA_256]);
    const firstMsg = Buffer.from(session.response);
    const s1 = fresh().clientFirst(session.mechanism, firstMsg);
    assert.ok(s1.ok);
    await pgSasl.continueSession(session, password, s1.serverFirst.toString());
    const final = Buffer.from(session.response);
    // The untampered message authenticates, so the property below is not vacuous.
    const good = fresh();
    assert.ok(good.clientFirst(session.mechanism, firstMsg).ok);
    assert.ok(good.clientFinal(final).ok);
    fc.assert(
      fc.property(fc.nat({ max: final.length - 1 }), fc.integer({ min: 1, max: 255 }), (pos, x) => {
        const s = fresh();
        assert.ok(s.clientFirst(session.mechanism, firstMsg).ok);
        const tampered = Buffer.from(final);
        tampered[pos] = tampered[pos]! ^ x;
        return !s.clientFinal(tampered).ok;
      }),
      { numRuns: 1000 },
    );
  });
});

describe('tls-server-end-point (RFC 5929 §4.1)', () => {
  const pgHashName: Record<string, string> = { 'SHA-256': 'sha256', 'SHA-384': 'sha384', 'SHA-512': 'sha512', 'SHA-224': 'sha224' };
  // node-postgres's own certificate parser is the independent reference; MD5/SHA-1 become SHA-256.
  const reference = (der: Buffer): Buffer => {
    let name = pgCertSignatures.signatureAlgorithmHashFromCertificate(der);
    if (name === 'MD5' || name === 'SHA-1') name = 'SHA-256';
    return createHash(pgHashName[name]!).update(der).digest();
  };
  const rsa = ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'];
  const ec = (curve: string) => ['-algorithm', 'EC', '-pkeyopt', `ec_paramgen_curve:${curve}`];
  const cases: [string, string[], string | null, string[], number][] = [
    ['RSA SHA-256', rsa, 'sha256', [], 32],
    ['RSA SHA-512', rsa, 'sha512', [], 64],
    ['RSA SHA-1 (upgraded to SHA-256)', rsa, 'sha1', [], 32],
    ['ECDSA P-384 SHA-384', ec('P-384'), 'sha384', [], 48],
    ['ECDSA P-256 SHA-224', ec('P-256'), 'sha224', [], 28],
    ['RSASSA-PSS SHA-384', rsa, 'sha384', ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'], 48],
  ];
  for (const [name, keyArgs, digest, extra, len] of cases) {
    test(name, () => {
      const cert = makeCert(keyArgs, digest, extra);
      const h = tlsServerEndPointHash(cert.der);
      assert.equal(h.length, len);
      assert.ok(h.equals(reference(cert.der)));
      assert.ok(tlsServerEndPointHashFromPem(cert.pem).equals(h));
    });
  }

  test('Ed25519 certificates have no defined hash and are refused (PostgreSQL cannot bind them either)', () => {
    const cert = makeCert(['-algorithm', 'ED25519'], null);
    assert.throws(() => tlsServerEndPointHash(cert.der), /no tls-server-end-point hash/);
  });

  test('garbage is refused with an error, not a wrong hash', () => {
    for (const bad of [Buffer.alloc(0), Buffer.from([0x30]), Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), randomBytes(64)]) {
      assert.throws(() => tlsServerEndPointHash(bad));
    }
  });
});
