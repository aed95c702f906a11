// Opens volumes for a front end (the NBD server) by name, sharing one open Volume among all users
// of the same name in this process: one lease, one chunk map, one write-ordering lock. The volume
// closes (and its lease is released) when the last user lets go.

import type { ReadCache } from '../cache/read_cache.ts';
import type { CsConnectionPool } from '../protocol/cs_connection.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import type { Logger } from '../util/log.ts';
import type { BlockDeviceHandle, BlockDeviceProvider } from './block_device.ts';
import { Volume } from './volume.ts';

export interface VolumeProviderDeps {
  readonly mds: MdsClient;
  readonly pool: CsConnectionPool;
  readonly log: Logger;
  readonly holder: string;
  readonly ioTimeoutMs: number;
  /** Take write leases from their holders (fencing them) instead of being refused. */
  readonly forceOpen?: boolean;
  /** This host, as chunk servers name theirs (see VolumeOpenOptions.hostLabel). */
  readonly hostLabel?: string;
  /** Chunk servers to read from last (see VolumeOpenOptions.avoidServers). */
  readonly avoidServers?: ReadonlySet<number>;
  /** The process's local read cache (see VolumeOpenOptions.readCache). */
  readonly readCache?: ReadCache;
}

interface Shared {
  readonly volume: Promise<Volume>;
  /** The volume once open. */
  opened: Volume | null;
  users: number;
}

export class VolumeProvider implements BlockDeviceProvider {
  private readonly open_ = new Map<string, Shared>();
  private readonly deps: VolumeProviderDeps;

  constructor(deps: VolumeProviderDeps) {
    this.deps = deps;
  }

  async list(): Promise<string[]> {
    return (await this.deps.mds.exports()).names;
  }

  async open(name: string, options: { readOnly: boolean }): Promise<BlockDeviceHandle> {
    // Users of one mode share one open: writers share the lease. A read-only open has no cache,
    // so it sees every write the writable open made.
    const key = `${options.readOnly ? 'ro' : 'rw'}:${name}`;
    let shared = this.open_.get(key);
    if (shared === undefined) {
      const volume = Volume.open({ ...this.deps, name, readOnly: options.readOnly, force: this.deps.forceOpen === true });
      const entry: Shared = { volume, opened: null, users: 0 };
      shared = entry;
      this.open_.set(key, entry);
      volume.then((opened) => {
        entry.opened = opened;
      }, () => {
        if (this.open_.get(key) === entry) this.open_.delete(key);
      });
    }
    const entry = shared;
    entry.users += 1;
    let device: Volume;
    try {
      device = await entry.volume;
    } catch (error) {
      entry.users -= 1;
      throw error;
    }
    let released = false;
    return {
      device,
      release: async () => {
        if (released) return;
        released = true;
        entry.users -= 1;
        if (entry.users > 0) return;
        if (this.open_.get(key) === entry) this.open_.delete(key);
        await device.close();
      },
    };
  }

  /** The volume open for write here under `name`, if any. */
  writableVolume(name: string): Volume | undefined {
    return this.open_.get(`rw:${name}`)?.opened ?? undefined;
  }

  /** The volumes open now (for metrics). */
  *openVolumes(): Iterable<Volume> {
    for (const shared of this.open_.values()) if (shared.opened !== null) yield shared.opened;
  }

  /** Closes every open volume (server shutdown). */
  async closeAll(): Promise<void> {
    const all = [...this.open_.values()];
    this.open_.clear();
    await Promise.all(all.map(async (shared) => (await shared.volume.catch(() => null))?.close()));
  }
}
