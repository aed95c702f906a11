// NBD wire format: every constant and byte layout the server uses, as pure encode/decode
// functions. Nothing here touches a socket, so the codecs can be checked byte for byte against
// the protocol document (NetworkBlockDevice/nbd doc/proto.md) and fuzzed in isolation.
//
// 64-bit fields never become BigInts on the data path: cookies travel as two u32 halves (they
// are opaque and only echoed back), offsets as doubles. Any offset at or above 2^53 is far past
// VOLUME_BYTES_MAX, so range checks stay correct even where the double is inexact.
//
// Non-goals: oldstyle negotiation, TLS, extended headers (64-bit request lengths).

import { IO_BYTES_MAX, BLOCK_BYTES, isPowerOfTwo } from '../limits.ts';
import { assert, isUint } from '../util/assert.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** 64-bit magics as [high u32, low u32]. */
export const MAGIC = {
  /** 'NBDMAGIC', first word of the greeting. */
  INIT_PASSWD: [0x4e42444d, 0x41474943],
  /** 'IHAVEOPT', second word of the greeting and the start of every option. */
  IHAVEOPT: [0x49484156, 0x454f5054],
  OPTION_REPLY: [0x0003e889, 0x045565a9],
  REQUEST: 0x25609513,
  SIMPLE_REPLY: 0x67446698,
  STRUCTURED_REPLY: 0x668e33ef,
} as const;

export const HANDSHAKE_FLAG = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
export const CLIENT_FLAG = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

export const TRANSMISSION_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const OPTION = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;
export const OPTION_REPLY = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
  ERR_EXT_HEADER_REQD: REP_ERR + 10,
} as const;
export type OptionErrorType = Exclude<
  (typeof OPTION_REPLY)[keyof typeof OPTION_REPLY],
  1 | 2 | 3 | 4
>;

export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const COMMAND = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Metric and log names of commands, indexed by command code; anything else is 'unknown'. */
export const COMMAND_NAMES = [
  'read', 'write', 'disc', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status',
] as const;
export type CommandName = (typeof COMMAND_NAMES)[number] | 'unknown';

export function commandName(command: number): CommandName {
  return COMMAND_NAMES[command] ?? 'unknown';
}

export const COMMAND_FLAG = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

export const REPLY_FLAG = { DONE: 1 << 0 } as const;

export const REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8000 + 1,
  ERROR_OFFSET: 0x8000 + 2,
} as const;

/** base:allocation status bits. */
export const STATE = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;

export const BASE_ALLOCATION = 'base:allocation';
/** Our id for base:allocation in SET_META_CONTEXT replies; nonzero, since LIST uses 0. */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_ZEROES_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_HEADER_BYTES = 20;
/** Structured chunk header plus the u64 offset that opens an OFFSET_DATA payload. */
export const OFFSET_DATA_HEAD_BYTES = STRUCTURED_HEADER_BYTES + 8;

/** The protocol's bound on every string (export names, queries, messages). */
export const STRING_BYTES_MAX = 4096;
/** Option payloads we buffer; a legitimate GO or META_CONTEXT option is far smaller. */
export const OPTION_DATA_BYTES_MAX = 64 * KiB;
/** Larger options are read and dropped (ERR_TOO_BIG) up to this size, closed beyond it. */
export const OPTION_SKIP_BYTES_MAX = 1 * MiB;
/** Queries in one LIST/SET_META_CONTEXT; more gets ERR_TOO_BIG. */
export const META_CONTEXT_QUERIES_MAX = 128;
/** Descriptors in one block-status reply; the client asks again from where the reply ended. */
export const BLOCK_STATUS_DESCRIPTORS_MAX = 2048;
export const U32_MAX = 0xffffffff;

export const BLOCK_SIZE = {
  MIN_BYTES: 1,
  PREFERRED_BYTES: BLOCK_BYTES,
  MAX_BYTES: IO_BYTES_MAX,
} as const;

assert(isPowerOfTwo(BLOCK_SIZE.PREFERRED_BYTES), 'the preferred block size is a power of 2');
assert(BLOCK_SIZE.PREFERRED_BYTES >= 512, 'the preferred block size is at least 512');
assert(BLOCK_SIZE.MAX_BYTES <= U32_MAX - 8, 'a whole read fits one OFFSET_DATA chunk');
assert(BLOCK_SIZE.MAX_BYTES >= 65536, 'DF reads up to 64 KiB must be served in one chunk');
assert(OPTION_DATA_BYTES_MAX >= 4 + STRING_BYTES_MAX + 2 + 2 * 16, 'a normal GO option fits');
assert(OPTION_SKIP_BYTES_MAX > OPTION_DATA_BYTES_MAX, 'skipping starts above the buffered limit');

// ---------------------------------------------------------------------------------------------
// Small helpers.

/** Writes a safe integer as u64 big-endian without a BigInt. */
export function writeU64(target: Buffer, value: number, offsetBytes: number): void {
  assert(isUint(value), `u64 field value ${value} is not a safe unsigned integer`);
  target.writeUInt32BE(Math.floor(value / 0x100000000), offsetBytes);
  target.writeUInt32BE(value >>> 0, offsetBytes + 4);
}

/** Reads a u64; values beyond 2^53 come back inexact but still larger than any valid offset. */
export function readU64(source: Buffer, offsetBytes: number): number {
  return source.readUInt32BE(offsetBytes) * 0x100000000 + source.readUInt32BE(offsetBytes + 4);
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/** A protocol string: valid UTF-8, no NUL, at most STRING_BYTES_MAX bytes; null otherwise. */
export function decodeString(bytes: Buffer): string | null {
  if (bytes.length > STRING_BYTES_MAX || bytes.includes(0)) return null;
  try {
    return utf8Strict.decode(bytes);
  } catch {
    return null;
  }
}

/** Encodes a human message, cut at a character boundary to fit `bytesMax`. */
export function encodeMessage(message: string, bytesMax: number = STRING_BYTES_MAX): Buffer {
  const clean = message.replaceAll('\0', ' ');
  const encoded = Buffer.from(clean, 'utf8');
  if (encoded.length <= bytesMax) return encoded;
  // Back up over UTF-8 continuation bytes (10xxxxxx) to the start of the cut character.
  let end = bytesMax;
  while (end > 0 && ((encoded[end] ?? 0) & 0xc0) === 0x80) end -= 1;
  return encoded.subarray(0, end);
}

// ---------------------------------------------------------------------------------------------
// Handshake phase.

/** Server greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(): Buffer {
  const out = Buffer.alloc(GREETING_BYTES);
  out.writeUInt32BE(MAGIC.INIT_PASSWD[0], 0);
  out.writeUInt32BE(MAGIC.INIT_PASSWD[1], 4);
  out.writeUInt32BE(MAGIC.IHAVEOPT[0], 8);
  out.writeUInt32BE(MAGIC.IHAVEOPT[1], 12);
  out.writeUInt16BE(HANDSHAKE_FLAG.FIXED_NEWSTYLE | HANDSHAKE_FLAG.NO_ZEROES, 16);
  return out;
}

export interface ClientFlags {
  /**
   * The client speaks fixed newstyle: any option, each answered with option replies. Without it
   * (plain newstyle, as old clients speak) the only option is NBD_OPT_EXPORT_NAME, and nothing can
   * be answered with an error: any other option ends the connection, as qemu-nbd and nbdkit do.
   */
  readonly fixedNewstyle: boolean;
  readonly noZeroes: boolean;
}

export type ClientFlagsVerdict =
  | ({ readonly ok: true } & ClientFlags)
  | { readonly ok: false; readonly reason: string };

/** Unknown bits oblige us to drop the connection (the spec says so); plain newstyle is served. */
export function decideClientFlags(flags: number): ClientFlagsVerdict {
  const known = CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES;
  if ((flags & ~known) !== 0) {
    return { ok: false, reason: `client sent unknown handshake flags 0x${flags.toString(16)}` };
  }
  return {
    ok: true,
    fixedNewstyle: (flags & CLIENT_FLAG.FIXED_NEWSTYLE) !== 0,
    noZeroes: (flags & CLIENT_FLAG.NO_ZEROES) !== 0,
  };
}

export interface OptionHeader {
  readonly magicOk: boolean;
  readonly option: number;
  readonly lengthBytes: number;
}

export function decodeOptionHeader(source: Buffer): OptionHeader {
  assert(source.length >= OPTION_HEADER_BYTES, 'option header needs 16 bytes');
  const magicOk =
    source.readUInt32BE(0) === MAGIC.IHAVEOPT[0] && source.readUInt32BE(4) === MAGIC.IHAVEOPT[1];
  return { magicOk, option: source.readUInt32BE(8), lengthBytes: source.readUInt32BE(12) };
}

/** One option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, replyType: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const out = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + dataBytes);
  out.writeUInt32BE(MAGIC.OPTION_REPLY[0], 0);
  out.writeUInt32BE(MAGIC.OPTION_REPLY[1], 4);
  out.writeUInt32BE(option >>> 0, 8);
  out.writeUInt32BE(replyType >>> 0, 12);
  out.writeUInt32BE(dataBytes, 16);
  if (data !== undefined) data.copy(out, OPTION_REPLY_HEADER_BYTES);
  return out;
}

export function encodeOptionError(
  option: number, errorType: OptionErrorType, message: string,
): Buffer {
  return encodeOptionReply(option, errorType, encodeMessage(message));
}

/** NBD_REP_SERVER payload: u32 name length, name. */
export function encodeServerReplyData(name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  return out;
}

/** NBD_REP_META_CONTEXT payload: u32 context id, name. */
export function encodeMetaContextData(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length);
  out.writeUInt32BE(contextId >>> 0, 0);
  nameBytes.copy(out, 4);
  return out;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const out = Buffer.allocUnsafe(12);
  out.writeUInt16BE(INFO.EXPORT, 0);
  writeU64(out, sizeBytes, 2);
  out.writeUInt16BE(transmissionFlags, 10);
  return out;
}

/** NBD_INFO_NAME and NBD_INFO_DESCRIPTION share the layout: u16 type, string. */
export function encodeInfoString(
  infoType: typeof INFO.NAME | typeof INFO.DESCRIPTION, text: string,
): Buffer {
  const textBytes = encodeMessage(text);
  const out = Buffer.allocUnsafe(2 + textBytes.length);
  out.writeUInt16BE(infoType, 0);
  textBytes.copy(out, 2);
  return out;
}

export function encodeInfoBlockSize(
  minBytes: number, preferredBytes: number, maxBytes: number,
): Buffer {
  const out = Buffer.allocUnsafe(14);
  out.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  out.writeUInt32BE(minBytes, 2);
  out.writeUInt32BE(preferredBytes, 6);
  out.writeUInt32BE(maxBytes, 10);
  return out;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(
  sizeBytes: number, transmissionFlags: number, noZeroes: boolean,
): Buffer {
  const out = Buffer.alloc(EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : EXPORT_NAME_ZEROES_BYTES));
  writeU64(out, sizeBytes, 0);
  out.writeUInt16BE(transmissionFlags, 8);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Transmission phase.

/** The fields of a request header. */
export interface RequestHeader {
  readonly magic: number;
  readonly flags: number;
  readonly command: number;
  readonly cookieHigh: number;
  readonly cookieLow: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** A request: its header and, for WRITE, the payload that follows the header on the wire. */
export interface NbdRequest extends RequestHeader {
  payload: Buffer | null;
}

/** Decodes a header into a request whose payload the reader attaches once it has arrived. */
export function decodeRequestHeader(source: Buffer, sourceOffset = 0): NbdRequest {
  assert(source.length - sourceOffset >= REQUEST_HEADER_BYTES, 'request header needs 28 bytes');
  return {
    magic: source.readUInt32BE(sourceOffset),
    flags: source.readUInt16BE(sourceOffset + 4),
    command: source.readUInt16BE(sourceOffset + 6),
    cookieHigh: source.readUInt32BE(sourceOffset + 8),
    cookieLow: source.readUInt32BE(sourceOffset + 12),
    offsetBytes: readU64(source, sourceOffset + 16),
    lengthBytes: source.readUInt32BE(sourceOffset + 24),
    payload: null,
  };
}

export function encodeSimpleReply(
  target: Buffer, targetOffset: number, errno: number, cookieHigh: number, cookieLow: number,
): void {
  target.writeUInt32BE(MAGIC.SIMPLE_REPLY, targetOffset);
  target.writeUInt32BE(errno, targetOffset + 4);
  target.writeUInt32BE(cookieHigh, targetOffset + 8);
  target.writeUInt32BE(cookieLow, targetOffset + 12);
}

export interface StructuredHeaderFields {
  readonly flags: number;
  readonly type: number;
  readonly cookieHigh: number;
  readonly cookieLow: number;
  readonly lengthBytes: number;
}

export function encodeStructuredHeader(
  target: Buffer,
  targetOffset: number,
  fields: StructuredHeaderFields,
): void {
  assert(fields.lengthBytes <= U32_MAX, 'structured chunk payload fits u32');
  target.writeUInt32BE(MAGIC.STRUCTURED_REPLY, targetOffset);
  target.writeUInt16BE(fields.flags, targetOffset + 4);
  target.writeUInt16BE(fields.type, targetOffset + 6);
  target.writeUInt32BE(fields.cookieHigh, targetOffset + 8);
  target.writeUInt32BE(fields.cookieLow, targetOffset + 12);
  target.writeUInt32BE(fields.lengthBytes, targetOffset + 16);
}

/** Head of a final OFFSET_DATA chunk: header and the offset; the data follows on the wire. */
export function encodeOffsetDataHead(
  target: Buffer, targetOffset: number, cookieHigh: number, cookieLow: number,
  offsetBytes: number, dataBytes: number,
): void {
  encodeStructuredHeader(target, targetOffset, {
    flags: REPLY_FLAG.DONE, type: REPLY_TYPE.OFFSET_DATA, cookieHigh, cookieLow,
    lengthBytes: 8 + dataBytes,
  });
  writeU64(target, offsetBytes, targetOffset + STRUCTURED_HEADER_BYTES);
}

/** A final NBD_REPLY_TYPE_ERROR chunk carrying an errno and a message for a human. */
export function encodeErrorChunk(
  cookieHigh: number, cookieLow: number, errno: number, message: string,
): Buffer {
  assert(errno !== 0, 'an error chunk carries a nonzero errno');
  const text = encodeMessage(message);
  const out = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + 6 + text.length);
  encodeStructuredHeader(out, 0, {
    flags: REPLY_FLAG.DONE, type: REPLY_TYPE.ERROR, cookieHigh, cookieLow,
    lengthBytes: 6 + text.length,
  });
  out.writeUInt32BE(errno, STRUCTURED_HEADER_BYTES);
  out.writeUInt16BE(text.length, STRUCTURED_HEADER_BYTES + 4);
  text.copy(out, STRUCTURED_HEADER_BYTES + 6);
  return out;
}

export interface StatusDescriptor {
  readonly lengthBytes: number;
  readonly status: number;
}

/** A final NBD_REPLY_TYPE_BLOCK_STATUS chunk for one context. */
export function encodeBlockStatusChunk(
  cookieHigh: number,
  cookieLow: number,
  contextId: number,
  descriptors: readonly StatusDescriptor[],
): Buffer {
  assert(descriptors.length > 0, 'block status carries at least one descriptor');
  const payloadBytes = 4 + 8 * descriptors.length;
  const out = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + payloadBytes);
  encodeStructuredHeader(out, 0, {
    flags: REPLY_FLAG.DONE, type: REPLY_TYPE.BLOCK_STATUS, cookieHigh, cookieLow,
    lengthBytes: payloadBytes,
  });
  out.writeUInt32BE(contextId, STRUCTURED_HEADER_BYTES);
  let at = STRUCTURED_HEADER_BYTES + 4;
  for (const descriptor of descriptors) {
    assert(descriptor.lengthBytes > 0 && descriptor.lengthBytes <= U32_MAX, 'descriptor length');
    out.writeUInt32BE(descriptor.lengthBytes, at);
    out.writeUInt32BE(descriptor.status, at + 4);
    at += 8;
  }
  return out;
}
