// TLS for NBD over TCP (the spec's FORCEDTLS mode): with a certificate configured, a TCP client
// must send NBD_OPT_STARTTLS before anything else is answered (handshake.ts), and the connection
// is then wrapped in a TLS server socket (connection.ts). The unix socket stays plain: only local
// users the socket's mode admits can reach it, as with qemu-nbd, whose --tls-creds apply to TCP.
//
// With a CA configured, clients must present a certificate it signed (mutual TLS), so that only
// hypervisors holding one can open volumes over the network; without, any client that trusts the
// server's certificate may connect (and still meets the NBD server's own export policy).

import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContext } from 'node:tls';
import { StorageError } from '../errors.ts';
import { readSecretPem } from '../protocol/auth.ts';

export interface NbdTlsConfig {
  readonly secureContext: SecureContext;
  /** Clients must present a certificate signed by the configured CA. */
  readonly requireClientCertificate: boolean;
}

export interface NbdTlsFiles {
  readonly certPath: string;
  readonly keyPath: string;
  readonly caPath?: string;
}

/** Reads the certificate, key (0600, as any secret) and CA, and builds the server's TLS context. */
export async function loadNbdTls(files: NbdTlsFiles): Promise<NbdTlsConfig> {
  const cert = await readPem(files.certPath, 'certificate (--tls-cert)');
  const key = await readSecretPem(files.keyPath);
  const ca = files.caPath === undefined ? undefined : await readPem(files.caPath, 'CA certificate (--tls-ca)');
  let secureContext: SecureContext;
  try {
    // The spec asks for TLS 1.2 at least, and nothing older by default.
    secureContext = createSecureContext({ cert, key, minVersion: 'TLSv1.2', ...(ca === undefined ? {} : { ca }) });
  } catch (error) {
    throw new StorageError('ERR_CONFIG', `the TLS certificate, key or CA cannot be used: ${(error as Error).message}`);
  }
  return { secureContext, requireClientCertificate: ca !== undefined };
}

async function readPem(path: string, what: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new StorageError('ERR_CONFIG', `cannot read the ${what} ${path}: ${(error as Error).message}`);
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new StorageError('ERR_CONFIG', `${path} holds no PEM certificate (a line "-----BEGIN CERTIFICATE-----"), as the ${what} must`);
  }
  return text;
}
