// Sick disks: a chunk server whose disk answers far slower than its peers' for a sustained time is
// marked ill before it fails outright (a dying HDD retries sectors for seconds; an SSD near its
// end stalls), so that reads and new chunks go elsewhere. Pure, with explicit time: the MDS feeds
// it each server's running totals from its heartbeats (journal commits and reads, with the time
// they took) and asks it to judge every second.
//
// Rules:
// - a server's latency is measured over the last `windowMs` of its reports: the mean journal
//   commit (a durable write of its own disk) and the mean read, each only when at least
//   `minOps` of them happened (an idle server is not judged on one slow request); reads are
//   compared only with peers whose reads are of about the same size (a server serving a backup's
//   large reads is not sick for taking longer per read);
// - it is slow when either mean exceeds `factor` times the median of the same mean on its peers
//   (the other online servers of its tier: an HDD tier is not judged against SSDs) and exceeds
//   that median by at least `floorMs` (fast disks differing by fractions of a millisecond are
//   not sick); with fewer than two peers measured there is nothing to compare with;
// - slow for `sickAfterMs` on end, it is ill; ill, it recovers only once the measure that made it
//   ill (its commits, or its reads) has been measured and not slow for `recoverAfterMs` on end
//   (hysteresis: a disk at the edge does not flap; and one whose reads others now avoid is not
//   cleared by its commits);
// - "on end" means measured all along: a gap longer than the window starts the count again;
// - a server not measured (idle, offline) keeps its state.
// Nothing here is durable: after an MDS restart an ill disk is found again within sickAfterMs.

import { assert } from '../util/assert.ts';

export interface DiskTotals {
  readonly commits: number;
  readonly commitSeconds: number;
  readonly reads: number;
  readonly readSeconds: number;
  readonly readBytes: number;
}

export interface SickDiskConfig {
  readonly factor: number;
  readonly floorMs: number;
  readonly sickAfterMs: number;
  readonly recoverAfterMs: number;
  readonly windowMs: number;
  readonly minOps: number;
}

export const SICK_DISK_DEFAULTS: SickDiskConfig = {
  factor: 5,
  floorMs: 20,
  sickAfterMs: 60_000,
  recoverAfterMs: 300_000,
  windowMs: 15_000,
  minOps: 5,
};

/** Why a server is ill, for the stat and the log. */
export interface Illness {
  readonly sinceMs: number;
  readonly reason: string;
  /** What made it ill: only that measure, found fine again, clears it. */
  readonly metric: Metric;
}

export interface JudgedServer {
  readonly csId: number;
  readonly tier: number;
  readonly online: boolean;
}

/** A change of state, for the log. */
export type SickDiskEvent = { readonly kind: 'ill'; readonly csId: number; readonly reason: string } | { readonly kind: 'recovered'; readonly csId: number };

interface Sample {
  readonly atMs: number;
  readonly totals: DiskTotals;
}

/** Samples kept per server at most (heartbeats within the window; a few per second at most). */
const SAMPLES_MAX = 256;

type Metric = 'commit' | 'read';

/** A server's means over the window: per commit, per read (ms), and bytes per read. */
type Latency = Partial<Record<Metric, number>> & { readonly readSize?: number };

/** Peers whose mean read is more than this many times larger or smaller are not compared on reads. */
const READ_SIZE_SPREAD_MAX = 2;

export class SickDisks {
  private readonly config: SickDiskConfig;
  private readonly samples = new Map<number, Sample[]>();
  private readonly slowSinceMs = new Map<number, number>();
  private readonly fineSinceMs = new Map<number, number>();
  private readonly ill = new Map<number, Illness>();
  /** When each server was last measured (its slow or fine spell counts only while measured). */
  private readonly measuredAtMs = new Map<number, number>();

  constructor(config: SickDiskConfig = SICK_DISK_DEFAULTS) {
    assert(config.factor > 1 && config.floorMs >= 0 && config.windowMs > 0 && config.minOps >= 1, 'sick-disk thresholds are sane');
    this.config = config;
  }

  /** A server's running totals, from a heartbeat. */
  record(csId: number, totals: DiskTotals, nowMs: number): void {
    let list = this.samples.get(csId);
    const last = list?.at(-1);
    // Totals that went down: the server restarted; what came before says nothing about now.
    if (list === undefined || (last !== undefined && (totals.commits < last.totals.commits || totals.reads < last.totals.reads))) {
      list = [];
      this.samples.set(csId, list);
    }
    list.push({ atMs: nowMs, totals });
    // Keep one sample older than the window: the window is measured from it.
    while (list.length > 2 && ((list[1]?.atMs ?? nowMs) <= nowMs - this.config.windowMs || list.length > SAMPLES_MAX)) list.shift();
  }

  /** Judges every server once; returns what changed. */
  judge(servers: readonly JudgedServer[], nowMs: number): SickDiskEvent[] {
    const latency = new Map<number, Latency>();
    for (const server of servers) {
      if (server.online) latency.set(server.csId, this.latencyOf(server.csId, nowMs));
    }
    const events: SickDiskEvent[] = [];
    for (const server of servers) {
      const own = latency.get(server.csId);
      if (own === undefined || (own.commit === undefined && own.read === undefined)) continue; // not measured: as it was
      // A spell counts only while measured all along.
      const lastMeasuredMs = this.measuredAtMs.get(server.csId);
      if (lastMeasuredMs !== undefined && nowMs - lastMeasuredMs > this.config.windowMs) {
        this.slowSinceMs.delete(server.csId);
        this.fineSinceMs.delete(server.csId);
      }
      this.measuredAtMs.set(server.csId, nowMs);
      const peers = servers.filter((other) => other.csId !== server.csId && other.tier === server.tier);
      const slow = (['commit', 'read'] as const).map((metric) => ({ metric, why: this.slowness(metric, own, peers, latency) }))
        .find((found) => found.why !== null);
      const current = this.ill.get(server.csId);
      let event: SickDiskEvent | null;
      if (slow !== undefined && slow.why !== null) event = this.slow(server.csId, slow.metric, slow.why, nowMs);
      // Ill: only the measure that made it so, measured again and fine, counts towards recovery.
      else if (current !== undefined && own[current.metric] === undefined) event = null;
      else event = this.fine(server.csId, nowMs);
      if (event !== null) events.push(event);
    }
    return events;
  }

  illness(csId: number): Illness | undefined {
    return this.ill.get(csId);
  }

  illServers(): number[] {
    return [...this.ill.keys()].sort((a, b) => a - b);
  }

  /** A server that left the cluster (removed). */
  forget(csId: number): void {
    this.measuredAtMs.delete(csId);
    this.samples.delete(csId);
    this.slowSinceMs.delete(csId);
    this.fineSinceMs.delete(csId);
    this.ill.delete(csId);
  }

  private latencyOf(csId: number, nowMs: number): Latency {
    const list = this.samples.get(csId) ?? [];
    const newest = list.at(-1);
    const oldest = list[0];
    if (newest === undefined || oldest === undefined || newest === oldest || nowMs - newest.atMs > this.config.windowMs) return {};
    const commits = newest.totals.commits - oldest.totals.commits;
    const reads = newest.totals.reads - oldest.totals.reads;
    const commit = commits >= this.config.minOps ? ((newest.totals.commitSeconds - oldest.totals.commitSeconds) / commits) * 1000 : undefined;
    const read = reads >= this.config.minOps ? ((newest.totals.readSeconds - oldest.totals.readSeconds) / reads) * 1000 : undefined;
    return {
      ...(commit === undefined ? {} : { commit }),
      ...(read === undefined ? {} : { read, readSize: (newest.totals.readBytes - oldest.totals.readBytes) / reads }),
    };
  }

  /** Why `own` is slow on `metric` against its peers, or null. */
  private slowness(metric: Metric, own: Latency, peers: readonly JudgedServer[], latency: ReadonlyMap<number, Latency>): string | null {
    const value = own[metric];
    if (value === undefined) return null;
    const comparable = (peer: Latency | undefined): boolean => metric === 'commit' || (peer?.readSize !== undefined && own.readSize !== undefined &&
      Math.max(peer.readSize, own.readSize) <= READ_SIZE_SPREAD_MAX * Math.max(1, Math.min(peer.readSize, own.readSize)));
    const measured = peers.map((peer) => latency.get(peer.csId)).filter(comparable).map((peer) => peer?.[metric])
      .filter((ms): ms is number => ms !== undefined).sort((a, b) => a - b);
    if (measured.length < 2) return null;
    const middle = measured.length / 2;
    const median = measured.length % 2 === 1 ? measured[Math.floor(middle)] ?? 0 : ((measured[middle - 1] ?? 0) + (measured[middle] ?? 0)) / 2;
    if (value <= this.config.factor * median || value - median < this.config.floorMs) return null;
    const what = metric === 'commit' ? 'journal commits' : 'reads';
    return `${what} take ${value.toFixed(1)} ms on average, ${median > 0 ? `${(value / median).toFixed(0)}x` : 'far above'} ` +
      `the median of the ${measured.length} other servers of its tier (${median.toFixed(1)} ms)`;
  }

  private slow(csId: number, metric: Metric, reason: string, nowMs: number): SickDiskEvent | null {
    this.fineSinceMs.delete(csId);
    const since = this.slowSinceMs.get(csId) ?? nowMs;
    this.slowSinceMs.set(csId, since);
    const current = this.ill.get(csId);
    if (current !== undefined) {
      this.ill.set(csId, { sinceMs: current.sinceMs, reason, metric });
      return null;
    }
    if (nowMs - since < this.config.sickAfterMs) return null;
    this.ill.set(csId, { sinceMs: nowMs, reason: `${reason}, for ${Math.round((nowMs - since) / 1000)} s`, metric });
    return { kind: 'ill', csId, reason };
  }

  private fine(csId: number, nowMs: number): SickDiskEvent | null {
    this.slowSinceMs.delete(csId);
    if (!this.ill.has(csId)) return null;
    const since = this.fineSinceMs.get(csId) ?? nowMs;
    this.fineSinceMs.set(csId, since);
    if (nowMs - since < this.config.recoverAfterMs) return null;
    this.ill.delete(csId);
    this.fineSinceMs.delete(csId);
    return { kind: 'recovered', csId };
  }
}
