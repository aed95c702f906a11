// The chunk server's network side: accepts connections, authenticates callers, parses requests at
// the edge, runs them against the chunk store, forwards writes to the chunk's other replicas when
// it is the primary, and answers each request with one reply.
//
// Bounds: a connection with CS_CONNECTION_INFLIGHT_MAX requests outstanding, or whose replies the
// peer is not reading, stops being read; all connections stop being read while the payload bytes
// in flight exceed the server's budget. A framing error closes only that connection; a request
// that is well framed but invalid gets an error reply and the connection goes on.
//
// Before a peer has authenticated it may send one frame of at most PREAUTH_FRAME_BODY_BYTES_MAX
// (its AUTH) within AUTH_TIMEOUT_MS; a bigger one closes the connection at its prefix. At most
// `connectionsMax` connections are open, of which at most `unauthenticatedConnectionsMax` have not
// authenticated yet: a new connection beyond either cap closes the oldest unauthenticated one, so
// that a flood of strangers cannot lock out real peers (which authenticate within milliseconds of
// connecting). Only when every open connection has authenticated is a new one refused.

import { createServer, type Server, type Socket } from 'node:net';
import { StorageError } from '../errors.ts';
import { CS_CONNECTION_INFLIGHT_MAX, FRAME_BODY_BYTES_MAX } from '../limits.ts';
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
import { FrameReader, PREAUTH_FRAME_BODY_BYTES_MAX, writeFrame, type RawFrame } from '../protocol/frame.ts';
import { assert } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { PartialWriteReporter } from './partial_writes.ts';
import type { ChunkStore } from './chunk_store.ts';
import { asStorageError, handleRequest, type Reply } from './handlers.ts';
import type { CsMetrics } from './metrics.ts';

const AUTH_TIMEOUT_MS = 5_000;
/** Defaults of the caps: room for every peer of a large cluster, and a bound on strangers' share. */
export const CS_CONNECTIONS_MAX_DEFAULT = 2_048;
export const CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT = 256;
/** A flood of refused or evicted connections is logged at most this often. */
const CONNECTION_LIMIT_LOG_MS = 10_000;

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
  /** Open connections at most (default CS_CONNECTIONS_MAX_DEFAULT). */
  readonly connectionsMax?: number;
  /** Of those, not yet authenticated at most (default CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT). */
  readonly unauthenticatedConnectionsMax?: number;
}


export class ChunkServer {
  private readonly options: ChunkServerOptions;
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  /** Connections still to authenticate, oldest first (a Set keeps insertion order). */
  private readonly unauthenticated = new Set<Connection>();
  private readonly connectionsMax: number;
  private readonly unauthenticatedConnectionsMax: number;
  /** When each rate-limited warning was last logged, by message (a handful of fixed messages). */
  private readonly warnedAtMs = new Map<string, number>();
  private inflightBytes = 0;
  private throttled = false;

  constructor(options: ChunkServerOptions) {
    this.options = options;
    this.connectionsMax = options.connectionsMax ?? CS_CONNECTIONS_MAX_DEFAULT;
    this.unauthenticatedConnectionsMax = options.unauthenticatedConnectionsMax ?? CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT;
    assert(Number.isInteger(this.connectionsMax) && this.connectionsMax >= 1, 'connectionsMax is a positive integer');
    assert(
      Number.isInteger(this.unauthenticatedConnectionsMax) && this.unauthenticatedConnectionsMax >= 1 &&
        this.unauthenticatedConnectionsMax <= this.connectionsMax,
      'unauthenticatedConnectionsMax is a positive integer no greater than connectionsMax',
    );
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
    const { metrics } = this.options;
    if (this.unauthenticated.size >= this.unauthenticatedConnectionsMax) this.evictOldestUnauthenticated();
    if (this.connections.size >= this.connectionsMax && !this.evictOldestUnauthenticated()) {
      // Every open connection proved it holds the cluster key: the newcomer is the one to go.
      metrics.connectionsRefused.inc();
      this.logLimit('connection refused: --connections-max connections are open, all authenticated', socket);
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    const connection = new Connection(this, socket);
    this.connections.add(connection);
    this.unauthenticated.add(connection);
    metrics.connections.inc();
    metrics.unauthenticatedConnections.inc();
    socket.on('close', () => this.forget(connection));
  }

  /** Closes the oldest connection still to authenticate; false when there is none. */
  private evictOldestUnauthenticated(): boolean {
    const oldest = this.unauthenticated.values().next();
    if (oldest.done === true) return false;
    this.options.metrics.connectionsEvicted.inc();
    this.logLimit('unauthenticated connection closed to make room for a new one', oldest.value.socket);
    // Forgotten now, not at its 'close' event: the slot is what the new connection needs.
    this.forget(oldest.value);
    oldest.value.socket.destroy();
    return true;
  }

  /** Drops a connection from the counts; safe to call more than once. */
  private forget(connection: Connection): void {
    if (this.unauthenticated.delete(connection)) this.options.metrics.unauthenticatedConnections.dec();
    if (this.connections.delete(connection)) this.options.metrics.connections.dec();
  }

  /** A connection has authenticated: it no longer counts against the unauthenticated cap. */
  authenticated(connection: Connection): void {
    if (this.unauthenticated.delete(connection)) this.options.metrics.unauthenticatedConnections.dec();
  }

  /** Logs a refusal or eviction (rate-limited: a flood shows in the metrics, not as a flood of lines). */
  private logLimit(message: string, socket: Socket): void {
    this.warnRateLimited(message, {
      remote: socket.remoteAddress,
      connections: this.connections.size,
      unauthenticated: this.unauthenticated.size,
      connectionsMax: this.connectionsMax,
      unauthenticatedConnectionsMax: this.unauthenticatedConnectionsMax,
    });
  }

  /** Logs `message` at most once per CONNECTION_LIMIT_LOG_MS; what strangers cause is logged this way. */
  warnRateLimited(message: string, fields: Record<string, unknown>): void {
    const nowMs = Date.now();
    if (nowMs - (this.warnedAtMs.get(message) ?? -Infinity) < CONNECTION_LIMIT_LOG_MS) return;
    this.warnedAtMs.set(message, nowMs);
    this.options.log.warn(message, { ...fields, note: `repeats within ${CONNECTION_LIMIT_LOG_MS} ms are only counted in the metrics` });
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
  /** Held to one small frame until the peer authenticates (see the header). */
  private readonly reader = new FrameReader(PREAUTH_FRAME_BODY_BYTES_MAX);
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
    // After a fatal error the socket lingers a moment for the error reply: what the peer still
    // sends is dropped, not buffered (a stranger streaming megabytes must not be held).
    if (this.closed) return;
    this.reader.push(data);
    for (;;) {
      let frame: RawFrame | null;
      try {
        frame = this.reader.next();
      } catch (error) {
        const failure = asStorageError(error);
        if (this.role === null && failure.code === 'ERR_FRAME_TOO_LARGE') this.owner.deps.metrics.preauthFramesTooLarge.inc();
        this.fail(failure, 0);
        return;
      }
      if (frame === null || this.closed) return;
      if (this.role === null) {
        this.authenticate(frame);
        if (this.role === null) continue;
        // Proved to hold the key: full-size frames from now on, and no longer a stranger.
        this.reader.setBodyBytesMax(FRAME_BODY_BYTES_MAX);
        this.owner.authenticated(this);
      } else {
        this.dispatch(frame);
      }
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
    const fields = { remote: this.socket.remoteAddress, code: error.code, message: error.message };
    // Anyone can connect: what unauthenticated callers cause must not flood the log.
    if (this.role === null) this.owner.warnRateLimited('closing unauthenticated connection', fields);
    else this.owner.deps.log.warn('closing connection', fields);
    this.send({ reply: errorReply(id, error) });
    this.closed = true;
    // Nothing more is read: a peer streaming a huge body stalls on its own side of the socket.
    this.socket.pause();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }
}

