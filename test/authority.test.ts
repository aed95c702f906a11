// Each party holds only its own authority. A hypervisor holds its own credential and nothing else:
// with it, every MDS-only command and every chunk-server route of the MDS is refused; it serves
// only the volumes attached to it; at the chunk servers it can do only what a capability the MDS
// issued allows (its volume, its mode, its epoch, until it expires), only through the chunk's
// primary and only towards the chunk's members; and it can be revoked alone, at once, while the
// others keep working. Real MDS and chunk-server processes; raw protocol connections for what a
// compromised hypervisor could send.

import t from 'tap';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Volume } from '../src/client/volume.ts';
import type { CapabilityReply, ChunkMapEntry } from '../src/protocol/api.ts';
import { decodeCapability, type CapabilityGrant } from '../src/protocol/capability.ts';
import { CsConnection, type CsRequestBody } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { MdsClient } from '../src/protocol/mds_client.ts';
import { DaemonProcess, SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { createLogger } from '../src/util/log.ts';
import { startCluster } from './helpers/cluster.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const CAPABILITY_TTL_MS = 20_000;
const log = createLogger('test');

function grantOf(reply: CapabilityReply): CapabilityGrant {
  const encoded = Buffer.from(reply.capability, 'hex');
  return { capability: decodeCapability(encoded), encoded, sessionKey: Buffer.from(reply.sessionKey, 'hex') };
}

/** The error code a call ended with: thrown, or in a chunk server's reply; 'ok' if none. */
async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    const result = await promise;
    const code = (result as { reply?: { code?: string } } | undefined)?.reply?.code;
    return code ?? 'ok';
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  }
}

t.test('a hypervisor can do only what its own credential and capabilities allow', async (t) => {
  t.setTimeout(180_000);
  const cluster = await startCluster(t, { nbd: false, mdsArgs: ['--capability-ttl-ms', String(CAPABILITY_TTL_MS)] });
  for (const name of ['a', 'b', 'c']) await cluster.admin.createVolume({ name, sizeBytes: 64 * MiB, chunkSizeBytes: 8 * MiB });
  const hvA = await cluster.admin.addHypervisor({ name: 'hv-a', volumes: ['a', 'c'] });
  const hvB = await cluster.admin.addHypervisor({ name: 'hv-b', volumes: ['b'] });
  const mdsA = new MdsClient({ url: cluster.mdsUrl, token: hvA.credential });
  const mdsB = new MdsClient({ url: cluster.mdsUrl, token: hvB.credential });
  const poolA = cluster.pool();
  const poolB = cluster.pool();
  const connections: CsConnection[] = [];
  t.teardown(() => {
    for (const connection of connections) connection.close();
    poolA.closeAll();
    poolB.closeAll();
    mdsA.close();
    mdsB.close();
  });
  const volA = await Volume.open({ mds: mdsA, pool: poolA, name: 'a', readOnly: false, holder: 'hv-a', log, ioTimeoutMs: 10_000 });
  const volB = await Volume.open({ mds: mdsB, pool: poolB, name: 'b', readOnly: false, holder: 'hv-b', log, ioTimeoutMs: 10_000 });
  await volA.write(0, Buffer.alloc(MiB, 0x11));
  await volB.write(0, Buffer.alloc(MiB, 0x22));
  const entryA = (await mdsA.chunkMap('a', 0, 1)).chunks[0] as ChunkMapEntry;
  let expiring: {
    grant: CapabilityGrant; csId: number; port: number; body: CsRequestBody; zeroBody: CsRequestBody; data: Buffer; connection: CsConnection;
  } | null = null;
  const connect = async (port: number): Promise<CsConnection> => {
    const connection = await CsConnection.connect({ host: '127.0.0.1', port, credential: { role: 'client' } });
    connections.push(connection);
    return connection;
  };

  await t.test('at the MDS: only its own volumes, no chunk-server or admin route', async (t) => {
    t.same((await mdsA.exports()).names, ['a', 'c'], 'it sees only the volumes attached to it');
    t.equal(await codeOf(mdsA.openVolume('b', { mode: 'write', holder: 'hv-a', force: true })), 'ERR_UNAUTHORIZED',
      'it cannot open (or take over) another hypervisor\'s volume');
    t.equal(await codeOf(mdsA.chunkMap('b', 0, 10)), 'ERR_UNAUTHORIZED', 'nor read its chunk map');
    const { chunkServers } = await cluster.admin.listChunkServers();
    const victim = chunkServers[0]!;
    t.equal(await codeOf(mdsA.registerChunkServer({
      uuid: victim.uuid, host: '127.0.0.1', port: 1, metricsPort: 0, failureDomainHost: 'evil', rack: 'evil', tier: 0,
      capacityBytes: 1, freeBytes: 1, usedBytes: 0, chunkCount: 0, healthy: true, lastError: '',
    })), 'ERR_UNAUTHORIZED', 'it cannot re-register a chunk server\'s uuid elsewhere');
    t.equal(await codeOf(mdsA.heartbeat({
      csId: victim.id, uuid: victim.uuid, capacityBytes: 1, freeBytes: 1, usedBytes: 0, chunkCount: 0, healthy: false, lastError: 'x',
    })), 'ERR_UNAUTHORIZED', 'nor heartbeat as one');
    t.equal(await codeOf(mdsA.reportPartialWrite({
      csId: victim.id, volumeId: 1, chunkIndex: 0, chunkId: entryA.chunkId, version: entryA.version, failedCsIds: [victim.id],
      offsetBytes: 0, lengthBytes: 4096, reason: 'forged',
    })), 'ERR_UNAUTHORIZED', 'nor report a member as failed to get it dropped');
    t.equal(await codeOf(mdsA.listVolumes()), 'ERR_UNAUTHORIZED', 'admin routes need the admin token');
    t.equal(await codeOf(mdsA.revokeHypervisor('hv-b')), 'ERR_UNAUTHORIZED', 'it cannot revoke another hypervisor');
    const after = (await cluster.internal.chunkMap('a', 0, 1)).chunks[0];
    t.same(after?.replicas.map((r) => r.csId), entryA.replicas.map((r) => r.csId), 'the chunk kept its members');
  });

  await t.test('at the chunk servers: no MDS command, no replica fill, no impersonation', async (t) => {
    const primaryPort = entryA.replicas[0]!.port;
    const bare = await connect(primaryPort);
    const unread = await bare.request({ op: CS_OP.READ, chunkId: entryA.chunkId, version: entryA.version, offsetBytes: 0, lengthBytes: 4096 });
    t.equal(unread.reply.code, 'ERR_UNAUTHORIZED', 'a client reads nothing without a capability');
    // With a valid capability for its own volume: still no MDS command, no replica fill.
    const raw = await connect(primaryPort);
    const readGrant = grantOf(await mdsA.capability('a'));
    const info = await raw.request({ op: CS_OP.CHUNK_INFO, chunkId: entryA.chunkId }, undefined, readGrant);
    t.equal(info.reply.code, undefined, 'the capability is accepted (it reads its own chunk\'s info)');
    const target = entryA.replicas[1]!;
    const mdsOnly: Array<[string, CsRequestBody, Buffer?]> = [
      ['DELETE_CHUNK', { op: CS_OP.DELETE_CHUNK, chunkId: entryA.chunkId }],
      ['SET_VERSION', { op: CS_OP.SET_VERSION, chunkId: entryA.chunkId, toVersion: entryA.version + 100, generation: 1_000_000 }],
      ['FENCE', { op: CS_OP.FENCE, volumeId: 1, epoch: 1_000_000 }],
      ['COPY_RANGE', { op: CS_OP.COPY_RANGE, chunkId: entryA.chunkId, version: entryA.version, offsetBytes: 0, lengthBytes: MiB, changedOnly: false, target }],
      ['CREATE_CHUNK', { op: CS_OP.CREATE_CHUNK, chunkId: 999_999, volumeId: 1, chunkIndex: 7, sizeBytes: MiB, version: 1, generation: 1 }],
      ['LIST_CHUNKS', { op: CS_OP.LIST_CHUNKS, fromChunkId: 0, limit: 10 }],
      ['LIST_VOLUMES', { op: CS_OP.LIST_VOLUMES }],
      ['TRACK_CHANGES', { op: CS_OP.TRACK_CHANGES, chunkId: entryA.chunkId }],
      ['BLOCK_SUMS', { op: CS_OP.BLOCK_SUMS, chunkId: entryA.chunkId, version: entryA.version, offsetBytes: 0, lengthBytes: MiB }],
      ['REVOKE', { op: CS_OP.REVOKE, hypervisorId: 2, issuedBeforeMs: Date.now() + 3_600_000 }],
      ['REPLICA_WRITE', { op: CS_OP.REPLICA_WRITE, chunkId: entryA.chunkId, offsetBytes: 0, lengthBytes: 4096 }, Buffer.alloc(4096, 0xee)],
      ['REPLICA_ZERO', { op: CS_OP.REPLICA_ZERO, chunkId: entryA.chunkId, offsetBytes: 0, lengthBytes: MiB }],
      ['REPAIR', { op: CS_OP.REPAIR, chunkId: entryA.chunkId, version: entryA.version, offsetBytes: 0, lengthBytes: 4096 }, Buffer.alloc(4096, 0xee)],
    ];
    for (const [name, body, payload] of mdsOnly) {
      const { reply } = await raw.request(body, payload);
      t.equal(reply.code, 'ERR_UNAUTHORIZED', `${name} from a hypervisor is refused: ${reply.message ?? ''}`);
    }
    const otherKey = generateKeyPairSync('ed25519').privateKey;
    t.equal(await codeOf(CsConnection.connect({
      host: '127.0.0.1', port: primaryPort, credential: { role: 'mds', clusterKey: randomBytes(32), privateKey: otherKey, term: 99 },
    })), 'ERR_UNAUTHORIZED', 'claiming to be the MDS without its private key is refused');
    t.equal(await codeOf(CsConnection.connect({
      host: '127.0.0.1', port: primaryPort, credential: { role: 'peer', clusterKey: Buffer.from(hvA.credential.slice(-64), 'hex') },
    })), 'ERR_UNAUTHORIZED', 'so is claiming to be a chunk server with its own secret');
    t.ok((await volA.read(0, MiB)).equals(Buffer.alloc(MiB, 0x11)), 'volume a is untouched');
    t.equal((await cluster.internal.chunkMap('a', 0, 1)).chunks[0]?.version, entryA.version, 'at the same version');
  });

  await t.test('writes need a capability for that volume, epoch and time, through the primary to the members', async (t) => {
    const opened = await mdsA.openVolume('c', { mode: 'write', holder: 'raw writer' });
    const lease = opened.lease!;
    const entry = await mdsA.allocateChunk('c', 0, lease.leaseId);
    const grantC = grantOf(opened.capability);
    const grantA = grantOf(await mdsA.capability('a'));
    const [primary, ...others] = entry.replicas;
    const change = (op: typeof CS_OP.WRITE | typeof CS_OP.ZERO, epoch: number, forward = others): CsRequestBody => ({
      op, chunkId: entry.chunkId, version: entry.version, volumeId: opened.volume.id, epoch,
      offsetBytes: 0, lengthBytes: 4096, forward, ticket: Buffer.from(entry.ticket, 'hex'),
    });
    const write = (epoch: number, forward = others): CsRequestBody => change(CS_OP.WRITE, epoch, forward);
    // (Zeroing: no payload, as a connection carries only small frames until a capability is accepted.)
    const zero = (epoch: number): CsRequestBody => change(CS_OP.ZERO, epoch);
    const data = Buffer.alloc(4096, 0x33);

    const withOther = await connect(primary!.port);
    const wrongVolume = await withOther.request(zero(lease.epoch), undefined, grantA);
    t.equal(wrongVolume.reply.code, 'ERR_UNAUTHORIZED', `a capability for another volume is refused: ${wrongVolume.reply.message ?? ''}`);

    const good = await connect(primary!.port);
    const highEpoch = await good.request(write(lease.epoch + 1_000), data, grantC);
    t.equal(highEpoch.reply.code, 'ERR_UNAUTHORIZED', `a write cannot carry another epoch than its capability's (no fence raised at will): ${highEpoch.reply.message ?? ''}`);
    const done = await good.request(write(lease.epoch), data, grantC);
    t.equal(done.reply.code, undefined, 'with the right capability, epoch and ticket the write lands');

    const notPrimary = await connect(others[0]!.port);
    const around = await notPrimary.request(write(lease.epoch, []), data, grantC);
    t.equal(around.reply.code, 'ERR_UNAUTHORIZED', `a write to a member that is not the primary is refused: ${around.reply.message ?? ''}`);

    const dialed: Socket[] = [];
    const trap = createServer((socket) => dialed.push(socket));
    await new Promise<void>((resolve) => trap.listen(0, '127.0.0.1', resolve));
    t.teardown(() => {
      for (const socket of dialed) socket.destroy();
      trap.close();
    });
    const trapAddress = { csId: 77, host: '127.0.0.1', port: (trap.address() as AddressInfo).port };
    const redirected = await good.request(write(lease.epoch, [trapAddress]), data, grantC);
    t.equal(redirected.reply.code, 'ERR_UNAUTHORIZED', `a forward address outside the chunk's members is refused: ${redirected.reply.message ?? ''}`);
    await new Promise((resolve) => setTimeout(resolve, 300));
    t.equal(dialed.length, 0, 'and the chunk server never dialed it');

    const forgedBytes = Buffer.from(grantC.encoded);
    forgedBytes[forgedBytes.length - 1] = (forgedBytes[forgedBytes.length - 1] ?? 0) ^ 0x01;
    const forged = await connect(primary!.port);
    const forgedWrite = await codeOf(forged.request(zero(lease.epoch), undefined, { ...grantC, encoded: forgedBytes }));
    t.equal(forgedWrite, 'ERR_UNAUTHORIZED', 'a forged capability is refused (the connection closes)');
    const stolen = await connect(primary!.port);
    const withoutKey = await codeOf(stolen.request(zero(lease.epoch), undefined, { ...grantC, sessionKey: randomBytes(32) }));
    t.equal(withoutKey, 'ERR_UNAUTHORIZED', 'a capability seen on the wire is useless without its session key');

    // Checked last (below), once it has run out.
    expiring = { grant: grantC, csId: primary!.csId, port: primary!.port, body: write(lease.epoch), zeroBody: zero(lease.epoch), data, connection: good };
  });

  await t.test('a revoked hypervisor is cut off at once; the others keep working', async (t) => {
    const beforeRevocation = grantOf(await mdsA.capability('a'));
    const startedMs = Date.now();
    const revoked = await cluster.admin.revokeHypervisor('hv-a');
    t.equal(revoked.serversTold, 3, 'every chunk server was told');
    t.equal(await codeOf(volA.write(0, Buffer.alloc(4096, 0x55))), 'ERR_UNAUTHORIZED', 'its writes are refused');
    t.equal(await codeOf(volA.read(0, 4096)), 'ERR_UNAUTHORIZED', 'so are its reads');
    t.equal(await codeOf(mdsA.exports()), 'ERR_UNAUTHORIZED', 'and its credential at the MDS');
    t.ok(Date.now() - startedMs < 5_000, `all within ${Date.now() - startedMs} ms of the revocation`);
    await volB.write(MiB, Buffer.alloc(MiB, 0x66));
    t.ok((await volB.read(0, 2 * MiB)).equals(Buffer.concat([Buffer.alloc(MiB, 0x22), Buffer.alloc(MiB, 0x66)])),
      'the other hypervisor reads and writes as before');

    // A server that was away when the revocation was pushed learns it when it registers again.
    // (Not the server the last test's connection is on: that one is used below.)
    const away = entryA.replicas.find((replica) => replica.csId !== expiring!.csId)!;
    const index = await cluster.chunkServerIndex(away.csId);
    await cluster.chunkServers[index]!.stop('SIGTERM');
    await cluster.startChunkServer(index);
    const newPort = Number(cluster.chunkServers[index]!.ready['port']);
    // Registered again: the MDS knows its new port.
    for (let deadline = Date.now() + 30_000; ;) {
      const { chunkServers } = await cluster.admin.listChunkServers();
      if (chunkServers.some((server) => server.id === away.csId && server.port === newPort && server.state === 'online')) break;
      if (Date.now() > deadline) throw new Error('the restarted chunk server did not register');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const fresh = await connect(newPort);
    // A refused GRANT closes the connection with the server's reason.
    const closed = new Promise<string>((resolve) => fresh.onClose((error) => resolve(error.message)));
    const read = await fresh.request({ op: CS_OP.READ, chunkId: entryA.chunkId, version: entryA.version, offsetBytes: 0, lengthBytes: 4096 },
      undefined, beforeRevocation).then((response) => response.reply.code ?? 'served', (error: Error) => error.message);
    t.not(read, 'served', 'the read is refused');
    const message = await closed;
    t.match(message, /capabilities of hypervisor \d+ were revoked/, `a restarted server refuses the revoked capability: ${message}`);
  });

  await t.test('capabilities expire; clients that renew theirs keep going', async (t) => {
    const { grant, port, body, zeroBody, data, connection } = expiring!;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, grant.capability.expiresAtMs + 200 - Date.now())));
    const late = await connect(port);
    t.equal(await codeOf(late.request(zeroBody, undefined, grant)), 'ERR_UNAUTHORIZED', 'an expired capability is refused');
    t.equal(await codeOf(connection.request(body, data)), 'ERR_UNAUTHORIZED', 'and one presented before stops working once it expires');
    await volB.write(0, Buffer.alloc(MiB, 0x77));
    t.ok((await volB.read(0, MiB)).equals(Buffer.alloc(MiB, 0x77)), 'a client that renews its capability keeps writing past it');
    await volB.close();
  });
});

t.test('the NBD server runs on its hypervisor credential alone; secrets stay private', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t, { nbd: false });
  await cluster.admin.createVolume({ name: 'vm1', sizeBytes: 16 * MiB });
  const { credential } = await cluster.admin.addHypervisor({ name: 'host7', volumes: ['vm1'] });
  // The hypervisor's own folder: its credential, nothing of the cluster's.
  const hostDir = await mkdtemp(join(tmpdir(), 'shoal-hv-'));
  t.teardown(() => rm(hostDir, { recursive: true, force: true }));
  const credentialPath = join(hostDir, 'host7.cred');
  await writeFile(credentialPath, `${credential}\n`, { mode: 0o600 });
  const socket = join(hostDir, 'nbd.sock');
  const nbd = await DaemonProcess.start({
    name: 'nbd-host7', stderr: 'collect', args: ['run', 'nbd', '--mds', cluster.mdsUrl, '--credential', credentialPath, '--socket', socket],
  });
  t.teardown(() => nbd.stop('SIGKILL', 5_000));
  const uri = `nbd+unix:///vm1?socket=${socket}`;
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', '-c', 'flush', uri]);
  const read = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5c 0 1M', uri]);
  t.notMatch(read.stdout, /verification failed/, 'it serves its volume with nothing but its credential');
  for (const file of ['cluster.key', 'mds.key', 'admin.token']) {
    const mode = (await stat(join(cluster.dir, file))).mode & 0o777;
    t.equal(mode, 0o600, `${file} is 0600`);
    const secret = (await readFile(join(cluster.dir, file), 'utf8')).trim();
    t.notOk(credential.includes(secret), `the hypervisor's credential holds nothing of ${file}`);
  }
  const loose = join(hostDir, 'loose.cred');
  await writeFile(loose, `${credential}\n`, { mode: 0o644 });
  const refused = await DaemonProcess.start({
    name: 'nbd-loose', stderr: 'collect', args: ['run', 'nbd', '--mds', cluster.mdsUrl, '--credential', loose, '--socket', join(hostDir, 'x.sock')],
  }).then(() => 'started', (error: Error) => error.message);
  t.match(refused, /loose\.cred has mode 0644: other users may read or change it; run `chmod 600/, 'a credential file others can read is refused, naming the fix');
  const withClusterKey = await run(process.execPath, [SHOAL_ENTRY, 'run', 'nbd', '--mds', cluster.mdsUrl, '--cluster-key',
    join(cluster.dir, 'cluster.key'), '--socket', join(hostDir, 'y.sock')]);
  t.not(withClusterKey.code, 0, 'an NBD server given the cluster key (as before) does not start');
  t.match(withClusterKey.stderr, /--cluster-key is no longer given to hypervisors: .*shoal hypervisor add NAME.*--credential FILE/,
    'and says what replaced it');
});
