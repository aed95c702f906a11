// NBD over TLS with real clients: an NBD server given a certificate, key and CA requires TLS with
// a client certificate on TCP (qemu's tls-creds-x509, libnbd's nbds://), refuses plain TCP clients
// and clients without a certificate, and keeps serving its unix socket in the clear.

import t from 'tap';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { startCluster } from './helpers/cluster.ts';
import { speakAfterGreeting } from './helpers/nbd_raw.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 64 * MiB;

/** Files of a throwaway CA, a server certificate for 127.0.0.1 and a client certificate. */
interface TestPki {
  readonly serverCert: string;
  readonly serverKey: string;
  readonly caCert: string;
  /** What qemu's tls-creds-x509 and libnbd's tls-certificates read: ca-cert.pem, client-cert.pem, client-key.pem. */
  readonly clientDir: string;
  /** ca-cert.pem only: a client that trusts the server but has no certificate of its own. */
  readonly noCertDir: string;
}

async function makePki(dir: string): Promise<TestPki> {
  const at = (name: string): string => join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await runOk('openssl', ['req', '-x509', ...ec, '-keyout', at('ca-key.pem'), '-out', at('ca-cert.pem'), '-days', '2',
    '-subj', '/CN=shoal test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const issue = async (name: string, subject: string, extensions: string): Promise<void> => {
    await runOk('openssl', ['req', ...ec, '-keyout', at(`${name}-key.pem`), '-out', at(`${name}.csr`), '-subj', subject]);
    await writeFile(at(`${name}.ext`), extensions);
    await runOk('openssl', ['x509', '-req', '-in', at(`${name}.csr`), '-CA', at('ca-cert.pem'), '-CAkey', at('ca-key.pem'),
      '-CAcreateserial', '-out', at(`${name}-cert.pem`), '-days', '2', '-extfile', at(`${name}.ext`)]);
    await chmod(at(`${name}-key.pem`), 0o600);
  };
  await issue('server', '/CN=localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await issue('client', '/CN=hv1', 'extendedKeyUsage=clientAuth\n');
  const clientDir = at('client');
  const noCertDir = at('nocert');
  await mkdir(clientDir);
  await mkdir(noCertDir);
  for (const target of [clientDir, noCertDir]) await runOk('cp', [at('ca-cert.pem'), join(target, 'ca-cert.pem')]);
  await runOk('cp', [at('client-cert.pem'), join(clientDir, 'client-cert.pem')]);
  await runOk('cp', [at('client-key.pem'), join(clientDir, 'client-key.pem')]);
  return { serverCert: at('server-cert.pem'), serverKey: at('server-key.pem'), caCert: at('ca-cert.pem'), clientDir, noCertDir };
}

t.test('NBD over TCP requires TLS with a client certificate; the unix socket stays plain', async (t) => {
  t.setTimeout(180_000);
  // The certificates go in a folder of their own, made before the cluster: the NBD server reads them at start.
  const pkiDir = await mkdtemp(join(tmpdir(), 'shoal-pki-'));
  t.teardown(() => rm(pkiDir, { recursive: true, force: true }));
  const pki = await makePki(pkiDir);
  const cluster = await startCluster(t, { nbdArgs: ['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', pki.caCert] });
  await cluster.admin.createVolume({ name: 'tv', sizeBytes: VOLUME_BYTES });
  const port = Number(new URL(cluster.nbdTcpUri('tv')).port);
  const secureUri = (dir: string): string => `nbds://127.0.0.1:${port}/tv?tls-certificates=${dir}`;

  await t.test('libnbd over TLS with a client certificate', async (t) => {
    const { stdout } = await runOk('nbdinfo', ['--json', secureUri(pki.clientDir)]);
    const info = JSON.parse(stdout) as { protocol: string; TLS: boolean; exports: Array<{ 'export-size': number }> };
    t.equal(info.TLS, true, 'nbdinfo reports TLS');
    t.equal(info.protocol, 'newstyle-fixed', 'fixed newstyle');
    t.equal(info.exports[0]?.['export-size'], VOLUME_BYTES, 'the volume\'s size');
  });

  await t.test('qemu-io over TLS writes, and a fresh TLS connection reads it back', async (t) => {
    const tlsArgs = (readOnly: boolean): string[] => [
      '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.clientDir}`,
      '--image-opts', ...(readOnly ? ['-r'] : []),
    ];
    const image = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=tv,tls-creds=tls0`;
    await runOk('qemu-io', [...tlsArgs(false), '-c', 'write -P 0x5c 1048576 65536', '-c', 'flush', image]);
    const { stdout } = await runOk('qemu-io', [...tlsArgs(true), '-c', 'read -P 0x5c 1048576 65536', '-c', 'read -P 0 0 65536', image]);
    t.notMatch(stdout, /verification failed/, 'the pattern reads back over TLS, and its neighbours are untouched');
    t.equal((stdout.match(/^read /gm) ?? []).length, 2, 'both reads ran');
  });

  await t.test('a plain TCP client is refused with ERR_TLS_REQD; EXPORT_NAME without TLS closes', async (t) => {
    const plain = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/tv`]);
    t.not(plain.code, 0, 'nbdinfo without TLS fails');
    t.match(plain.stderr, /TLS/i, `and says TLS is required: ${plain.stderr.trim().split('\n')[0] ?? ''}`);
    // A fixed newstyle client that goes straight to EXPORT_NAME: no reply can carry an error, so
    // the server closes without sending an export (18 greeting bytes, then nothing).
    const request = Buffer.alloc(4 + 16 + 2);
    request.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
    request.write('IHAVEOPT', 4, 'latin1');
    request.writeUInt32BE(1, 12); // NBD_OPT_EXPORT_NAME
    request.writeUInt32BE(2, 16);
    request.write('tv', 20, 'latin1');
    const received = await speakAfterGreeting(port, request);
    t.same(received, { bytes: 18, closed: true }, 'the greeting, then the server closes');
  });

  await t.test('a TLS client without a certificate of its own is refused', async (t) => {
    const result = await run('nbdinfo', ['--size', secureUri(pki.noCertDir)]);
    t.not(result.code, 0, `refused: ${result.stderr.trim().split('\n')[0] ?? ''}`);
  });

  await t.test('the unix socket serves in the clear, the same bytes', async (t) => {
    const uri = cluster.nbdUnixUri('tv');
    const { stdout } = await runOk('nbdinfo', ['--json', uri]);
    t.equal((JSON.parse(stdout) as { TLS: boolean }).TLS, false, 'no TLS on the unix socket');
    const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5c 1048576 65536', uri]);
    t.notMatch(read.stdout, /verification failed/, 'what the TLS client wrote reads back');
  });

  await t.test('bad TLS flags, and a key others may read, are refused with what is wrong', async (t) => {
    const nbd = ['--enable-source-maps', SHOAL_ENTRY, 'run', 'nbd', '--mds', 'http://127.0.0.1:9',
      '--credential', join(pkiDir, 'absent.cred'), '--listen', '127.0.0.1:0'];
    const certOnly = await run(process.execPath, [...nbd, '--tls-cert', pki.serverCert]);
    t.not(certOnly.code, 0, 'a certificate without its key: refused');
    t.match(certOnly.stderr, /--tls-cert and --tls-key go together/, 'naming the missing flag');
    const shared = join(pkiDir, 'shared-key.pem');
    await runOk('cp', [pki.serverKey, shared]);
    await chmod(shared, 0o644);
    const readable = await run(process.execPath, [...nbd, '--tls-cert', pki.serverCert, '--tls-key', shared]);
    t.not(readable.code, 0, 'a key others may read: refused');
    t.match(readable.stderr, /chmod 600/, 'with the command that fixes it');
  });
});
