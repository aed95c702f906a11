// The chunk server's network side: accepts connections, authenticates callers, parses requests at
// the edge, runs them against the chunk store, forwards writes to the chunk's other replicas when
// it is the primary, and answers each request with one reply.
//
// Bounds: a connection with CS_CONNECTION_INFLIGHT_MAX requests outstanding, or whose replies the
// peer is not reading, stops being read; all connections stop being read while the payload bytes
// in flight exceed the server's budget. A framing error closes only that connection; a request
// that is well framed but invalid gets an error reply and the connection goes on.

import { createServer, type Server, type Socket } from 'node:net';
import { StorageError } from '../errors.ts';
import { CS_CONNECTION_INFLIGHT_MAX } from '../limits.ts';
import { macEqual, newNonce, callerMac, serverMac } from '../protocol/auth.ts';
import {
  CS_OP,
  CS_PROTOCOL_VERSION,
  errorReply,
  parseAuth,
  parseRequest,
  type CsRequest,
  type PeerRole,
} from '../protocol/cs_messages.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import { FrameReader, writeFrame, type RawFrame } from '../protocol/frame.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { PartialWriteReporter } from './partial_writes.ts';
import type { ChunkStore } from './chunk_store.ts';
import { asStorageError, handleRequest, type Reply } from './handlers.ts';
import type { CsMetrics } from './metrics.ts';

const AUTH_TIMEOUT_MS = 5_000;

export interface ChunkServerOptions {
  readonly store: ChunkStore;
  readonly clusterKey: Buffer;
  readonly peers: CsConnectionPool;
  /** For COPY_RANGE's transfers: a long timeout, where `peers` has a short one to spot failures. */
  readonly bulkPeers: CsConnectionPool;
  readonly inflightBytesMax: number;
  readonly log: Logger;
  readonly metrics: CsMetrics;
  /** Null once writes may be accepted: the server has registered and loaded the volumes' fences. */
  readonly writeBlocker: () => StorageError | null;
  /** Where a primary reports changes it could not complete on every member (its writer may be dead). */
  readonly partialWrites: PartialWriteReporter;
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

