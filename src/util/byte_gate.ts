// A gate on the payload bytes a daemon holds for requests in flight, shared by all its connections:
// each request reserves its bytes when it is read and releases them when it is answered. Past the
// limit the gate closes and the connections stop reading (the senders feel TCP backpressure, their
// requests wait in their own queues and the kernel's buffers, nothing fails); it opens again once
// half the limit is free, so that reading does not flap at every reply.
//
// Under memory pressure (memory_budget.ts) the limit drops to a quarter: the daemon slows down
// rather than grow towards its cgroup's limit and be killed.
//
// A request larger than the whole limit still goes through when nothing else is held, so no size
// of request can stall a connection for good.

import { assert } from './assert.ts';
import type { MonotonicClock } from './clock.ts';

/** Under memory pressure the gate lets in this fraction of its limit. */
export const PRESSURE_LIMIT_FRACTION = 0.25;

export class ByteGate {
  /** Names the gate in metrics and logs ("requests", "nbd_requests"). */
  readonly name: string;
  readonly limitBytes: number;
  private readonly clock: MonotonicClock;
  private heldBytes = 0;
  private closed = false;
  private pressure = false;
  private closedSinceMs = 0;
  private closedMsTotal = 0;
  /** Called whenever the gate opens or closes: each connection re-checks whether it may read. */
  private readonly listeners = new Set<() => void>();

  constructor(name: string, limitBytes: number, clock: MonotonicClock) {
    assert(Number.isSafeInteger(limitBytes) && limitBytes > 0, 'a byte gate has a positive limit');
    this.name = name;
    this.limitBytes = limitBytes;
    this.clock = clock;
  }

  get held(): number {
    return this.heldBytes;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The limit now: a quarter of it under memory pressure. */
  get effectiveLimitBytes(): number {
    return this.pressure ? Math.max(1, Math.floor(this.limitBytes * PRESSURE_LIMIT_FRACTION)) : this.limitBytes;
  }

  /** Seconds the gate has been closed since start, including the current closure. */
  closedSecondsTotal(): number {
    const current = this.closed ? this.clock.monotonicMs() - this.closedSinceMs : 0;
    return (this.closedMsTotal + current) / 1000;
  }

  /** Returns a function that stops listening. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  reserve(bytes: number): void {
    assert(Number.isSafeInteger(bytes) && bytes >= 0, 'reserved bytes are a count');
    this.heldBytes += bytes;
    this.update();
  }

  release(bytes: number): void {
    assert(Number.isSafeInteger(bytes) && bytes >= 0, 'released bytes are a count');
    this.heldBytes -= bytes;
    assert(this.heldBytes >= 0, `byte gate ${this.name}: more released than reserved`);
    this.update();
  }

  setPressure(pressure: boolean): void {
    if (this.pressure === pressure) return;
    this.pressure = pressure;
    this.update();
  }

  private update(): void {
    const limit = this.effectiveLimitBytes;
    let changed = false;
    if (!this.closed && this.heldBytes > limit) {
      this.closed = true;
      this.closedSinceMs = this.clock.monotonicMs();
      changed = true;
    } else if (this.closed && this.heldBytes <= limit / 2) {
      this.closed = false;
      this.closedMsTotal += this.clock.monotonicMs() - this.closedSinceMs;
      changed = true;
    }
    if (changed) for (const listener of this.listeners) listener();
  }
}
