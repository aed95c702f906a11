// The calling end of the chunk-server protocol: one authenticated TCP connection with pipelined
// requests, and a pool that keeps one connection per chunk server. Used by the client library,
// by chunk servers forwarding writes to their peers, and by the MDS.
//
// Bounds: at most CS_CONNECTION_INFLIGHT_MAX requests and INFLIGHT_BYTES_MAX payload bytes are
// outstanding per connection; further requests wait in a FIFO.
//
// Timeouts judge whether the server is alive, not how fast it is: a connection with requests
// outstanding must see some reply every requestTimeoutMs (a server that answers nothing for that
// long is dead or cut off), and each request must be answered within STALLED_REQUEST_FACTOR times
// that (a server that answers others but never this one has lost it). Either miss closes the
// connection, failing everything outstanding on it, because a reply that never came means the
// stream can no longer be trusted. A server that is only slow under load (its requests queued
// behind others, replies still flowing) is waited for: timing out there would drop healthy
// replicas from their sets and start copying just when the disks are busiest, while the requests
// given up on still wait in the server's queue and land later.

import { connect as netConnect, type Socket } from 'node:net';
import { StorageError } from '../errors.ts';
import { CS_CONNECTION_INFLIGHT_MAX } from '../limits.ts';
import { assert } from '../util/assert.ts';
import { TickCorker } from '../util/tick_cork.ts';
import type { KeyObject } from 'node:crypto';
import { callerMac, macEqual, mdsProof, newNonce, serverMac } from './auth.ts';
import { grantProof, type CapabilityGrant } from './capability.ts';
import {
  CS_OP,
  CS_PROTOCOL_VERSION,
  parseHello,
  parseReply,
  type CsReply,
  type CsRequest,
} from './cs_messages.ts';
import { FrameReader, writeFrame, type RawFrame } from './frame.ts';

const INFLIGHT_BYTES_MAX = 64 * 1024 * 1024;
const CONNECT_TIMEOUT_MS_DEFAULT = 5_000;
const REQUEST_TIMEOUT_MS_DEFAULT = 30_000;
const DEADLINE_SWEEP_MS = 500;
/** A request is given up on after this many request timeouts even while others are answered. */
export const STALLED_REQUEST_FACTOR = 8;

/** A request as the caller builds it: the connection assigns the id. */
export type CsRequestBody = CsRequest extends infer R ? (R extends CsRequest ? Omit<R, 'id'> : never) : never;

export interface CsResponse {
  readonly reply: CsReply;
  readonly payload: Buffer;
}

/**
 * Who is calling, with what it proves: a chunk server (peer) and the MDS prove themselves at AUTH
 * and check the server's proof of the cluster key; a client proves nothing at AUTH and presents a
 * capability per volume (GRANT), whose reply is the server's proof.
 */
export type CsCredential =
  | { readonly role: 'client' }
  | { readonly role: 'peer'; readonly clusterKey: Buffer }
  | { readonly role: 'mds'; readonly clusterKey: Buffer; readonly privateKey: KeyObject; readonly term: number };

export interface CsConnectionOptions {
  readonly host: string;
  readonly port: number;
  readonly credential: CsCredential;
  readonly connectTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
  /** Told each request's op and time from send to reply (client metrics); absent, nothing is timed. */
  readonly observe?: (op: number, seconds: number) => void;
}

interface Pending {
  readonly resolve: (response: CsResponse) => void;
  readonly reject: (error: StorageError) => void;
  readonly deadlineMs: number;
  readonly payloadBytes: number;
  readonly op: number;
  /** performance.now() at send, when timed. */
  readonly sentAtMs: number;
}

interface Waiting {
  readonly body: CsRequestBody;
  readonly payload: Buffer | undefined;
  readonly resolve: (response: CsResponse) => void;
  readonly reject: (error: StorageError) => void;
}

export class CsConnection {
  readonly address: string;
  private readonly socket: Socket;
  private readonly corker: TickCorker;
  private readonly reader = new FrameReader();
  private readonly pending = new Map<number, Pending>();
  private readonly waiting: Waiting[] = [];
  private readonly requestTimeoutMs: number;
  private readonly observe: ((op: number, seconds: number) => void) | undefined;
  private readonly sweepTimer: NodeJS.Timeout;
  private nextId = 1;
  private inflightBytes = 0;
  /** Date.now() of the last reply, or of the send that found nothing outstanding. */
  private lastProgressMs = 0;
  private closedError: StorageError | null = null;
  private readonly closeListeners: Array<(error: StorageError) => void> = [];

  /** The capability last presented for each volume on this connection. */
  private readonly presented = new Map<number, CapabilityGrant>();
  private readonly nonces: { readonly server: Buffer; readonly caller: Buffer };

  private constructor(
    socket: Socket, address: string, requestTimeoutMs: number, nonces: { server: Buffer; caller: Buffer },
    observe: ((op: number, seconds: number) => void) | undefined,
  ) {
    this.socket = socket;
    this.observe = observe;
    this.corker = new TickCorker(socket);
    this.nonces = nonces;
    this.address = address;
    this.requestTimeoutMs = requestTimeoutMs;
    this.sweepTimer = setInterval(() => this.sweepDeadlines(), DEADLINE_SWEEP_MS);
    this.sweepTimer.unref();
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('error', (error) => this.close(new StorageError('ERR_UNAVAILABLE', `chunk server ${address}: ${error.message}`)));
    socket.on('close', () => this.close(new StorageError('ERR_UNAVAILABLE', `chunk server ${address} closed the connection`)));
  }

  /** Connects, checks the server's HELLO and authenticates both ways. */
  static async connect(options: CsConnectionOptions): Promise<CsConnection> {
    const address = `${options.host}:${options.port}`;
    const connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS_DEFAULT;
    const socket = netConnect({ host: options.host, port: options.port, noDelay: true });
    const reader = new FrameReader();
    const nextFrame = frameStream(socket, reader, address, connectTimeoutMs);
    let serverNonce: Buffer = Buffer.alloc(0);
    let callerNonce: Buffer = Buffer.alloc(0);
    try {
      const hello = parseHello(await nextFrame());
      if (hello.protocolVersion !== CS_PROTOCOL_VERSION) {
        throw new StorageError('ERR_PROTOCOL', `chunk server ${address} speaks protocol ${hello.protocolVersion}, we speak ${CS_PROTOCOL_VERSION}`);
      }
      const nonce = newNonce();
      serverNonce = hello.nonce;
      callerNonce = nonce;
      const { credential } = options;
      const auth = credential.role === 'peer'
        ? { role: 'peer', mac: callerMac(credential.clusterKey, 'peer', hello.nonce, nonce) }
        : credential.role === 'mds'
          ? { role: 'mds', term: credential.term, proof: mdsProof(credential.privateKey, credential.term, hello.nonce, nonce) }
          : { role: 'client' };
      writeFrame(socket, { op: CS_OP.AUTH, id: 0, nonce, ...auth });
      const reply = parseReply(await nextFrame());
      if (reply.code !== undefined) throw StorageError.fromWire(reply.code, `chunk server ${address}: ${reply.message ?? ''}`);
      // A client checks the server at its first GRANT, with the capability's session key.
      if (credential.role !== 'client') {
        const expected = serverMac(credential.clusterKey, hello.nonce, nonce);
        if (reply.mac === undefined || !macEqual(expected, reply.mac)) {
          throw new StorageError('ERR_UNAUTHORIZED', `chunk server ${address} failed to prove it holds the cluster key`);
        }
      }
    } catch (error) {
      socket.destroy();
      throw error instanceof StorageError ? error : new StorageError('ERR_UNAVAILABLE', `chunk server ${address}: ${(error as Error).message}`);
    }
    socket.removeAllListeners('data');
    socket.removeAllListeners('error');
    socket.removeAllListeners('close');
    socket.removeAllListeners('timeout');
    socket.setTimeout(0);
    if (reader.buffered > 0) {
      socket.destroy();
      throw new StorageError('ERR_PROTOCOL', `chunk server ${address} sent data before any request`);
    }
    return new CsConnection(socket, address, options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS_DEFAULT, { server: serverNonce, caller: callerNonce },
      options.observe);
  }

  get isClosed(): boolean {
    return this.closedError !== null;
  }

  get inflightCount(): number {
    return this.pending.size + this.waiting.length;
  }

  onClose(listener: (error: StorageError) => void): void {
    if (this.closedError !== null) listener(this.closedError);
    else this.closeListeners.push(listener);
  }

  /**
   * Sends one request; resolves with the reply (whatever its code) and its payload. With `grant`,
   * the capability is presented first unless this connection already has it for its volume; the
   * GRANT is pipelined ahead of the request, and if the server refuses it or fails to prove it
   * holds the session key, the connection closes with that error (failing the request too).
   */
  request(body: CsRequestBody, payload?: Buffer, grant?: CapabilityGrant): Promise<CsResponse> {
    if (this.closedError !== null) return Promise.reject(this.closedError);
    if (grant !== undefined && this.presented.get(grant.capability.volumeId) !== grant) this.present(grant);
    return this.enqueue(body, payload);
  }

  private present(grant: CapabilityGrant): void {
    this.presented.set(grant.capability.volumeId, grant);
    const proof = grantProof(grant.sessionKey, 'client', this.nonces.server, this.nonces.caller);
    this.enqueue({ op: CS_OP.GRANT, capability: grant.encoded, proof }).then(({ reply }) => {
      if (reply.code !== undefined) {
        this.close(StorageError.fromWire(reply.code, `chunk server ${this.address} refused the capability for volume ` +
          `${grant.capability.volumeId}: ${reply.message ?? ''}`));
        return;
      }
      const expected = grantProof(grant.sessionKey, 'server', this.nonces.server, this.nonces.caller);
      if (reply.mac === undefined || !macEqual(expected, reply.mac)) {
        this.close(new StorageError('ERR_UNAUTHORIZED', `chunk server ${this.address} failed to prove it holds the cluster key`));
      }
    }, () => undefined);
  }

  private enqueue(body: CsRequestBody, payload?: Buffer): Promise<CsResponse> {
    return new Promise<CsResponse>((resolve, reject) => {
      const item: Waiting = { body, payload, resolve, reject };
      if (this.hasRoomFor(payload?.length ?? 0)) this.send(item);
      else this.waiting.push(item);
    });
  }

  close(error: StorageError = new StorageError('ERR_SHUTTING_DOWN', `connection to ${this.address} closed`)): void {
    if (this.closedError !== null) return;
    this.closedError = error;
    clearInterval(this.sweepTimer);
    this.socket.destroy();
    for (const entry of this.pending.values()) entry.reject(error);
    this.pending.clear();
    for (const entry of this.waiting.splice(0)) entry.reject(error);
    for (const listener of this.closeListeners.splice(0)) listener(error);
  }

  private hasRoomFor(payloadBytes: number): boolean {
    if (this.pending.size >= CS_CONNECTION_INFLIGHT_MAX) return false;
    // One oversized request may always go alone, or it would wait forever.
    return this.inflightBytes === 0 || this.inflightBytes + payloadBytes <= INFLIGHT_BYTES_MAX;
  }

  private send(item: Waiting): void {
    const id = this.allocateId();
    const payloadBytes = item.payload?.length ?? 0;
    const nowMs = Date.now();
    if (this.pending.size === 0) this.lastProgressMs = nowMs;
    this.pending.set(id, {
      resolve: item.resolve,
      reject: item.reject,
      deadlineMs: nowMs + this.requestTimeoutMs * STALLED_REQUEST_FACTOR,
      payloadBytes,
      op: item.body.op,
      sentAtMs: this.observe === undefined ? 0 : performance.now(),
    });
    this.inflightBytes += payloadBytes;
    this.corker.hold();
    writeFrame(this.socket, { ...item.body, id }, item.payload);
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  private onData(data: Buffer): void {
    this.reader.push(data);
    for (;;) {
      let frame: RawFrame | null;
      let reply: CsReply;
      try {
        frame = this.reader.next();
        if (frame === null) return;
        reply = parseReply(frame);
      } catch (error) {
        this.close(error instanceof StorageError ? error : new StorageError('ERR_PROTOCOL', String(error)));
        return;
      }
      const entry = this.pending.get(reply.id);
      // Id 0 is never a request's: the server closes the connection, and says why.
      if (entry === undefined && reply.id === 0 && reply.code !== undefined) {
        this.close(StorageError.fromWire(reply.code, `chunk server ${this.address} closed the connection: ${reply.message ?? reply.code}`));
        return;
      }
      if (entry === undefined) {
        this.close(new StorageError('ERR_PROTOCOL', `chunk server ${this.address} answered unknown request ${reply.id}`));
        return;
      }
      this.pending.delete(reply.id);
      this.lastProgressMs = Date.now();
      this.inflightBytes -= entry.payloadBytes;
      this.observe?.(entry.op, (performance.now() - entry.sentAtMs) / 1000);
      entry.resolve({ reply, payload: frame.payload });
      this.admitWaiting();
    }
  }

  private admitWaiting(): void {
    while (this.waiting.length > 0) {
      const next = this.waiting[0];
      assert(next !== undefined, 'waiting queue underflow');
      if (!this.hasRoomFor(next.payload?.length ?? 0)) return;
      this.waiting.shift();
      this.send(next);
    }
  }

  private sweepDeadlines(): void {
    if (this.pending.size === 0) return;
    const nowMs = Date.now();
    if (nowMs - this.lastProgressMs > this.requestTimeoutMs) {
      this.close(new StorageError('ERR_TIMEOUT',
        `chunk server ${this.address} did not answer within ${this.requestTimeoutMs} ms (none of ${this.pending.size} requests in flight)`));
      return;
    }
    for (const entry of this.pending.values()) {
      if (entry.deadlineMs <= nowMs) {
        this.close(new StorageError('ERR_TIMEOUT',
          `chunk server ${this.address} did not answer a request within ${this.requestTimeoutMs * STALLED_REQUEST_FACTOR} ms, while answering others`));
        return;
      }
    }
  }
}

/** Reads frames one at a time during the handshake, with a deadline for each. */
function frameStream(socket: Socket, reader: FrameReader, address: string, timeoutMs: number): () => Promise<RawFrame> {
  let failure: StorageError | null = null;
  let wake: (() => void) | null = null;
  const fail = (error: StorageError): void => {
    failure ??= error;
    wake?.();
  };
  socket.setTimeout(timeoutMs);
  socket.on('timeout', () => fail(new StorageError('ERR_TIMEOUT', `chunk server ${address} did not answer within ${timeoutMs} ms`)));
  socket.on('error', (error) => fail(new StorageError('ERR_UNAVAILABLE', `chunk server ${address}: ${error.message}`)));
  socket.on('close', () => fail(new StorageError('ERR_UNAVAILABLE', `chunk server ${address} closed the connection`)));
  socket.on('data', (data: Buffer) => {
    reader.push(data);
    wake?.();
  });
  return async () => {
    for (;;) {
      const frame = reader.next();
      if (frame !== null) return frame;
      if (failure !== null) throw failure;
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = null;
    }
  };
}

/**
 * One connection per chunk server address, opened on first use and replaced after it closes.
 * Concurrent first uses share one connection attempt.
 */
export class CsConnectionPool {
  private readonly connections = new Map<string, Promise<CsConnection>>();
  private readonly options: Omit<CsConnectionOptions, 'host' | 'port'>;
  private closed = false;

  constructor(options: Omit<CsConnectionOptions, 'host' | 'port'>) {
    this.options = options;
  }

  get(host: string, port: number): Promise<CsConnection> {
    if (this.closed) return Promise.reject(new StorageError('ERR_SHUTTING_DOWN', 'connection pool closed'));
    const address = `${host}:${port}`;
    const existing = this.connections.get(address);
    if (existing !== undefined) return existing;
    const attempt = CsConnection.connect({ ...this.options, host, port }).then(
      (connection) => {
        connection.onClose(() => {
          if (this.connections.get(address) === attempt) this.connections.delete(address);
        });
        return connection;
      },
      (error: unknown) => {
        this.connections.delete(address);
        throw error;
      },
    );
    this.connections.set(address, attempt);
    return attempt;
  }

  /** Sends a request on the pooled connection to host:port, presenting `grant` first if needed. */
  async request(host: string, port: number, body: CsRequestBody, payload?: Buffer, grant?: CapabilityGrant): Promise<CsResponse> {
    const connection = await this.get(host, port);
    return connection.request(body, payload, grant);
  }

  closeAll(): void {
    this.closed = true;
    for (const attempt of this.connections.values()) {
      attempt.then((connection) => connection.close(), () => undefined);
    }
    this.connections.clear();
  }
}
