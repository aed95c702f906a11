// The transmission phase: cutting requests out of the byte stream, checking them, running them
// against the device and encoding the replies. Socket I/O stays with the connection; this file
// sees bytes through a ByteQueue and sends replies through a ReplySink.
//
// Requests run concurrently; each reply goes out when its request completes, so the cookie is
// the only link between them. Every completed device write is durable, which makes FUA free and
// FLUSH trivial. A request we refuse (bad range, flags, command) gets an errno and the
// connection goes on; only a lost framing (bad magic, a WRITE payload over the limit) closes it.

import type { BlockDevice, Extent } from '../client/block_device.ts';
import { NBD_ERRNO, isStorageError } from '../errors.ts';
import { assert, isUint } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { ByteQueue } from './byte_queue.ts';
import { commandMetrics } from './metrics.ts';
import type { NbdMetrics } from './metrics.ts';
import type { VolumeIo } from './volume_stats.ts';
import {
  BASE_ALLOCATION_CONTEXT_ID, BLOCK_SIZE, BLOCK_STATUS_DESCRIPTORS_MAX, COMMAND, COMMAND_FLAG,
  MAGIC, OFFSET_DATA_HEAD_BYTES, REQUEST_HEADER_BYTES, SIMPLE_REPLY_BYTES, STATE, commandName,
  decodeRequestHeader, encodeBlockStatusChunk, encodeErrorChunk, encodeOffsetDataHead,
  encodeSimpleReply,
} from './protocol.ts';
import type { NbdRequest, RequestHeader, StatusDescriptor } from './protocol.ts';

export type { NbdRequest } from './protocol.ts';

// ---------------------------------------------------------------------------------------------
// Stream layer.

export type RequestEvent =
  | { readonly kind: 'request'; readonly request: NbdRequest }
  | { readonly kind: 'close'; readonly reason: string };

/**
 * Cuts requests out of the stream. A WRITE payload is assembled in one buffer of its exact size
 * as bytes arrive (at most BLOCK_SIZE.MAX_BYTES), so the queue never holds more than a chunk of
 * it and nothing is copied twice.
 */
export class RequestReader {
  private readonly scratch = Buffer.alloc(REQUEST_HEADER_BYTES);
  private pending: NbdRequest | null = null;
  private payload: Buffer | null = null;
  private filledBytes = 0;
  private closed = false;

  static readonly payloadBytesMax = BLOCK_SIZE.MAX_BYTES;

  /** True while a WRITE payload is partly received. */
  get midPayload(): boolean {
    return this.pending !== null;
  }

  next(queue: ByteQueue): RequestEvent | null {
    if (this.closed) return null;
    if (this.pending !== null) return this.continuePayload(queue);
    if (queue.lengthBytes < REQUEST_HEADER_BYTES) return null;
    queue.copyOut(this.scratch, 0, REQUEST_HEADER_BYTES);
    const request = decodeRequestHeader(this.scratch);
    if (request.magic !== MAGIC.REQUEST) {
      return this.close(`request magic 0x${request.magic.toString(16)} is not 0x25609513`);
    }
    const { command, lengthBytes } = request;
    if (command !== COMMAND.WRITE || lengthBytes === 0) return { kind: 'request', request };
    if (lengthBytes > RequestReader.payloadBytesMax) {
      // The payload cannot be refused without reading it; the spec lets us hang up instead.
      return this.close(`WRITE of ${lengthBytes} bytes exceeds the maximum block size ` +
        `${RequestReader.payloadBytesMax}`);
    }
    if (queue.lengthBytes >= lengthBytes) {
      request.payload = queue.take(lengthBytes);
      return { kind: 'request', request };
    }
    this.pending = request;
    this.payload = Buffer.allocUnsafe(lengthBytes);
    this.filledBytes = 0;
    return this.continuePayload(queue);
  }

  private continuePayload(queue: ByteQueue): RequestEvent | null {
    const request = this.pending;
    const payload = this.payload;
    assert(request !== null && payload !== null, 'continuing a payload that is not pending');
    const count = Math.min(queue.lengthBytes, payload.length - this.filledBytes);
    queue.copyOut(payload, this.filledBytes, count);
    this.filledBytes += count;
    if (this.filledBytes < payload.length) return null;
    this.pending = null;
    this.payload = null;
    request.payload = payload;
    return { kind: 'request', request };
  }

  private close(reason: string): RequestEvent {
    this.closed = true;
    this.pending = null;
    this.payload = null;
    return { kind: 'close', reason };
  }
}

// ---------------------------------------------------------------------------------------------
// Pure request checks.

export interface ExportState {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly structuredReplies: boolean;
  readonly baseAllocation: boolean;
}

export interface Refusal {
  readonly errno: number;
  readonly message: string;
}

/** Flags each command accepts. FUA is accepted everywhere, as the spec asks of servers. */
function allowedFlags(command: number, state: ExportState): number {
  const { FUA, NO_HOLE, DF, REQ_ONE } = COMMAND_FLAG;
  switch (command) {
    case COMMAND.READ:
      return state.structuredReplies ? FUA | DF : FUA;
    case COMMAND.WRITE_ZEROES:
      // FAST_ZERO is not advertised: the device cannot promise a zero is faster than a write.
      return FUA | NO_HOLE;
    case COMMAND.BLOCK_STATUS:
      return FUA | REQ_ONE;
    default:
      return FUA;
  }
}

const KNOWN_COMMANDS: ReadonlySet<number> = new Set([
  COMMAND.READ, COMMAND.WRITE, COMMAND.DISC, COMMAND.FLUSH, COMMAND.TRIM, COMMAND.WRITE_ZEROES,
  COMMAND.BLOCK_STATUS,
]);
const WRITING_COMMANDS: ReadonlySet<number> = new Set([
  COMMAND.WRITE, COMMAND.TRIM, COMMAND.WRITE_ZEROES,
]);

/** Null when the request may run; otherwise the errno and a message for the client. */
export function validateRequest(request: RequestHeader, state: ExportState): Refusal | null {
  const { command, flags, offsetBytes, lengthBytes } = request;
  const name = commandName(command);
  if (!KNOWN_COMMANDS.has(command)) return einval(`command ${command} is not supported`);
  const extraFlags = flags & ~allowedFlags(command, state);
  if (extraFlags !== 0) return einval(`flags 0x${extraFlags.toString(16)} not valid on ${name}`);
  // FLUSH's offset and length are reserved; the kernel client is known to fill them.
  if (command === COMMAND.FLUSH || command === COMMAND.DISC) return null;
  if (command === COMMAND.BLOCK_STATUS && !state.baseAllocation) {
    return einval('block status needs the base:allocation context negotiated');
  }
  if (lengthBytes === 0) return einval(`${name} of 0 bytes`);
  // Only READ and WRITE move payloads; TRIM, WRITE_ZEROES and BLOCK_STATUS may span up to 4 GiB
  // (the kernel client does not learn our maximum, and the length never becomes a buffer).
  const carriesPayload = command === COMMAND.READ || command === COMMAND.WRITE;
  if (carriesPayload && lengthBytes > BLOCK_SIZE.MAX_BYTES) {
    return einval(`${name} of ${lengthBytes} bytes exceeds the maximum ${BLOCK_SIZE.MAX_BYTES}`);
  }
  if (state.readOnly && WRITING_COMMANDS.has(command)) {
    return { errno: NBD_ERRNO.EPERM, message: `${name} on a read-only export` };
  }
  if (offsetBytes > state.sizeBytes || lengthBytes > state.sizeBytes - offsetBytes) {
    const writes = command === COMMAND.WRITE || command === COMMAND.WRITE_ZEROES;
    return {
      errno: writes ? NBD_ERRNO.ENOSPC : NBD_ERRNO.EINVAL,
      message: `${name} of ${lengthBytes} bytes at offset ${offsetBytes} goes past the end ` +
        `of the export (${state.sizeBytes} bytes)`,
    };
  }
  return null;
}

function einval(message: string): Refusal {
  return { errno: NBD_ERRNO.EINVAL, message };
}

/**
 * The errno for a device failure. EOVERFLOW and ENOTSUP have narrow meanings in NBD (DF reads,
 * fast zeroes) that a device error never has, so they become EINVAL.
 */
export function errnoForDeviceError(error: unknown): { errno: number; bug: boolean } {
  if (!isStorageError(error)) return { errno: NBD_ERRNO.EIO, bug: true };
  const errno = error.nbdErrno;
  if (errno === NBD_ERRNO.EOVERFLOW || errno === NBD_ERRNO.ENOTSUP) {
    return { errno: NBD_ERRNO.EINVAL, bug: false };
  }
  return { errno, bug: false };
}

/**
 * base:allocation descriptors for the extents a device returned: merged where the status
 * repeats, cut to the requested length (never more), one descriptor with REQ_ONE, at most
 * BLOCK_STATUS_DESCRIPTORS_MAX otherwise. Null when the device broke its contract.
 */
export function statusDescriptors(
  extents: readonly Extent[], requestedBytes: number, reqOne: boolean,
): StatusDescriptor[] | null {
  assert(isUint(requestedBytes) && requestedBytes > 0, 'block status of a nonempty range');
  const descriptorsMax = reqOne ? 1 : BLOCK_STATUS_DESCRIPTORS_MAX;
  const out: { lengthBytes: number; status: number }[] = [];
  let coveredBytes = 0;
  for (const extent of extents) {
    if (!isUint(extent.lengthBytes) || extent.lengthBytes === 0) return null;
    if (coveredBytes >= requestedBytes) break;
    const lengthBytes = Math.min(extent.lengthBytes, requestedBytes - coveredBytes);
    const status = extent.allocated ? 0 : STATE.HOLE | STATE.ZERO;
    const last = out[out.length - 1];
    if (last !== undefined && last.status === status) {
      last.lengthBytes += lengthBytes;
    } else {
      if (out.length === descriptorsMax) break;
      out.push({ lengthBytes, status });
    }
    coveredBytes += lengthBytes;
  }
  return out.length === 0 ? null : out;
}

// ---------------------------------------------------------------------------------------------
// Execution.

/** Where replies go: each call is one whole reply, written back to back. */
export interface ReplySink {
  send(head: Buffer, payload?: Buffer): void;
}

/**
 * Reply headers are carved from a slab instead of allocated one by one. A header is never
 * reused in place: socket.write keeps a reference until the kernel has the bytes, so a slab is
 * only dropped (to the GC) when full, never rewritten.
 */
class HeaderSlab {
  private static readonly slabBytes = 16 * 1024;
  private slab = Buffer.allocUnsafeSlow(HeaderSlab.slabBytes);
  private usedBytes = 0;

  take(lengthBytes: number): Buffer {
    if (this.usedBytes + lengthBytes > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(HeaderSlab.slabBytes);
      this.usedBytes = 0;
    }
    const head = this.slab.subarray(this.usedBytes, this.usedBytes + lengthBytes);
    this.usedBytes += lengthBytes;
    return head;
  }
}

/** At most `linesMax` log lines per window per connection, so a failing device cannot flood. */
class LogLimiter {
  private windowStartMs = 0;
  private lines = 0;
  private suppressed = 0;
  private readonly linesMax: number;
  private readonly windowMs: number;

  constructor(linesMax: number, windowMs: number) {
    this.linesMax = linesMax;
    this.windowMs = windowMs;
  }

  /** Whether to log now; the count of lines held back since the last allowed one is returned. */
  allow(nowMs: number): { ok: boolean; suppressed: number } {
    if (nowMs - this.windowStartMs >= this.windowMs) {
      this.windowStartMs = nowMs;
      this.lines = 0;
    }
    if (this.lines >= this.linesMax) {
      this.suppressed += 1;
      return { ok: false, suppressed: 0 };
    }
    this.lines += 1;
    const suppressed = this.suppressed;
    this.suppressed = 0;
    return { ok: true, suppressed };
  }
}

export interface SessionConfig {
  readonly device: BlockDevice;
  readonly structuredReplies: boolean;
  readonly baseAllocation: boolean;
  readonly sink: ReplySink;
  readonly metrics: NbdMetrics;
  /** The served volume's running totals (volume_stats.ts). */
  readonly volumeIo: VolumeIo;
  readonly logger: Logger;
  readonly connectionTag: string;
}

export class TransmissionSession {
  readonly state: ExportState;
  private readonly config: SessionConfig;
  private readonly slab = new HeaderSlab();
  private readonly logLimiter = new LogLimiter(10, 10_000);

  constructor(config: SessionConfig) {
    this.config = config;
    this.state = {
      sizeBytes: config.device.sizeBytes,
      readOnly: config.device.readOnly,
      structuredReplies: config.structuredReplies,
      baseAllocation: config.baseAllocation,
    };
  }

  /** Runs one request and sends its reply. Never rejects for a device or client failure. */
  async execute(request: NbdRequest): Promise<void> {
    const startedMs = performance.now();
    const metrics = commandMetrics(this.config.metrics, request.command);
    metrics.requests.inc();
    const refusal = validateRequest(request, this.state);
    let ok = false;
    if (refusal !== null) {
      this.replyError(request, refusal.errno, refusal.message);
    } else {
      try {
        ok = await this.run(request);
      } catch (error) {
        this.replyDeviceError(request, error);
      }
    }
    const seconds = (performance.now() - startedMs) / 1000;
    if (!ok) metrics.errors.inc();
    metrics.duration.observe(seconds);
    const io = this.config.volumeIo;
    if (!ok) io.errors += 1;
    if (request.command === COMMAND.READ) {
      io.readOps += 1;
      io.readSeconds += seconds;
      if (ok) io.readBytes += request.lengthBytes;
    } else if (request.command === COMMAND.WRITE) {
      io.writeOps += 1;
      io.writeSeconds += seconds;
      if (ok) io.writtenBytes += request.lengthBytes;
    } else {
      io.otherOps += 1;
    }
  }

  /** Answers a request without running it, while the server shuts down. */
  refuseShuttingDown(request: NbdRequest): void {
    const metrics = commandMetrics(this.config.metrics, request.command);
    metrics.requests.inc();
    metrics.errors.inc();
    this.replyError(request, NBD_ERRNO.ESHUTDOWN, 'the NBD server is shutting down');
  }

  /** Runs a valid request and replies; false when the reply was an error. */
  private async run(request: NbdRequest): Promise<boolean> {
    const { device } = this.config;
    const { offsetBytes, lengthBytes } = request;
    switch (request.command) {
      case COMMAND.READ:
        return this.read(request);
      case COMMAND.WRITE: {
        const payload = request.payload;
        assert(payload !== null && payload.length === lengthBytes, 'a WRITE carries its payload');
        await device.write(offsetBytes, payload);
        this.config.metrics.writtenBytes.inc(lengthBytes);
        break;
      }
      case COMMAND.FLUSH:
        await device.flush();
        break;
      case COMMAND.TRIM:
        await device.trim(offsetBytes, lengthBytes);
        break;
      case COMMAND.WRITE_ZEROES:
        // NO_HOLE still zeroes through the device: space is pooled and thin, so writing zero
        // blocks would cost replica bandwidth without reserving anything.
        await device.zero(offsetBytes, lengthBytes);
        break;
      case COMMAND.BLOCK_STATUS:
        return this.blockStatus(request);
      default:
        assert(false, `validateRequest let command ${request.command} through`);
    }
    this.replyOk(request);
    return true;
  }

  private async read(request: NbdRequest): Promise<boolean> {
    const data = await this.config.device.read(request.offsetBytes, request.lengthBytes);
    if (!Buffer.isBuffer(data) || data.length !== request.lengthBytes) {
      const got = Buffer.isBuffer(data) ? `${data.length} bytes` : typeof data;
      this.logBug(request, new Error(`device read gave ${got} for ${request.lengthBytes} bytes`));
      this.replyError(request, NBD_ERRNO.EIO, 'internal error: short read from the device');
      return false;
    }
    this.config.metrics.readBytes.inc(data.length);
    const { cookieHigh, cookieLow } = request;
    if (this.state.structuredReplies) {
      // One final content chunk: the data is in hand, so no error can follow it, and DF holds.
      const head = this.slab.take(OFFSET_DATA_HEAD_BYTES);
      encodeOffsetDataHead(head, 0, cookieHigh, cookieLow, request.offsetBytes, data.length);
      this.config.sink.send(head, data);
    } else {
      const head = this.slab.take(SIMPLE_REPLY_BYTES);
      encodeSimpleReply(head, 0, 0, cookieHigh, cookieLow);
      this.config.sink.send(head, data);
    }
    return true;
  }

  private async blockStatus(request: NbdRequest): Promise<boolean> {
    const extents = await this.config.device.blockStatus(request.offsetBytes, request.lengthBytes);
    const reqOne = (request.flags & COMMAND_FLAG.REQ_ONE) !== 0;
    const descriptors = Array.isArray(extents)
      ? statusDescriptors(extents, request.lengthBytes, reqOne)
      : null;
    if (descriptors === null) {
      this.logBug(request, new Error('device blockStatus returned no valid extents'));
      this.replyError(request, NBD_ERRNO.EIO, 'internal error: bad block status');
      return false;
    }
    const chunk = encodeBlockStatusChunk(
      request.cookieHigh, request.cookieLow, BASE_ALLOCATION_CONTEXT_ID, descriptors,
    );
    this.config.sink.send(chunk);
    return true;
  }

  private replyOk(request: NbdRequest): void {
    // A simple reply is allowed for any payload-free success, structured replies or not.
    const head = this.slab.take(SIMPLE_REPLY_BYTES);
    encodeSimpleReply(head, 0, 0, request.cookieHigh, request.cookieLow);
    this.config.sink.send(head);
  }

  private replyError(request: NbdRequest, errno: number, message: string): void {
    assert(errno !== 0, 'an error reply carries an errno');
    if (this.state.structuredReplies) {
      const { cookieHigh, cookieLow } = request;
      this.config.sink.send(encodeErrorChunk(cookieHigh, cookieLow, errno, message));
      return;
    }
    // A simple READ error carries no payload; the client reads none after a nonzero errno.
    const head = this.slab.take(SIMPLE_REPLY_BYTES);
    encodeSimpleReply(head, 0, errno, request.cookieHigh, request.cookieLow);
    this.config.sink.send(head);
  }

  private replyDeviceError(request: NbdRequest, error: unknown): void {
    const { errno, bug } = errnoForDeviceError(error);
    if (bug) {
      this.logBug(request, error);
      return this.replyError(request, errno, 'internal error in the NBD server');
    }
    const message = error instanceof Error ? error.message : String(error);
    const verdict = this.logLimiter.allow(performance.now());
    if (verdict.ok) {
      this.config.logger.warn(`${commandName(request.command)} failed`, {
        conn: this.config.connectionTag, offsetBytes: request.offsetBytes,
        lengthBytes: request.lengthBytes, errno, error, suppressedBefore: verdict.suppressed,
      });
    }
    this.replyError(request, errno, message);
  }

  private logBug(request: NbdRequest, error: unknown): void {
    const verdict = this.logLimiter.allow(performance.now());
    if (!verdict.ok) return;
    const name = commandName(request.command);
    this.config.logger.error(`bug in the device layer during ${name}`, {
      conn: this.config.connectionTag,
      offsetBytes: request.offsetBytes,
      lengthBytes: request.lengthBytes,
      error,
      stack: error instanceof Error ? error.stack : undefined,
      suppressedBefore: verdict.suppressed,
    });
  }
}
