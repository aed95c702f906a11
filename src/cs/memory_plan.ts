// What a chunk server's memory budget (--memory-budget) goes to, from its flags: the runtime, the
// payloads of requests in flight (the gate that pauses reading, --inflight-bytes-max; by default
// what the budget leaves, up to INFLIGHT_BYTES_DEFAULT_MAX), the checksums of open chunks, the
// journal's buffers, the connections' partly received frames and the read cache's index. Pure: main.ts applies it.

import { readCacheIndexBytes } from '../cache/read_cache.ts';
import { CHUNK_BYTES_DEFAULT, FRAME_BODY_BYTES_MAX } from '../limits.ts';
import { planWithRequests, plannedBytes, runtimeShare, type MemoryPlan, type MemoryShare } from '../util/memory_budget.ts';
import { sumsBytes } from './store/block_sums.ts';

const MiB = 1024 * 1024;

/** The in-flight gate's limit when the budget leaves room: past it more buys no speed. */
export const INFLIGHT_BYTES_DEFAULT_MAX = 256 * MiB;
/** The smallest in-flight limit worth running with: a few full frames. */
export const INFLIGHT_BYTES_MIN = 4 * FRAME_BODY_BYTES_MAX;
/** The group commit's batch buffers, the journal's zero-fill buffer and its replay reads. */
const JOURNAL_BUFFERS_BYTES = 16 * MiB;
/**
 * Partly received frames (up to a frame's payload each) of the connections reading at once: a chunk
 * server's peers are the NBD servers and chunk servers of the cluster, each with a connection or two.
 */
const CONNECTION_BUFFERS_BYTES = 32 * MiB;

export interface CsMemoryFlags {
  readonly budgetBytes: number;
  /** --inflight-bytes-max, or null for what the budget leaves. */
  readonly inflightBytesMax: number | null;
  readonly openChunksMax: number;
  /** --cache-size, or null without a read cache. */
  readonly cacheSizeBytes: number | null;
}

export interface CsMemoryLimits {
  readonly plan: MemoryPlan;
  readonly inflightBytesMax: number;
  /** The open chunks' checksums in memory at most (the handle cache closes idle ones past it). */
  readonly openSumsBytesMax: number;
}

/** The plan for these flags; throws ERR_CONFIG when it does not fit the budget. */
export function csMemoryPlan(flags: CsMemoryFlags): CsMemoryLimits {
  const openSumsBytesMax = flags.openChunksMax * sumsBytes(CHUNK_BYTES_DEFAULT);
  const fixed: MemoryShare[] = [
    runtimeShare(),
    { name: 'chunk_checksums', bytes: openSumsBytesMax, setBy: '--open-chunks-max' },
    { name: 'journal_buffers', bytes: JOURNAL_BUFFERS_BYTES, setBy: 'the journal' },
    { name: 'connection_buffers', bytes: CONNECTION_BUFFERS_BYTES, setBy: 'partly received frames' },
  ];
  if (flags.cacheSizeBytes !== null) {
    fixed.push({ name: 'read_cache_index', bytes: readCacheIndexBytes(flags.cacheSizeBytes), setBy: '--cache-size' });
  }
  const { plan, requestsBytes: inflightBytesMax } = planWithRequests('cs', flags.budgetBytes, fixed, {
    givenBytes: flags.inflightBytesMax, minBytes: INFLIGHT_BYTES_MIN, defaultMaxBytes: INFLIGHT_BYTES_DEFAULT_MAX, setBy: '--inflight-bytes-max',
  });
  return { plan, inflightBytesMax, openSumsBytesMax };
}

/** The smallest budget that fits the default flags. */
export const CS_MEMORY_BUDGET_MIN = plannedBytes(csMemoryPlan({ budgetBytes: Number.MAX_SAFE_INTEGER, inflightBytesMax: INFLIGHT_BYTES_MIN, openChunksMax: 256, cacheSizeBytes: null }).plan);
