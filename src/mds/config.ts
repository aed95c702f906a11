// The MDS's settings, with their defaults (the daemon's flags override them; see main.ts).

import { CHUNK_BYTES_DEFAULT } from '../limits.ts';
import type { FailureDomain } from './placement.ts';
import { SICK_DISK_DEFAULTS } from './sick_disks.ts';

export interface MdsConfig {
  readonly failureDomain: FailureDomain;
  readonly heartbeatIntervalMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly leaseTimeoutMs: number;
  readonly replicasNormalDefault: number;
  readonly replicasMinDefault: number;
  readonly chunkSizeBytesDefault: number;
  /** A server offline this long has its replicas replaced for good. */
  readonly replaceAfterMs: number;
  /**
   * A chunk with fewer than its minimum of members online gets a replacement after this long (at
   * most replaceAfterMs); with its minimum online it waits replaceAfterMs for the missing ones.
   * Also the grace after an MDS start, during which servers come back and nothing is replaced.
   */
  readonly replaceEndangeredAfterMs: number;
  /** A quarantined replica not newer than the map is deleted after this long (see cluster.ts). */
  readonly quarantineGraceMs: number;
  /** Copy rate of re-replication and rebalancing together (0 = unlimited). */
  readonly recoveryBytesPerSecond: number;
  readonly recoveryConcurrency: number;
  readonly rebalanceThreshold: number;
  /** How long a capability the MDS issues to a hypervisor's client is valid (it renews well before). */
  readonly capabilityTtlMs: number;
  /** A chunk server whose disk is this many times slower than its tier's median ... (sick_disks.ts) */
  readonly sickLatencyFactor: number;
  /** ... for this long on end is marked ill: reads and new chunks avoid it. */
  readonly sickAfterMs: number;
  /** Copy rate at which a volume's hot chunks follow its writer to its host (0: they stay). */
  readonly localityBytesPerSecond: number;
}

const MiB = 1024 * 1024;

export const MDS_CONFIG_DEFAULTS: MdsConfig = {
  failureDomain: 'host',
  heartbeatIntervalMs: 1_000,
  heartbeatTimeoutMs: 5_000,
  leaseTimeoutMs: 20_000,
  replicasNormalDefault: 3,
  replicasMinDefault: 2,
  chunkSizeBytesDefault: CHUNK_BYTES_DEFAULT,
  replaceAfterMs: 5 * 60_000,
  replaceEndangeredAfterMs: 30_000,
  quarantineGraceMs: 7 * 24 * 3_600_000,
  recoveryBytesPerSecond: 64 * MiB,
  recoveryConcurrency: 4,
  rebalanceThreshold: 0.1,
  capabilityTtlMs: 3_600_000,
  sickLatencyFactor: SICK_DISK_DEFAULTS.factor,
  sickAfterMs: SICK_DISK_DEFAULTS.sickAfterMs,
  localityBytesPerSecond: 4 * MiB,
};
