// Bad input gets a clear error and harms nothing: wrong NBD requests, garbage handshakes, frames
// over the limit to a chunk server, bad credentials, invalid API bodies. After each, the daemon
// is still up and a well-formed client still works.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { NBD_ERRNO } from '../src/errors.ts';
import { FRAME_BODY_BYTES_MAX, IO_BYTES_MAX } from '../src/limits.ts';
import { COMMAND } from '../src/nbd/protocol.ts';
import { CsConnection } from '../src/protocol/cs_connection.ts';
import { CS_OP } from '../src/protocol/cs_messages.ts';
import { FrameReader, encodeFrameHead } from '../src/protocol/frame.ts';
import { startCluster } from './helpers/cluster.ts';
import { RawNbdClient } from './helpers/nbd_raw.ts';
import { runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

t.test('bad input is refused with a clear error and harms nothing', async (t) => {
  t.setTimeout(120_000);
  const cluster = await startCluster(t);
  await cluster.admin.createVolume({ name: 'bad', sizeBytes: SIZE, chunkSizeBytes: 8 * MiB });
  await runOk('qemu-io', ['-f', 'raw', '-c', `write -P 0x61 ${SIZE - 4096} 4096`, cluster.nbdUnixUri('bad')]);

  const stillServes = async (what: string): Promise<void> => {
    const { stdout } = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', `read -P 0x61 ${SIZE - 4096} 4096`, cluster.nbdTcpUri('bad')]);
    t.notMatch(stdout, /verification failed/, `a fresh client still reads the data after ${what}`);
  };

  await t.test('NBD requests out of range, oversized or unknown get errors; the connection goes on', async (t) => {
    const client = await RawNbdClient.connect(cluster.nbdSocket);
    t.teardown(() => client.close());
    await client.handshake('bad');
    t.equal(client.sizeBytes, SIZE, 'the export size');
    t.equal((await client.request(COMMAND.READ, SIZE - 10, 20)).error, NBD_ERRNO.EINVAL, 'read past the end: EINVAL');
    t.equal((await client.request(COMMAND.READ, 2 ** 40, 512)).error, NBD_ERRNO.EINVAL, 'read far past the end: EINVAL');
    t.equal((await client.request(COMMAND.WRITE, SIZE - 10, 20, Buffer.alloc(20))).error, NBD_ERRNO.ENOSPC, 'write past the end: ENOSPC');
    t.equal((await client.request(COMMAND.READ, 0, IO_BYTES_MAX + 4096)).error, NBD_ERRNO.EINVAL, 'read over the size limit: EINVAL');
    t.equal((await client.request(99, 0, 512)).error, NBD_ERRNO.EINVAL, 'unknown command: EINVAL');
    t.equal((await client.request(COMMAND.READ, 0, 0)).error, NBD_ERRNO.EINVAL, 'zero-length read: EINVAL');
    const good = await client.request(COMMAND.READ, SIZE - 4096, 4096, undefined, 77);
    t.equal(good.error, 0, 'the same connection still serves a good read');
    t.equal(good.cookie, 77, 'with its cookie');
    t.ok(good.data.every((b) => b === 0x61), 'and the right bytes');
    await stillServes('bad requests');
  });

  await t.test('a garbage handshake closes only that connection', async (t) => {
    for (const garbage of [randomBytes(64), randomBytes(4096), Buffer.from('GET / HTTP/1.1\r\n\r\n')]) {
      const client = await RawNbdClient.connect(cluster.nbdSocket);
      await client.read(18);
      client.write(garbage);
      t.ok(await client.closedByServer(), 'the server closes the garbage connection');
      client.close();
    }
    t.ok(cluster.nbd?.running, 'the NBD server is still up');
    await stillServes('garbage handshakes');
  });

  await t.test('chunk server: oversized frame, no auth, wrong key', async (t) => {
    const cs = cluster.chunkServers[0]!;
    const port = Number(cs.ready['port']);
    const oversized = await rawFrameExchange(port, (prefix) => {
      prefix.writeUInt32BE(FRAME_BODY_BYTES_MAX + 1, 0);
      prefix.writeUInt16BE(16, 4);
    });
    t.match(oversized.header, { code: 'ERR_FRAME_TOO_LARGE' }, 'a frame over the limit is refused by name');
    t.ok(oversized.closed, 'and that connection is closed');
    const unauthenticated = await rawFrameExchange(port, null, encodeFrameHead({ op: CS_OP.READ, id: 5, chunkId: 1, version: 1, offsetBytes: 0, lengthBytes: 4096 }, 0));
    t.match(unauthenticated.header, { code: 'ERR_PROTOCOL' }, 'a request before AUTH is refused');
    t.ok(unauthenticated.closed);
    await t.rejects(
      CsConnection.connect({ host: '127.0.0.1', port, credential: { role: 'peer', clusterKey: randomBytes(32) } }),
      { code: 'ERR_UNAUTHORIZED' },
      'a caller claiming to be a chunk server without the cluster key is refused',
    );
    const good = await CsConnection.connect({ host: '127.0.0.1', port, credential: { role: 'peer', clusterKey: cluster.clusterKey } });
    const { reply } = await good.request({ op: CS_OP.CHUNK_INFO, chunkId: 999_999 });
    t.equal(reply.code, 'ERR_CHUNK_NOT_FOUND', 'a good client still gets answers');
    const bad = await good.request({ op: CS_OP.READ, chunkId: 1, version: 1, offsetBytes: 0, lengthBytes: 64 * MiB });
    t.equal(bad.reply.code, 'ERR_TOO_LARGE', 'an oversized read is refused by name; the connection goes on');
    const created = await good.request({ op: CS_OP.CREATE_CHUNK, chunkId: 424242, volumeId: 1, chunkIndex: 0, sizeBytes: MiB, version: 1, generation: 1 });
    t.equal(created.reply.code, 'ERR_UNAUTHORIZED', 'a chunk server may not create chunks on another: only the MDS may');
    good.close();
    t.ok(cs.running, 'the chunk server is still up');
    await stillServes('bad chunk-server frames');
  });

  await t.test('REST API: invalid bodies and tokens get errors naming the problem', async (t) => {
    const call = async (method: string, path: string, body: string | undefined, token = cluster.adminToken) => {
      const response = await fetch(`${cluster.mdsUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body }),
      });
      return { status: response.status, body: (await response.json()) as { code: string; message: string; details: Record<string, string> } };
    };
    const cases: Array<[string, string, string | undefined, number, string, RegExp]> = [
      ['POST', '/v1/volumes', '{"name":"x"}', 400, 'ERR_INVALID_ARGUMENT', /missing required property "sizeBytes"/],
      ['POST', '/v1/volumes', '{"name":"a b","sizeBytes":1048576}', 400, 'ERR_INVALID_ARGUMENT', /name/],
      ['POST', '/v1/volumes', '{"name":"x","sizeBytes":-1}', 400, 'ERR_INVALID_ARGUMENT', /sizeBytes/],
      ['POST', '/v1/volumes', '{"name":"x","sizeBytes":1048576,"colour":"red"}', 400, 'ERR_INVALID_ARGUMENT', /unknown property "colour"/],
      ['POST', '/v1/volumes', '{"name":"x","sizeBytes":1048576,"chunkSizeBytes":3000000}', 400, 'ERR_INVALID_ARGUMENT', /power of two/],
      ['POST', '/v1/volumes', '{"name":"x","sizeBytes":1048576,"replicas":{"normal":2,"min":3}}', 400, 'ERR_INVALID_ARGUMENT', /min/],
      ['POST', '/v1/volumes', '{not json', 400, 'ERR_INVALID_ARGUMENT', /JSON/i],
      ['POST', '/v1/volumes', JSON.stringify({ name: 'x', sizeBytes: 1, pad: 'p'.repeat(200_000) }), 413, 'ERR_TOO_LARGE', /large/i],
      ['PATCH', '/v1/volumes/bad', '{"sizeBytes":1024}', 409, 'ERR_SHRINK_REFUSED', /only grow/],
      ['GET', '/v1/volumes/nope', undefined, 404, 'ERR_NOT_FOUND', /nope/],
    ];
    for (const [method, path, body, status, code, message] of cases) {
      const result = await call(method, path, body);
      t.equal(result.status, status, `${method} ${path} ${body?.slice(0, 60) ?? ''}: HTTP ${status}`);
      t.equal(result.body.code, code, `  code ${code}`);
      t.match(result.body.message, message, `  message names the problem: ${result.body.message}`);
      t.equal(typeof result.body.details?.['summary'], 'string', `  details.summary says what ${code} means: ${result.body.details?.['summary']}`);
    }
    // A schema violation names the field and the rule in details, for scripts.
    const missing = await call('POST', '/v1/volumes', '{"name":"x"}');
    t.same(missing.body.details, { summary: 'a request field is invalid', field: 'body.sizeBytes', rule: 'required' }, 'details of a missing field');
    const unknown = await call('POST', '/v1/volumes', '{"name":"x","sizeBytes":1048576,"colour":"red"}');
    t.same(unknown.body.details, { summary: 'a request field is invalid', field: 'body.colour', rule: 'additionalProperties' }, 'details of an unknown field');
    const noRoute = await call('GET', '/v1/nothing-here?x=1', undefined);
    t.same(noRoute.body.details, { summary: 'no such object', method: 'GET', path: '/v1/nothing-here' }, 'details of an unknown route');
    const unauthorized = await call('GET', '/v1/volumes', undefined, 'wrong');
    t.equal(unauthorized.status, 401);
    // A route that declares its error replies: the token check's reply must fit that schema too.
    const refused = await call('POST', '/v1/volumes', '{"name":"x","sizeBytes":1048576}', 'wrong');
    t.same([refused.status, refused.body.code, refused.body.details], [401, 'ERR_UNAUTHORIZED', { summary: 'missing or wrong credentials' }],
      'a wrong token: 401 ERR_UNAUTHORIZED in the one error shape');
    const internal = await call('GET', '/v1/internal/exports', undefined);
    t.equal(internal.status, 401, 'the admin token does not open internal routes');
    const created = await call('POST', '/v1/volumes', '{"name":"after","sizeBytes":1048576}');
    t.equal(created.status, 201, 'a valid request still works afterwards');
  });
});

/** Connects to a chunk server, reads HELLO, sends a crafted prefix or frame, returns its answer. */
async function rawFrameExchange(
  port: number,
  craftPrefix: ((prefix: Buffer) => void) | null,
  frame?: Buffer,
): Promise<{ header: Record<string, unknown> | null; closed: boolean }> {
  const socket = connect({ host: '127.0.0.1', port });
  const reader = new FrameReader();
  let closed = false;
  socket.on('close', () => { closed = true; });
  socket.on('error', () => undefined);
  const frames: Array<Record<string, unknown>> = [];
  socket.on('data', (data: Buffer) => {
    reader.push(data);
    for (let next = reader.next(); next !== null; next = reader.next()) frames.push(next.header);
  });
  const deadline = Date.now() + 5_000;
  while (frames.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  if (craftPrefix !== null) {
    const prefix = Buffer.alloc(6);
    craftPrefix(prefix);
    socket.write(prefix);
  }
  if (frame !== undefined) socket.write(frame);
  while ((frames.length < 2 || !closed) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  socket.destroy();
  return { header: frames[1] ?? null, closed };
}
