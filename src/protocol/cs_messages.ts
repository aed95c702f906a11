// Messages of the chunk-server protocol: one type and one parser per message, used by both ends
// (client and chunk server, chunk server and its peers, MDS and chunk server).
//
// A connection opens with HELLO from the server (a nonce) and AUTH from the caller (an HMAC over
// it, see auth.ts); then the caller sends requests, each with an `id` unique among its outstanding
// requests, and the server answers each with one REPLY carrying the same id, in any order.
// Headers are msgpack maps; block data travels as the frame payload.

import { StorageError, isErrorCode, type ErrorCode } from '../errors.ts';
import { BLOCK_BYTES, CHUNK_BYTES_MAX, CS_EXTENTS_MAX, CS_PAYLOAD_BYTES_MAX, REPLICAS_MAX, VOLUME_BYTES_MAX, VOLUME_NAME_REGEX } from '../limits.ts';
import { Packr } from 'msgpackr';
import { isUint } from '../util/assert.ts';
import { CAPABILITY_BYTES, CHUNK_TICKET_BYTES } from './capability.ts';
import type { RawFrame } from './frame.ts';

// 2: chunk records carry the MDS generation and their volume (CREATE_CHUNK, SET_VERSION,
// LIST_CHUNKS entries of 32 bytes); LIST_VOLUMES.
// 3: each role authenticates with its own credential (AUTH carries a MAC, an MDS signature and
// term, or nothing for clients); GRANT presents a capability; REVOKE; writes carry a chunk ticket.
// 4: READ, WRITE, ZERO and plain replies travel with fixed binary headers (data_headers.ts).
export const CS_PROTOCOL_VERSION = 4;

export const CS_OP = {
  HELLO: 1,
  AUTH: 2,
  REPLY: 3,
  CREATE_CHUNK: 10,
  DELETE_CHUNK: 11,
  CHUNK_INFO: 12,
  SET_VERSION: 13,
  FENCE: 14,
  LIST_CHUNKS: 15,
  COPY_RANGE: 16,
  TRACK_CHANGES: 17,
  WRITE: 20,
  READ: 21,
  ZERO: 22,
  BLOCK_STATUS: 23,
  FLUSH: 24,
  REPLICA_WRITE: 25,
  REPLICA_ZERO: 26,
  REPAIR: 27,
  BLOCK_SUMS: 28,
  LIST_VOLUMES: 29,
  GRANT: 30,
  REVOKE: 31,
} as const;
export type CsOp = (typeof CS_OP)[keyof typeof CS_OP];

export const PEER_ROLES = ['client', 'peer', 'mds'] as const;
export type PeerRole = (typeof PEER_ROLES)[number];

/** Where a primary forwards a write: the other replicas of the chunk. */
export interface ReplicaAddress {
  readonly csId: number;
  readonly host: string;
  readonly port: number;
}

export interface HelloMessage {
  readonly op: typeof CS_OP.HELLO;
  readonly protocolVersion: number;
  readonly nonce: Buffer;
}

/**
 * The caller's first message. A peer (chunk server) proves the cluster key with `mac`; the MDS
 * signs with its private key (`proof`, 64 bytes) under its `term`; a client proves nothing here and
 * presents capabilities afterwards (GRANT).
 */
export type AuthRequest =
  | { readonly op: typeof CS_OP.AUTH; readonly id: number; readonly role: 'peer'; readonly nonce: Buffer; readonly mac: Buffer }
  | { readonly op: typeof CS_OP.AUTH; readonly id: number; readonly role: 'mds'; readonly nonce: Buffer; readonly term: number; readonly proof: Buffer }
  | { readonly op: typeof CS_OP.AUTH; readonly id: number; readonly role: 'client'; readonly nonce: Buffer };

/**
 * What a chunk server keeps of the volume a replica belongs to, so the chunk map can be rebuilt
 * from the chunk servers alone the day the MDS's database is lost.
 */
export interface VolumeDescription {
  readonly name: string;
  readonly sizeBytes: number;
  readonly replicasNormal: number;
  readonly replicasMin: number;
}

export interface CreateChunkRequest {
  readonly op: typeof CS_OP.CREATE_CHUNK;
  readonly id: number;
  readonly chunkId: number;
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly sizeBytes: number;
  readonly version: number;
  /** The MDS generation this replica is created under (see src/mds/generations.ts). */
  readonly generation: number;
  readonly volume?: VolumeDescription;
}

export interface DeleteChunkRequest {
  readonly op: typeof CS_OP.DELETE_CHUNK;
  readonly id: number;
  readonly chunkId: number;
}

export interface ChunkInfoRequest {
  readonly op: typeof CS_OP.CHUNK_INFO;
  readonly id: number;
  readonly chunkId: number;
}

/**
 * WRITE and ZERO change data: they carry the writer's lease epoch, the forward list and, from a
 * client, the chunk's ticket (capability.ts) that vouches for the forward list.
 */
export interface MutationFields {
  readonly id: number;
  readonly chunkId: number;
  readonly version: number;
  readonly volumeId: number;
  readonly epoch: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly forward: readonly ReplicaAddress[];
  readonly ticket?: Buffer;
}

export interface WriteRequest extends MutationFields {
  readonly op: typeof CS_OP.WRITE;
}

/** Zeroes a range; whole blocks become holes again (TRIM and WRITE_ZEROES both use it). */
export interface ZeroRequest extends MutationFields {
  readonly op: typeof CS_OP.ZERO;
}

export interface ReadRequest {
  readonly op: typeof CS_OP.READ;
  readonly id: number;
  readonly chunkId: number;
  readonly version: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

export interface BlockStatusRequest {
  readonly op: typeof CS_OP.BLOCK_STATUS;
  readonly id: number;
  readonly chunkId: number;
  readonly version: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

export interface FlushRequest {
  readonly op: typeof CS_OP.FLUSH;
  readonly id: number;
}

/**
 * MDS: move a replica to `toVersion` once its in-flight changes are done. With `expectedVersion`
 * the replica must be at exactly that version (a member being sealed); without it, at any lower
 * version (a new or resynced replica joining the set). Versions only grow.
 */
export interface SetVersionRequest {
  readonly op: typeof CS_OP.SET_VERSION;
  readonly id: number;
  readonly chunkId: number;
  readonly toVersion: number;
  readonly expectedVersion?: number;
  /** The MDS generation of the change; the replica keeps the highest it was given. */
  readonly generation: number;
}

/** MDS: writers of the volume with a lease epoch below `epoch` are rejected from now on. */
export interface FenceRequest {
  readonly op: typeof CS_OP.FENCE;
  readonly id: number;
  readonly volumeId: number;
  readonly epoch: number;
}

/** MDS: replicas held, by ascending chunk id; the payload lists ChunkListEntry records (encodeChunkList). */
export interface ListChunksRequest {
  readonly op: typeof CS_OP.LIST_CHUNKS;
  readonly id: number;
  readonly fromChunkId: number;
  readonly limit: number;
}

/**
 * MDS: this server (a current replica at `version`) sends a range of the chunk to `target` with
 * REPLICA_WRITE / REPLICA_ZERO: holes as holes, data checked against its checksums. With
 * `changedOnly`, only blocks changed since TRACK_CHANGES (their marks are cleared as they go).
 */
export interface CopyRangeRequest {
  readonly op: typeof CS_OP.COPY_RANGE;
  readonly id: number;
  readonly chunkId: number;
  readonly version: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly changedOnly: boolean;
  readonly target: ReplicaAddress;
}

/** MDS: start (or restart) recording which blocks of the chunk change, for a copy's final pass. */
export interface TrackChangesRequest {
  readonly op: typeof CS_OP.TRACK_CHANGES;
  readonly id: number;
  readonly chunkId: number;
}

/** Peer or MDS: bytes for a replica being filled; no version or epoch check (it is not a member yet). */
export interface ReplicaWriteRequest {
  readonly op: typeof CS_OP.REPLICA_WRITE | typeof CS_OP.REPLICA_ZERO;
  readonly id: number;
  readonly chunkId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** MDS: whole blocks from a good replica; only blocks that fail their checksum here are replaced. */
export interface RepairRequest {
  readonly op: typeof CS_OP.REPAIR;
  readonly id: number;
  readonly chunkId: number;
  readonly version: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/**
 * MDS: the crc32c of each block the range touches (u32 LE each, a hole as a block of zeroes), to
 * find where members differ. The range covers at most BLOCK_SUMS_BYTES_MAX bytes.
 */
export interface BlockSumsRequest {
  readonly op: typeof CS_OP.BLOCK_SUMS;
  readonly id: number;
  readonly chunkId: number;
  readonly version: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/**
 * Client: presents a capability (capability.ts) on this connection, with proof that it holds the
 * capability's session key; requests for the capability's volume are then allowed in its mode. The
 * reply's `mac` is the server's proof back.
 */
export interface GrantRequest {
  readonly op: typeof CS_OP.GRANT;
  readonly id: number;
  readonly capability: Buffer;
  readonly proof: Buffer;
}

/** MDS: capabilities of this hypervisor issued before `issuedBeforeMs` are void from now on. */
export interface RevokeRequest {
  readonly op: typeof CS_OP.REVOKE;
  readonly id: number;
  readonly hypervisorId: number;
  readonly issuedBeforeMs: number;
}

/** MDS: the volumes this server holds replicas of, as they were described to it, with its fence epochs. */
export interface ListVolumesRequest {
  readonly op: typeof CS_OP.LIST_VOLUMES;
  readonly id: number;
}

/** Largest range one BLOCK_SUMS covers: its answer, 4 bytes a block, stays well inside a frame. */
export const BLOCK_SUMS_BYTES_MAX = (CS_PAYLOAD_BYTES_MAX / 4) * BLOCK_BYTES;

export type CsRequest =
  | BlockSumsRequest
  | CreateChunkRequest
  | DeleteChunkRequest
  | ChunkInfoRequest
  | SetVersionRequest
  | FenceRequest
  | ListChunksRequest
  | CopyRangeRequest
  | TrackChangesRequest
  | WriteRequest
  | ZeroRequest
  | ReadRequest
  | BlockStatusRequest
  | FlushRequest
  | ReplicaWriteRequest
  | RepairRequest
  | ListVolumesRequest
  | GrantRequest
  | RevokeRequest;

/** A replica that failed while the primary forwarded to it. */
export interface ReplicaFailure {
  readonly csId: number;
  readonly code: ErrorCode;
  readonly message: string;
}

/**
 * The answer to every request. `code` absent means success. `version` and `sizeBytes` describe the
 * replica (CHUNK_INFO). A READ answer's payload is the bytes; a BLOCK_STATUS answer's payload is
 * the extents (see encodeExtents), which cover a prefix of the asked range, at most
 * CS_EXTENTS_MAX of them.
 */
export interface CsReply {
  readonly op: typeof CS_OP.REPLY;
  readonly id: number;
  readonly code?: ErrorCode;
  readonly message?: string;
  readonly version?: number;
  readonly sizeBytes?: number;
  readonly failedReplicas?: readonly ReplicaFailure[];
  /** COPY_RANGE: bytes sent to the target (data and zeroed ranges). REPAIR: blocks replaced. */
  readonly doneBytes?: number;
  /** LIST_CHUNKS: where the next page starts, absent on the last page. */
  readonly nextChunkId?: number;
  /** AUTH reply: the server's proof that it holds the cluster key too; GRANT reply: its session-key proof. */
  readonly mac?: Buffer;
}

// ---- parsing at the edge ------------------------------------------------------------------------

function protocolError(message: string): StorageError {
  return new StorageError('ERR_PROTOCOL', message);
}

function uintField(header: Record<string, unknown>, name: string, max = Number.MAX_SAFE_INTEGER): number {
  const value = header[name];
  if (!isUint(value)) throw protocolError(`field "${name}" must be a non-negative integer, got ${typeof value}`);
  if (value > max) throw protocolError(`field "${name}" is ${value}, above the limit ${max}`);
  return value;
}

function bytesField(header: Record<string, unknown>, name: string, length: number): Buffer {
  const value = header[name];
  if (!(value instanceof Uint8Array) || value.length !== length) {
    throw protocolError(`field "${name}" must be ${length} bytes`);
  }
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.length);
}

function forwardField(header: Record<string, unknown>): ReplicaAddress[] {
  const value = header['forward'];
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.length >= REPLICAS_MAX) {
    throw protocolError(`field "forward" must be a list of fewer than ${REPLICAS_MAX} replicas`);
  }
  return value.map((item: unknown) => {
    if (typeof item !== 'object' || item === null) throw protocolError('forward entry must be a map');
    const entry = item as Record<string, unknown>;
    const host = entry['host'];
    if (typeof host !== 'string' || host.length === 0 || host.length > 255) {
      throw protocolError('forward entry "host" must be a hostname');
    }
    return { csId: uintField(entry, 'csId', 0xffffffff), host, port: uintField(entry, 'port', 65535) };
  });
}

function volumeDescriptionField(value: unknown): VolumeDescription {
  if (typeof value !== 'object' || value === null) throw protocolError('field "volume" must be a map');
  const entry = value as Record<string, unknown>;
  const name = entry['name'];
  if (typeof name !== 'string' || !VOLUME_NAME_REGEX.test(name)) throw protocolError('field "volume.name" must be a volume name');
  const replicasNormal = uintField(entry, 'replicasNormal', REPLICAS_MAX);
  const replicasMin = uintField(entry, 'replicasMin', REPLICAS_MAX);
  if (replicasMin < 1 || replicasMin > replicasNormal) throw protocolError('field "volume.replicasMin" must be within 1..replicasNormal');
  return { name, sizeBytes: uintField(entry, 'sizeBytes', VOLUME_BYTES_MAX), replicasNormal, replicasMin };
}

function rangeFields(header: Record<string, unknown>): { offsetBytes: number; lengthBytes: number } {
  const offsetBytes = uintField(header, 'offsetBytes', CHUNK_BYTES_MAX);
  const lengthBytes = uintField(header, 'lengthBytes', CHUNK_BYTES_MAX);
  if (lengthBytes === 0) throw protocolError('field "lengthBytes" must be positive');
  return { offsetBytes, lengthBytes };
}

function mutationFields(header: Record<string, unknown>, id: number): MutationFields {
  return {
    id,
    chunkId: uintField(header, 'chunkId'),
    version: uintField(header, 'version'),
    volumeId: uintField(header, 'volumeId', 0xffffffff),
    epoch: uintField(header, 'epoch'),
    ...rangeFields(header),
    forward: forwardField(header),
    ...(header['ticket'] === undefined ? {} : { ticket: bytesField(header, 'ticket', CHUNK_TICKET_BYTES) }),
  };
}

/** Parses the first message a server sends. */
export function parseHello(frame: RawFrame): HelloMessage {
  const { header } = frame;
  if (header['op'] !== CS_OP.HELLO) throw protocolError(`expected HELLO, got op ${String(header['op'])}`);
  return { op: CS_OP.HELLO, protocolVersion: uintField(header, 'protocolVersion', 0xffff), nonce: bytesField(header, 'nonce', 32) };
}

/** Parses the first message a caller sends. */
export function parseAuth(frame: RawFrame): AuthRequest {
  const { header } = frame;
  if (header['op'] !== CS_OP.AUTH) throw protocolError(`expected AUTH, got op ${String(header['op'])}`);
  const role = header['role'];
  const id = uintField(header, 'id', 0xffffffff);
  const nonce = bytesField(header, 'nonce', 32);
  switch (role) {
    case 'peer':
      return { op: CS_OP.AUTH, id, role, nonce, mac: bytesField(header, 'mac', 32) };
    case 'mds':
      return { op: CS_OP.AUTH, id, role, nonce, term: uintField(header, 'term'), proof: bytesField(header, 'proof', 64) };
    case 'client':
      return { op: CS_OP.AUTH, id, role, nonce };
    default:
      throw protocolError(`unknown role ${String(role)}`);
  }
}

/** Parses a request after authentication; the payload length is checked against the header. */
export function parseRequest(frame: RawFrame): CsRequest {
  const { header, payload } = frame;
  const op = header['op'];
  const id = uintField(header, 'id', 0xffffffff);
  const expectNoPayload = (): void => {
    if (payload.length !== 0) throw protocolError(`op ${String(op)} carries no payload, got ${payload.length} bytes`);
  };
  switch (op) {
    case CS_OP.WRITE: {
      const fields = mutationFields(header, id);
      if (fields.lengthBytes > CS_PAYLOAD_BYTES_MAX) {
        throw new StorageError('ERR_TOO_LARGE', `write of ${fields.lengthBytes} bytes exceeds ${CS_PAYLOAD_BYTES_MAX}`);
      }
      if (payload.length !== fields.lengthBytes) {
        throw protocolError(`write announces ${fields.lengthBytes} bytes but carries ${payload.length}`);
      }
      return { op, ...fields };
    }
    case CS_OP.ZERO:
      expectNoPayload();
      return { op, ...mutationFields(header, id) };
    case CS_OP.READ:
    case CS_OP.BLOCK_STATUS: {
      expectNoPayload();
      const range = rangeFields(header);
      // A status answer is small whatever the range; a read answer carries the bytes.
      if (op === CS_OP.READ && range.lengthBytes > CS_PAYLOAD_BYTES_MAX) {
        throw new StorageError('ERR_TOO_LARGE', `read of ${range.lengthBytes} bytes exceeds ${CS_PAYLOAD_BYTES_MAX}`);
      }
      return { op, id, chunkId: uintField(header, 'chunkId'), version: uintField(header, 'version'), ...range };
    }
    case CS_OP.FLUSH:
    case CS_OP.LIST_VOLUMES:
      expectNoPayload();
      return { op, id };
    case CS_OP.GRANT:
      expectNoPayload();
      return { op, id, capability: bytesField(header, 'capability', CAPABILITY_BYTES), proof: bytesField(header, 'proof', 32) };
    case CS_OP.REVOKE:
      expectNoPayload();
      return { op, id, hypervisorId: uintField(header, 'hypervisorId', 0xffffffff), issuedBeforeMs: uintField(header, 'issuedBeforeMs') };
    case CS_OP.CREATE_CHUNK: {
      expectNoPayload();
      const sizeBytes = uintField(header, 'sizeBytes', CHUNK_BYTES_MAX);
      if (sizeBytes === 0 || sizeBytes % BLOCK_BYTES !== 0) {
        throw protocolError(`chunk size ${sizeBytes} must be a positive multiple of ${BLOCK_BYTES}`);
      }
      const volume = header['volume'] === undefined ? {} : { volume: volumeDescriptionField(header['volume']) };
      return {
        op,
        id,
        chunkId: uintField(header, 'chunkId'),
        volumeId: uintField(header, 'volumeId', 0xffffffff),
        chunkIndex: uintField(header, 'chunkIndex'),
        sizeBytes,
        version: uintField(header, 'version'),
        generation: uintField(header, 'generation'),
        ...volume,
      };
    }
    case CS_OP.DELETE_CHUNK:
    case CS_OP.CHUNK_INFO:
    case CS_OP.TRACK_CHANGES:
      expectNoPayload();
      return { op, id, chunkId: uintField(header, 'chunkId') };
    case CS_OP.SET_VERSION: {
      expectNoPayload();
      const expected = header['expectedVersion'] === undefined ? {} : { expectedVersion: uintField(header, 'expectedVersion') };
      return {
        op, id, chunkId: uintField(header, 'chunkId'), toVersion: uintField(header, 'toVersion'), generation: uintField(header, 'generation'),
        ...expected,
      };
    }
    case CS_OP.FENCE:
      expectNoPayload();
      return { op, id, volumeId: uintField(header, 'volumeId', 0xffffffff), epoch: uintField(header, 'epoch') };
    case CS_OP.LIST_CHUNKS:
      expectNoPayload();
      return { op, id, fromChunkId: uintField(header, 'fromChunkId'), limit: uintField(header, 'limit', LIST_CHUNKS_MAX) };
    case CS_OP.COPY_RANGE: {
      expectNoPayload();
      const [target] = forwardField({ forward: [header['target']] });
      if (target === undefined) throw protocolError('field "target" must be a replica address');
      return {
        op, id, chunkId: uintField(header, 'chunkId'), version: uintField(header, 'version'), ...rangeFields(header),
        changedOnly: header['changedOnly'] === true, target,
      };
    }
    case CS_OP.REPLICA_WRITE:
    case CS_OP.REPAIR: {
      const range = rangeFields(header);
      if (range.lengthBytes > CS_PAYLOAD_BYTES_MAX) {
        throw new StorageError('ERR_TOO_LARGE', `write of ${range.lengthBytes} bytes exceeds ${CS_PAYLOAD_BYTES_MAX}`);
      }
      if (payload.length !== range.lengthBytes) {
        throw protocolError(`request announces ${range.lengthBytes} bytes but carries ${payload.length}`);
      }
      if (op === CS_OP.REPLICA_WRITE) return { op, id, chunkId: uintField(header, 'chunkId'), ...range };
      if (range.offsetBytes % BLOCK_BYTES !== 0 || range.lengthBytes % BLOCK_BYTES !== 0) {
        throw protocolError('a repair carries whole blocks');
      }
      return { op, id, chunkId: uintField(header, 'chunkId'), version: uintField(header, 'version'), ...range };
    }
    case CS_OP.REPLICA_ZERO:
      expectNoPayload();
      return { op, id, chunkId: uintField(header, 'chunkId'), ...rangeFields(header) };
    case CS_OP.BLOCK_SUMS: {
      expectNoPayload();
      const range = rangeFields(header);
      if (range.lengthBytes > BLOCK_SUMS_BYTES_MAX) {
        throw new StorageError('ERR_TOO_LARGE', `block sums of ${range.lengthBytes} bytes exceed ${BLOCK_SUMS_BYTES_MAX}`);
      }
      return { op, id, chunkId: uintField(header, 'chunkId'), version: uintField(header, 'version'), ...range };
    }
    default:
      throw protocolError(`unknown op ${String(op)}`);
  }
}

export function parseReply(frame: RawFrame): CsReply {
  const { header } = frame;
  if (header['op'] !== CS_OP.REPLY) throw protocolError(`expected REPLY, got op ${String(header['op'])}`);
  const id = uintField(header, 'id', 0xffffffff);
  const code = header['code'];
  if (code !== undefined && !isErrorCode(code)) throw protocolError(`reply has unknown error code ${String(code)}`);
  const reply: {
    -readonly [K in keyof CsReply]: CsReply[K];
  } = { op: CS_OP.REPLY, id };
  if (code !== undefined) {
    reply.code = code;
    const message = header['message'];
    reply.message = typeof message === 'string' ? message : code;
  }
  if (header['version'] !== undefined) reply.version = uintField(header, 'version');
  if (header['sizeBytes'] !== undefined) reply.sizeBytes = uintField(header, 'sizeBytes');
  if (header['mac'] !== undefined) reply.mac = bytesField(header, 'mac', 32);
  if (header['doneBytes'] !== undefined) reply.doneBytes = uintField(header, 'doneBytes');
  if (header['nextChunkId'] !== undefined) reply.nextChunkId = uintField(header, 'nextChunkId');
  if (header['failedReplicas'] !== undefined) reply.failedReplicas = parseFailures(header['failedReplicas']);
  return reply;
}

/** One replica a chunk server holds, as LIST_CHUNKS reports it. */
export interface ChunkListEntry {
  readonly chunkId: number;
  readonly version: number;
  /** The highest MDS generation the replica was created or changed under. */
  readonly generation: number;
  readonly volumeId: number;
  readonly chunkIndex: number;
  readonly sizeBytes: number;
}

const CHUNK_LIST_ENTRY_BYTES = 32;

/** Largest LIST_CHUNKS page: 32 bytes an entry, 2 MiB a page, well inside one frame. */
export const LIST_CHUNKS_MAX = 65536;

/**
 * LIST_CHUNKS payload: 32-byte big-endian entries: chunkId u64 (as two u32), version u32,
 * generation u64 (two u32), volumeId u32, chunkIndex u32, sizeBytes u32.
 */
export function encodeChunkList(entries: readonly ChunkListEntry[]): Buffer {
  const bytes = Buffer.allocUnsafe(entries.length * CHUNK_LIST_ENTRY_BYTES);
  for (const [index, entry] of entries.entries()) {
    const at = index * CHUNK_LIST_ENTRY_BYTES;
    bytes.writeUInt32BE(Math.floor(entry.chunkId / 2 ** 32), at);
    bytes.writeUInt32BE(entry.chunkId >>> 0, at + 4);
    bytes.writeUInt32BE(entry.version, at + 8);
    bytes.writeUInt32BE(Math.floor(entry.generation / 2 ** 32), at + 12);
    bytes.writeUInt32BE(entry.generation >>> 0, at + 16);
    bytes.writeUInt32BE(entry.volumeId, at + 20);
    bytes.writeUInt32BE(entry.chunkIndex, at + 24);
    bytes.writeUInt32BE(entry.sizeBytes, at + 28);
  }
  return bytes;
}

export function decodeChunkList(payload: Buffer): ChunkListEntry[] {
  if (payload.length % CHUNK_LIST_ENTRY_BYTES !== 0 || payload.length / CHUNK_LIST_ENTRY_BYTES > LIST_CHUNKS_MAX) {
    throw protocolError('chunk list payload is malformed');
  }
  const entries: ChunkListEntry[] = [];
  for (let at = 0; at < payload.length; at += CHUNK_LIST_ENTRY_BYTES) {
    entries.push({
      chunkId: payload.readUInt32BE(at) * 2 ** 32 + payload.readUInt32BE(at + 4),
      version: payload.readUInt32BE(at + 8),
      generation: payload.readUInt32BE(at + 12) * 2 ** 32 + payload.readUInt32BE(at + 16),
      volumeId: payload.readUInt32BE(at + 20),
      chunkIndex: payload.readUInt32BE(at + 24),
      sizeBytes: payload.readUInt32BE(at + 28),
    });
  }
  return entries;
}

/** A volume a chunk server holds replicas of: its description (if it was given one) and fence epoch. */
export interface VolumeListEntry {
  readonly volumeId: number;
  readonly description: VolumeDescription | null;
  readonly fenceEpoch: number;
}

/** Most volumes one LIST_VOLUMES answer carries. */
export const LIST_VOLUMES_MAX = 65536;

const volumeListCodec = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });

/** LIST_VOLUMES payload: a msgpack list of entries (control plane, small). */
export function encodeVolumeList(entries: readonly VolumeListEntry[]): Buffer {
  return volumeListCodec.pack(entries.map((entry) => ({ ...entry })));
}

export function decodeVolumeList(payload: Buffer): VolumeListEntry[] {
  let value: unknown;
  try {
    value = volumeListCodec.unpack(payload);
  } catch {
    throw protocolError('volume list payload is not msgpack');
  }
  if (!Array.isArray(value) || value.length > LIST_VOLUMES_MAX) throw protocolError('volume list payload must be a bounded list');
  return value.map((item: unknown) => {
    if (typeof item !== 'object' || item === null) throw protocolError('volume list entry must be a map');
    const entry = item as Record<string, unknown>;
    return {
      volumeId: uintField(entry, 'volumeId', 0xffffffff),
      description: entry['description'] === null || entry['description'] === undefined ? null : volumeDescriptionField(entry['description']),
      fenceEpoch: uintField(entry, 'fenceEpoch'),
    };
  });
}

/** Extents as u32 pairs (lengthBytes, flags); flags bit 0 = allocated. */
export function encodeExtents(extents: readonly number[]): Buffer {
  const bytes = Buffer.allocUnsafe(extents.length * 4);
  for (const [index, value] of extents.entries()) bytes.writeUInt32BE(value, index * 4);
  return bytes;
}

export function decodeExtents(payload: Buffer): Array<{ lengthBytes: number; allocated: boolean }> {
  if (payload.length % 8 !== 0 || payload.length / 8 > CS_EXTENTS_MAX) {
    throw protocolError(`block status payload of ${payload.length} bytes is not a list of at most ${CS_EXTENTS_MAX} extents`);
  }
  const extents: Array<{ lengthBytes: number; allocated: boolean }> = [];
  for (let offset = 0; offset < payload.length; offset += 8) {
    const lengthBytes = payload.readUInt32BE(offset);
    if (lengthBytes === 0) throw protocolError('block status extent of length 0');
    extents.push({ lengthBytes, allocated: (payload.readUInt32BE(offset + 4) & 1) === 1 });
  }
  return extents;
}

function parseFailures(value: unknown): ReplicaFailure[] {
  if (!Array.isArray(value) || value.length > REPLICAS_MAX) throw protocolError('reply "failedReplicas" is invalid');
  return value.map((item: unknown) => {
    if (typeof item !== 'object' || item === null) throw protocolError('failed replica must be a map');
    const entry = item as Record<string, unknown>;
    const code = entry['code'];
    return {
      csId: uintField(entry, 'csId', 0xffffffff),
      code: isErrorCode(code) ? code : 'ERR_INTERNAL',
      message: typeof entry['message'] === 'string' ? entry['message'] : 'no message',
    };
  });
}

/** Builds the error reply for a request; `error` keeps its code when it is an operating error. */
export function errorReply(id: number, error: StorageError, extra?: Partial<CsReply>): CsReply {
  return { op: CS_OP.REPLY, id, code: error.code, message: error.message, ...extra };
}
