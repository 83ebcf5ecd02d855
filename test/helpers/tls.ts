import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { execa } from 'execa';
import { ldapModifyConfig, type PrivateSlapd } from './slapd.js';

/**
 * TLS for a private slapd, with a CA made here: slapd's own TLS for
 * StartTLS (set through cn=config), and TLS terminators in front of its
 * ldap:// port standing in for an ldaps:// port — one with the right
 * certificate, one whose certificate names another host.
 */
export interface SlapdTls {
  goodCa: string;
  wrongCa: string;
  /** ldaps:// URL whose certificate names 127.0.0.1 and localhost */
  ldapsUrl: string;
  /** ldaps:// URL whose certificate (from the good CA) names only wrong.example */
  wrongNameUrl: string;
  close(): Promise<void>;
}

export async function setUpSlapdTls(slapd: PrivateSlapd): Promise<SlapdTls> {
  const dir = path.join(slapd.dir, 'tls');
  await mkdir(dir, { recursive: true });
  const f = (n: string) => path.join(dir, n);
  const openssl = (args: string[]) => execa('openssl', args, { cwd: dir });
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=stoney test CA']);
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('other.key'), '-out', f('other-ca.pem'), '-days', '2', '-subj', '/CN=some other CA']);
  const serverCert = async (name: string, san: string) => {
    await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${name}`]);
    await writeFile(f(`${name}.cnf`), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n`);
    await openssl(['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${name}.pem`), '-days', '2', '-extfile', f(`${name}.cnf`)]);
  };
  await serverCert('server', 'IP:127.0.0.1,DNS:localhost');
  await serverCert('wrongname', 'DNS:wrong.example');
  await ldapModifyConfig(slapd, [
    'dn: cn=config', 'changetype: modify',
    'replace: olcTLSCACertificateFile', `olcTLSCACertificateFile: ${f('ca.pem')}`, '-',
    'replace: olcTLSCertificateFile', `olcTLSCertificateFile: ${f('server.pem')}`, '-',
    'replace: olcTLSCertificateKeyFile', `olcTLSCertificateKeyFile: ${f('server.key')}`, '',
  ].join('\n'));
  const terminator = async (name: string): Promise<{ server: tls.Server; port: number }> => {
    const [cert, key] = await Promise.all([readFile(f(`${name}.pem`)), readFile(f(`${name}.key`))]);
    const server = tls.createServer({ cert, key }, (client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: slapd.port });
      client.pipe(upstream).pipe(client);
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { server, port: (server.address() as net.AddressInfo).port };
  };
  const good = await terminator('server');
  const wrong = await terminator('wrongname');
  return {
    goodCa: f('ca.pem'),
    wrongCa: f('other-ca.pem'),
    ldapsUrl: `ldaps://127.0.0.1:${good.port}/`,
    wrongNameUrl: `ldaps://127.0.0.1:${wrong.port}/`,
    close: async () => {
      await Promise.all([good, wrong].map(({ server }) => new Promise<void>((r) => server.close(() => r()))));
    },
  };
}

/**
 * A TCP relay in front of slapd that keeps every byte the client sent: what
 * an eavesdropper on the network would see.
 */
export async function recordingRelay(port: number): Promise<{ url: string; sent(): Buffer; close(): Promise<void> }> {
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port });
    sockets.add(client).add(upstream);
    client.on('data', (d: Buffer) => chunks.push(Buffer.from(d)));
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `ldap://127.0.0.1:${(server.address() as net.AddressInfo).port}/`,
    sent: () => Buffer.concat(chunks),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
