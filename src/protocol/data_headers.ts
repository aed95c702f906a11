// Fixed binary headers for the chunk-server protocol's data path: READ, WRITE and ZERO requests
// and replies that carry nothing but their id (a successful WRITE or ZERO, and a READ's data).
// Every other message keeps its msgpack header. A binary header decodes to the same map a msgpack
// one would, so the parsers in cs_messages.ts check both alike; this file only moves the bytes.
//
// A frame's header is binary when its first byte is below 0x80: a msgpack map always starts at
// 0x80 or above (fixmap 0x80-0x8f, map16 0xde, map32 0xdf), so the two never overlap. The first
// byte is the op. Layouts (big-endian; u53 is a safe integer as u32 high then u32 low):
//
//   REPLY            u8 op=3 | u32 id                                                  (5 bytes)
//   READ             u8 op=21 | u32 id | u53 chunkId | u53 version | u32 offsetBytes |
//                    u32 lengthBytes                                                  (29 bytes)
//   WRITE / ZERO     u8 op | u32 id | u53 chunkId | u53 version | u53 volumeId | u53 epoch |
//                    u32 offsetBytes | u32 lengthBytes | u8 flags (bit 0: ticket follows) |
//                    [16 ticket] | u8 forwardCount | forwardCount x (u32 csId | u16 port |
//                    u8 hostBytes | host, ASCII)
//
// Encoding never guesses: a header with any field these layouts do not hold, or a value outside
// them, is left to msgpack (the encoder returns null).

import { StorageError } from '../errors.ts';
import { FRAME_PREFIX_BYTES } from '../limits.ts';
import { CHUNK_TICKET_BYTES } from './capability.ts';

/** Ops that may travel with a binary header (numbers as in CS_OP, which imports nothing from here). */
const OP_REPLY = 3;
const OP_WRITE = 20;
const OP_READ = 21;
const OP_ZERO = 22;

const TWO_32 = 2 ** 32;
const U53_HIGH_MAX = 0x1fffff;
const FLAG_TICKET = 1;
const HOST_BYTES_MAX = 255;
const FORWARD_MAX = 16;
/** Host names and addresses are printable ASCII; anything else goes by msgpack (UTF-8). */
const ASCII_HOST = /^[\x21-\x7e]+$/;

const REPLY_BYTES = 5;
const READ_BYTES = 29;
const MUTATION_FIXED_BYTES = 1 + 4 + 8 * 4 + 4 + 4 + 1 + 1;

/** The first byte of a binary header (and of no msgpack map). */
export function isBinaryHeader(firstByte: number): boolean {
  return firstByte < 0x80;
}

function isU32(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

function isU53(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function keyCount(header: object): number {
  let count = 0;
  for (const key in header) if ((header as Record<string, unknown>)[key] !== undefined) count += 1;
  return count;
}

function writeU53(target: Buffer, value: number, at: number): number {
  target.writeUInt32BE(Math.floor(value / TWO_32), at);
  target.writeUInt32BE(value % TWO_32, at + 4);
  return at + 8;
}

/**
 * The frame's prefix and binary header in one buffer, or null when this header is not one of the
 * binary layouts (the caller then encodes it with msgpack).
 */
export function encodeBinaryHead(header: Record<string, unknown>, payloadBytes: number): Buffer | null {
  switch (header['op']) {
    case OP_REPLY: {
      if (!isU32(header['id']) || keyCount(header) !== 2) return null;
      const head = prefixed(REPLY_BYTES, payloadBytes);
      head[FRAME_PREFIX_BYTES] = OP_REPLY;
      head.writeUInt32BE(header['id'], FRAME_PREFIX_BYTES + 1);
      return head;
    }
    case OP_READ: {
      const { id, chunkId, version, offsetBytes, lengthBytes } = header;
      if (!isU32(id) || !isU53(chunkId) || !isU53(version) || !isU32(offsetBytes) || !isU32(lengthBytes) || keyCount(header) !== 6) {
        return null;
      }
      const head = prefixed(READ_BYTES, payloadBytes);
      let at = FRAME_PREFIX_BYTES;
      head[at] = OP_READ;
      head.writeUInt32BE(id, at + 1);
      at = writeU53(head, chunkId, at + 5);
      at = writeU53(head, version, at);
      head.writeUInt32BE(offsetBytes, at);
      head.writeUInt32BE(lengthBytes, at + 4);
      return head;
    }
    case OP_WRITE:
    case OP_ZERO:
      return encodeMutation(header, payloadBytes);
    default:
      return null;
  }
}

function encodeMutation(header: Record<string, unknown>, payloadBytes: number): Buffer | null {
  const { op, id, chunkId, version, volumeId, epoch, offsetBytes, lengthBytes, forward, ticket } = header;
  if (!isU32(id) || !isU53(chunkId) || !isU53(version) || !isU53(volumeId) || !isU53(epoch) ||
    !isU32(offsetBytes) || !isU32(lengthBytes) || !Array.isArray(forward) || forward.length > FORWARD_MAX) return null;
  const hasTicket = ticket !== undefined;
  if (hasTicket && !(Buffer.isBuffer(ticket) && ticket.length === CHUNK_TICKET_BYTES)) return null;
  if (keyCount(header) !== (hasTicket ? 10 : 9)) return null;
  let headerBytes = MUTATION_FIXED_BYTES + (hasTicket ? CHUNK_TICKET_BYTES : 0);
  for (const target of forward as unknown[]) {
    if (typeof target !== 'object' || target === null) return null;
    const { csId, host, port } = target as Record<string, unknown>;
    if (!isU32(csId) || typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) return null;
    if (typeof host !== 'string' || host.length === 0 || host.length > HOST_BYTES_MAX || !ASCII_HOST.test(host)) return null;
    if (keyCount(target) !== 3) return null;
    headerBytes += 4 + 2 + 1 + host.length;
  }
  const head = prefixed(headerBytes, payloadBytes);
  let at = FRAME_PREFIX_BYTES;
  head[at] = op as number;
  head.writeUInt32BE(id, at + 1);
  at = writeU53(head, chunkId, at + 5);
  at = writeU53(head, version, at);
  at = writeU53(head, volumeId, at);
  at = writeU53(head, epoch, at);
  head.writeUInt32BE(offsetBytes, at);
  head.writeUInt32BE(lengthBytes, at + 4);
  at += 8;
  head[at] = hasTicket ? FLAG_TICKET : 0;
  at += 1;
  if (hasTicket) at += (ticket as Buffer).copy(head, at);
  head[at] = forward.length;
  at += 1;
  for (const target of forward as Array<{ csId: number; host: string; port: number }>) {
    head.writeUInt32BE(target.csId, at);
    head.writeUInt16BE(target.port, at + 4);
    head[at + 6] = target.host.length;
    at += 7;
    at += head.write(target.host, at, 'latin1');
  }
  return head;
}

function prefixed(headerBytes: number, payloadBytes: number): Buffer {
  const head = Buffer.allocUnsafe(FRAME_PREFIX_BYTES + headerBytes);
  head.writeUInt32BE(headerBytes + payloadBytes, 0);
  head.writeUInt16BE(headerBytes, 4);
  return head;
}

/** Reads a binary header into the map its msgpack form would decode to. */
export function decodeBinaryHeader(bytes: Buffer): Record<string, unknown> {
  const reader = new HeaderCursor(bytes);
  const op = reader.u8();
  const id = reader.u32();
  switch (op) {
    case OP_REPLY:
      reader.end();
      return { op, id };
    case OP_READ: {
      const decoded = { op, id, chunkId: reader.u53(), version: reader.u53(), offsetBytes: reader.u32(), lengthBytes: reader.u32() };
      reader.end();
      return decoded;
    }
    case OP_WRITE:
    case OP_ZERO: {
      const decoded: Record<string, unknown> = {
        op, id, chunkId: reader.u53(), version: reader.u53(), volumeId: reader.u53(), epoch: reader.u53(),
        offsetBytes: reader.u32(), lengthBytes: reader.u32(),
      };
      const flags = reader.u8();
      if ((flags & ~FLAG_TICKET) !== 0) throw binaryError(`unknown flags 0x${flags.toString(16)}`);
      if ((flags & FLAG_TICKET) !== 0) decoded['ticket'] = reader.take(CHUNK_TICKET_BYTES);
      const count = reader.u8();
      if (count > FORWARD_MAX) throw binaryError(`forward list of ${count} entries (at most ${FORWARD_MAX})`);
      const forward: Array<{ csId: number; port: number; host: string }> = [];
      for (let index = 0; index < count; index += 1) {
        const csId = reader.u32();
        const port = reader.u16();
        const host = reader.take(reader.u8()).toString('latin1');
        forward.push({ csId, host, port });
      }
      decoded['forward'] = forward;
      reader.end();
      return decoded;
    }
    default:
      throw binaryError(`op ${op} has no binary header`);
  }
}

function binaryError(message: string): StorageError {
  return new StorageError('ERR_PROTOCOL', `binary frame header: ${message}`);
}

/** Bounds-checked reads over one header: running past its end is a protocol error, never a throw of RangeError. */
class HeaderCursor {
  private at = 0;
  private readonly source: Buffer;

  constructor(source: Buffer) {
    this.source = source;
  }

  private need(count: number): number {
    const at = this.at;
    if (at + count > this.source.length) throw binaryError(`ends after ${this.source.length} bytes, inside a field`);
    this.at = at + count;
    return at;
  }

  u8(): number {
    return this.source[this.need(1)]!;
  }

  u16(): number {
    return this.source.readUInt16BE(this.need(2));
  }

  u32(): number {
    return this.source.readUInt32BE(this.need(4));
  }

  u53(): number {
    const at = this.need(8);
    const high = this.source.readUInt32BE(at);
    if (high > U53_HIGH_MAX) throw binaryError(`a 53-bit field at byte ${at} is larger than a safe integer`);
    return high * TWO_32 + this.source.readUInt32BE(at + 4);
  }

  take(count: number): Buffer {
    const at = this.need(count);
    return this.source.subarray(at, at + count);
  }

  end(): void {
    if (this.at !== this.source.length) throw binaryError(`${this.source.length - this.at} bytes left over after the last field`);
  }
}
