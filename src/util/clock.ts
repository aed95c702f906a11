// Time and randomness as injected dependencies: decision logic takes a Clock and a random source
// instead of calling Date.now or Math.random, so simulation tests can drive it deterministically.
// Two kinds of time: Clock is the wall clock (timestamps shown to people, kept on disk, compared
// across hosts); MonotonicClock measures intervals on this host and never jumps (NTP steps, an
// admin's `date -s`), so deadlines that guard safety use it. The method names differ on purpose:
// one cannot be passed where the other is expected.

export interface Clock {
  nowMs(): number;
}

export const systemClock: Clock = { nowMs: () => Date.now() };

export interface MonotonicClock {
  /** Milliseconds since an arbitrary origin fixed for this process; never decreases. */
  monotonicMs(): number;
}

export const systemMonotonicClock: MonotonicClock = { monotonicMs: () => performance.now() };

/** A small seeded PRNG (mulberry32) for simulations and fuzzers: same seed, same sequence. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Waiting, as an injected dependency: the client's retries and its lease and capability renewals run
 * on it, so tests drive them with a fake one instead of waiting.
 */
export interface Timers extends MonotonicClock {
  /** Resolves after `delayMs`; keeps the process alive meanwhile (an I/O is waiting on it). */
  sleep(delayMs: number): Promise<void>;
  /** Runs `run` once after `delayMs` without keeping the process alive (background upkeep); returns a cancel. */
  background(delayMs: number, run: () => void): () => void;
}

export const systemTimers: Timers = {
  monotonicMs: () => performance.now(),
  sleep: (delayMs) => new Promise((resolve) => setTimeout(resolve, delayMs)),
  background: (delayMs, run) => {
    const timer = setTimeout(run, delayMs);
    timer.unref();
    return () => clearTimeout(timer);
  },
};
