// Prometheus helpers shared by the daemons.

import { Counter, collectDefaultMetrics, type Registry } from 'prom-client';

/**
 * prom-client's process and Node.js metrics, named `<prefix>...`, less the three gauges it names
 * with a `_total` suffix (nodejs_active_handles_total, _requests_total, _resources_total), which
 * Prometheus reserves for counters (`promtool check metrics` rejects them). Their per-type
 * gauges (nodejs_active_handles{type} and the others) stay: `sum()` of one gives its total.
 */
export function collectProcessMetrics(registry: Registry, prefix: string): void {
  collectDefaultMetrics({ register: registry, prefix });
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
    registry.removeSingleMetric(`${prefix}${name}`);
  }
}

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
