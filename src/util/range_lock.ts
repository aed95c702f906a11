// A readers-writer lock over ranges of block numbers. Readers of a range share it; a writer holds
// it alone. Waiters are served in arrival order among conflicting requests, so a stream of readers
// cannot starve a writer. Built for the handful of operations in flight on one chunk at a time:
// every check is a linear scan.

import { assert } from './assert.ts';

interface Held {
  readonly first: number;
  readonly last: number;
  readonly exclusive: boolean;
}

interface Waiter extends Held {
  readonly grant: () => void;
}

function conflicts(a: Held, b: Held): boolean {
  return (a.exclusive || b.exclusive) && a.first <= b.last && b.first <= a.last;
}

export class RangeLock {
  private readonly held: Held[] = [];
  private readonly waiters: Waiter[] = [];

  get idle(): boolean {
    return this.held.length === 0 && this.waiters.length === 0;
  }

  /** Resolves with a release function once [first, last] is held in the requested mode. */
  acquire(first: number, last: number, exclusive: boolean): Promise<() => void> {
    assert(first <= last, 'range lock: first <= last');
    const request: Held = { first, last, exclusive };
    if (this.canGrant(request, this.waiters.length)) return Promise.resolve(this.take(request));
    return new Promise((resolve) => {
      this.waiters.push({ ...request, grant: () => resolve(this.take(request)) });
    });
  }

  private canGrant(request: Held, waitersAhead: number): boolean {
    for (const held of this.held) if (conflicts(held, request)) return false;
    for (let i = 0; i < waitersAhead; i += 1) {
      const waiter = this.waiters[i];
      assert(waiter !== undefined, 'range lock: waiter index');
      if (conflicts(waiter, request)) return false;
    }
    return true;
  }

  private take(request: Held): () => void {
    this.held.push(request);
    let released = false;
    return () => {
      assert(!released, 'range lock released twice');
      released = true;
      const index = this.held.indexOf(request);
      assert(index >= 0, 'range lock: released range is held');
      this.held.splice(index, 1);
      this.wake();
    };
  }

  private wake(): void {
    for (let i = 0; i < this.waiters.length; ) {
      const waiter = this.waiters[i];
      assert(waiter !== undefined, 'range lock: waiter index');
      if (this.canGrant(waiter, i)) {
        this.waiters.splice(i, 1);
        waiter.grant();
      } else {
        i += 1;
      }
    }
  }
}
