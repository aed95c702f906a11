// Newstyle option negotiation: from the client's flags to the start of transmission. Fixed
// newstyle clients (all current ones) may send any option; plain newstyle clients (without the
// fixed-newstyle flag) only NBD_OPT_EXPORT_NAME, and any other option from them closes the
// connection, since plain newstyle has no way to answer one.
//
// Two layers. `HandshakeReader` cuts the client's byte stream into client flags and options, and
// bounds what it buffers (OPTION_DATA_BYTES_MAX per option; larger ones are skipped without
// buffering and answered ERR_TOO_BIG, or the connection is closed). The parse* functions decode
// option payloads and are pure. `Negotiator` answers one option at a time; it reaches the
// device provider (LIST, INFO, GO, EXPORT_NAME) but never the socket: it returns the replies to
// send and what the connection does next, so a client's garbage can at most close its own
// connection.
//
// TLS (tls.ts): on a listener that requires it, every option before NBD_OPT_STARTTLS but ABORT is
// answered ERR_TLS_REQD and EXPORT_NAME closes the connection; STARTTLS is acknowledged and the
// connection wraps its socket. Elsewhere STARTTLS gets ERR_UNSUP.
//
// Non-goals: extended headers.

import type { BlockDeviceHandle, BlockDeviceProvider } from '../client/block_device.ts';
import { isStorageError } from '../errors.ts';
import { VOLUME_BYTES_MAX } from '../limits.ts';
import { isUint } from '../util/assert.ts';
import type { Logger } from '../util/log.ts';
import type { ByteQueue } from './byte_queue.ts';
import {
  BASE_ALLOCATION, BASE_ALLOCATION_CONTEXT_ID, BLOCK_SIZE, CLIENT_FLAGS_BYTES, INFO,
  META_CONTEXT_QUERIES_MAX, OPTION, OPTION_DATA_BYTES_MAX, OPTION_HEADER_BYTES, OPTION_REPLY,
  OPTION_SKIP_BYTES_MAX, STRING_BYTES_MAX, TRANSMISSION_FLAG, decideClientFlags, decodeOptionHeader,
  decodeString, encodeExportNameReply, encodeInfoBlockSize, encodeInfoExport, encodeInfoString,
  encodeMetaContextData, encodeOptionError, encodeOptionReply, encodeServerReplyData,
} from './protocol.ts';
import type { ClientFlags, OptionErrorType } from './protocol.ts';

/** Options one connection may send before we call it a denial of service. */
export const HANDSHAKE_OPTIONS_MAX = 10_000;

// ---------------------------------------------------------------------------------------------
// Stream layer.

export type HandshakeEvent =
  | { readonly kind: 'clientFlags'; readonly flags: ClientFlags }
  | { readonly kind: 'option'; readonly option: number; readonly data: Buffer }
  | { readonly kind: 'oversizeOption'; readonly option: number; readonly lengthBytes: number }
  | { readonly kind: 'close'; readonly reason: string };

type ReaderState = 'clientFlags' | 'optionHeader' | 'optionData' | 'skipping' | 'closed';

export class HandshakeReader {
  private state: ReaderState = 'clientFlags';
  private readonly scratch = Buffer.alloc(OPTION_HEADER_BYTES);
  private option = 0;
  private pendingBytes = 0;
  private skippedBytes = 0;
  private optionCount = 0;
  private fixedNewstyle = true;

  /** Bytes the reader will hold at most for one option (buffered payload plus its header). */
  static readonly bufferedBytesMax = OPTION_HEADER_BYTES + OPTION_DATA_BYTES_MAX;

  /** The next event, or null when more bytes are needed (or after a close). */
  next(queue: ByteQueue): HandshakeEvent | null {
    switch (this.state) {
      case 'clientFlags':
        return this.readClientFlags(queue);
      case 'optionHeader':
        return this.readOptionHeader(queue);
      case 'optionData': {
        if (queue.lengthBytes < this.pendingBytes) return null;
        this.state = 'optionHeader';
        return { kind: 'option', option: this.option, data: queue.take(this.pendingBytes) };
      }
      case 'skipping': {
        this.pendingBytes -= queue.discard(this.pendingBytes);
        if (this.pendingBytes > 0) return null;
        this.state = 'optionHeader';
        return { kind: 'oversizeOption', option: this.option, lengthBytes: this.skippedBytes };
      }
      case 'closed':
        return null;
    }
  }

  private readClientFlags(queue: ByteQueue): HandshakeEvent | null {
    if (queue.lengthBytes < CLIENT_FLAGS_BYTES) return null;
    queue.copyOut(this.scratch, 0, CLIENT_FLAGS_BYTES);
    const verdict = decideClientFlags(this.scratch.readUInt32BE(0));
    if (!verdict.ok) return this.close(verdict.reason);
    this.state = 'optionHeader';
    this.fixedNewstyle = verdict.fixedNewstyle;
    return { kind: 'clientFlags', flags: { fixedNewstyle: verdict.fixedNewstyle, noZeroes: verdict.noZeroes } };
  }

  private readOptionHeader(queue: ByteQueue): HandshakeEvent | null {
    if (queue.lengthBytes < OPTION_HEADER_BYTES) return null;
    queue.copyOut(this.scratch, 0, OPTION_HEADER_BYTES);
    const header = decodeOptionHeader(this.scratch);
    if (!header.magicOk) return this.close('option does not start with IHAVEOPT');
    this.optionCount += 1;
    if (this.optionCount > HANDSHAKE_OPTIONS_MAX) {
      return this.close(`more than ${HANDSHAKE_OPTIONS_MAX} options on one connection`);
    }
    // Closed before its data is read: there is nothing a plain newstyle client could be told.
    if (!this.fixedNewstyle && header.option !== OPTION.EXPORT_NAME) return this.close(plainNewstyleRefusal(header.option));
    this.option = header.option;
    this.pendingBytes = header.lengthBytes;
    if (header.lengthBytes <= OPTION_DATA_BYTES_MAX) {
      this.state = 'optionData';
      return this.next(queue);
    }
    // EXPORT_NAME has no error reply, and a huge skip is only a way to waste our bandwidth.
    if (header.option === OPTION.EXPORT_NAME || header.lengthBytes > OPTION_SKIP_BYTES_MAX) {
      return this.close(`option ${header.option} announces ${header.lengthBytes} bytes of data`);
    }
    this.skippedBytes = header.lengthBytes;
    this.state = 'skipping';
    return this.next(queue);
  }

  private close(reason: string): HandshakeEvent {
    this.state = 'closed';
    return { kind: 'close', reason };
  }
}

const TLS_REQUIRED = 'this server requires TLS here: send NBD_OPT_STARTTLS first (qemu: tls-creds; libnbd: nbds://)';

function plainNewstyleRefusal(option: number): string {
  return `option ${option} from a plain newstyle client (no fixed-newstyle flag), which may only send EXPORT_NAME`;
}

// ---------------------------------------------------------------------------------------------
// Pure option payload parsers.

export type Parsed<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly error: OptionErrorType; readonly message: string };

const BAD_NAME = 'export name is not a valid string of at most 4096 bytes';

function invalid<T>(message: string): Parsed<T> {
  return { ok: false, error: OPTION_REPLY.ERR_INVALID, message };
}

export interface InfoRequest {
  readonly exportName: string;
  readonly infoTypes: readonly number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, count × u16 info types. */
export function parseInfoRequest(data: Buffer): Parsed<InfoRequest> {
  if (data.length < 6) return invalid(`INFO/GO data of ${data.length} bytes is too short`);
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return invalid('export name length exceeds the option data');
  const exportName = decodeString(data.subarray(4, 4 + nameBytes));
  if (exportName === null) return invalid(BAD_NAME);
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 4 + nameBytes + 2 + 2 * count) {
    return invalid(`INFO/GO data of ${data.length} bytes does not hold ${count} info requests`);
  }
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index += 1) {
    infoTypes.push(data.readUInt16BE(4 + nameBytes + 2 + 2 * index));
  }
  return { ok: true, value: { exportName, infoTypes } };
}

export interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: readonly string[];
}

/** LIST/SET_META_CONTEXT: u32 name length, name, u32 count, count × (u32 length, query). */
export function parseMetaContextRequest(data: Buffer): Parsed<MetaContextRequest> {
  if (data.length < 8) return invalid(`meta context data of ${data.length} bytes is too short`);
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return invalid('export name length exceeds the option data');
  const exportName = decodeString(data.subarray(4, 4 + nameBytes));
  if (exportName === null) return invalid(BAD_NAME);
  const count = data.readUInt32BE(4 + nameBytes);
  let at = 8 + nameBytes;
  if (count > (data.length - at) / 4) return invalid(`${count} queries cannot fit the option data`);
  if (count > META_CONTEXT_QUERIES_MAX) {
    const message = `more than ${META_CONTEXT_QUERIES_MAX} queries`;
    return { ok: false, error: OPTION_REPLY.ERR_TOO_BIG, message };
  }
  const queries: string[] = [];
  for (let index = 0; index < count; index += 1) {
    if (data.length - at < 4) return invalid(`query ${index} is cut short`);
    const queryBytes = data.readUInt32BE(at);
    at += 4;
    if (queryBytes > data.length - at) return invalid(`query ${index} runs past the option data`);
    const query = decodeString(data.subarray(at, at + queryBytes));
    if (query === null) return invalid(`query ${index} is not a valid string of <= 4096 bytes`);
    queries.push(query);
    at += queryBytes;
  }
  if (at !== data.length) return invalid(`${data.length - at} bytes follow the last query`);
  return { ok: true, value: { exportName, queries } };
}

/**
 * The contexts a query list selects. Only base:allocation exists. LIST treats "no queries" and
 * "base:" as wildcards; SET selects only exact names. Unknown namespaces are ignored (the spec
 * says so), as are queries without a namespace: being lenient costs nothing here.
 */
export function selectMetaContexts(queries: readonly string[], mode: 'list' | 'set'): string[] {
  if (mode === 'list' && queries.length === 0) return [BASE_ALLOCATION];
  const wanted = queries.some((query) =>
    query === BASE_ALLOCATION || (mode === 'list' && query === 'base:'));
  return wanted ? [BASE_ALLOCATION] : [];
}

/** Transmission flags: everything the device can honor; every completed write is durable. */
export function transmissionFlagsFor(readOnly: boolean, structuredReplies: boolean): number {
  const flag = TRANSMISSION_FLAG;
  let flags = flag.HAS_FLAGS | flag.SEND_FLUSH | flag.CAN_MULTI_CONN;
  if (readOnly) flags |= flag.READ_ONLY;
  else flags |= flag.SEND_FUA | flag.SEND_TRIM | flag.SEND_WRITE_ZEROES;
  // Every read is answered with one content chunk, so DF is always honored.
  if (structuredReplies) flags |= flag.SEND_DF;
  return flags;
}

export interface OptionError {
  readonly type: OptionErrorType;
  readonly message: string;
  /** Not a StorageError: a bug in the provider, to be logged as one. */
  readonly bug: boolean;
}

/** How a provider failure is told to the client during negotiation. */
export function optionErrorFor(error: unknown): OptionError {
  if (!isStorageError(error)) {
    return { type: OPTION_REPLY.ERR_UNKNOWN, message: 'internal error in the server', bug: true };
  }
  const known = (type: OptionErrorType, message = error.message): OptionError =>
    ({ type, message, bug: false });
  switch (error.code) {
    case 'ERR_NOT_FOUND':
      return known(OPTION_REPLY.ERR_UNKNOWN);
    case 'ERR_VOLUME_LEASED': // the message names the holder
    case 'ERR_UNAUTHORIZED':
    case 'ERR_READ_ONLY':
      return known(OPTION_REPLY.ERR_POLICY);
    case 'ERR_SHUTTING_DOWN':
      return known(OPTION_REPLY.ERR_SHUTDOWN);
    case 'ERR_INVALID_ARGUMENT':
      return known(OPTION_REPLY.ERR_INVALID);
    default:
      return known(OPTION_REPLY.ERR_UNKNOWN, `unavailable: ${error.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Negotiation.

export interface NegotiatorConfig {
  readonly provider: BlockDeviceProvider;
  /** Export served for an empty name; none means an empty name is an unknown export. */
  readonly defaultExport: string | undefined;
  /** Open every export read-only. */
  readonly readOnly: boolean;
  readonly logger: Logger;
  /** Short tag for log lines, e.g. "conn 12 unix". */
  readonly connectionTag: string;
  /** 'required': nothing but STARTTLS (and ABORT) is served until TLS is on (tls.ts). */
  readonly tls: 'off' | 'required';
  isShuttingDown(): boolean;
}

/** What transmission starts with; the handle now belongs to the caller. */
export interface NegotiatedExport {
  readonly exportName: string;
  readonly handle: BlockDeviceHandle;
  readonly structuredReplies: boolean;
  readonly baseAllocation: boolean;
  readonly transmissionFlags: number;
}

export type OptionOutcome =
  | { readonly next: 'continue'; readonly replies: Buffer[] }
  | {
    readonly next: 'transmission';
    readonly replies: Buffer[];
    readonly negotiated: NegotiatedExport;
  }
  | { readonly next: 'close'; readonly replies: Buffer[]; readonly reason: string }
  /** Send the replies (the ACK), then wrap the socket in TLS and call `tlsStarted()`. */
  | { readonly next: 'starttls'; readonly replies: Buffer[] };

type Opened =
  | { readonly ok: true; readonly exportName: string; readonly handle: BlockDeviceHandle }
  | { readonly ok: false; readonly type: OptionErrorType; readonly message: string };

export class Negotiator {
  private structuredReplies = false;
  /** The last SET_META_CONTEXT: for which export, and whether it selected base:allocation. */
  private metaContext: { exportName: string; baseAllocation: boolean } | null = null;
  /** The device opened by the last NBD_OPT_INFO, kept for a GO on the same export. */
  private infoHandle: { exportName: string; handle: BlockDeviceHandle } | null = null;
  private noZeroes = false;
  private fixedNewstyle = true;
  private tlsActive = false;

  private readonly config: NegotiatorConfig;

  constructor(config: NegotiatorConfig) {
    this.config = config;
  }

  setClientFlags(flags: ClientFlags): void {
    this.noZeroes = flags.noZeroes;
    this.fixedNewstyle = flags.fixedNewstyle;
  }

  /** The connection's socket is now a TLS socket: options are served. */
  tlsStarted(): void {
    this.tlsActive = true;
  }

  /** Answers one option. Never rejects: every failure becomes an error reply or a close. */
  async handleOption(option: number, data: Buffer): Promise<OptionOutcome> {
    if (!this.fixedNewstyle && option !== OPTION.EXPORT_NAME) return close(plainNewstyleRefusal(option));
    if (this.config.isShuttingDown() && option !== OPTION.ABORT) {
      if (option === OPTION.EXPORT_NAME) return close('server shutting down');
      return this.fail(option, OPTION_REPLY.ERR_SHUTDOWN, 'the NBD server is shutting down');
    }
    if (this.config.tls === 'required' && !this.tlsActive && option !== OPTION.ABORT) {
      if (option === OPTION.EXPORT_NAME) return close('EXPORT_NAME without TLS on a listener that requires it');
      if (option !== OPTION.STARTTLS) return this.fail(option, OPTION_REPLY.ERR_TLS_REQD, TLS_REQUIRED);
      if (data.length !== 0) return this.fail(option, OPTION_REPLY.ERR_INVALID, 'STARTTLS takes no data');
      return { next: 'starttls', replies: [encodeOptionReply(option, OPTION_REPLY.ACK)] };
    }
    switch (option) {
      case OPTION.STARTTLS:
        if (this.tlsActive) return this.fail(option, OPTION_REPLY.ERR_INVALID, 'TLS is already on');
        return this.fail(option, OPTION_REPLY.ERR_UNSUP, 'TLS is not configured on this listener');
      case OPTION.EXPORT_NAME:
        return this.exportName(data);
      case OPTION.ABORT:
        return close('client aborted', [encodeOptionReply(option, OPTION_REPLY.ACK)]);
      case OPTION.LIST:
        return this.list(data);
      case OPTION.INFO:
      case OPTION.GO:
        return this.infoOrGo(option, data);
      case OPTION.STRUCTURED_REPLY:
        if (data.length !== 0) return this.fail(option, OPTION_REPLY.ERR_INVALID, 'takes no data');
        this.structuredReplies = true;
        return this.ack(option);
      case OPTION.LIST_META_CONTEXT:
      case OPTION.SET_META_CONTEXT:
        return this.metaContextOption(option, data);
      default:
        return this.fail(option, OPTION_REPLY.ERR_UNSUP, `option ${option} is not supported here`);
    }
  }

  /** An option whose data was too large to buffer (already skipped by the reader). */
  handleOversizeOption(option: number, lengthBytes: number): OptionOutcome {
    if (!this.fixedNewstyle) return close(plainNewstyleRefusal(option));
    if (this.config.tls === 'required' && !this.tlsActive) return this.fail(option, OPTION_REPLY.ERR_TLS_REQD, TLS_REQUIRED);
    const message = `option data of ${lengthBytes} bytes exceeds ${OPTION_DATA_BYTES_MAX}`;
    return this.fail(option, OPTION_REPLY.ERR_TOO_BIG, message);
  }

  /** Releases a device still held for INFO; call when the connection ends during negotiation. */
  async dispose(): Promise<void> {
    const held = this.infoHandle;
    this.infoHandle = null;
    if (held !== null) await this.release(held.handle);
  }

  private async release(handle: BlockDeviceHandle): Promise<void> {
    await releaseQuietly(handle, this.config.logger, this.config.connectionTag);
  }

  private ack(option: number): OptionOutcome {
    return { next: 'continue', replies: [encodeOptionReply(option, OPTION_REPLY.ACK)] };
  }

  private fail(option: number, type: OptionErrorType, message: string): OptionOutcome {
    return { next: 'continue', replies: [encodeOptionError(option, type, message)] };
  }

  private resolveName(requested: string): string | null {
    if (requested !== '') return requested;
    return this.config.defaultExport ?? null;
  }

  private async exportName(data: Buffer): Promise<OptionOutcome> {
    const requested = decodeString(data);
    if (requested === null) return close('EXPORT_NAME is not a valid string');
    const opened = await this.open(requested);
    if (!opened.ok) return close(`EXPORT_NAME "${requested}": ${opened.message}`);
    const negotiated = this.negotiated(opened.exportName, opened.handle);
    const { sizeBytes } = opened.handle.device;
    const reply = encodeExportNameReply(sizeBytes, negotiated.transmissionFlags, this.noZeroes);
    return { next: 'transmission', replies: [reply], negotiated };
  }

  private async list(data: Buffer): Promise<OptionOutcome> {
    if (data.length !== 0) return this.fail(OPTION.LIST, OPTION_REPLY.ERR_INVALID, 'takes no data');
    let names: string[];
    try {
      names = await this.config.provider.list();
    } catch (error) {
      const mapped = this.logProviderError('list exports', error);
      return this.fail(OPTION.LIST, mapped.type, `cannot list exports: ${mapped.message}`);
    }
    const replies: Buffer[] = [];
    for (const name of names) {
      if (Buffer.byteLength(name, 'utf8') > STRING_BYTES_MAX) continue;
      const server = encodeServerReplyData(name);
      replies.push(encodeOptionReply(OPTION.LIST, OPTION_REPLY.SERVER, server));
    }
    replies.push(encodeOptionReply(OPTION.LIST, OPTION_REPLY.ACK));
    return { next: 'continue', replies };
  }

  private async infoOrGo(
    option: typeof OPTION.INFO | typeof OPTION.GO, data: Buffer,
  ): Promise<OptionOutcome> {
    const parsed = parseInfoRequest(data);
    if (!parsed.ok) return this.fail(option, parsed.error, parsed.message);
    const opened = await this.open(parsed.value.exportName);
    if (!opened.ok) return this.fail(option, opened.type, opened.message);
    const negotiated = this.negotiated(opened.exportName, opened.handle);
    const replies = this.infoReplies(option, negotiated, parsed.value.infoTypes);
    replies.push(encodeOptionReply(option, OPTION_REPLY.ACK));
    if (option === OPTION.GO) return { next: 'transmission', replies, negotiated };
    this.infoHandle = { exportName: opened.exportName, handle: opened.handle };
    return { next: 'continue', replies };
  }

  private infoReplies(
    option: number, negotiated: NegotiatedExport, infoTypes: readonly number[],
  ): Buffer[] {
    const { exportName } = negotiated;
    const { device } = negotiated.handle;
    const info = (payload: Buffer): Buffer => encodeOptionReply(option, OPTION_REPLY.INFO, payload);
    const replies = [info(encodeInfoExport(device.sizeBytes, negotiated.transmissionFlags))];
    if (infoTypes.includes(INFO.NAME)) replies.push(info(encodeInfoString(INFO.NAME, exportName)));
    if (infoTypes.includes(INFO.DESCRIPTION)) {
      const text = `shoal volume ${exportName} (${device.readOnly ? 'read-only' : 'read-write'})`;
      replies.push(info(encodeInfoString(INFO.DESCRIPTION, text)));
    }
    // Sent even unasked: our maximum is below the protocol's default of "unlimited".
    const { MIN_BYTES, PREFERRED_BYTES, MAX_BYTES } = BLOCK_SIZE;
    replies.push(info(encodeInfoBlockSize(MIN_BYTES, PREFERRED_BYTES, MAX_BYTES)));
    return replies;
  }

  private metaContextOption(
    option: typeof OPTION.LIST_META_CONTEXT | typeof OPTION.SET_META_CONTEXT, data: Buffer,
  ): OptionOutcome {
    const isSet = option === OPTION.SET_META_CONTEXT;
    // SET replaces the previous selection even when it fails.
    if (isSet) this.metaContext = null;
    if (!this.structuredReplies) {
      return this.fail(option, OPTION_REPLY.ERR_INVALID, 'negotiate structured replies first');
    }
    const parsed = parseMetaContextRequest(data);
    if (!parsed.ok) return this.fail(option, parsed.error, parsed.message);
    const selected = selectMetaContexts(parsed.value.queries, isSet ? 'set' : 'list');
    const contextId = isSet ? BASE_ALLOCATION_CONTEXT_ID : 0;
    const replies = selected.map((name) =>
      encodeOptionReply(option, OPTION_REPLY.META_CONTEXT, encodeMetaContextData(contextId, name)));
    replies.push(encodeOptionReply(option, OPTION_REPLY.ACK));
    if (isSet) {
      const exportName = this.resolveName(parsed.value.exportName) ?? parsed.value.exportName;
      this.metaContext = { exportName, baseAllocation: selected.length > 0 };
    }
    return { next: 'continue', replies };
  }

  private negotiated(exportName: string, handle: BlockDeviceHandle): NegotiatedExport {
    const meta = this.metaContext;
    const baseAllocation = meta !== null && meta.baseAllocation && meta.exportName === exportName;
    return {
      exportName,
      handle,
      structuredReplies: this.structuredReplies,
      baseAllocation,
      transmissionFlags: transmissionFlagsFor(handle.device.readOnly, this.structuredReplies),
    };
  }

  /** Opens an export (or takes the one INFO kept); the handle returned belongs to the caller. */
  private async open(requested: string): Promise<Opened> {
    const exportName = this.resolveName(requested);
    if (exportName === null) {
      return { ok: false, type: OPTION_REPLY.ERR_UNKNOWN, message: 'no default export configured' };
    }
    const held = this.infoHandle;
    this.infoHandle = null;
    if (held !== null && held.exportName === exportName) {
      return { ok: true, exportName, handle: held.handle };
    }
    if (held !== null) await this.release(held.handle);
    let handle: BlockDeviceHandle;
    try {
      handle = await this.config.provider.open(exportName, { readOnly: this.config.readOnly });
    } catch (error) {
      const mapped = this.logProviderError(`open export "${exportName}"`, error);
      return { ok: false, type: mapped.type, message: mapped.message };
    }
    const { sizeBytes } = handle.device;
    if (!isUint(sizeBytes) || sizeBytes > VOLUME_BYTES_MAX) {
      this.config.logger.error('bug: device reports an invalid size', { exportName, sizeBytes });
      await this.release(handle);
      return { ok: false, type: OPTION_REPLY.ERR_UNKNOWN, message: 'export has an invalid size' };
    }
    return { ok: true, exportName, handle };
  }

  private logProviderError(what: string, error: unknown): OptionError {
    const mapped = optionErrorFor(error);
    const fields = { conn: this.config.connectionTag, error };
    if (mapped.bug) {
      const stack = error instanceof Error ? error.stack : undefined;
      this.config.logger.error(`bug: ${what} threw a non-StorageError`, { ...fields, stack });
    } else {
      this.config.logger.info(`cannot ${what}`, fields);
    }
    return mapped;
  }
}

function close(reason: string, replies: Buffer[] = []): OptionOutcome {
  return { next: 'close', replies, reason };
}

export async function releaseQuietly(
  handle: BlockDeviceHandle, logger: Logger, tag: string,
): Promise<void> {
  try {
    await handle.release();
  } catch (error) {
    logger.warn('releasing a device handle failed', { conn: tag, error });
  }
}
