// What each chunk-server request does, once parsed and authenticated: the semantics, separate
// from the connection handling in server.ts. Client data ops check the replica's version; writes
// check the writer's lease epoch and are forwarded to the chunk's other replicas by the primary;
// replication ops (SET_VERSION, COPY_RANGE, FENCE, ...) are the MDS's alone.
//
// Who may do what: the MDS anything but client writes; a peer (chunk server) forwarded writes,
// replica fills, reads and flushes; a client only what a capability it presented allows, for that
// capability's volume: reads with any, writes with a write capability whose epoch the write carries,
// sent to the chunk's primary with the forward list its ticket vouches for.

import { StorageError, fromSystemError } from '../errors.ts';
import type { Capability } from '../protocol/capability.ts';
import { BLOCK_BYTES, CS_PAYLOAD_BYTES_MAX } from '../limits.ts';
import {
  CS_OP,
  encodeChunkList,
  encodeExtents,
  encodeVolumeList,
  LIST_VOLUMES_MAX,
  errorReply,
  type CopyRangeRequest,
  type CsReply,
  type CsRequest,
  type MutationFields,
  type PeerRole,
  type ReplicaFailure,
  type WriteRequest,
  type ZeroRequest,
} from '../protocol/cs_messages.ts';
import type { ChunkMeta, ChunkStore } from './store/chunk_store.ts';
import type { ChunkServerOptions } from './server.ts';

export interface Reply {
  readonly reply: CsReply;
  readonly payload?: Buffer;
}

/** The connection a request came on: its role and, for a client, the capabilities it presented. */
export interface Caller {
  readonly role: PeerRole;
  /** The client's unexpired, unrevoked capability for the volume, or null. */
  capability(volumeId: number): Capability | null;
  /** Why the last capability presented for the volume was refused, if it was. */
  refusal(volumeId: number): StorageError | null;
}

export function asStorageError(error: unknown): StorageError {
  return fromSystemError(error, 'chunk server');
}

function ok(id: number, extra?: Partial<CsReply>): Reply {
  return { reply: { op: CS_OP.REPLY, id, ...extra } };
}

export async function handleRequest(deps: ChunkServerOptions, request: CsRequest, payload: Buffer, caller: Caller): Promise<Reply> {
  const { store } = deps;
  const { role } = caller;
  switch (request.op) {
    case CS_OP.WRITE:
    case CS_OP.ZERO:
      authorizeMutation(deps, request, caller);
      // A client's change comes to the chunk's primary; a peer's is a forwarded copy.
      return mutate(deps, request, payload, caller.role === 'client');
    case CS_OP.READ: {
      const meta = requireMeta(store, request.chunkId);
      authorizeRead(caller, meta);
      checkRange(meta, request.offsetBytes, request.lengthBytes);
      const bytes = await store.read(request.chunkId, request.version, request.offsetBytes, request.lengthBytes);
      return { reply: { op: CS_OP.REPLY, id: request.id }, payload: bytes };
    }
    case CS_OP.BLOCK_STATUS: {
      const meta = checkedMeta(store, request);
      authorizeRead(caller, meta);
      checkRange(meta, request.offsetBytes, request.lengthBytes);
      const extents = await store.blockStatus(request.chunkId, request.offsetBytes, request.lengthBytes);
      return { reply: { op: CS_OP.REPLY, id: request.id }, payload: encodeExtents(extents) };
    }
    case CS_OP.FLUSH:
      await store.journal.barrier();
      return ok(request.id);
    case CS_OP.CHUNK_INFO: {
      const meta = requireMeta(store, request.chunkId);
      authorizeRead(caller, meta);
      return ok(request.id, { version: meta.version, sizeBytes: meta.sizeBytes });
    }
    case CS_OP.REPLICA_WRITE:
    case CS_OP.REPLICA_ZERO:
      return fillReplica(deps, request, payload, role);
    default:
      return handleMdsRequest(deps, request, payload, role);
  }
}

/** Requests only the MDS may make: chunk lifecycle, versions, fences, copies, repairs. */
async function handleMdsRequest(deps: ChunkServerOptions, request: CsRequest, payload: Buffer, role: PeerRole): Promise<Reply> {
  const { store } = deps;
  requireRole(role, 'mds', `send op ${request.op}`);
  switch (request.op) {
    case CS_OP.CREATE_CHUNK: {
      const { chunkId, volumeId, chunkIndex, sizeBytes, version, generation } = request;
      const meta = await store.createChunk({ chunkId, volumeId, chunkIndex, sizeBytes, version, generation }, request.volume);
      return ok(request.id, { version: meta.version, sizeBytes: meta.sizeBytes });
    }
    case CS_OP.DELETE_CHUNK:
      await store.deleteChunk(request.chunkId);
      return ok(request.id);
    case CS_OP.SET_VERSION: {
      const meta = await store.setVersion(request.chunkId, request.toVersion, request.expectedVersion, request.generation);
      return ok(request.id, { version: meta.version, sizeBytes: meta.sizeBytes });
    }
    case CS_OP.FENCE:
      await store.raiseFence(request.volumeId, request.epoch);
      return ok(request.id);
    case CS_OP.LIST_CHUNKS: {
      const metas = store.listChunks(request.fromChunkId, request.limit + 1);
      const page = metas.slice(0, request.limit);
      const next = metas[request.limit];
      return { reply: { op: CS_OP.REPLY, id: request.id, ...(next === undefined ? {} : { nextChunkId: next.chunkId }) }, payload: encodeChunkList(page) };
    }
    case CS_OP.LIST_VOLUMES:
      return { reply: { op: CS_OP.REPLY, id: request.id }, payload: encodeVolumeList(store.listVolumes(LIST_VOLUMES_MAX)) };
    case CS_OP.TRACK_CHANGES:
      store.trackChanges(request.chunkId);
      return ok(request.id);
    case CS_OP.COPY_RANGE:
      return ok(request.id, { doneBytes: await copyRange(deps, request) });
    case CS_OP.REPAIR: {
      checkRange(requireMeta(store, request.chunkId), request.offsetBytes, request.lengthBytes);
      const repaired = await store.repair(request.chunkId, request.version, request.offsetBytes, payload);
      return ok(request.id, { doneBytes: repaired * BLOCK_BYTES });
    }
    case CS_OP.BLOCK_SUMS: {
      checkRange(requireMeta(store, request.chunkId), request.offsetBytes, request.lengthBytes);
      const sums = await store.blockSums(request.chunkId, request.version, request.offsetBytes, request.lengthBytes);
      return { reply: { op: CS_OP.REPLY, id: request.id }, payload: sums };
    }
    default:
      throw new StorageError('ERR_PROTOCOL', `op ${request.op} is not served here`);
  }
}

function requireRole(role: PeerRole, needed: PeerRole, what: string): void {
  if (role !== needed) throw new StorageError('ERR_UNAUTHORIZED', `only the ${needed} may ${what}; this connection is a ${role}`);
}

function authorizeRead(caller: Caller, meta: ChunkMeta): void {
  if (caller.role !== 'client' || caller.capability(meta.volumeId) !== null) return;
  throw caller.refusal(meta.volumeId) ?? new StorageError('ERR_UNAUTHORIZED',
    `no capability for volume ${meta.volumeId} on this connection (it expired, was revoked or was never presented)`);
}

/**
 * A peer forwards a write it took as primary (to nobody further); a client writes with a write
 * capability for the volume at exactly the epoch it carries, to the chunk's primary, forwarding to
 * the members its ticket names. The MDS never writes through here.
 */
function authorizeMutation(deps: ChunkServerOptions, request: WriteRequest | ZeroRequest, caller: Caller): void {
  if (caller.role === 'peer') {
    if (request.forward.length > 0) throw new StorageError('ERR_UNAUTHORIZED', 'a forwarded change is not forwarded again');
    return;
  }
  if (caller.role !== 'client') throw new StorageError('ERR_UNAUTHORIZED', `a ${caller.role} connection does not write data`);
  const capability = caller.capability(request.volumeId);
  if (capability === null) {
    const refusal = caller.refusal(request.volumeId);
    if (refusal !== null) throw refusal;
  }
  if (capability === null || capability.mode !== 'write') {
    throw new StorageError('ERR_UNAUTHORIZED',
      `no write capability for volume ${request.volumeId} on this connection (it expired, was revoked or was never presented)`);
  }
  if (capability.epoch !== request.epoch) {
    throw new StorageError('ERR_UNAUTHORIZED',
      `the write carries epoch ${request.epoch}, but its capability is for epoch ${capability.epoch}`);
  }
  const self = deps.self();
  if (self === null) throw new StorageError('ERR_UNAVAILABLE', 'chunk server has not registered with the MDS yet: it takes no writes');
  if (!deps.tickets.check(request, self)) {
    throw new StorageError('ERR_UNAUTHORIZED',
      `chunk ${request.chunkId} at version ${request.version}: this server is not its primary with these members ` +
      '(the chunk ticket does not match the forward list): refresh the chunk map');
  }
}

function requireMeta(store: ChunkStore, chunkId: number): ChunkMeta {
  const meta = store.getMeta(chunkId);
  if (meta === undefined) throw new StorageError('ERR_CHUNK_NOT_FOUND', `chunk ${chunkId} is not on this server`);
  return meta;
}

/** A fast first check; the authoritative one happens under the block lock in the store. */
function checkedMeta(store: ChunkStore, request: { chunkId: number; version: number }): ChunkMeta {
  const meta = requireMeta(store, request.chunkId);
  if (meta.version !== request.version) {
    throw new StorageError(
      'ERR_CHUNK_VERSION',
      `chunk ${request.chunkId} is at version ${meta.version} here, the request carries version ${request.version}`,
    );
  }
  return meta;
}

function checkRange(meta: ChunkMeta, offsetBytes: number, lengthBytes: number): void {
  if (offsetBytes + lengthBytes > meta.sizeBytes) {
    throw new StorageError(
      'ERR_OUT_OF_RANGE',
      `range ${offsetBytes}+${lengthBytes} is outside chunk ${meta.chunkId} of ${meta.sizeBytes} bytes`,
    );
  }
}

/**
 * WRITE and ZERO: check, apply locally and on the forwarded replicas in parallel, report both.
 * The lease check and the registration of the change in flight are one synchronous step
 * (ChunkStore.admitChange): a FENCE for this volume then waits until the change has finished,
 * forwards included.
 */
async function mutate(deps: ChunkServerOptions, request: WriteRequest | ZeroRequest, payload: Buffer, isPrimary: boolean): Promise<Reply> {
  const { store } = deps;
  const blocked = deps.writeBlocker();
  if (blocked !== null) throw blocked;
  const meta = checkedMeta(store, request);
  if (meta.volumeId !== request.volumeId) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `chunk ${meta.chunkId} belongs to volume ${meta.volumeId}, not ${request.volumeId}`);
  }
  checkRange(meta, request.offsetBytes, request.lengthBytes);
  return store.admitChange(meta.volumeId, request.epoch, () => applyAndForward(deps, request, payload, meta, isPrimary));
}

/** The body of mutate, once admitted: the local change and the forwards, and their outcome. */
async function applyAndForward(
  deps: ChunkServerOptions, request: WriteRequest | ZeroRequest, payload: Buffer, meta: ChunkMeta, isPrimary: boolean,
): Promise<Reply> {
  const { store } = deps;
  // A newer epoch fences every older writer from now on (still in the tick of the admission).
  const fenced = request.epoch > store.fenceEpoch(meta.volumeId) ? store.raiseFence(meta.volumeId, request.epoch) : Promise.resolve();
  const startedAtMs = performance.now();
  const local =
    request.op === CS_OP.WRITE
      ? store.write(meta.chunkId, request.version, request.offsetBytes, payload)
      : store.zero(meta.chunkId, request.version, request.offsetBytes, request.lengthBytes);
  const forwarded = request.forward.map((target) => forward(deps, request, target, payload));
  if (isPrimary) {
    const observeStage = (stage: 'primary_local' | 'primary_forward') => (): void =>
      deps.metrics.observeWriteStage(stage, (performance.now() - startedAtMs) / 1000);
    local.then(observeStage('primary_local'), () => undefined);
    void Promise.all(forwarded).then(observeStage('primary_forward'));
  }
  const [localResult, ...peerResults] = await Promise.allSettled([Promise.all([local, fenced]), ...forwarded]);
  deps.metrics.observeWriteStage(isPrimary ? 'primary_total' : 'replica_total', (performance.now() - startedAtMs) / 1000);
  const peerFailures = peerResults.flatMap((result) => (result.status === 'fulfilled' && result.value !== null ? [result.value] : []));
  const localError = localResult?.status === 'rejected' ? asStorageError(localResult.reason) : null;
  // A member that refuses the change as fenced knows a newer writer than this server did: the
  // change is the fenced writer's, not a failure of that member. Nobody leaves the set over it.
  const refusedAsFenced = peerFailures.filter((failure) => failure.code === 'ERR_LEASE_FENCED');
  if (localError !== null || peerFailures.length > 0) {
    const reported = deps.partialWrites.consider({
      volumeId: meta.volumeId, chunkIndex: meta.chunkIndex, chunkId: meta.chunkId, version: request.version,
      offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes,
      localCode: localError?.code ?? null,
      peers: request.forward.map((target) => ({ csId: target.csId, code: peerFailures.find((f) => f.csId === target.csId)?.code ?? null })),
    });
    // This replica may hold the fenced writer's bytes. The MDS makes the members equal from one
    // that refused them before this change counts as finished, so the FENCE that waits for it
    // is acknowledged only once those bytes are gone (and the new writer never reads them).
    if (refusedAsFenced.length > 0) await reported;
  }
  if (refusedAsFenced.length > 0) {
    const refusers = refusedAsFenced.map((failure) => failure.csId).join(', ');
    const error = new StorageError(
      'ERR_LEASE_FENCED',
      `write to volume ${meta.volumeId} with lease epoch ${request.epoch} was refused by chunk servers ${refusers}: a newer writer has taken over`,
    );
    return { reply: errorReply(request.id, error) };
  }
  if (localError !== null) {
    return { reply: errorReply(request.id, localError, peerFailures.length > 0 ? { failedReplicas: peerFailures } : {}) };
  }
  const firstFailure = peerFailures[0];
  if (firstFailure !== undefined) {
    const message = `replica on chunk server ${firstFailure.csId} failed: ${firstFailure.message}`;
    return { reply: errorReply(request.id, new StorageError(firstFailure.code, message), { failedReplicas: peerFailures }) };
  }
  return ok(request.id);
}

/** Sends the change to one more replica; resolves with its failure, or null when it succeeded. */
async function forward(
  deps: ChunkServerOptions,
  request: MutationFields & { op: typeof CS_OP.WRITE | typeof CS_OP.ZERO },
  target: { csId: number; host: string; port: number },
  payload: Buffer,
): Promise<ReplicaFailure | null> {
  const body = {
    op: request.op,
    chunkId: request.chunkId,
    version: request.version,
    volumeId: request.volumeId,
    epoch: request.epoch,
    offsetBytes: request.offsetBytes,
    lengthBytes: request.lengthBytes,
    forward: [],
  };
  try {
    const { reply } = await deps.peers.request(target.host, target.port, body, request.op === CS_OP.WRITE ? payload : undefined);
    if (reply.code === undefined) return null;
    return { csId: target.csId, code: reply.code, message: reply.message ?? reply.code };
  } catch (error) {
    const failure = asStorageError(error);
    return { csId: target.csId, code: failure.code, message: failure.message };
  }
}

/** REPLICA_WRITE / REPLICA_ZERO: bytes for a replica being filled by COPY_RANGE from a member. */
async function fillReplica(
  deps: ChunkServerOptions,
  request: Extract<CsRequest, { op: typeof CS_OP.REPLICA_WRITE | typeof CS_OP.REPLICA_ZERO }>,
  payload: Buffer,
  role: PeerRole,
): Promise<Reply> {
  if (role === 'client') throw new StorageError('ERR_UNAUTHORIZED', 'clients may not fill replicas');
  checkRange(requireMeta(deps.store, request.chunkId), request.offsetBytes, request.lengthBytes);
  if (request.op === CS_OP.REPLICA_WRITE) await deps.store.write(request.chunkId, null, request.offsetBytes, payload);
  else await deps.store.zero(request.chunkId, null, request.offsetBytes, request.lengthBytes);
  return ok(request.id);
}

/**
 * COPY_RANGE: sends this replica's bytes for a range to the target, data as data (read through the
 * checksums, so a bad block stops the copy rather than spreading; not through the read cache,
 * whose hot set a copy would only disturb) and holes as holes.
 */
async function copyRange(deps: ChunkServerOptions, request: CopyRangeRequest): Promise<number> {
  const { store, bulkPeers: peers } = deps;
  checkRange(checkedMeta(store, request), request.offsetBytes, request.lengthBytes);
  const runs = await store.copyRuns(request.chunkId, request.offsetBytes, request.lengthBytes, request.changedOnly);
  const { host, port } = request.target;
  let doneBytes = 0;
  for (const [runOffset, runBytes, allocated] of runs) {
    for (let offset = runOffset; offset < runOffset + runBytes; offset += CS_PAYLOAD_BYTES_MAX) {
      const lengthBytes = Math.min(CS_PAYLOAD_BYTES_MAX, runOffset + runBytes - offset);
      const base = { chunkId: request.chunkId, offsetBytes: offset, lengthBytes };
      const response = allocated
        ? await peers.request(host, port, { op: CS_OP.REPLICA_WRITE, ...base },
            await store.read(request.chunkId, request.version, offset, lengthBytes, { uncached: true }))
        : await peers.request(host, port, { op: CS_OP.REPLICA_ZERO, ...base });
      if (response.reply.code !== undefined) {
        throw StorageError.fromWire(response.reply.code, `copy target ${host}:${port}: ${response.reply.message ?? ''}`);
      }
      doneBytes += lengthBytes;
    }
  }
  return doneBytes;
}
