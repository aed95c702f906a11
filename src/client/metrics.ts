// Client-side metrics, exported by the process that hosts the client library (the NBD server):
// how long each chunk-server request takes from being handed to the connection until its reply
// arrives. Set beside the NBD server's own request histogram, it splits a guest's latency into
// the NBD server's part and the chunk servers' (the primary, its replicas and their journals).
// And per open volume, what its I/O limits hold back. (The read cache's: src/cache/metrics.ts.)

import { Counter, Gauge, Histogram, exponentialBuckets, type Registry } from 'prom-client';
import { CS_OP } from '../protocol/cs_messages.ts';
import type { QosGate } from './qos_gate.ts';

/** Called once per reply: the request's op and its time in seconds. */
export type RequestObserver = (op: number, seconds: number) => void;

/** The observer that records into `registry`; each op's series exists (at zero) from the start. */
export function clientRequestObserver(registry: Registry): RequestObserver {
  const histogram = new Histogram({
    name: 'shoal_client_request_duration_seconds',
    help: 'Time from a chunk-server request being sent until its reply arrived, by op (a write: the primary, its replicas and their journal commits)',
    labelNames: ['op'] as const,
    // 25 µs to about 1.6 s.
    buckets: exponentialBuckets(25e-6, 2, 17),
    registers: [registry],
  });
  const byOp: Array<Histogram.Internal<'op'> | undefined> = [];
  for (const [name, op] of Object.entries(CS_OP)) {
    if (op === CS_OP.READ || op === CS_OP.WRITE || op === CS_OP.ZERO || op === CS_OP.BLOCK_STATUS) {
      histogram.zero({ op: name.toLowerCase() });
      byOp[op] = histogram.labels(name.toLowerCase());
    }
  }
  return (op, seconds) => byOp[op]?.observe(seconds);
}

/** An open volume's gate, as the metrics see it. */
export interface OpenVolumeQos {
  readonly name: string;
  readonly readOnly: boolean;
  readonly qos: QosGate;
}

/**
 * Per-volume QoS series, read at scrape time from the volumes open now (one series set per open
 * volume and mode: bounded by what the NBD server serves). A guest whose latency grows while its
 * delay grows is held back by its own limit, not by the cluster.
 */
export function registerQosMetrics(registry: Registry, openVolumes: () => Iterable<OpenVolumeQos>): void {
  const registers = [registry];
  const labelNames = ['volume', 'mode'] as const;
  const labels = (open: OpenVolumeQos) => ({ volume: open.name, mode: open.readOnly ? 'read' : 'write' });
  new Counter({
    name: 'shoal_client_volume_qos_delayed_requests_total',
    help: 'Requests of each open volume that waited for its I/O limits',
    labelNames, registers,
    collect() {
      this.reset();
      for (const open of openVolumes()) this.inc(labels(open), open.qos.stats.delayedRequests);
    },
  });
  new Counter({
    name: 'shoal_client_volume_qos_delay_seconds_total',
    help: 'Time requests of each open volume waited for its I/O limits, summed',
    labelNames, registers,
    collect() {
      this.reset();
      for (const open of openVolumes()) this.inc(labels(open), open.qos.stats.delayedSeconds);
    },
  });
  new Gauge({
    name: 'shoal_client_volume_qos_waiting_requests',
    help: 'Requests of each open volume waiting for its I/O limits now',
    labelNames, registers,
    collect() {
      this.reset();
      for (const open of openVolumes()) this.set(labels(open), open.qos.waiting);
    },
  });
  new Gauge({
    name: 'shoal_client_volume_qos_limit',
    help: 'I/O limits in force on each open volume (iops: requests per second; bandwidth: bytes per second); 0: none',
    labelNames: [...labelNames, 'limit'], registers,
    collect() {
      this.reset();
      for (const open of openVolumes()) {
        const { iopsLimit, bandwidthLimitBytesPerSecond } = open.qos.limits;
        this.set({ ...labels(open), limit: 'iops' }, iopsLimit);
        this.set({ ...labels(open), limit: 'bandwidth' }, bandwidthLimitBytesPerSecond);
      }
    },
  });
}
