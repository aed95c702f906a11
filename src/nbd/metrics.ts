// Prometheus metrics of the NBD server. Label children are created once per command up front, so
// the per-request cost is an array index plus a counter increment and one histogram observe, and
// every series exists (at zero) from the first scrape on.
//
// One registry holds one set: several NBD servers in a process that share a registry (tests,
// a daemon serving unix and TCP) share these series instead of failing to register twice.

import { Counter, Gauge, Histogram, exponentialBuckets } from 'prom-client';
import type { Registry } from 'prom-client';
import { COMMAND_NAMES } from './protocol.ts';
import type { CommandName } from './protocol.ts';

export interface CommandMetrics {
  readonly requests: Counter.Internal;
  readonly errors: Counter.Internal;
  readonly duration: Histogram.Internal<'command'>;
}

export interface NbdMetrics {
  /** Per command, indexed by command code; `unknown` for anything else. */
  readonly byCommand: readonly CommandMetrics[];
  readonly unknownCommand: CommandMetrics;
  readonly readBytes: Counter;
  readonly writtenBytes: Counter;
  readonly connectionsOpen: Gauge;
  readonly connectionsTotal: Counter;
}

const cache = new WeakMap<Registry, NbdMetrics>();

export function nbdMetrics(registry: Registry): NbdMetrics {
  const known = cache.get(registry);
  if (known !== undefined) return known;
  const created = createMetrics(registry);
  cache.set(registry, created);
  return created;
}

export function commandMetrics(metrics: NbdMetrics, command: number): CommandMetrics {
  return metrics.byCommand[command] ?? metrics.unknownCommand;
}

function createMetrics(registry: Registry): NbdMetrics {
  const registers = [registry];
  const requests = new Counter({
    name: 'shoal_nbd_requests_total', help: 'NBD requests received, by command',
    labelNames: ['command'] as const, registers,
  });
  const errors = new Counter({
    name: 'shoal_nbd_request_errors_total', help: 'NBD requests answered with an error, by command',
    labelNames: ['command'] as const, registers,
  });
  const duration = new Histogram({
    name: 'shoal_nbd_request_duration_seconds',
    help: 'Time from a complete NBD request to its reply being queued on the socket, by command',
    labelNames: ['command'] as const,
    // 50 µs to about 3.3 s: loopback cache hits at the bottom, stalled replicas at the top.
    buckets: exponentialBuckets(50e-6, 2, 17),
    registers,
  });
  const children = (command: CommandName): CommandMetrics => {
    // Touch each series so it is exported at zero before the first request of its kind.
    requests.inc({ command }, 0);
    errors.inc({ command }, 0);
    duration.zero({ command });
    return {
      requests: requests.labels(command),
      errors: errors.labels(command),
      duration: duration.labels(command),
    };
  };
  return {
    byCommand: COMMAND_NAMES.map(children),
    unknownCommand: children('unknown'),
    readBytes: new Counter({
      name: 'shoal_nbd_read_bytes_total', help: 'Bytes returned to NBD clients by READ', registers,
    }),
    writtenBytes: new Counter({
      name: 'shoal_nbd_written_bytes_total', help: 'Bytes stored for NBD clients by WRITE',
      registers,
    }),
    connectionsOpen: new Gauge({
      name: 'shoal_nbd_connections_open', help: 'NBD client connections currently open', registers,
    }),
    connectionsTotal: new Counter({
      name: 'shoal_nbd_connections_total', help: 'NBD client connections accepted', registers,
    }),
  };
}
