// The environment every shoal daemon runs with: set by LocalCluster for the daemons it starts and
// by the systemd units in deploy/systemd (test/deploy.test.ts checks they agree). Settings the
// runtime reads only when the process starts, so they cannot be flags.
//
// UV_THREADPOOL_SIZE: the thread pool does the chunk servers' file I/O that may wait for the disk
// (journal commits, large reads and writes, syncs); node's default of 4 threads would queue a
// checkpoint's syncs behind each other and reads behind them.
//
// GLIBC_TUNABLES: glibc serves an allocation of more than 128 KiB with a fresh mmap (its default
// threshold, raised dynamically only to the largest chunk freed so far) and gives the top of its
// heap back to the kernel once 2x that threshold is free there. A daemon moving 1 MiB requests
// allocates a frame of 1 MiB and socket reads of 64 KiB for each, frees them in bulk when the
// garbage collector runs, and so touched fresh pages all the time: 12,000-45,000 page faults per
// chunk server and 7,000-35,000 for the NBD server in 8 s of 1 MiB reads or writes (2026-12-02),
// and a page fault on a virtual machine is expensive. Allocations then come from the heap (below
// 8 MiB: any frame), and up to ALLOCATOR_KEPT_FREE_BYTES (32 MiB) of free heap is kept for the next
// ones: resident memory, which each daemon's memory plan counts in the runtime's share (at 16 MiB
// chunk servers still faulted 30,000-40,000 times). Measured on a local cluster, 1 MiB reads at QD4: page faults
// per chunk server 12,000-26,000 -> 36-136 in 8 s, 223 -> 261-314 MiB/s.

import { FRAME_BODY_BYTES_MAX } from '../limits.ts';
import { ALLOCATOR_KEPT_FREE_BYTES } from '../util/memory_budget.ts';

/** Allocations below this come from the heap: every frame (FRAME_BODY_BYTES_MAX: 4 MiB of payload and its header). */
const MMAP_THRESHOLD_BYTES = 2 ** Math.ceil(Math.log2(FRAME_BODY_BYTES_MAX + 1));

/** Variables and values; a variable already set in the caller's environment wins (LocalCluster). */
export const DAEMON_ENVIRONMENT: Readonly<Record<string, string>> = {
  UV_THREADPOOL_SIZE: '16',
  GLIBC_TUNABLES: `glibc.malloc.mmap_threshold=${MMAP_THRESHOLD_BYTES}:glibc.malloc.trim_threshold=${ALLOCATOR_KEPT_FREE_BYTES}`,
};
