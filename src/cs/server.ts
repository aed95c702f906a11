// The chunk server's network side: accepts connections, authenticates callers, parses requests at
// the edge, runs them against the chunk store, forwards writes to the chunk's other replicas when
// it is the primary, and answers each request with one reply.
//
// Bounds: a connection with CS_CONNECTION_INFLIGHT_MAX requests outstanding, or whose replies the
// peer is not reading, stops being read; all connections stop being read while the payload bytes
// in flight exceed the server's budget. A framing error closes only that connection; a request
// that is well framed but invalid gets an error reply and the connection goes on.

import { createServer, type Server, type Socket } from 'node:net';
import { StorageError, fromSystemError } from '../errors.ts';
import { CS_CONNECTION_INFLIGHT_MAX } from '../limits.ts';
import { macEqual, newNonce, callerMac, serverMac } from '../protocol/auth.ts';
import {
  CS_OP,
  CS_PROTOCOL_VERSION,
  encodeExtents,
  errorReply,
  parseAuth,
  parseRequest,
  type CsReply,
  type CsRequest,
  type MutationFields,
  type PeerRole,
  type ReplicaFailure,
  type WriteRequest,
  type ZeroRequest,
} from '../protocol/cs_messages.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import { FrameReader, writeFrame, type RawFrame } from '../protocol/frame.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { ChunkMeta, ChunkStore } from './chunk_store.ts';
import type { CsMetrics } from './metrics.ts';

const AUTH_TIMEOUT_MS = 5_000;

export interface ChunkServerOptions {
  readonly store: ChunkStore;
  readonly clusterKey: Buffer;
  readonly peers: CsConnectionPool;
  readonly inflightBytesMax: number;
  readonly log: Logger;
  readonly metrics: CsMetrics;
}

interface Reply {
  readonly reply: CsReply;
  readonly payload?: Buffer;
}

export class ChunkServer {
  private readonly options: ChunkServerOptions;
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  private inflightBytes = 0;
  private throttled = false;

  constructor(options: ChunkServerOptions) {
    this.options = options;
    this.server = createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  async listen(host: string, port: number): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const address = this.server.address();
    assert(typeof address === 'object' && address !== null, 'TCP server has an address');
    return address.port;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const connection of this.connections) connection.socket.destroy();
    await closed;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  private accept(socket: Socket): void {
    const connection = new Connection(this, socket);
    this.connections.add(connection);
    this.options.metrics.connections.inc();
    socket.on('close', () => {
      this.connections.delete(connection);
      this.options.metrics.connections.dec();
    });
  }

  /** Global memory bound: payload bytes held by requests in flight across all connections. */
  reserveBytes(bytes: number): void {
    this.inflightBytes += bytes;
    if (!this.throttled && this.inflightBytes > this.options.inflightBytesMax) {
      this.throttled = true;
      for (const connection of this.connections) connection.updateFlow();
    }
  }

  releaseBytes(bytes: number): void {
    this.inflightBytes -= bytes;
    assert(this.inflightBytes >= 0, 'in-flight bytes never negative');
    if (this.throttled && this.inflightBytes <= this.options.inflightBytesMax / 2) {
      this.throttled = false;
      for (const connection of this.connections) connection.updateFlow();
    }
  }

  get isThrottled(): boolean {
    return this.throttled;
  }

  get deps(): ChunkServerOptions {
    return this.options;
  }
}

class Connection {
  readonly socket: Socket;
  private readonly owner: ChunkServer;
  private readonly reader = new FrameReader();
  private readonly nonce = newNonce();
  private role: PeerRole | null = null;
  private inflight = 0;
  private writable = true;
  private closed = false;
  private readonly authTimer: NodeJS.Timeout;

  constructor(owner: ChunkServer, socket: Socket) {
    this.owner = owner;
    this.socket = socket;
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.closed = true;
      clearTimeout(this.authTimer);
    });
    socket.on('drain', () => {
      this.writable = true;
      this.updateFlow();
    });
    this.authTimer = setTimeout(() => {
      if (this.role === null) this.fail(new StorageError('ERR_UNAUTHORIZED', `no AUTH within ${AUTH_TIMEOUT_MS} ms`), 0);
    }, AUTH_TIMEOUT_MS);
    writeFrame(socket, { op: CS_OP.HELLO, protocolVersion: CS_PROTOCOL_VERSION, nonce: this.nonce });
  }

  updateFlow(): void {
    if (this.closed) return;
    const paused = !this.writable || this.inflight >= CS_CONNECTION_INFLIGHT_MAX || this.owner.isThrottled;
    if (paused) this.socket.pause();
    else this.socket.resume();
  }

  private onData(data: Buffer): void {
    this.reader.push(data);
    for (;;) {
      let frame: RawFrame | null;
      try {
        frame = this.reader.next();
      } catch (error) {
        this.fail(asStorageError(error), 0);
        return;
      }
      if (frame === null || this.closed) return;
      if (this.role === null) this.authenticate(frame);
      else this.dispatch(frame);
    }
  }

  private authenticate(frame: RawFrame): void {
    const { clusterKey } = this.owner.deps;
    try {
      const auth = parseAuth(frame);
      if (!macEqual(callerMac(clusterKey, auth.role, this.nonce, auth.nonce), auth.mac)) {
        throw new StorageError('ERR_UNAUTHORIZED', 'authentication failed: the caller does not hold this cluster\'s key');
      }
      this.role = auth.role;
      clearTimeout(this.authTimer);
      this.send({ reply: { op: CS_OP.REPLY, id: auth.id, mac: serverMac(clusterKey, this.nonce, auth.nonce) } });
    } catch (error) {
      this.owner.deps.metrics.authFailures.inc();
      this.fail(asStorageError(error), 0);
    }
  }

  private dispatch(frame: RawFrame): void {
    let request: CsRequest;
    try {
      request = parseRequest(frame);
    } catch (error) {
      const id = typeof frame.header['id'] === 'number' ? frame.header['id'] : 0;
      this.owner.deps.metrics.protocolErrors.inc();
      this.send({ reply: errorReply(id, asStorageError(error)) });
      return;
    }
    const payloadBytes = frame.payload.length;
    this.inflight += 1;
    this.owner.reserveBytes(payloadBytes);
    this.updateFlow();
    const timer = this.owner.deps.metrics.startRequest(request.op);
    handleRequest(this.owner.deps, request, frame.payload, this.role ?? 'client').then(
      (reply) => {
        timer(reply.reply.code);
        this.finish(reply, payloadBytes);
      },
      (error: unknown) => {
        const failure = asStorageError(error);
        timer(failure.code);
        this.finish({ reply: errorReply(request.id, failure) }, payloadBytes);
      },
    );
  }

  private finish(reply: Reply, payloadBytes: number): void {
    this.inflight -= 1;
    this.owner.releaseBytes(payloadBytes);
    this.send(reply);
    this.updateFlow();
  }

  private send(reply: Reply): void {
    if (this.closed) return;
    if (!writeFrame(this.socket, reply.reply, reply.payload)) this.writable = false;
  }

  /** Reports a fatal error to the peer, then closes: the stream cannot be trusted any more. */
  private fail(error: StorageError, id: number): void {
    if (this.closed) return;
    this.owner.deps.log.warn('closing connection', { remote: this.socket.remoteAddress, code: error.code, message: error.message });
    this.send({ reply: errorReply(id, error) });
    this.closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }
}

function asStorageError(error: unknown): StorageError {
  return fromSystemError(error, 'chunk server');
}

function ok(id: number, extra?: Partial<CsReply>): Reply {
  return { reply: { op: CS_OP.REPLY, id, ...extra } };
}

async function handleRequest(deps: ChunkServerOptions, request: CsRequest, payload: Buffer, role: PeerRole): Promise<Reply> {
  const { store } = deps;
  switch (request.op) {
    case CS_OP.WRITE:
    case CS_OP.ZERO:
      return mutate(deps, request, payload);
    case CS_OP.READ: {
      const meta = checkedMeta(store, request);
      checkRange(meta, request.offsetBytes, request.lengthBytes);
      const bytes = await store.read(meta, request.offsetBytes, request.lengthBytes);
      return { reply: { op: CS_OP.REPLY, id: request.id }, payload: bytes };
    }
    case CS_OP.BLOCK_STATUS: {
      const meta = checkedMeta(store, request);
      checkRange(meta, request.offsetBytes, request.lengthBytes);
      const extents = await store.blockStatus(meta, request.offsetBytes, request.lengthBytes);
      return { reply: { op: CS_OP.REPLY, id: request.id }, payload: encodeExtents(extents) };
    }
    case CS_OP.FLUSH:
      await store.journal.barrier();
      return ok(request.id);
    case CS_OP.CHUNK_INFO: {
      const meta = requireMeta(store, request.chunkId);
      return ok(request.id, { version: meta.version, sizeBytes: meta.sizeBytes });
    }
    case CS_OP.CREATE_CHUNK: {
      requireRole(role, 'mds', 'create chunks');
      const { chunkId, volumeId, chunkIndex, sizeBytes, version } = request;
      const meta = await store.createChunk({ chunkId, volumeId, chunkIndex, sizeBytes, version });
      return ok(request.id, { version: meta.version, sizeBytes: meta.sizeBytes });
    }
    case CS_OP.DELETE_CHUNK:
      requireRole(role, 'mds', 'delete chunks');
      await store.deleteChunk(request.chunkId);
      return ok(request.id);
  }
}

function requireRole(role: PeerRole, needed: PeerRole, what: string): void {
  if (role !== needed) throw new StorageError('ERR_UNAUTHORIZED', `only the ${needed} may ${what}; this connection is a ${role}`);
}

function requireMeta(store: ChunkStore, chunkId: number): ChunkMeta {
  const meta = store.getMeta(chunkId);
  if (meta === undefined) throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server`);
  return meta;
}

/** The replica must exist at exactly the version the caller holds: older or newer is stale to someone. */
function checkedMeta(store: ChunkStore, request: { chunkId: number; version: number }): ChunkMeta {
  const meta = requireMeta(store, request.chunkId);
  if (meta.version !== request.version) {
    throw new StorageError(
      'ERR_CHUNK_VERSION',
      `chunk ${request.chunkId} is at version ${meta.version} here, the request carries version ${request.version}`,
    );
  }
  return meta;
}

function checkRange(meta: ChunkMeta, offsetBytes: number, lengthBytes: number): void {
  if (offsetBytes + lengthBytes > meta.sizeBytes) {
    throw new StorageError(
      'ERR_OUT_OF_RANGE',
      `range ${offsetBytes}+${lengthBytes} is outside chunk ${meta.chunkId} of ${meta.sizeBytes} bytes`,
    );
  }
}

/** WRITE and ZERO: check, apply locally and on the forwarded replicas in parallel, report both. */
async function mutate(deps: ChunkServerOptions, request: WriteRequest | ZeroRequest, payload: Buffer): Promise<Reply> {
  const { store } = deps;
  const meta = checkedMeta(store, request);
  if (meta.volumeId !== request.volumeId) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `chunk ${meta.chunkId} belongs to volume ${meta.volumeId}, not ${request.volumeId}`);
  }
  checkRange(meta, request.offsetBytes, request.lengthBytes);
  const fence = store.fenceEpoch(meta.volumeId);
  if (request.epoch < fence) {
    throw new StorageError(
      'ERR_LEASE_FENCED',
      `write to volume ${meta.volumeId} carries lease epoch ${request.epoch}, but epoch ${fence} has taken over`,
    );
  }
  // A newer epoch fences every older writer from now on.
  const fenced = store.raiseFence(meta.volumeId, request.epoch);
  const local =
    request.op === CS_OP.WRITE
      ? store.write(meta, request.offsetBytes, payload)
      : store.zero(meta, request.offsetBytes, request.lengthBytes);
  const forwarded = request.forward.map((target) => forward(deps, request, target, payload));
  const [localResult, ...peerResults] = await Promise.allSettled([Promise.all([local, fenced]), ...forwarded]);
  const failedReplicas = peerResults.flatMap((result) => (result.status === 'fulfilled' && result.value !== null ? [result.value] : []));
  assert(localResult !== undefined, 'local result present');
  if (localResult.status === 'rejected') {
    const error = asStorageError(localResult.reason);
    return { reply: errorReply(request.id, error, failedReplicas.length > 0 ? { failedReplicas } : {}) };
  }
  const firstFailure = failedReplicas[0];
  if (firstFailure !== undefined) {
    const message = `replica on chunk server ${firstFailure.csId} failed: ${firstFailure.message}`;
    return { reply: errorReply(request.id, new StorageError(firstFailure.code, message), { failedReplicas }) };
  }
  return ok(request.id);
}

/** Sends the change to one more replica; resolves with its failure, or null when it succeeded. */
async function forward(
  deps: ChunkServerOptions,
  request: MutationFields & { op: typeof CS_OP.WRITE | typeof CS_OP.ZERO },
  target: { csId: number; host: string; port: number },
  payload: Buffer,
): Promise<ReplicaFailure | null> {
  const body = {
    op: request.op,
    chunkId: request.chunkId,
    version: request.version,
    volumeId: request.volumeId,
    epoch: request.epoch,
    offsetBytes: request.offsetBytes,
    lengthBytes: request.lengthBytes,
    forward: [],
  };
  try {
    const { reply } = await deps.peers.request(target.host, target.port, body, request.op === CS_OP.WRITE ? payload : undefined);
    if (reply.code === undefined) return null;
    return { csId: target.csId, code: reply.code, message: reply.message ?? reply.code };
  } catch (error) {
    const failure = asStorageError(error);
    return { csId: target.csId, code: failure.code, message: failure.message };
  }
}
