// A daemon's memory budget (--memory-budget): what its memory goes to, checked at start, watched
// while it runs, and published.
//
// - The plan: the runtime's own share (RUNTIME_BYTES: V8's heap and code, the native libraries,
//   the metrics) plus one share per bounded use (requests in flight, caches' indexes, journal
//   buffers, connection buffers), each sized from the daemon's flags. A plan that does not fit the
//   budget refuses to start, naming every share and the budget it would need: a daemon never starts
//   with a budget it cannot keep.
// - The watch: the process's own resident memory (ownResidentBytes) sampled every SAMPLE_INTERVAL_MS. At PRESSURE_ON_FRACTION of the
//   budget the daemon is under pressure until it falls below PRESSURE_OFF_FRACTION: its byte
//   gates let in a quarter of their limit (byte_gate.ts) and the garbage collector runs, so the
//   daemon slows down instead of growing into its cgroup's limit and being killed. The page cache
//   of the files it writes is the kernel's to reclaim; what is counted here is the process's own.
// - The metrics: shoal_<daemon>_memory_budget_bytes{share}, the peak resident bytes, whether it is
//   under pressure and for how long it was, and each gate's held bytes and closed time.

import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Counter, Gauge, type Registry } from 'prom-client';
import { StorageError } from '../errors.ts';
import type { ByteGate } from './byte_gate.ts';
import type { MonotonicClock } from './clock.ts';
import type { Logger } from './log.ts';
import { counterFromTotal } from './metrics.ts';
import { parseSizeBytes } from './size.ts';

const MiB = 1024 * 1024;

/**
 * Free memory the C allocator keeps at the top of its heap instead of giving it back (glibc's
 * trim threshold, set for every daemon: src/local/daemon_environment.ts), so that the next 1 MiB
 * requests reuse pages instead of faulting in fresh ones. Resident, so the runtime's share holds it.
 */
export const ALLOCATOR_KEPT_FREE_BYTES = 32 * MiB;

/**
 * The runtime's own resident memory under load: Node's heap with its young generation, code,
 * libuv's and the native modules' buffers, the metrics registry. Measured at 60–80 MiB for each
 * daemon at rest under sustained load; the rest is headroom for the garbage collector's lag; plus
 * what the allocator keeps free.
 */
export const RUNTIME_BYTES = 96 * MiB + ALLOCATOR_KEPT_FREE_BYTES;
/** Every daemon's budget unless --memory-budget says otherwise. */
export const MEMORY_BUDGET_BYTES_DEFAULT = 512 * MiB;
const SAMPLE_INTERVAL_MS = 250;
/** Under pressure from this fraction of the budget in resident memory ... */
export const PRESSURE_ON_FRACTION = 0.9;
/** ... until it falls below this one. */
export const PRESSURE_OFF_FRACTION = 0.8;
/** Forced collections under pressure at most this often: a full collection costs tens of ms. */
const GC_INTERVAL_MS = 1_000;

export type DaemonKind = 'mds' | 'cs' | 'nbd';

export interface MemoryShare {
  /** The metrics label: "requests", "read_cache_index". */
  readonly name: string;
  readonly bytes: number;
  /** What sizes it, for the refusal message: "--inflight-bytes-max". */
  readonly setBy: string;
}

export interface MemoryPlan {
  readonly daemon: DaemonKind;
  readonly budgetBytes: number;
  /** The runtime's share first, then the daemon's. */
  readonly shares: readonly MemoryShare[];
}

/** --memory-budget, at least `minimumBytes`. */
export function parseMemoryBudget(text: string | undefined, minimumBytes: number): number {
  if (text === undefined) return MEMORY_BUDGET_BYTES_DEFAULT;
  const bytes = parseSizeBytes(text, '--memory-budget');
  if (bytes < minimumBytes) {
    throw new StorageError('ERR_CONFIG', `--memory-budget ${text} is too small: this daemon needs at least ${formatMiB(minimumBytes)}`);
  }
  return bytes;
}

export function runtimeShare(): MemoryShare {
  return { name: 'runtime', bytes: RUNTIME_BYTES, setBy: 'the runtime itself' };
}

export function plannedBytes(plan: MemoryPlan): number {
  return plan.shares.reduce((sum, share) => sum + share.bytes, 0);
}

/** Throws ERR_CONFIG naming every share when the plan needs more than the budget. */
export function checkPlan(plan: MemoryPlan): void {
  const needed = plannedBytes(plan);
  if (needed <= plan.budgetBytes) return;
  const shares = plan.shares.map((share) => `${share.name} ${formatMiB(share.bytes)} (${share.setBy})`).join(', ');
  throw new StorageError('ERR_CONFIG',
    `--memory-budget ${formatMiB(plan.budgetBytes)} is too small for this ${plan.daemon}: its shares are ${shares}, ` +
    `${formatMiB(needed)} in all. Raise --memory-budget to at least ${formatMiB(needed)}, or lower the flags named.`);
}

/**
 * A plan whose requests in flight take what the fixed shares leave of the budget, between
 * `requests.minBytes` and `requests.defaultMaxBytes`, unless their flag set them (`givenBytes`).
 * Throws ERR_CONFIG (checkPlan) when it does not fit. Returns the plan and the requests' bytes.
 */
export function planWithRequests(daemon: DaemonKind, budgetBytes: number, fixed: readonly MemoryShare[], requests: {
  readonly givenBytes: number | null; readonly minBytes: number; readonly defaultMaxBytes: number; readonly setBy: string;
}): { plan: MemoryPlan; requestsBytes: number } {
  const left = budgetBytes - plannedBytes({ daemon, budgetBytes, shares: fixed });
  const requestsBytes = requests.givenBytes ?? Math.max(requests.minBytes, Math.min(requests.defaultMaxBytes, left));
  const plan: MemoryPlan = { daemon, budgetBytes, shares: [...fixed, { name: 'requests', bytes: requestsBytes, setBy: requests.setBy }] };
  checkPlan(plan);
  return { plan, requestsBytes };
}

export function formatMiB(bytes: number): string {
  return `${Math.ceil(bytes / MiB)}M`;
}

export interface MemoryWatchOptions {
  readonly plan: MemoryPlan;
  /** Shrunk under pressure. */
  readonly gates: readonly ByteGate[];
  readonly clock: MonotonicClock;
  readonly log: Logger;
  /** Resident bytes now; default the process's. */
  readonly residentBytes?: () => number;
}

/** Samples resident memory; under pressure shrinks the gates and collects garbage. */
export class MemoryWatch {
  private readonly options: MemoryWatchOptions;
  private timer: NodeJS.Timeout | null = null;
  peakResidentBytes = 0;
  private pressure = false;
  private pressureSinceMs = 0;
  private pressureMsTotal = 0;
  private lastGcMs = -Infinity;
  private readonly collect = garbageCollector();

  constructor(options: MemoryWatchOptions) {
    this.options = options;
  }

  get underPressure(): boolean {
    return this.pressure;
  }

  pressureSecondsTotal(): number {
    const current = this.pressure ? this.options.clock.monotonicMs() - this.pressureSinceMs : 0;
    return (this.pressureMsTotal + current) / 1000;
  }

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), SAMPLE_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One sample; public for tests. */
  sample(): void {
    const { plan, gates, clock, log } = this.options;
    const resident = (this.options.residentBytes ?? ownResidentBytes)();
    this.peakResidentBytes = Math.max(this.peakResidentBytes, resident);
    const nowMs = clock.monotonicMs();
    if (!this.pressure && resident >= plan.budgetBytes * PRESSURE_ON_FRACTION) {
      this.pressure = true;
      this.pressureSinceMs = nowMs;
      for (const gate of gates) gate.setPressure(true);
      log.warn('memory pressure: taking in fewer requests until resident memory falls', {
        residentBytes: resident, budgetBytes: plan.budgetBytes, pressureAtBytes: Math.round(plan.budgetBytes * PRESSURE_ON_FRACTION),
      });
    } else if (this.pressure && resident < plan.budgetBytes * PRESSURE_OFF_FRACTION) {
      this.pressure = false;
      this.pressureMsTotal += nowMs - this.pressureSinceMs;
      for (const gate of gates) gate.setPressure(false);
      log.info('memory pressure over', { residentBytes: resident, underPressureMs: Math.round(nowMs - this.pressureSinceMs) });
    }
    if (this.pressure && this.collect !== null && nowMs - this.lastGcMs >= GC_INTERVAL_MS) {
      this.lastGcMs = nowMs;
      this.collect();
    }
  }
}

/**
 * The process's resident memory as the budget counts it: anonymous and shared pages (/proc/self/
 * status RssAnon + RssShmem), plus its mapped files (RssFile) only as they were at the first call,
 * i.e. the node binary's code and libraries. Files mapped later (LMDB's pages, which hold the MDS's
 * map) are left out: clean file pages are the kernel's to reclaim. Without /proc, the whole
 * resident set.
 */
export function ownResidentBytes(): number {
  try {
    const status = readFileSync('/proc/self/status', 'latin1');
    const kib = (field: string): number | null => {
      const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
      return match === null ? null : Number(match[1]) * 1024;
    };
    const anon = kib('RssAnon');
    if (anon !== null) {
      codeBytes ??= kib('RssFile') ?? 0;
      return anon + (kib('RssShmem') ?? 0) + codeBytes;
    }
  } catch {
    // fall through: no /proc
  }
  return process.memoryUsage.rss();
}

/** RssFile at the first measure: the code, counted as the runtime's (see ownResidentBytes). */
let codeBytes: number | null = null;

/** The garbage collector's entry point, made reachable at run time; null where V8 refuses. */
function garbageCollector(): (() => void) | null {
  try {
    setFlagsFromString('--expose-gc');
    const collect: unknown = runInNewContext('gc');
    return typeof collect === 'function' ? () => (collect as () => void)() : null;
  } catch {
    return null;
  }
}

export function registerMemoryMetrics(registry: Registry, watch: MemoryWatch, plan: MemoryPlan, gates: readonly ByteGate[]): void {
  const prefix = `shoal_${plan.daemon}_`;
  const budget = new Gauge({
    name: `${prefix}memory_budget_bytes`,
    help: 'The memory budget (--memory-budget) by share: share="total" is the budget, the others what each bounded use may take',
    labelNames: ['share'],
    registers: [registry],
  });
  budget.set({ share: 'total' }, plan.budgetBytes);
  for (const share of plan.shares) budget.set({ share: share.name }, share.bytes);
  new Gauge({
    name: `${prefix}memory_resident_peak_bytes`,
    help: 'The highest resident memory sampled since start (every 250 ms): anonymous and shared pages and the code, not files mapped later (LMDB\'s)',
    registers: [registry],
    collect() {
      this.set(watch.peakResidentBytes);
    },
  });
  new Gauge({
    name: `${prefix}memory_pressure`,
    help: '1 while resident memory is past 90 % of the budget (until it falls below 80 %): requests are let in at a quarter of the usual rate',
    registers: [registry],
    collect() {
      this.set(watch.underPressure ? 1 : 0);
    },
  });
  counterFromTotal([registry], `${prefix}memory_pressure_seconds_total`, 'Seconds spent under memory pressure since start',
    () => watch.pressureSecondsTotal());
  new Gauge({
    name: `${prefix}inflight_held_bytes`,
    help: 'Payload bytes held by requests in flight, per gate (the gate closes at its limit, share of the budget)',
    labelNames: ['gate'],
    registers: [registry],
    collect() {
      for (const gate of gates) this.set({ gate: gate.name }, gate.held);
    },
  });
  new Counter({
    name: `${prefix}inflight_gate_closed_seconds_total`,
    help: 'Seconds each gate was closed (connections not reading) since start: time writers were slowed to what memory allows',
    labelNames: ['gate'],
    registers: [registry],
    collect() {
      this.reset();
      for (const gate of gates) this.inc({ gate: gate.name }, gate.closedSecondsTotal());
    },
  });
}
