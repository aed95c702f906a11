// Prometheus metrics of the NBD server. Label children are created once per command up front, so
// the per-request cost is an array index plus a counter increment and one histogram observe, and
// every series exists (at zero) from the first scrape on.
//
// One registry holds one set: several NBD servers in a process that share a registry (tests,
// a daemon serving unix and TCP) share these series instead of failing to register twice.
//
// Connection series carry the listener (unix: the local hypervisor; tcp: maybe other hosts), so
// an admin sees which door is full, and refusals and drops carry their reason.

import { Counter, Gauge, Histogram, exponentialBuckets } from 'prom-client';
import type { Registry } from 'prom-client';
import { COMMAND_NAMES } from './protocol.ts';
import type { CommandName } from './protocol.ts';

export interface CommandMetrics {
  readonly requests: Counter.Internal;
  readonly errors: Counter.Internal;
  readonly duration: Histogram.Internal<'command'>;
}

/** The two doors of the server; each has its own connection slots. */
export const LISTENERS = ['unix', 'tcp'] as const;
export type ListenerKind = (typeof LISTENERS)[number];

/** Why a new connection was refused at accept. */
export const REFUSE_REASONS = ['full', 'address_full', 'shutting_down'] as const;
export type RefuseReason = (typeof REFUSE_REASONS)[number];

/** Why the server cut a connection that was holding a slot. */
export const DROP_REASONS = ['handshake_timeout', 'write_stall'] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export interface ListenerMetrics {
  readonly connectionsOpen: Gauge.Internal<'listener'>;
  readonly connectionsTotal: Counter.Internal;
  readonly refused: Readonly<Record<RefuseReason, Counter.Internal>>;
  readonly dropped: Readonly<Record<DropReason, Counter.Internal>>;
}

export interface NbdMetrics {
  /** Per command, indexed by command code; `unknown` for anything else. */
  readonly byCommand: readonly CommandMetrics[];
  readonly unknownCommand: CommandMetrics;
  readonly readBytes: Counter;
  readonly writtenBytes: Counter;
  readonly byListener: Readonly<Record<ListenerKind, ListenerMetrics>>;
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
    byListener: connectionMetrics(registers),
  };
}

function connectionMetrics(
  registers: Registry[],
): Readonly<Record<ListenerKind, ListenerMetrics>> {
  const open = new Gauge({
    name: 'shoal_nbd_connections_open', help: 'NBD client connections currently open, by listener',
    labelNames: ['listener'] as const, registers,
  });
  const accepted = new Counter({
    name: 'shoal_nbd_connections_total', help: 'NBD client connections accepted, by listener',
    labelNames: ['listener'] as const, registers,
  });
  const refused = new Counter({
    name: 'shoal_nbd_connections_refused_total',
    help: 'NBD client connections closed at accept, by listener and reason (full: the ' +
      "listener's slots are taken; address_full: that remote address holds its share)",
    labelNames: ['listener', 'reason'] as const, registers,
  });
  const dropped = new Counter({
    name: 'shoal_nbd_connections_dropped_total',
    help: 'NBD client connections cut by the server to free their slot, by listener and reason ' +
      '(handshake_timeout: negotiation not finished in time; write_stall: replies not read)',
    labelNames: ['listener', 'reason'] as const, registers,
  });
  const forListener = (listener: ListenerKind): ListenerMetrics => {
    // Touch every series so each is exported at zero from the first scrape on.
    open.set({ listener }, 0);
    accepted.inc({ listener }, 0);
    const counters = <R extends string>(counter: Counter<'listener' | 'reason'>,
      reasons: readonly R[]): Record<R, Counter.Internal> => {
      const entries = reasons.map((reason) => {
        counter.inc({ listener, reason }, 0);
        return [reason, counter.labels(listener, reason)] as const;
      });
      return Object.fromEntries(entries) as Record<R, Counter.Internal>;
    };
    return {
      connectionsOpen: open.labels(listener),
      connectionsTotal: accepted.labels(listener),
      refused: counters(refused, REFUSE_REASONS),
      dropped: counters(dropped, DROP_REASONS),
    };
  };
  return { unix: forListener('unix'), tcp: forListener('tcp') };
}
