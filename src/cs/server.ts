// The chunk server's network side: accepts connections, authenticates callers, parses requests at
// the edge, runs them against the chunk store, forwards writes to the chunk's other replicas when
// it is the primary, and answers each request with one reply.
//
// Bounds: a connection with CS_CONNECTION_INFLIGHT_MAX requests outstanding, or whose replies the
// peer is not reading, stops being read; all connections stop being read while the payload bytes
// in flight exceed the server's gate (util/byte_gate.ts: its share of the memory budget, a quarter
// of it under memory pressure). A framing error closes only that connection; a request
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
import type { KeyObject } from 'node:crypto';
import { macEqual, newNonce, callerMac, serverMac, verifyMdsProof } from '../protocol/auth.ts';
import { decodeCapability, grantProof, verifyCapability, type Capability, type TicketMember } from '../protocol/capability.ts';
import {
  CS_OP,
  CS_PROTOCOL_VERSION,
  errorReply,
  parseAuth,
  parseRequest,
  type CsRequest,
  type GrantRequest,
  type PeerRole,
} from '../protocol/cs_messages.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import { FrameReader, PREAUTH_FRAME_BODY_BYTES_MAX, writeFrame, type RawFrame } from '../protocol/frame.ts';
import { assert } from '../util/assert.ts';
import { setBounded } from '../util/bounded_map.ts';
import type { ByteGate } from '../util/byte_gate.ts';
import { TickCorker } from '../util/tick_cork.ts';
import type { Logger } from '../util/log.ts';
import type { PartialWriteReporter } from './partial_writes.ts';
import type { ChunkStore } from './store/chunk_store.ts';
import { asStorageError, handleRequest, type Caller, type Reply } from './handlers.ts';
import type { CsMetrics } from './metrics.ts';
import type { TicketChecker } from './ticket_check.ts';

const AUTH_TIMEOUT_MS = 5_000;
/** Defaults of the caps: room for every peer of a large cluster, and a bound on strangers' share. */
export const CS_CONNECTIONS_MAX_DEFAULT = 2_048;
export const CS_UNAUTHENTICATED_CONNECTIONS_MAX_DEFAULT = 256;
/** A flood of refused or evicted connections is logged at most this often. */
const CONNECTION_LIMIT_LOG_MS = 10_000;

export interface ChunkServerOptions {
  readonly store: ChunkStore;
  readonly clusterKey: Buffer;
  /** capabilityKey(clusterKey): checks capabilities and chunk tickets. */
  readonly capabilityKey: Buffer;
  /** Checks client writes' chunk tickets (with capabilityKey). */
  readonly tickets: TicketChecker;
  /** Verifies the MDS's signature at AUTH (mds.pub); only the MDS holds the private key. */
  readonly mdsPublicKey: KeyObject;
  /** This server as the MDS's map names it, once registered: a write's ticket must name it first. */
  readonly self: () => TicketMember | null;
  readonly peers: CsConnectionPool;
  /** For COPY_RANGE's transfers: a long timeout, where `peers` has a short one to spot failures. */
  readonly bulkPeers: CsConnectionPool;
  /** Payload bytes of requests in flight across all connections (part of the memory budget). */
  readonly inflightGate: ByteGate;
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


/** Hypervisors whose capabilities were revoked, kept at most this many (hypervisors are few). */
const REVOCATIONS_MAX = 65_536;
/** Refused capabilities a connection remembers (to answer its requests with the reason). */
const REFUSALS_MAX = 64;

export class ChunkServer {
  private readonly options: ChunkServerOptions;
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  /** hypervisorId -> capabilities issued before this time are void. */
  private readonly revokedBeforeMs = new Map<number, number>();
  /** The highest MDS term seen: an MDS with a lower term (a deposed leader) is refused. */
  private mdsTerm = 0;
  /** Connections still to authenticate, oldest first (a Set keeps insertion order). */
  private readonly unauthenticated = new Set<Connection>();
  private readonly connectionsMax: number;
  private readonly unauthenticatedConnectionsMax: number;
  /** When each rate-limited warning was last logged, by message (a handful of fixed messages). */
  private readonly warnedAtMs = new Map<string, number>();
  private readonly stopWatchingGate: () => void;

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
    // The gate opening or closing (requests answered, memory pressure) changes who may read.
    this.stopWatchingGate = options.inflightGate.onChange(() => {
      for (const connection of this.connections) connection.updateFlow();
    });
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
    this.stopWatchingGate();
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
    this.options.inflightGate.reserve(bytes);
  }

  releaseBytes(bytes: number): void {
    this.options.inflightGate.release(bytes);
  }

  get isThrottled(): boolean {
    return this.options.inflightGate.isClosed;
  }

  /**
   * Voids the hypervisor's capabilities issued before `issuedBeforeMs`: they are dropped from every
   * connection at once, and refused when presented again.
   */
  revoke(hypervisorId: number, issuedBeforeMs: number): void {
    const known = this.revokedBeforeMs.get(hypervisorId) ?? 0;
    if (issuedBeforeMs <= known) return;
    // Full, the oldest revocation goes: its capabilities have long expired.
    setBounded(this.revokedBeforeMs, hypervisorId, issuedBeforeMs, REVOCATIONS_MAX);
    for (const connection of this.connections) connection.dropRevoked(hypervisorId, issuedBeforeMs);
    this.options.log.warn('capabilities of a hypervisor revoked', { hypervisorId, issuedBefore: new Date(issuedBeforeMs).toISOString() });
  }

  isRevoked(capability: Capability): boolean {
    return capability.issuedAtMs < (this.revokedBeforeMs.get(capability.hypervisorId) ?? 0);
  }

  /** Checks an MDS's term: it may only stay or grow. */
  admitMdsTerm(term: number): void {
    if (term < this.mdsTerm) {
      throw new StorageError('ERR_UNAUTHORIZED', `MDS term ${term} is older than term ${this.mdsTerm} already seen: a deposed MDS is refused`);
    }
    this.mdsTerm = term;
  }

  get deps(): ChunkServerOptions {
    return this.options;
  }
}

class Connection implements Caller {
  readonly socket: Socket;
  private readonly corker: TickCorker;
  private readonly owner: ChunkServer;
  /** Held to one small frame until the peer authenticates (see the header). */
  private readonly reader = new FrameReader(PREAUTH_FRAME_BODY_BYTES_MAX);
  private readonly nonce = newNonce();
  private callerNonce: Buffer | null = null;
  role: PeerRole = 'client';
  private authenticated = false;
  /** Proved something (a key, or a client's first accepted capability): full-size frames, not evictable. */
  private promoted = false;
  /** Capabilities this client presented, by volume (a client connection serves a few volumes). */
  private readonly grants = new Map<number, Capability>();
  /** Why the last capability presented for a volume was refused: its requests get that reason. */
  private readonly refusals = new Map<number, StorageError>();
  private inflight = 0;
  private writable = true;
  private closed = false;
  private readonly authTimer: NodeJS.Timeout;

  constructor(owner: ChunkServer, socket: Socket) {
    this.owner = owner;
    this.socket = socket;
    this.corker = new TickCorker(socket);
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
      if (!this.authenticated) this.fail(new StorageError('ERR_UNAUTHORIZED', `no AUTH within ${AUTH_TIMEOUT_MS} ms`), 0);
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
        if (!this.promoted && failure.code === 'ERR_FRAME_TOO_LARGE') this.owner.deps.metrics.preauthFramesTooLarge.inc();
        this.fail(failure, 0);
        return;
      }
      if (frame === null || this.closed) return;
      if (!this.authenticated) {
        this.authenticate(frame);
        if (!this.authenticated) continue;
        // A peer or the MDS proved its key: full-size frames from now on, no longer a stranger.
        // A client proved nothing yet: it stays one until a capability it presents is accepted.
        if (this.role !== 'client') this.promote();
      } else {
        this.dispatch(frame);
      }
    }
  }

  private authenticate(frame: RawFrame): void {
    const { clusterKey, mdsPublicKey } = this.owner.deps;
    try {
      const auth = parseAuth(frame);
      if (auth.role === 'peer' && !macEqual(callerMac(clusterKey, auth.role, this.nonce, auth.nonce), auth.mac)) {
        throw new StorageError('ERR_UNAUTHORIZED', 'authentication failed: the caller does not hold this cluster\'s key');
      }
      if (auth.role === 'mds') {
        if (!verifyMdsProof(mdsPublicKey, auth.term, this.nonce, auth.nonce, auth.proof)) {
          throw new StorageError('ERR_UNAUTHORIZED', 'authentication failed: the caller is not the MDS (its signature does not match mds.pub)');
        }
        this.owner.admitMdsTerm(auth.term);
      }
      this.role = auth.role;
      this.callerNonce = auth.nonce;
      this.authenticated = true;
      clearTimeout(this.authTimer);
      // A client has no key to check this against: it checks the server at its first GRANT.
      const mac = auth.role === 'client' ? {} : { mac: serverMac(clusterKey, this.nonce, auth.nonce) };
      this.send({ reply: { op: CS_OP.REPLY, id: auth.id, ...mac } });
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
    // Synchronous, so that the requests pipelined right behind see their outcome.
    if (request.op === CS_OP.GRANT) {
      this.send(this.grant(request));
      return;
    }
    if (request.op === CS_OP.REVOKE) {
      if (this.role !== 'mds') {
        this.send({ reply: errorReply(request.id, new StorageError('ERR_UNAUTHORIZED', `only the MDS may revoke; this connection is a ${this.role}`)) });
        return;
      }
      this.owner.revoke(request.hypervisorId, request.issuedBeforeMs);
      this.send({ reply: { op: CS_OP.REPLY, id: request.id } });
      return;
    }
    const payloadBytes = frame.payload.length;
    this.inflight += 1;
    this.owner.reserveBytes(payloadBytes);
    this.updateFlow();
    const timer = this.owner.deps.metrics.startRequest(request.op);
    handleRequest(this.owner.deps, request, frame.payload, this).then(
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

  /** GRANT: checks the capability, the caller's proof of its session key, and answers with ours. */
  private grant(request: GrantRequest): Reply {
    try {
      if (this.role !== 'client') throw new StorageError('ERR_PROTOCOL', `a ${this.role} connection presents no capabilities`);
      // Revocations arrive with the registration: before it, a revoked capability cannot be told.
      if (this.owner.deps.self() === null) {
        throw new StorageError('ERR_UNAVAILABLE', 'chunk server has not registered with the MDS yet: it takes no capabilities');
      }
      const { capability, sessionKey } = verifyCapability(this.owner.deps.capabilityKey, request.capability, Date.now());
      const callerNonce = this.callerNonce;
      if (callerNonce === null || !macEqual(grantProof(sessionKey, 'client', this.nonce, callerNonce), request.proof)) {
        throw new StorageError('ERR_UNAUTHORIZED', 'the capability was presented without its session key');
      }
      if (this.owner.isRevoked(capability)) {
        throw new StorageError('ERR_UNAUTHORIZED', `the capabilities of hypervisor ${capability.hypervisorId} were revoked`);
      }
      this.grants.set(capability.volumeId, capability);
      this.refusals.delete(capability.volumeId);
      if (!this.promoted) this.promote();
      return { reply: { op: CS_OP.REPLY, id: request.id, mac: grantProof(sessionKey, 'server', this.nonce, callerNonce) } };
    } catch (error) {
      this.owner.deps.metrics.authFailures.inc();
      const failure = asStorageError(error);
      this.noteRefusal(request.capability, failure);
      return { reply: errorReply(request.id, failure) };
    }
  }

  private noteRefusal(encoded: Buffer, failure: StorageError): void {
    let volumeId: number;
    try {
      volumeId = decodeCapability(encoded).volumeId;
    } catch {
      return;
    }
    this.grants.delete(volumeId);
    setBounded(this.refusals, volumeId, failure, REFUSALS_MAX);
  }

  refusal(volumeId: number): StorageError | null {
    return this.refusals.get(volumeId) ?? null;
  }

  private promote(): void {
    this.promoted = true;
    this.reader.setBodyBytesMax(FRAME_BODY_BYTES_MAX);
    this.owner.authenticated(this);
  }

  capability(volumeId: number): Capability | null {
    const capability = this.grants.get(volumeId);
    if (capability === undefined) return null;
    if (capability.expiresAtMs <= Date.now()) {
      this.grants.delete(volumeId);
      return null;
    }
    return capability;
  }

  dropRevoked(hypervisorId: number, issuedBeforeMs: number): void {
    for (const [volumeId, capability] of this.grants) {
      if (capability.hypervisorId === hypervisorId && capability.issuedAtMs < issuedBeforeMs) this.grants.delete(volumeId);
    }
  }

  private finish(reply: Reply, payloadBytes: number): void {
    this.inflight -= 1;
    this.owner.releaseBytes(payloadBytes);
    this.send(reply);
    this.updateFlow();
  }

  private send(reply: Reply): void {
    if (this.closed) return;
    this.corker.hold();
    if (!writeFrame(this.socket, reply.reply, reply.payload)) this.writable = false;
  }

  /** Reports a fatal error to the peer, then closes: the stream cannot be trusted any more. */
  private fail(error: StorageError, id: number): void {
    if (this.closed) return;
    const fields = { remote: this.socket.remoteAddress, code: error.code, message: error.message };
    // Anyone can connect: what unauthenticated callers cause must not flood the log.
    if (!this.promoted) this.owner.warnRateLimited('closing unauthenticated connection', fields);
    else this.owner.deps.log.warn('closing connection', fields);
    this.send({ reply: errorReply(id, error) });
    this.closed = true;
    // Nothing more is read: a peer streaming a huge body stalls on its own side of the socket.
    this.socket.pause();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }
}

