// What an NBD server's memory budget (--memory-budget) goes to, from its flags: the runtime, the
// bytes of every connection's requests in flight (the server-wide gate, --inflight-bytes-total-max;
// by default what the budget leaves, up to INFLIGHT_BYTES_TOTAL_DEFAULT_MAX), the connections'
// buffers, the open volumes' state, and the read cache's index (its blocks are on disk). Pure:
// main.ts applies it.

import { IO_BYTES_MAX } from '../limits.ts';
import { readCacheIndexBytes } from '../cache/read_cache.ts';
import { planWithRequests, plannedBytes, runtimeShare, type MemoryPlan, type MemoryShare } from '../util/memory_budget.ts';

const MiB = 1024 * 1024;

/** The gate's limit when the budget leaves room: past it more buys no speed. */
export const INFLIGHT_BYTES_TOTAL_DEFAULT_MAX = 256 * MiB;
/** One connection's limit unless --inflight-bytes-max says otherwise (and never above the total). */
export const INFLIGHT_BYTES_PER_CONNECTION_DEFAULT = 128 * MiB;
/** The smallest gate worth running with: one request of the largest size. */
export const INFLIGHT_BYTES_TOTAL_MIN = IO_BYTES_MAX;
/**
 * Bytes received but not yet a request (a write's payload arrives before it is one), and replies
 * waiting in the sockets' write buffers (up to 1 MiB each before 'drain' is asked for), of the
 * connections busy at once: a hypervisor's QEMUs each hold a connection or two.
 */
const CONNECTION_BUFFERS_BYTES = 32 * MiB;
/** Open volumes' chunk maps, leases, QoS queues and statistics. */
const VOLUMES_BYTES = 16 * MiB;
/**
 * Buffers already given up but not yet collected: a write's payload and the socket's 64 KiB reads
 * it was assembled from are garbage once the chunk servers have it, and V8 collects them only after
 * tens of MiB more were allocated. At 1 MiB writes and QD128 this is what took an NBD server past
 * its budget (236 MiB resident for 224 MiB, without this share).
 */
const COLLECTOR_LAG_BYTES = 64 * MiB;

export interface NbdMemoryFlags {
  readonly budgetBytes: number;
  /** --inflight-bytes-total-max, or null for what the budget leaves. */
  readonly inflightBytesTotalMax: number | null;
  /** --inflight-bytes-max (per connection), or null for the default. */
  readonly inflightBytesMax: number | null;
  /** --cache-size, or null without a read cache. */
  readonly cacheSizeBytes: number | null;
}

export interface NbdMemoryLimits {
  readonly plan: MemoryPlan;
  readonly inflightBytesTotalMax: number;
  readonly inflightBytesMax: number;
}

/** The plan for these flags; throws ERR_CONFIG when it does not fit the budget. */
export function nbdMemoryPlan(flags: NbdMemoryFlags): NbdMemoryLimits {
  const fixed: MemoryShare[] = [
    runtimeShare(),
    { name: 'connection_buffers', bytes: CONNECTION_BUFFERS_BYTES, setBy: 'buffers of the connections busy at once' },
    { name: 'volumes', bytes: VOLUMES_BYTES, setBy: 'open volumes\' maps and leases' },
    { name: 'collector_lag', bytes: COLLECTOR_LAG_BYTES, setBy: 'buffers not yet collected' },
  ];
  if (flags.cacheSizeBytes !== null) {
    fixed.push({ name: 'read_cache_index', bytes: readCacheIndexBytes(flags.cacheSizeBytes), setBy: '--cache-size' });
  }
  const { plan, requestsBytes: inflightBytesTotalMax } = planWithRequests('nbd', flags.budgetBytes, fixed, {
    givenBytes: flags.inflightBytesTotalMax, minBytes: INFLIGHT_BYTES_TOTAL_MIN, defaultMaxBytes: INFLIGHT_BYTES_TOTAL_DEFAULT_MAX,
    setBy: '--inflight-bytes-total-max',
  });
  return {
    plan,
    inflightBytesTotalMax,
    inflightBytesMax: Math.min(flags.inflightBytesMax ?? INFLIGHT_BYTES_PER_CONNECTION_DEFAULT, inflightBytesTotalMax),
  };
}

/** The smallest budget that fits the default flags without a read cache. */
export const NBD_MEMORY_BUDGET_MIN = plannedBytes(nbdMemoryPlan({
  budgetBytes: Number.MAX_SAFE_INTEGER, inflightBytesTotalMax: INFLIGHT_BYTES_TOTAL_MIN, inflightBytesMax: null, cacheSizeBytes: null,
}).plan);
