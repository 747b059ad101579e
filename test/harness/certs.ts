// Test certificates made with the openssl CLI: a throwaway CA, server certificates for loopback names,
// and client certificates. Only tests and the embedded default use this; production brings its own.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface CertPair {
  certPath: string;
  keyPath: string;
  cert: Buffer;
  key: Buffer;
}

export interface TestCA extends CertPair {
  dir: string;
  issueServer(name: string, altNames?: string[]): CertPair;
  issueClient(commonName: string): CertPair;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function pair(dir: string, base: string): CertPair {
  const certPath = join(dir, `${base}.crt`);
  const keyPath = join(dir, `${base}.key`);
  return { certPath, keyPath, cert: readFileSync(certPath), key: readFileSync(keyPath) };
}

/** Creates a CA (EC P-256 keys: fast to generate) in a new temp dir, or in `dir` if given. */
export function createTestCA(dir = mkdtempSync(join(tmpdir(), 'mamori-ca-')), cn = 'mamori test CA'): TestCA {
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'ca.key'], dir);
  openssl(
    ['req', '-x509', '-new', '-key', 'ca.key', '-sha256', '-days', '3650', '-subj', `/CN=${cn}`, '-out', 'ca.crt',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  let serial = 1;
  const issue = (base: string, subject: string, ext: string): CertPair => {
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${base}.key`], dir);
    openssl(['req', '-new', '-key', `${base}.key`, '-subj', subject, '-out', `${base}.csr`], dir);
    writeFileSync(join(dir, `${base}.ext`), ext);
    openssl(
      ['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', String(serial++),
        '-days', '3650', '-sha256', '-extfile', `${base}.ext`, '-out', `${base}.crt`],
      dir,
    );
    return pair(dir, base);
  };
  const ca = pair(dir, 'ca');
  return {
    ...ca,
    dir,
    issueServer(name: string, altNames: string[] = ['localhost', '127.0.0.1']): CertPair {
      const san = altNames.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
      return issue(name, `/CN=${altNames[0] ?? name}`, `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
    },
    issueClient(commonName: string): CertPair {
      return issue(`client-${commonName}`, `/CN=${commonName}`, 'extendedKeyUsage=clientAuth\n');
    },
  };
}
