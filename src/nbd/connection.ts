// One client connection: the socket glue between the bytes and the two protocol phases
// (handshake.ts, transmission.ts). It owns flow control and the connection's lifetime.
//
// Flow control: during negotiation the socket is paused while an option is being answered.
// During transmission, reading stops (socket paused, nothing parsed) while the connection has
// inflightRequestsMax requests or inflightBytesMax bytes in flight, or while the socket's write
// buffer waits for 'drain', or while the server's gate on the bytes of every connection's requests
// is closed (util/byte_gate.ts, the requests' share of the memory budget); a completion, a drain or
// the gate opening starts it again. So one client's memory is bounded by those limits plus one
// request being received, and all clients' by the gate.
//
// Lifetime: a protocol violation destroys only this socket. DISC, a client half-close or a server
// shutdown stop reading, let in-flight requests reply, then end the socket. The device handle is
// released once the socket is closed and no request still uses it; `finished` resolves then.
//
// Slots: a connection holds one of its listener's slots until `finished`, so a client that does
// nothing useful must not keep it. The whole negotiation has one deadline from accept (a client
// trickling one option at a time gets no extension), and a client that stops reading our replies
// (the write buffer stays over its high-water mark with nothing flushed) for writeStallTimeoutMs
// is cut, which also frees the replies it held. An idle client with nothing to read is never cut:
// no deadline runs while nothing waits to be sent.
//
// TLS (tls.ts): after the ACK to NBD_OPT_STARTTLS, the socket is wrapped in a TLS server socket
// and every handler moves to it; the negotiation deadline keeps running through the TLS
// handshake, so a client that never completes it is cut like one that never negotiates.

import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { BlockDeviceHandle, BlockDeviceProvider } from '../client/block_device.ts';
import { assert } from '../util/assert.ts';
import type { ByteGate } from '../util/byte_gate.ts';
import type { Logger } from '../util/log.ts';
import { TickCorker } from '../util/tick_cork.ts';
import type { NbdTlsConfig } from './tls.ts';
import type { VolumeIo, VolumeIoStats } from './volume_stats.ts';
import { ByteQueue } from './byte_queue.ts';
import { HandshakeReader, Negotiator, releaseQuietly } from './handshake.ts';
import type { HandshakeEvent, NegotiatedExport, OptionOutcome } from './handshake.ts';
import { commandMetrics } from './metrics.ts';
import type { DropReason, ListenerKind, NbdMetrics } from './metrics.ts';
import { COMMAND, commandName, encodeGreeting } from './protocol.ts';
import { RequestReader, TransmissionSession } from './transmission.ts';
import type { NbdRequest, ReplySink, RequestEvent } from './transmission.ts';

export interface ConnectionLimits {
  readonly inflightRequestsMax: number;
  readonly inflightBytesMax: number;
  /** From accept to the end of negotiation, whatever the client sends meanwhile. */
  readonly handshakeTimeoutMs: number;
  /** How long replies may wait unread (nothing flushed, buffer full) before the client is cut. */
  readonly writeStallTimeoutMs: number;
}

export interface ConnectionContext {
  readonly provider: BlockDeviceProvider;
  readonly defaultExport: string | undefined;
  readonly readOnly: boolean;
  readonly logger: Logger;
  readonly metrics: NbdMetrics;
  /** Per-volume running totals; a connection holds its volume's entry while it serves it. */
  readonly volumeStats: VolumeIoStats;
  readonly limits: ConnectionLimits;
  /** Bytes of all connections' requests in flight: reading stops while it is closed. */
  readonly inflightGate: ByteGate;
  /** Which listener accepted the socket: its metrics series. */
  readonly listener: ListenerKind;
  /** Set: clients must start TLS before anything else is served (tls.ts). */
  readonly tls: NbdTlsConfig | null;
  isShuttingDown(): boolean;
}

type Phase = 'handshake' | 'transmission' | 'ending' | 'closed';

/** How long replies may take to flush after we end a connection before it is cut. */
const END_LINGER_MS = 30_000;

export class NbdConnection implements ReplySink {
  readonly tag: string;
  /** Resolves when the socket is closed and the device handle released. */
  readonly finished: Promise<void>;
  private resolveFinished: () => void = () => {};
  /** The accepted socket, or after STARTTLS the TLS socket over it. */
  private socket: Socket;
  private readonly context: ConnectionContext;
  private readonly queue = new ByteQueue();
  private phase: Phase = 'handshake';

  private readonly handshakeReader = new HandshakeReader();
  private readonly negotiator: Negotiator;
  private optionBusy = false;
  private handshakeTimer: NodeJS.Timeout | null = null;

  private requestReader: RequestReader | null = null;
  private session: TransmissionSession | null = null;
  private handle: BlockDeviceHandle | null = null;
  private volumeIo: VolumeIo | null = null;
  private inflightCount = 0;
  private inflightBytes = 0;
  private waitingForDrain = false;
  /** Armed while waiting for 'drain': cuts a client that reads none of our replies. */
  private stallTimer: NodeJS.Timeout | null = null;
  /** When a write last reached the kernel while the stall timer was armed. */
  private flushedAtMs = 0;
  private corker: TickCorker;
  /** DISC received: parse nothing more, end once in-flight requests have replied. */
  private stopReading = false;
  /** The client half-closed: serve the complete requests it sent, then end. */
  private clientEnded = false;
  private finishing = false;
  /** For the detach log line. */
  private exportName: string | null = null;
  private requestCount = 0;
  private pumping = false;

  constructor(socket: Socket, context: ConnectionContext, id: number) {
    this.socket = socket;
    this.corker = new TickCorker(socket);
    this.context = context;
    const { remoteAddress, remotePort } = socket;
    const peer = remoteAddress === undefined ? 'unix' : `${remoteAddress}:${remotePort}`;
    this.tag = `conn ${id} ${peer}`;
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
    this.negotiator = new Negotiator({
      provider: context.provider,
      defaultExport: context.defaultExport,
      readOnly: context.readOnly,
      logger: context.logger,
      connectionTag: this.tag,
      tls: context.tls === null ? 'off' : 'required',
      isShuttingDown: () => context.isShuttingDown(),
    });
  }

  start(): void {
    const { socket } = this;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    this.listen(socket);
    const metrics = this.context.metrics.byListener[this.context.listener];
    metrics.connectionsOpen.inc();
    metrics.connectionsTotal.inc();
    this.armHandshakeDeadline();
    socket.write(encodeGreeting());
  }

  // The socket's handlers, as fields so that STARTTLS can take exactly these off the plain socket
  // (Node's own listeners on it stay).
  private readonly onDataEvent = (chunk: Buffer): void => this.onData(chunk);
  private readonly onEndEvent = (): void => this.onEnd();
  private readonly onDrainEvent = (): void => this.onDrain();
  private readonly onErrorEvent = (error: Error): void => {
    this.context.logger.debug('socket error', { conn: this.tag, error });
  };
  private readonly onCloseEvent = (): void => this.onClose();

  private listen(socket: Socket): void {
    socket.on('data', this.onDataEvent);
    socket.on('end', this.onEndEvent);
    socket.on('drain', this.onDrainEvent);
    socket.on('error', this.onErrorEvent);
    socket.on('close', this.onCloseEvent);
  }

  private unlisten(socket: Socket): void {
    socket.off('data', this.onDataEvent);
    socket.off('end', this.onEndEvent);
    socket.off('drain', this.onDrainEvent);
    socket.off('error', this.onErrorEvent);
    socket.off('close', this.onCloseEvent);
  }

  /**
   * After the ACK to STARTTLS (already written to the plain socket, whose pending bytes the kernel
   * sends before any of TLS's): from here on every byte goes through a TLS server socket.
   */
  private startTls(): void {
    const tls = this.context.tls;
    assert(tls !== null, 'STARTTLS accepted without TLS configured');
    // The client must wait for the ACK before its TLS handshake: plain bytes after STARTTLS are
    // a protocol violation, and must never be read as if they had come through TLS.
    if (this.queue.lengthBytes > 0) return this.destroy('client sent plain bytes after NBD_OPT_STARTTLS', 'info');
    const plain = this.socket;
    this.unlisten(plain);
    // Errors of the plain socket reach the TLS socket; this only keeps one from being unhandled.
    plain.on('error', () => undefined);
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: tls.secureContext,
      requestCert: tls.requireClientCertificate,
      rejectUnauthorized: tls.requireClientCertificate,
    });
    this.socket = secure;
    this.corker = new TickCorker(secure);
    this.listen(secure);
    secure.once('secure', () => {
      const peer = secure.getPeerCertificate();
      this.context.logger.debug('TLS started', {
        conn: this.tag, protocol: secure.getProtocol(), client: peer.subject?.CN ?? null,
      });
    });
    this.negotiator.tlsStarted();
  }

  /**
   * Server shutdown (context.isShuttingDown() is already true): in-flight requests finish,
   * requests still arriving get ESHUTDOWN, and the socket ends once nothing is in flight.
   */
  beginShutdown(): void {
    if (this.phase === 'handshake' && !this.optionBusy) {
      return this.destroy('server shutting down', 'debug');
    }
    if (this.phase === 'transmission') this.pump();
  }

  /** The server's gate opened or closed: read again if this connection may. */
  flowChanged(): void {
    // Inside pump (a request's reservation closed the gate) the loop itself sees the change.
    if (this.phase === 'transmission' && !this.pumping) this.pump();
  }

  /** Last resort after the shutdown deadline: close now and release the device regardless. */
  forceClose(): void {
    if (this.inflightCount > 0) {
      const fields = { conn: this.tag, inflight: this.inflightCount };
      this.context.logger.warn('closing with requests still in flight', fields);
    }
    this.inflightCount = 0;
    // The requests given up on never release their bytes (requestDone ignores them): release now.
    this.context.inflightGate.release(this.inflightBytes);
    this.inflightBytes = 0;
    this.optionBusy = false;
    this.socket.destroy();
    if (this.phase === 'closed') this.maybeFinish();
  }

  // --- ReplySink -----------------------------------------------------------------------------

  /**
   * Replies completed in the same tick leave in one writev (see util/tick_cork.ts).
   */
  send(head: Buffer, payload?: Buffer): void {
    const { socket } = this;
    if (socket.destroyed || socket.writableEnded) return;
    this.corker.hold();
    // The flush callback marks progress for the stall check; it costs nothing more than the
    // no-op callback the stream would store anyway.
    let flowing = socket.write(head, payload === undefined ? this.onFlushed : undefined);
    if (payload !== undefined) flowing = socket.write(payload, this.onFlushed);
    if (!flowing) {
      this.waitingForDrain = true;
      this.armStallTimer();
    }
  }

  private readonly onFlushed = (): void => {
    if (this.stallTimer !== null) this.flushedAtMs = Date.now();
  };

  private armStallTimer(): void {
    if (this.stallTimer !== null) return;
    this.flushedAtMs = Date.now();
    this.scheduleStallCheck(this.context.limits.writeStallTimeoutMs);
  }

  private scheduleStallCheck(delayMs: number): void {
    this.stallTimer = setTimeout(this.checkStall, delayMs);
    this.stallTimer.unref();
  }

  /** A slow reader that still takes replies is kept; one that took nothing for the limit is cut. */
  private readonly checkStall = (): void => {
    this.stallTimer = null;
    if (!this.waitingForDrain || this.phase === 'ending' || this.phase === 'closed') return;
    const limitMs = this.context.limits.writeStallTimeoutMs;
    const quietMs = Date.now() - this.flushedAtMs;
    if (quietMs < limitMs) return this.scheduleStallCheck(limitMs - quietMs);
    this.drop('write_stall', `client read no replies for ${quietMs} ms ` +
      `(${this.socket.writableLength} bytes waiting, ${this.inflightCount} requests in flight)`);
  };

  private clearStallTimer(): void {
    if (this.stallTimer !== null) clearTimeout(this.stallTimer);
    this.stallTimer = null;
  }

  // --- Reading -------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.phase === 'ending' || this.phase === 'closed') return;
    if (this.stopReading) return; // a client must send nothing after DISC; drop it unbuffered
    this.queue.push(chunk);
    this.pump();
  }

  /** Parses and dispatches whatever the buffered bytes allow, then sets the socket's flow. */
  private pump(): void {
    this.pumping = true;
    try {
      this.pumpNow();
    } finally {
      this.pumping = false;
    }
  }

  private pumpNow(): void {
    let starved = false; // the parser waits for bytes that have not arrived
    while (this.phase === 'handshake' || this.phase === 'transmission') {
      if (this.phase === 'handshake') {
        if (this.optionBusy) break;
        const event = this.handshakeReader.next(this.queue);
        starved = event === null;
        if (event === null) break;
        this.onHandshakeEvent(event);
      } else {
        if (this.readBlocked()) break;
        const reader = this.requestReader;
        assert(reader !== null, 'transmission without a request reader');
        const event = reader.next(this.queue);
        starved = event === null;
        if (event === null) break;
        this.onRequestEvent(event);
      }
    }
    this.setFlow();
    this.maybeEndTransmission(starved);
  }

  /** Ends after DISC, or once a half-closed client or a shutdown leaves nothing to answer. */
  private maybeEndTransmission(starved: boolean): void {
    if (this.phase !== 'transmission' || this.inflightCount > 0) return;
    if (this.stopReading || (starved && (this.clientEnded || this.context.isShuttingDown()))) {
      this.endGracefully();
    }
  }

  private readBlocked(): boolean {
    const { limits } = this.context;
    return this.stopReading || this.waitingForDrain ||
      this.inflightCount >= limits.inflightRequestsMax ||
      this.inflightBytes >= limits.inflightBytesMax ||
      this.context.inflightGate.isClosed;
  }

  private setFlow(): void {
    let wanted: boolean;
    if (this.phase === 'handshake') wanted = !this.optionBusy;
    else if (this.phase === 'transmission') wanted = !this.readBlocked();
    else wanted = false;
    // After a DISC or a shutdown we still drain the socket (and drop the bytes): a client that
    // keeps writing must not block its own reads of our replies.
    if (this.phase === 'transmission' && this.stopReading) wanted = true;
    if (wanted && this.socket.isPaused()) this.socket.resume();
    else if (!wanted && !this.socket.isPaused()) this.socket.pause();
  }

  private onDrain(): void {
    this.waitingForDrain = false;
    this.clearStallTimer();
    this.pump();
  }

  private onEnd(): void {
    // The client will send nothing more; replies to what it sent still go out.
    if (this.phase === 'handshake') return this.destroy('client left during negotiation', 'debug');
    this.clientEnded = true;
    if (this.phase === 'transmission') this.pump();
  }

  // --- Handshake -----------------------------------------------------------------------------

  private onHandshakeEvent(event: HandshakeEvent): void {
    switch (event.kind) {
      case 'clientFlags':
        this.negotiator.setClientFlags(event.flags);
        return;
      case 'oversizeOption':
        return this.applyOutcome(
          this.negotiator.handleOversizeOption(event.option, event.lengthBytes),
        );
      case 'close':
        return this.destroy(`negotiation: ${event.reason}`, 'info');
      case 'option':
        this.optionBusy = true;
        this.negotiator.handleOption(event.option, event.data).then(
          (outcome) => {
            this.optionBusy = false;
            this.applyOutcome(outcome);
            this.pump();
          },
          (error: unknown) => {
            this.optionBusy = false;
            this.context.logger.error('bug: option handling threw', { conn: this.tag, error });
            this.destroy('internal error during negotiation', 'error');
          },
        );
        return;
    }
  }

  private applyOutcome(outcome: OptionOutcome): void {
    if (this.phase !== 'handshake') {
      // The socket went away while the option was being answered: give back what it opened.
      if (outcome.next === 'transmission') void this.releaseNegotiated(outcome.negotiated);
      void this.negotiator.dispose();
      this.maybeFinish();
      return;
    }
    this.socket.cork();
    for (const reply of outcome.replies) this.socket.write(reply);
    this.socket.uncork();
    if (outcome.next === 'close') {
      this.context.logger.debug('negotiation ended', { conn: this.tag, reason: outcome.reason });
      return this.endGracefully();
    }
    if (outcome.next === 'transmission') return this.startTransmission(outcome.negotiated);
    if (outcome.next === 'starttls') this.startTls();
    if (this.context.isShuttingDown()) this.endGracefully();
  }

  private startTransmission(negotiated: NegotiatedExport): void {
    this.clearHandshakeTimer();
    this.handle = negotiated.handle;
    const { device } = negotiated.handle;
    this.volumeIo = this.context.volumeStats.acquire(negotiated.exportName);
    this.session = new TransmissionSession({
      device,
      structuredReplies: negotiated.structuredReplies,
      baseAllocation: negotiated.baseAllocation,
      sink: this,
      metrics: this.context.metrics,
      volumeIo: this.volumeIo,
      logger: this.context.logger,
      connectionTag: this.tag,
    });
    this.requestReader = new RequestReader();
    this.exportName = negotiated.exportName;
    this.phase = 'transmission';
    this.context.logger.info('export attached', {
      conn: this.tag,
      export: negotiated.exportName,
      sizeBytes: device.sizeBytes,
      readOnly: device.readOnly,
      structuredReplies: negotiated.structuredReplies,
      baseAllocation: negotiated.baseAllocation,
    });
    if (this.context.isShuttingDown()) this.beginShutdown();
  }

  private async releaseNegotiated(negotiated: NegotiatedExport): Promise<void> {
    await releaseQuietly(negotiated.handle, this.context.logger, this.tag);
  }

  /**
   * Armed once at accept and never extended: re-arming it per option would let a client that
   * sends one option just inside the limit hold its slot for ever.
   */
  private armHandshakeDeadline(): void {
    assert(this.phase === 'handshake' && this.handshakeTimer === null, 'deadline armed twice');
    const timeoutMs = this.context.limits.handshakeTimeoutMs;
    this.handshakeTimer = setTimeout(() => {
      this.handshakeTimer = null;
      this.drop('handshake_timeout', `negotiation not finished within ${timeoutMs} ms`);
    }, timeoutMs);
    this.handshakeTimer.unref();
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }

  // --- Transmission --------------------------------------------------------------------------

  private onRequestEvent(event: RequestEvent): void {
    if (event.kind === 'close') return this.destroy(`transmission: ${event.reason}`, 'warn');
    const { request } = event;
    const session = this.session;
    assert(session !== null, 'a request without a session');
    if (this.stopReading) return; // bytes after DISC are dropped unanswered
    this.requestCount += 1;
    if (request.command === COMMAND.DISC) {
      this.context.logger.debug('DISC', { conn: this.tag, inflight: this.inflightCount });
      commandMetrics(this.context.metrics, COMMAND.DISC).requests.inc();
      this.stopReading = true;
      return;
    }
    if (this.context.isShuttingDown()) return session.refuseShuttingDown(request);
    const costBytes = inflightCost(request);
    this.inflightCount += 1;
    this.inflightBytes += costBytes;
    this.context.inflightGate.reserve(costBytes);
    session.execute(request).then(
      () => this.requestDone(costBytes),
      (error: unknown) => {
        this.context.logger.error(`bug: ${commandName(request.command)} handling threw`, {
          conn: this.tag, error, stack: error instanceof Error ? error.stack : undefined,
        });
        this.destroy('internal error during transmission', 'error');
        this.requestDone(costBytes);
      },
    );
  }

  private requestDone(costBytes: number): void {
    if (this.inflightCount === 0) return; // forceClose already gave up on this request
    this.inflightCount -= 1;
    this.inflightBytes -= costBytes;
    this.context.inflightGate.release(costBytes);
    if (this.phase === 'closed') return this.maybeFinish();
    this.pump();
  }

  // --- Ending --------------------------------------------------------------------------------

  /** Sends what is queued, then closes; a client that stops reading is cut off after a while. */
  private endGracefully(): void {
    if (this.phase === 'ending' || this.phase === 'closed') return;
    this.phase = 'ending';
    this.clearHandshakeTimer();
    this.clearStallTimer();
    this.setFlow();
    this.socket.end(() => this.socket.destroy());
    setTimeout(() => this.socket.destroy(), END_LINGER_MS).unref();
  }

  /** Cuts a client that holds its slot without using it, counted by reason. */
  private drop(reason: DropReason, detail: string): void {
    if (this.phase === 'ending' || this.phase === 'closed') return;
    this.context.metrics.byListener[this.context.listener].dropped[reason].inc();
    this.destroy(detail, 'info');
  }

  /** Hard disconnect: nothing more is parsed or sent ('close' follows on a later tick). */
  private destroy(reason: string, level: 'debug' | 'info' | 'warn' | 'error'): void {
    if (this.phase === 'closed') return;
    this.context.logger[level]('closing connection', { conn: this.tag, reason });
    this.phase = 'ending';
    this.clearHandshakeTimer();
    this.clearStallTimer();
    this.socket.destroy();
  }

  private onClose(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.clearHandshakeTimer();
    this.clearStallTimer();
    this.queue.clear();
    this.context.metrics.byListener[this.context.listener].connectionsOpen.dec();
    if (this.exportName !== null) {
      const fields = { conn: this.tag, export: this.exportName, requests: this.requestCount };
      this.context.logger.info('export detached', fields);
    }
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.phase !== 'closed' || this.finishing) return;
    if (this.inflightCount > 0 || this.optionBusy) return;
    this.finishing = true;
    const handle = this.handle;
    this.handle = null;
    if (this.volumeIo !== null) this.context.volumeStats.release(this.volumeIo);
    this.volumeIo = null;
    const releases = [this.negotiator.dispose()];
    if (handle !== null) releases.push(releaseQuietly(handle, this.context.logger, this.tag));
    void Promise.all(releases).then(() => this.resolveFinished());
  }
}

/** Bytes a request holds while in flight: its payload or the data its reply will carry. */
function inflightCost(request: NbdRequest): number {
  if (request.command === COMMAND.WRITE) return request.payload?.length ?? 0;
  if (request.command !== COMMAND.READ) return 0;
  return Math.min(request.lengthBytes, RequestReader.payloadBytesMax);
}
