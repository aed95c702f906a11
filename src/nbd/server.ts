// The NBD server's listeners: a unix socket and/or a TCP port, each client handed to an
// NbdConnection. All connections of one server reach devices through one provider, which shares
// one open device per export; with every completed write durable, that is what makes
// CAN_MULTI_CONN true.
//
// The unix socket is created with a private mode (0600, or 0660 for a group of hypervisor
// tools); a stale socket file left by a crash is removed at start, but a live one (another
// server) or a non-socket file is never touched. TCP listens on loopback unless told otherwise.
// Stopping refuses new clients, lets in-flight requests finish within shutdownTimeoutMs, then
// cuts what is left and releases every device handle.
//
// Connection slots are counted per listener: the unix socket serves the local hypervisor's QEMU
// and TCP may face other hosts, so no number of TCP clients can take a slot the unix socket
// needs. TCP also caps what one remote address may hold, so one host cannot take every TCP slot.
// A refused socket is closed at once, before any byte is sent.
//
// TLS, when configured, is required on TCP and not offered on the unix socket (tls.ts).

import { lstat, unlink, chmod } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import type { BlockDeviceProvider } from '../client/block_device.ts';
import { fail, fromSystemError } from '../errors.ts';
import { assert, isUint } from '../util/assert.ts';
import { ByteGate } from '../util/byte_gate.ts';
import { systemMonotonicClock } from '../util/clock.ts';
import { createLogger } from '../util/log.ts';
import type { Logger } from '../util/log.ts';
import { NbdConnection } from './connection.ts';
import type { ConnectionContext, ConnectionLimits } from './connection.ts';
import { nbdMetrics } from './metrics.ts';
import type { NbdTlsConfig } from './tls.ts';
import { volumeIoStats } from './volume_stats.ts';
import type { ListenerKind, ListenerMetrics, RefuseReason } from './metrics.ts';

const MiB = 1024 * 1024;

export interface NbdServerOptions {
  readonly provider: BlockDeviceProvider;
  readonly registry: Registry;
  readonly unixSocketPath?: string;
  /** 0o600 (default) or 0o660. */
  readonly unixSocketMode?: number;
  /** Host defaults to 127.0.0.1; port 0 picks a free port (see NbdServer.tcpPort). */
  readonly tcp?: { readonly host?: string; readonly port: number };
  /** Export served to clients that ask for the empty name. */
  readonly defaultExport?: string;
  /** Open every export read-only. */
  readonly readOnly?: boolean;
  readonly logger?: Logger;
  /** Per connection: requests in flight before reading pauses (default 64). */
  readonly inflightRequestsMax?: number;
  /** Per connection: READ/WRITE bytes in flight before reading pauses (default 128 MiB). */
  readonly inflightBytesMax?: number;
  /**
   * All connections: READ/WRITE bytes in flight before every connection pauses (the requests'
   * share of the memory budget, memory_plan.ts); default a gate of inflightBytesTotalMax.
   */
  readonly inflightGate?: ByteGate;
  /** Connections on the unix socket; more are refused (default 256). */
  readonly unixConnectionsMax?: number;
  /** Connections over TCP; more are refused (default 128). */
  readonly tcpConnectionsMax?: number;
  /** TCP connections from one remote address; more are refused (default 32). */
  readonly tcpConnectionsPerAddressMax?: number;
  /** From accept to the end of negotiation; a client not done by then is cut (default 30 s). */
  readonly handshakeTimeoutMs?: number;
  /** How long a client may leave replies unread before it is cut (default 120 s). */
  readonly writeStallTimeoutMs?: number;
  /** How long close() lets in-flight requests finish (default 10 s). */
  readonly shutdownTimeoutMs?: number;
  /** Required of every TCP client (tls.ts); the unix socket stays plain. */
  readonly tls?: NbdTlsConfig;
}

export interface NbdServer {
  /** The bound TCP port (the real one when 0 was asked), or null without TCP. */
  readonly tcpPort: number | null;
  readonly tcpHost: string | null;
  readonly unixSocketPath: string | null;
  connectionCount(): number;
  /** Stops accepting, lets in-flight requests finish (bounded), releases device handles. */
  close(): Promise<void>;
}

export const NBD_SERVER_DEFAULTS = {
  unixSocketMode: 0o600,
  tcpHost: '127.0.0.1',
  inflightRequestsMax: 64,
  inflightBytesMax: 128 * MiB,
  inflightBytesTotalMax: 256 * MiB,
  unixConnectionsMax: 256,
  tcpConnectionsMax: 128,
  tcpConnectionsPerAddressMax: 32,
  handshakeTimeoutMs: 30_000,
  // Generous: progress is seen per flushed write batch, and a batch may be every reply in flight
  // (up to inflightBytesMax), so a slow but reading client must not look stalled.
  writeStallTimeoutMs: 120_000,
  shutdownTimeoutMs: 10_000,
} as const;

/** Extra time after the shutdown deadline for forcibly closed connections to release devices. */
const RELEASE_GRACE_MS = 2_000;

export async function createNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const settings = checkOptions(options);
  const logger = options.logger ?? createLogger('nbd');
  const connections = new Set<NbdConnection>();
  let shuttingDown = false;
  const inflightGate = options.inflightGate ?? new ByteGate('requests', NBD_SERVER_DEFAULTS.inflightBytesTotalMax, systemMonotonicClock);
  const stopWatchingGate = inflightGate.onChange(() => {
    for (const connection of connections) connection.flowChanged();
  });
  const contextFor = (listener: ListenerKind): ConnectionContext => ({
    provider: options.provider,
    defaultExport: options.defaultExport,
    readOnly: options.readOnly ?? false,
    logger,
    metrics: nbdMetrics(options.registry),
    volumeStats: volumeIoStats(options.registry),
    limits: settings.limits,
    inflightGate,
    listener,
    tls: listener === 'tcp' ? options.tls ?? null : null,
    isShuttingDown: () => shuttingDown,
  });
  let lastConnectionId = 0;
  const nextConnectionId = (): number => ++lastConnectionId;
  const accept = (listener: ListenerKind, slots: SlotLimits): OnSocket =>
    acceptor(contextFor(listener), connections, slots, nextConnectionId);
  const { tcp, unixSocketPath } = options;
  const tcpHost = tcp === undefined ? null : tcp.host ?? NBD_SERVER_DEFAULTS.tcpHost;
  const listeners: Server[] = [];
  let tcpPort: number | null = null;
  try {
    if (unixSocketPath !== undefined) {
      const onSocket = accept('unix', settings.unixSlots);
      listeners.push(await listenUnix(unixSocketPath, settings.unixSocketMode, onSocket));
    }
    if (tcp !== undefined && tcpHost !== null) {
      const listener = await listenTcp(tcpHost, tcp.port, accept('tcp', settings.tcpSlots));
      listeners.push(listener);
      const address = listener.address();
      tcpPort = typeof address === 'object' && address !== null ? address.port : tcp.port;
    }
  } catch (error) {
    stopWatchingGate();
    await Promise.all(listeners.map(closeListener));
    throw error;
  }
  logger.info('NBD server listening', {
    unixSocketPath, tcpHost, tcpPort, tcpTls: options.tls === undefined ? 'off' : options.tls.requireClientCertificate ? 'required, with client certificates' : 'required',
  });

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    if (closing !== null) return closing;
    shuttingDown = true;
    closing = shutDown(listeners, connections, settings.shutdownTimeoutMs, logger).finally(stopWatchingGate);
    return closing;
  };
  return {
    tcpPort,
    tcpHost,
    unixSocketPath: unixSocketPath ?? null,
    connectionCount: () => connections.size,
    close,
  };
}

interface SlotLimits {
  readonly connectionsMax: number;
  /** Null: no per-address share (the unix socket has one peer, the local host). */
  readonly perAddressMax: number | null;
}

/**
 * Hands each new socket of one listener to a connection, or refuses it when stopping or when
 * the listener (or, for TCP, the client's address) has no free slot. A slot is held until the
 * connection has finished, device handle released, so memory follows the slot count.
 */
function acceptor(
  context: ConnectionContext, connections: Set<NbdConnection>, slots: SlotLimits,
  nextConnectionId: () => number,
): OnSocket {
  const metrics = context.metrics.byListener[context.listener];
  const byAddress = new Map<string, number>();
  const refusals = refusalLog(context, metrics);
  let open = 0;
  return (socket) => {
    const address = slots.perAddressMax === null ? null : socket.remoteAddress ?? null;
    const held = address === null ? 0 : byAddress.get(address) ?? 0;
    let refused: RefuseReason | null = null;
    if (context.isShuttingDown()) refused = 'shutting_down';
    else if (open >= slots.connectionsMax) refused = 'full';
    else if (slots.perAddressMax !== null && held >= slots.perAddressMax) refused = 'address_full';
    // A TCP socket already reset by its peer has no address: nothing to serve, nothing to count.
    else if (slots.perAddressMax !== null && address === null) return void socket.destroy();
    if (refused !== null) {
      socket.destroy();
      return refusals(refused, address, open);
    }
    open += 1;
    if (address !== null) byAddress.set(address, held + 1);
    const connection = new NbdConnection(socket, context, nextConnectionId());
    connections.add(connection);
    void connection.finished.then(() => {
      connections.delete(connection);
      open -= 1;
      assert(open >= 0, 'slot count went negative');
      if (address === null) return;
      const left = (byAddress.get(address) ?? 0) - 1;
      assert(left >= 0, 'per-address slot count went negative');
      if (left === 0) byAddress.delete(address);
      else byAddress.set(address, left);
    });
    connection.start();
  };
}

/** Counts every refusal; logs one line a second at most, so a flood is not a log flood. */
function refusalLog(
  context: ConnectionContext, metrics: ListenerMetrics,
): (reason: RefuseReason, address: string | null, open: number) => void {
  let loggedMs = 0;
  let unlogged = 0;
  return (reason, address, open) => {
    metrics.refused[reason].inc();
    unlogged += 1;
    if (Date.now() - loggedMs < 1_000) return;
    const fields = { listener: context.listener, reason, address, open, refused: unlogged };
    context.logger.warn('refusing connections', fields);
    loggedMs = Date.now();
    unlogged = 0;
  };
}

interface Settings {
  readonly limits: ConnectionLimits;
  readonly unixSocketMode: number;
  readonly unixSlots: SlotLimits;
  readonly tcpSlots: SlotLimits;
  readonly shutdownTimeoutMs: number;
}

function checkOptions(options: NbdServerOptions): Settings {
  if (options.unixSocketPath === undefined && options.tcp === undefined) {
    fail('ERR_CONFIG', 'the NBD server needs a unix socket path, a TCP port, or both');
  }
  type Limit =
    'inflightRequestsMax' | 'inflightBytesMax' | 'handshakeTimeoutMs' | 'writeStallTimeoutMs' |
    'unixConnectionsMax' | 'tcpConnectionsMax' | 'tcpConnectionsPerAddressMax' |
    'shutdownTimeoutMs';
  const positive = (key: Limit): number => {
    const chosen = options[key] ?? NBD_SERVER_DEFAULTS[key];
    if (!isUint(chosen) || chosen === 0) fail('ERR_CONFIG', `${key} must be > 0, got ${chosen}`);
    return chosen;
  };
  const unixSocketMode = options.unixSocketMode ?? NBD_SERVER_DEFAULTS.unixSocketMode;
  if (unixSocketMode !== 0o600 && unixSocketMode !== 0o660) {
    fail('ERR_CONFIG', `unix socket mode must be 0600 or 0660, got 0${unixSocketMode.toString(8)}`);
  }
  if (options.tcp !== undefined && !(isUint(options.tcp.port) && options.tcp.port <= 65535)) {
    fail('ERR_CONFIG', `TCP port must be 0-65535, got ${options.tcp.port}`);
  }
  const tcpConnectionsMax = positive('tcpConnectionsMax');
  const tcpConnectionsPerAddressMax = positive('tcpConnectionsPerAddressMax');
  if (tcpConnectionsPerAddressMax > tcpConnectionsMax) {
    fail('ERR_CONFIG', `tcpConnectionsPerAddressMax (${tcpConnectionsPerAddressMax}) must not ` +
      `exceed tcpConnectionsMax (${tcpConnectionsMax})`);
  }
  return {
    limits: {
      inflightRequestsMax: positive('inflightRequestsMax'),
      inflightBytesMax: positive('inflightBytesMax'),
      handshakeTimeoutMs: positive('handshakeTimeoutMs'),
      writeStallTimeoutMs: positive('writeStallTimeoutMs'),
    },
    unixSocketMode,
    unixSlots: { connectionsMax: positive('unixConnectionsMax'), perAddressMax: null },
    tcpSlots: { connectionsMax: tcpConnectionsMax, perAddressMax: tcpConnectionsPerAddressMax },
    shutdownTimeoutMs: positive('shutdownTimeoutMs'),
  };
}

function newServer(onSocket: OnSocket): Server {
  // allowHalfOpen: a client that half-closes after its last request still gets the replies.
  // A 1 MiB write buffer before 'drain' is asked for: big reads would otherwise always wait.
  return createServer({ allowHalfOpen: true, pauseOnConnect: false, highWaterMark: MiB }, onSocket);
}

type OnSocket = (socket: Socket) => void;

async function listenUnix(path: string, mode: number, onSocket: OnSocket): Promise<Server> {
  await removeStaleSocket(path);
  const server = newServer(onSocket);
  const listening = waitListening(server, `unix socket ${path}`);
  // bind() runs inside listen(), synchronously: the socket is born 0600 and never world-open.
  const previousUmask = process.umask(0o177);
  try {
    server.listen(path);
  } finally {
    process.umask(previousUmask);
  }
  await listening;
  if (mode !== 0o600) await chmod(path, mode);
  return server;
}

async function listenTcp(host: string, port: number, onSocket: OnSocket): Promise<Server> {
  const server = newServer(onSocket);
  const listening = waitListening(server, `TCP ${host}:${port}`);
  server.listen({ host, port });
  await listening;
  return server;
}

function waitListening(server: Server, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => {
      reject(fromSystemError(error, `cannot listen on ${what}`));
    };
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      server.on('error', () => {}); // accept errors (EMFILE) are per connection; keep serving
      resolve();
    });
  });
}

/** Removes a socket file nobody listens on; refuses to touch anything else. */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw fromSystemError(error, `cannot inspect ${path}`);
  }
  if (!isSocket) fail('ERR_CONFIG', `${path} exists and is not a socket; refusing to replace it`);
  if (await socketIsLive(path)) fail('ERR_CONFIG', `another process is serving on ${path}`);
  await unlink(path).catch((error: unknown) => {
    throw fromSystemError(error, `cannot remove stale socket ${path}`);
  });
}

function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    const done = (live: boolean): void => {
      probe.destroy();
      resolve(live);
    };
    probe.setTimeout(1_000, () => done(true));
    probe.once('connect', () => done(true));
    // Refused or gone means nobody listens; anything else (EACCES, ...) we do not dare touch.
    probe.once('error', (error: NodeJS.ErrnoException) => {
      done(error.code !== 'ECONNREFUSED' && error.code !== 'ENOENT');
    });
  });
}

function closeListener(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
  });
}

async function shutDown(
  listeners: readonly Server[], connections: Set<NbdConnection>, timeoutMs: number, logger: Logger,
): Promise<void> {
  // server.close() resolves only once every connection is gone, so it is awaited last.
  const listenersClosed = Promise.all(listeners.map(closeListener));
  const open = [...connections];
  logger.info('NBD server stopping', { connections: open.length });
  for (const connection of open) connection.beginShutdown();
  const allFinished = Promise.all(open.map((connection) => connection.finished));
  if (!(await settlesWithin(allFinished, timeoutMs))) {
    const left = [...connections];
    logger.warn('shutdown deadline passed: closing connections', { connections: left.length });
    for (const connection of left) connection.forceClose();
    if (!(await settlesWithin(Promise.all(left.map((c) => c.finished)), RELEASE_GRACE_MS))) {
      logger.error('device handles not released after a forced close', {
        connections: connections.size,
      });
    }
  }
  await settlesWithin(listenersClosed, RELEASE_GRACE_MS);
  logger.info('NBD server stopped');
}

async function settlesWithin(promise: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const settled = await Promise.race([promise.then(() => true, () => true), timeout]);
  clearTimeout(timer);
  return settled;
}
