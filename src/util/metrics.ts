// Prometheus helpers shared by the daemons.

import { Counter, type Registry } from 'prom-client';

/**
 * A counter whose value is a running total kept elsewhere (a stats object), copied in at scrape
 * time: the hot path increments a plain number, never a prom-client object. `read` returns null
 * while there is nothing to read yet.
 */
export function counterFromTotal(registers: Registry[], name: string, help: string, read: () => number | null): Counter {
  return new Counter({
    name,
    help,
    registers,
    collect() {
      const value = read();
      if (value === null) return;
      this.reset();
      this.inc(value);
    },
  });
}
