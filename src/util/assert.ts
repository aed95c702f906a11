// Invariant checks. A broken invariant is a programmer error: it throws an AssertionError that is
// never caught as an operating error (see fromSystemError), so the process stops loudly.

import { AssertionError } from 'node:assert';

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError({ message });
}

export function assertNever(value: never, what: string): never {
  throw new AssertionError({ message: `unexpected ${what}: ${String(value)}` });
}

/** A non-negative safe integer: every byte count, offset and id in the system is one. */
export function isUint(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}
