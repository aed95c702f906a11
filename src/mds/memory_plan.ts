// What the MDS's memory budget (--memory-budget) goes to: the runtime, the REST requests and
// replies being handled (bodies are bounded by API_BODY_BYTES_MAX, replies by the API's paging),
// the recovery planner's working set (the chunks that need work, the servers' picture), and the
// repairs in flight (a piece of a chunk each, read through the MDS). The map itself lives in LMDB's
// file pages, which the kernel reclaims: they are not the MDS's own memory. Pure: main.ts applies it.

import { CS_PAYLOAD_BYTES_MAX } from '../limits.ts';
import { checkPlan, plannedBytes, runtimeShare, type MemoryPlan } from '../util/memory_budget.ts';

const MiB = 1024 * 1024;

const API_BYTES = 32 * MiB;
const PLANNER_BYTES = 64 * MiB;

export interface MdsMemoryFlags {
  readonly budgetBytes: number;
  readonly recoveryConcurrency: number;
}

/** The plan for these flags; throws ERR_CONFIG when it does not fit the budget. */
export function mdsMemoryPlan(flags: MdsMemoryFlags): MemoryPlan {
  const plan: MemoryPlan = {
    daemon: 'mds',
    budgetBytes: flags.budgetBytes,
    shares: [
      runtimeShare(),
      { name: 'api', bytes: API_BYTES, setBy: 'REST requests and replies in progress' },
      { name: 'planner', bytes: PLANNER_BYTES, setBy: 'the recovery planner\'s working set' },
      { name: 'repairs', bytes: flags.recoveryConcurrency * CS_PAYLOAD_BYTES_MAX, setBy: '--recovery-concurrency' },
    ],
  };
  checkPlan(plan);
  return plan;
}

/** The smallest budget that fits one repair at a time. */
export const MDS_MEMORY_BUDGET_MIN = plannedBytes(mdsMemoryPlan({ budgetBytes: Number.MAX_SAFE_INTEGER, recoveryConcurrency: 1 }));
