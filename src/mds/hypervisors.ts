// Hypervisors and what they may do: each holds its own credential (issued here, kept here only as
// a digest), serves the volumes an admin attached to it, and gets, for each volume it opens, a
// capability the chunk servers check on their own. Revoking one refuses its credential at once and
// voids its capabilities on every chunk server (pushed now to those online, given at registration to
// those that come back), while the others keep working.

import { StorageError } from '../errors.ts';
import {
  formatHypervisorCredential,
  hypervisorSecretDigest,
  newHypervisorSecret,
  parseHypervisorCredential,
  tokenEqual,
} from '../protocol/auth.ts';
import { issueCapability, type CapabilityGrant, type CapabilityMode, type HypervisorId } from '../protocol/capability.ts';
import type { HypervisorInfo } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import type { HypervisorRecord, MdsTables } from './model.ts';
import type { MdsOp, MdsOpResult } from './ops.ts';

export interface HypervisorsDeps {
  readonly store: { readonly tables: MdsTables; submit(op: MdsOp): Promise<MdsOpResult> };
  readonly clock: Clock;
  readonly log: Logger;
  /** capabilityKey(clusterKey) */
  readonly capabilityKey: Buffer;
  readonly capabilityTtlMs: number;
  /** Chunk servers worth telling now (online, not removed). */
  readonly onlineServers: () => number[];
  readonly revokeOn: (csId: number, hypervisorId: number, issuedBeforeMs: number) => Promise<void>;
}

export class Hypervisors {
  private readonly deps: HypervisorsDeps;

  constructor(deps: HypervisorsDeps) {
    this.deps = deps;
  }

  /** The hypervisor a bearer token belongs to; ERR_UNAUTHORIZED for anything else, revoked included. */
  authenticate(token: string): HypervisorRecord {
    const credential = parseHypervisorCredential(token);
    const record = credential === null ? undefined : this.deps.store.tables.getHypervisor(credential.id);
    if (credential === null || record === undefined || !tokenEqual(record.secretDigest, hypervisorSecretDigest(credential.secret))) {
      throw new StorageError('ERR_UNAUTHORIZED', 'this route needs a hypervisor credential as "Authorization: Bearer shoal-hv1.ID.SECRET"');
    }
    if (record.revokedAtMs !== null) {
      throw new StorageError('ERR_UNAUTHORIZED',
        `the credential of hypervisor "${record.name}" was revoked at ${new Date(record.revokedAtMs).toISOString()}`);
    }
    return record;
  }

  mayServe(hypervisor: HypervisorRecord, volumeName: string): boolean {
    return hypervisor.allVolumes || hypervisor.volumes.includes(volumeName);
  }

  requireVolume(hypervisor: HypervisorRecord, volumeName: string): void {
    if (this.mayServe(hypervisor, volumeName)) return;
    throw new StorageError('ERR_UNAUTHORIZED',
      `hypervisor "${hypervisor.name}" may not serve volume "${volumeName}": attach it first (shoal hypervisor allow ${hypervisor.name} ${volumeName})`);
  }

  /** A capability for one volume, valid for the configured time. */
  issue(hypervisor: HypervisorRecord, volumeId: number, mode: CapabilityMode, epoch: number): CapabilityGrant {
    const nowMs = this.deps.clock.nowMs();
    return issueCapability(this.deps.capabilityKey, {
      hypervisorId: hypervisor.id as HypervisorId, volumeId, mode, epoch: mode === 'write' ? epoch : 0,
      issuedAtMs: nowMs, expiresAtMs: nowMs + this.deps.capabilityTtlMs,
    });
  }

  async add(name: string, allVolumes: boolean, volumes: readonly string[]): Promise<{ hypervisor: HypervisorInfo; credential: string }> {
    const secret = newHypervisorSecret();
    const result = await this.deps.store.submit({
      type: 'addHypervisor', name, secretDigest: hypervisorSecretDigest(secret), allVolumes, volumes, nowMs: this.deps.clock.nowMs(),
    });
    assert(result.type === 'hypervisor', 'addHypervisor yields a hypervisor');
    this.deps.log.info('hypervisor added', { name, id: result.record.id, allVolumes, volumes: volumes.length });
    return { hypervisor: info(result.record), credential: formatHypervisorCredential(result.record.id, secret) };
  }

  list(): HypervisorInfo[] {
    return this.deps.store.tables.listHypervisors().map(info);
  }

  byName(name: string): HypervisorRecord {
    const id = this.deps.store.tables.getHypervisorIdByName(name);
    const record = id === undefined ? undefined : this.deps.store.tables.getHypervisor(id);
    if (record === undefined) throw new StorageError('ERR_NOT_FOUND', `hypervisor "${name}" does not exist (shoal hypervisor list)`);
    return record;
  }

  async setVolumes(name: string, change: { allow?: readonly string[]; deny?: readonly string[]; allVolumes?: boolean }): Promise<HypervisorInfo> {
    const record = this.byName(name);
    const volumes = new Set(record.volumes);
    for (const volume of change.allow ?? []) volumes.add(volume);
    for (const volume of change.deny ?? []) volumes.delete(volume);
    const result = await this.deps.store.submit({
      type: 'setHypervisorVolumes', hypervisorId: record.id, allVolumes: change.allVolumes ?? record.allVolumes, volumes: [...volumes],
    });
    assert(result.type === 'hypervisor', 'setHypervisorVolumes yields a hypervisor');
    return info(result.record);
  }

  /**
   * Refuses the credential from now on and voids its capabilities on every chunk server online;
   * servers offline now learn it when they register again, before they take a write.
   */
  async revoke(name: string): Promise<{ hypervisor: HypervisorInfo; serversTold: number; serversMissed: number[] }> {
    const record = this.byName(name);
    const result = await this.deps.store.submit({ type: 'revokeHypervisor', hypervisorId: record.id, nowMs: this.deps.clock.nowMs() });
    assert(result.type === 'hypervisor' && result.record.revokedAtMs !== null, 'revokeHypervisor yields a revoked hypervisor');
    const issuedBeforeMs = voidedBeforeMs(result.record.revokedAtMs);
    const servers = this.deps.onlineServers();
    const results = await Promise.allSettled(servers.map((csId) => this.deps.revokeOn(csId, record.id, issuedBeforeMs)));
    const missed = servers.filter((_, index) => results[index]?.status === 'rejected');
    this.deps.log.warn('hypervisor revoked', { name, id: record.id, serversTold: servers.length - missed.length, missed });
    return { hypervisor: info(result.record), serversTold: servers.length - missed.length, serversMissed: missed };
  }

}

/** For registration replies: every revoked hypervisor and from when its capabilities are void. */
export function revocationsOf(tables: MdsTables): Array<{ hypervisorId: number; issuedBeforeMs: number }> {
  return tables.listHypervisors().flatMap((record) =>
    record.revokedAtMs === null ? [] : [{ hypervisorId: record.id, issuedBeforeMs: voidedBeforeMs(record.revokedAtMs) }]);
}

/** Capabilities issued before this are void: issue times are in ms, so the revocation's own ms counts too. */
function voidedBeforeMs(revokedAtMs: number): number {
  return revokedAtMs + 1;
}

function info(record: HypervisorRecord): HypervisorInfo {
  return {
    id: record.id,
    name: record.name,
    allVolumes: record.allVolumes,
    volumes: [...record.volumes],
    createdAt: new Date(record.createdAtMs).toISOString(),
    revokedAt: record.revokedAtMs === null ? null : new Date(record.revokedAtMs).toISOString(),
  };
}
