// MDS metrics for Prometheus. Cluster gauges (servers, space, chunks by health) are computed at
// scrape time from the service, so they are never stale and cost nothing between scrapes.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { MetadataService } from './service.ts';
import type { MdsStore } from './store.ts';

export class MdsMetrics {
  readonly registry = new Registry();
  private readonly httpDuration: Histogram<'route' | 'method' | 'status'>;

  constructor(service: () => MetadataService | null, store: MdsStore) {
    collectDefaultMetrics({ register: this.registry, prefix: 'shoal_mds_' });
    this.httpDuration = new Histogram({
      name: 'shoal_mds_http_request_duration_seconds',
      help: 'REST request latency by route, method and status code',
      labelNames: ['route', 'method', 'status'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    const opsApplied = new Counter({
      name: 'shoal_mds_ops_applied_total',
      help: 'State-machine operations committed, by type',
      labelNames: ['type'],
      registers: [this.registry],
    });
    store.onApplied = (type) => opsApplied.inc({ type });
    new Gauge({
      name: 'shoal_mds_oplog_sequence',
      help: 'Sequence number of the last committed operation',
      registers: [this.registry],
      collect() {
        this.set(store.opSeq);
      },
    });
    this.clusterGauges(service);
  }

  private clusterGauges(service: () => MetadataService | null): void {
    const servers = new Gauge({ name: 'shoal_mds_chunk_servers', help: 'Chunk servers by state', labelNames: ['state'], registers: [this.registry] });
    const space = new Gauge({ name: 'shoal_mds_space_bytes', help: 'Space of online chunk servers', labelNames: ['kind'], registers: [this.registry] });
    const chunks = new Gauge({ name: 'shoal_mds_chunks', help: 'Chunks by replica health', labelNames: ['state'], registers: [this.registry] });
    const volumes = new Gauge({ name: 'shoal_mds_volumes', help: 'Volumes', registers: [this.registry] });
    // One scrape computes the cluster stat once and fills every gauge from it.
    new Gauge({
      name: 'shoal_mds_up',
      help: 'The MDS is serving',
      registers: [this.registry],
      collect() {
        const current = service();
        this.set(current === null ? 0 : 1);
        if (current === null) return;
        const stat = current.stat();
        servers.set({ state: 'online' }, stat.chunkServers.online);
        servers.set({ state: 'offline' }, stat.chunkServers.offline);
        space.set({ kind: 'capacity' }, stat.space.capacityBytes);
        space.set({ kind: 'used' }, stat.space.usedBytes);
        space.set({ kind: 'free' }, stat.space.freeBytes);
        for (const [state, count] of Object.entries(stat.chunks.byState)) chunks.set({ state }, count);
        volumes.set(stat.volumes.count);
      },
    });
  }

  observeHttp(route: string, method: string, status: number, seconds: number): void {
    this.httpDuration.observe({ route, method, status: String(status) }, seconds);
  }
}
