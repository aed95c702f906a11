// MDS metrics for Prometheus. Cluster gauges (servers, space, chunks by health) are computed at
// scrape time from the service, so they are never stale and cost nothing between scrapes; the
// chunk health is read in slices (map_scans.ts), never as one walk of the map.

import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { MetadataService } from './service.ts';
import type { MdsStore } from './store.ts';
import { collectProcessMetrics, counterFromTotal } from '../util/metrics.ts';
import { TASK_KINDS, TASK_STATES } from './model.ts';

export class MdsMetrics {
  readonly registry = new Registry();
  private readonly httpDuration: Histogram<'route' | 'method' | 'status'>;

  constructor(service: () => MetadataService | null, store: MdsStore) {
    collectProcessMetrics(this.registry, 'shoal_mds_');
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
    new Gauge({
      name: 'shoal_mds_tasks',
      help: 'Tasks the MDS keeps, by kind and state (finished ones for a while)',
      labelNames: ['kind', 'state'],
      registers: [this.registry],
      collect() {
        this.reset();
        // Every state at zero too, so that an alert on running or failed tasks has a series.
        for (const kind of TASK_KINDS) for (const state of TASK_STATES) this.set({ kind, state }, 0);
        for (const task of store.tables.listTasks()) this.inc({ kind: task.kind, state: task.state });
      },
    });
  }

  private clusterGauges(service: () => MetadataService | null): void {
    const registers = [this.registry];
    // One scrape computes the cluster stat once, started by the first gauge's collect (prom-client
    // calls every collect in registration order, then awaits them together); every gauge after it
    // awaits that one stat. The stat reads the map in slices, so a scrape never stalls the MDS.
    type Stat = Awaited<ReturnType<MetadataService['cluster']['stat']>>;
    let snapshot: Promise<Stat> | null = null;
    new Gauge({
      name: 'shoal_mds_up',
      help: 'The MDS is serving',
      registers,
      collect() {
        const current = service();
        snapshot = current === null ? null : current.cluster.stat();
        this.set(current === null ? 0 : 1);
      },
    });
    const fromSnapshot = (name: string, help: string, labelNames: string[], fill: (gauge: Gauge, stat: Stat) => void) =>
      new Gauge({
        name, help, labelNames, registers,
        async collect() {
          if (snapshot !== null) fill(this, await snapshot);
        },
      });
    fromSnapshot('shoal_mds_chunk_servers', 'Chunk servers by state (removed ones not counted)', ['state'], (g, stat) => {
      g.set({ state: 'online' }, stat.chunkServers.online);
      g.set({ state: 'offline' }, stat.chunkServers.offline);
    });
    fromSnapshot('shoal_mds_space_bytes', 'Space of online chunk servers', ['kind'], (g, stat) => {
      g.set({ kind: 'capacity' }, stat.space.capacityBytes);
      g.set({ kind: 'used' }, stat.space.usedBytes);
      g.set({ kind: 'free' }, stat.space.freeBytes);
    });
    fromSnapshot('shoal_mds_chunks', 'Chunks by replica health', ['state'], (g, stat) => {
      for (const [state, count] of Object.entries(stat.chunks.byState)) g.set({ state }, count);
    });
    fromSnapshot('shoal_mds_chunk_servers_maintenance',
      'Chunk servers in a maintenance window, or away past it, in its grace (overrun: their replicas are replaced once the grace ends)',
      ['phase'], (g, stat) => {
        g.set({ phase: 'window' }, stat.servers.filter((s) => s.maintenance?.phase === 'window').length);
        g.set({ phase: 'overrun' }, stat.servers.filter((s) => s.maintenance?.phase === 'grace' && s.state !== 'online').length);
      });
    fromSnapshot('shoal_mds_tier_space_bytes', 'Space of the online chunk servers of each tier', ['tier', 'kind'], (g, stat) => {
      for (const tier of stat.tiers) {
        g.set({ tier: String(tier.tier), kind: 'capacity' }, tier.capacityBytes);
        g.set({ tier: String(tier.tier), kind: 'used' }, tier.usedBytes);
        g.set({ tier: String(tier.tier), kind: 'free' }, tier.freeBytes);
      }
    });
    fromSnapshot('shoal_mds_tier_replicas',
      'Replicas on each tier\'s chunk servers: all of them, and misplaced ones (of volumes of another tier: spilled while that tier was full, or still moving)',
      ['tier', 'placement'], (g, stat) => {
        for (const tier of stat.tiers) {
          g.set({ tier: String(tier.tier), placement: 'all' }, tier.replicas);
          g.set({ tier: String(tier.tier), placement: 'misplaced' }, tier.misplacedReplicas);
        }
      });
    fromSnapshot('shoal_mds_chunk_servers_ill',
      'Chunk servers whose disks are far slower than their tier\'s other servers\' for a sustained time: reads and new chunks avoid them',
      [], (g, stat) => g.set(stat.servers.filter((s) => s.ill !== null && s.adminState !== 'removed').length));
    fromSnapshot('shoal_mds_volumes', 'Volumes', [], (g, stat) => g.set(stat.volumes.count));
    fromSnapshot('shoal_mds_recovery_actions', 'Replica-set changes: running, planned, and chunks blocked for lack of servers',
      ['state'], (g, stat) => {
        g.set({ state: 'running' }, stat.recovery.running);
        g.set({ state: 'pending' }, stat.recovery.pending);
        g.set({ state: 'blocked' }, stat.recovery.blocked);
        g.set({ state: 'misplaced_stuck' }, stat.recovery.misplacedStuck);
      });
    // Running totals: read straight from the replicator (the counters' collect cannot wait).
    new Gauge({
      name: 'shoal_mds_rebalance_spread_ratio',
      help: 'Share of capacity the map places on the fullest active chunk server minus the emptiest\'s, as the planner last judged it',
      registers,
      collect() {
        const judgement = service()?.cluster.rebalanceStatus().judgement ?? null;
        if (judgement !== null) this.set(judgement.spreadFraction);
      },
    });
    counterFromTotal(registers, 'shoal_mds_settled_bytes_total',
      'Bytes copied between members of a chunk whose checksums differed (writes that died half-done)',
      () => service()?.cluster.replicator.settledBytesTotal ?? null);
    counterFromTotal(registers, 'shoal_mds_locality_follows_total',
      'Hot chunks whose primary moved to their writer\'s host (a copy there made primary, after copying the chunk there if none was), since the MDS started',
      () => service()?.cluster.recovery.followed ?? null);
    counterFromTotal(registers, 'shoal_mds_recovery_copied_bytes_total',
      'Bytes copied between chunk servers by re-replication, rebalancing and drains',
      () => service()?.cluster.replicator.copiedBytesTotal ?? null);
  }

  observeHttp(route: string, method: string, status: number, seconds: number): void {
    this.httpDuration.observe({ route, method, status: String(status) }, seconds);
  }
}
