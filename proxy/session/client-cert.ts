// Client-certificate verification for the client leg. Sockets upgraded by hand (new TLSSocket after an
// SSLRequest, or direct TLS) do not get the `authorized` verdict a tls.Server computes, so mamori checks the
// presented chain itself: each certificate signed by the next, the last signed by a configured CA, all within
// their validity period.
import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';

/** Parses every certificate in a PEM bundle (the clientCa file). */
export function parseCaBundle(pem: Buffer | string): X509Certificate[] {
  const text = pem.toString();
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => new X509Certificate(b));
}

function valid(c: X509Certificate, now: number): boolean {
  return Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);
}

/** True when the peer presented a certificate that chains to one of `cas`. */
export function verifyClientCertificate(socket: TLSSocket, cas: readonly X509Certificate[], now = Date.now()): boolean {
  const detailed = socket.getPeerCertificate(true) as DetailedPeerCertificate;
  if (!detailed?.raw) return false;
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  for (let c: DetailedPeerCertificate | undefined = detailed; c?.raw && !seen.has(c.fingerprint256); c = c.issuerCertificate) {
    seen.add(c.fingerprint256);
    chain.push(new X509Certificate(c.raw));
    if (c.issuerCertificate === c) break;
  }
  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i]!;
    if (!valid(cert, now)) return false;
    for (const ca of cas) {
      if (cert.checkIssued(ca) && cert.verify(ca.publicKey) && valid(ca, now)) return true;
    }
    const next = chain[i + 1];
    if (!next || !cert.checkIssued(next) || !cert.verify(next.publicKey) || !next.ca) return false;
  }
  return false;
}
