// Capabilities and chunk tickets: what lets a hypervisor's client use a chunk server, issued by the
// MDS and checked by the chunk servers without asking it.
//
// - A capability names one hypervisor, one volume, a mode (read or write), the lease epoch a write
//   must carry, and a wall-clock expiry. The MDS tags it with HMAC(capability key, body); chunk
//   servers hold the same key (it is derived from the cluster key, which hypervisors never see) and
//   check the tag. With it the MDS hands the client a session key, HMAC(capability key, tag), that
//   only the MDS and the chunk servers can compute: the client proves it holds it when it presents
//   the capability on a connection (GRANT), and the chunk server proves it back, so a capability seen
//   on the wire is useless without its session key, and a hypervisor knows it reached a real server.
// - A chunk ticket names one chunk at one version and its members, in the map's order (the first is
//   the primary). A client's write carries it: the primary checks that it is the first member and that
//   the forward list is exactly the other members, so a client can neither write around the primary
//   nor make a chunk server dial an address of its choosing.
//
// One definition of both encodings, used by the MDS (to issue) and the chunk servers (to check).

import { createHmac } from 'node:crypto';
import { StorageError } from '../errors.ts';
import { isUint } from '../util/assert.ts';

export const CAPABILITY_FORMAT = 1;
/** Body (40 bytes) then tag (32 bytes). */
export const CAPABILITY_BODY_BYTES = 40;
export const CAPABILITY_BYTES = CAPABILITY_BODY_BYTES + 32;
export const SESSION_KEY_BYTES = 32;
export const CHUNK_TICKET_BYTES = 16;

export type HypervisorId = number & { readonly __brand: 'HypervisorId' };
export type CapabilityMode = 'read' | 'write';

export interface Capability {
  readonly hypervisorId: HypervisorId;
  readonly volumeId: number;
  readonly mode: CapabilityMode;
  /** A write must carry exactly this lease epoch. 0 for read capabilities. */
  readonly epoch: number;
  readonly issuedAtMs: number;
  readonly expiresAtMs: number;
}

/** What the client holds: the encoded capability (body and tag) and its session key. */
export interface CapabilityGrant {
  readonly capability: Capability;
  readonly encoded: Buffer;
  readonly sessionKey: Buffer;
}

/** The key capabilities and tickets are tagged with: derived, so the cluster key itself never signs. */
export function capabilityKey(clusterKey: Buffer): Buffer {
  return createHmac('sha256', clusterKey).update('shoal-capability-key-v1').digest();
}

function writeU64(buffer: Buffer, value: number, at: number): void {
  buffer.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  buffer.writeUInt32BE(value >>> 0, at + 4);
}

function readU64(buffer: Buffer, at: number): number {
  return buffer.readUInt32BE(at) * 2 ** 32 + buffer.readUInt32BE(at + 4);
}

/** body: format u8, mode u8, 0 u16, hypervisorId u32, volumeId u32, 0 u32, epoch u64, issuedAt u64, expiresAt u64. */
function encodeBody(capability: Capability): Buffer {
  const body = Buffer.alloc(CAPABILITY_BODY_BYTES);
  body.writeUInt8(CAPABILITY_FORMAT, 0);
  body.writeUInt8(capability.mode === 'write' ? 2 : 1, 1);
  body.writeUInt32BE(capability.hypervisorId, 4);
  body.writeUInt32BE(capability.volumeId, 8);
  writeU64(body, capability.epoch, 16);
  writeU64(body, capability.issuedAtMs, 24);
  writeU64(body, capability.expiresAtMs, 32);
  return body;
}

export function sessionKeyFor(key: Buffer, tag: Buffer): Buffer {
  return createHmac('sha256', key).update('shoal-session-v1').update(tag).digest();
}

/** MDS: issues a capability; `key` is capabilityKey(clusterKey). */
export function issueCapability(key: Buffer, capability: Capability): CapabilityGrant {
  for (const name of ['hypervisorId', 'volumeId', 'epoch', 'issuedAtMs', 'expiresAtMs'] as const) {
    if (!isUint(capability[name])) throw new StorageError('ERR_INTERNAL', `capability ${name} must be a non-negative integer`);
  }
  const body = encodeBody(capability);
  const tag = createHmac('sha256', key).update(body).digest();
  return { capability, encoded: Buffer.concat([body, tag]), sessionKey: sessionKeyFor(key, tag) };
}

/** Parses an encoded capability without checking its tag (the client's view of what it was given). */
export function decodeCapability(encoded: Buffer): Capability {
  if (encoded.length !== CAPABILITY_BYTES) {
    throw new StorageError('ERR_PROTOCOL', `a capability is ${CAPABILITY_BYTES} bytes, got ${encoded.length}`);
  }
  const format = encoded.readUInt8(0);
  if (format !== CAPABILITY_FORMAT) throw new StorageError('ERR_PROTOCOL', `capability format ${format} is not ${CAPABILITY_FORMAT}`);
  const modeByte = encoded.readUInt8(1);
  if (modeByte !== 1 && modeByte !== 2) throw new StorageError('ERR_PROTOCOL', `capability mode ${modeByte} is unknown`);
  return {
    hypervisorId: encoded.readUInt32BE(4) as HypervisorId,
    volumeId: encoded.readUInt32BE(8),
    mode: modeByte === 2 ? 'write' : 'read',
    epoch: readU64(encoded, 16),
    issuedAtMs: readU64(encoded, 24),
    expiresAtMs: readU64(encoded, 32),
  };
}

/**
 * Chunk server: checks an encoded capability's tag and expiry; returns it with its session key.
 * Throws ERR_UNAUTHORIZED naming what is wrong.
 */
export function verifyCapability(key: Buffer, encoded: Buffer, nowMs: number): { capability: Capability; sessionKey: Buffer } {
  const capability = decodeCapability(encoded);
  const body = encoded.subarray(0, CAPABILITY_BODY_BYTES);
  const tag = encoded.subarray(CAPABILITY_BODY_BYTES);
  const expected = createHmac('sha256', key).update(body).digest();
  if (!expected.equals(tag)) {
    throw new StorageError('ERR_UNAUTHORIZED', 'the capability was not issued by this cluster\'s MDS (its tag does not match)');
  }
  if (capability.expiresAtMs <= nowMs) {
    throw new StorageError('ERR_UNAUTHORIZED',
      `the capability for volume ${capability.volumeId} expired ${nowMs - capability.expiresAtMs} ms ago: ask the MDS for a new one`);
  }
  return { capability, sessionKey: sessionKeyFor(key, tag) };
}

/** Proof, by either end, that it holds the session key of the capability presented on this connection. */
export function grantProof(sessionKey: Buffer, side: 'client' | 'server', serverNonce: Buffer, callerNonce: Buffer): Buffer {
  return createHmac('sha256', sessionKey).update(`shoal-grant-${side}-v1`).update(serverNonce).update(callerNonce).digest();
}

/** A member of a chunk as the ticket names it: the map's order, the primary first. */
export interface TicketMember {
  readonly csId: number;
  readonly host: string;
  readonly port: number;
}

const ticketHead = Buffer.alloc(20);

/**
 * The ticket of a chunk at a version with these members. Computed per write on the primary, so
 * it reuses one head buffer (the event loop is single-threaded and the call is synchronous).
 */
export function chunkTicket(key: Buffer, chunkId: number, version: number, volumeId: number, members: readonly TicketMember[]): Buffer {
  writeU64(ticketHead, chunkId, 0);
  writeU64(ticketHead, version, 8);
  ticketHead.writeUInt32BE(volumeId, 16);
  const hmac = createHmac('sha256', key).update('shoal-ticket-v1').update(ticketHead);
  for (const member of members) hmac.update(`${member.csId}@${member.host}:${member.port};`);
  return hmac.digest().subarray(0, CHUNK_TICKET_BYTES);
}
