// Every hard limit shared by more than one part of the system, with the reason for its value. The
// assertions at the bottom check the relationships between them when the module loads, so that a
// change that breaks one stops at start-up rather than in production.

import { assert } from './util/assert.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Checksum and allocation granularity of chunk replicas; also the NBD preferred block size. */
export const BLOCK_BYTES = 4 * KiB;

/** Chunk size of a new volume unless the admin says otherwise: few enough map entries per TiB. */
export const CHUNK_BYTES_DEFAULT = 64 * MiB;
export const CHUNK_BYTES_MIN = 1 * MiB;
export const CHUNK_BYTES_MAX = 1 * GiB;

/** Largest volume: 1 PiB keeps every byte offset a safe integer with room to spare. */
export const VOLUME_BYTES_MAX = 1024 * 1024 * GiB;

/** Volume names travel in NBD export names, URLs and file names: keep them plain. */
export const VOLUME_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
export const VOLUME_NAME_REGEX = new RegExp(VOLUME_NAME_PATTERN);

export const REPLICAS_MAX = 7;

/** Largest single request a client (NBD) may make; the NBD server advertises it as max block size. */
export const IO_BYTES_MAX = 32 * MiB;

/** Largest payload in one chunk-server frame; client requests are split to fit. */
export const CS_PAYLOAD_BYTES_MAX = 4 * MiB;
/** Largest message header in one frame; headers are small msgpack maps. */
export const FRAME_HEADER_BYTES_MAX = 8 * KiB;
/** Frame prefix: u32 body length + u16 header length. */
export const FRAME_PREFIX_BYTES = 6;
export const FRAME_BODY_BYTES_MAX = FRAME_HEADER_BYTES_MAX + CS_PAYLOAD_BYTES_MAX;

/** Requests one client connection may have outstanding at a chunk server before reading pauses. */
export const CS_CONNECTION_INFLIGHT_MAX = 256;

/** Extents in one block-status reply from a chunk server: one per block at worst. */
export const CS_EXTENTS_MAX = CS_PAYLOAD_BYTES_MAX / BLOCK_BYTES;

/** Highest per-volume IOPS limit or burst an admin may set: far above any one volume's reach. */
export const QOS_IOPS_MAX = 100_000_000;
/** Highest per-volume bandwidth limit (bytes per second) or burst (bytes): 1 TiB. */
export const QOS_BANDWIDTH_BYTES_MAX = 1024 * GiB;

/** Volumes in one NBD server's I/O report: as many as its per-volume statistics keep (nbd/volume_stats.ts). */
export const IO_REPORT_VOLUMES_MAX = 2_048;

/** REST request bodies are small JSON documents. */
export const API_BODY_BYTES_MAX = 64 * KiB;

assert(CHUNK_BYTES_MIN % BLOCK_BYTES === 0, 'chunks hold whole blocks');
assert(CS_PAYLOAD_BYTES_MAX % BLOCK_BYTES === 0, 'frame payloads hold whole blocks');
assert(CS_PAYLOAD_BYTES_MAX <= CHUNK_BYTES_MIN * 4, 'a piece never needs more than a few chunks');
assert(IO_BYTES_MAX >= CS_PAYLOAD_BYTES_MAX, 'a client request may span several frames');
assert(Number.isSafeInteger(VOLUME_BYTES_MAX + CHUNK_BYTES_MAX), 'offsets stay safe integers');

export function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && Number.isInteger(Math.log2(value));
}
