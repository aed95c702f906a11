// The quarantine: replicas chunk servers hold that the chunk map does not count on (a crashed
// allocation, a deleted volume's replica on a server that was away, a copy ahead of the map, or,
// after the MDS's database was restored or lost, replicas of data the map lacks). They are never
// deleted on sight, since the map may be the one that lost something: kept, counted in stat,
// listed, deleted on an admin's word, or after the grace period unless they are newer than the
// map (see generations.ts). cluster.ts decides what goes in; this module keeps the records.

import { StorageError } from '../errors.ts';
import type { QuarantineDeleteBody, QuarantineDeleteReply, QuarantineList, QuarantineSummary } from '../protocol/api.ts';
import type { Clock } from '../util/clock.ts';
import type { Logger } from '../util/log.ts';
import type { QuarantineRecord } from './model.ts';
import type { StateStore } from './replicator.ts';

/** Entries per op: one LMDB transaction stays small. */
const BATCH_MAX = 1024;
/** How often the quarantine is checked for replicas past their grace. */
const CHECK_INTERVAL_MS = 60_000;

export interface QuarantineOptions {
  readonly store: StateStore;
  /** A replica not newer than the map is deleted after this long. */
  readonly graceMs: number;
  readonly clock: Clock;
  readonly log: Logger;
}

export class Quarantine {
  private readonly options: QuarantineOptions;
  private checkedMs = Number.NEGATIVE_INFINITY;

  constructor(options: QuarantineOptions) {
    this.options = options;
  }

  /** Sets replicas aside (a replica that became a member meanwhile is left out by the op). */
  async add(entries: ReadonlyArray<Omit<QuarantineRecord, 'sinceMs'>>): Promise<void> {
    for (let start = 0; start < entries.length; start += BATCH_MAX) {
      await this.options.store.submit({ type: 'quarantineReplicas', entries: entries.slice(start, start + BATCH_MAX), nowMs: this.options.clock.nowMs() });
    }
  }

  /** Quarantined replicas of this server that it no longer holds (its disk was replaced): forgotten. */
  async forgetVanished(csId: number, held: ReadonlySet<number>): Promise<void> {
    const vanished: Array<{ chunkId: number; csId: number }> = [];
    this.forEach((record) => {
      if (record.csId === csId && !held.has(record.chunkId)) vanished.push(record);
    });
    if (vanished.length > 0) await this.options.store.submit({ type: 'releaseQuarantined', entries: vanished });
  }

  summary(): QuarantineSummary {
    let replicas = 0;
    let newerThanMap = 0;
    let bytes = 0;
    this.forEach((record) => {
      replicas += 1;
      if (record.newerThanMap) newerThanMap += 1;
      bytes += record.sizeBytes;
    });
    return { replicas, newerThanMap, bytes, graceMs: this.options.graceMs };
  }

  /** Visits every quarantined replica, a page at a time. */
  private forEach(visit: (record: QuarantineRecord) => void): void {
    for (let page = this.options.store.tables.listQuarantined(BATCH_MAX); page.length > 0;) {
      for (const record of page) visit(record);
      const last = page.at(-1);
      page = last === undefined ? [] : this.options.store.tables.listQuarantined(BATCH_MAX, last);
    }
  }

  /** A quarantined replica newer than the map holds this chunk index: its data must not be shadowed. */
  newerReplicaAt(volumeId: number, chunkIndex: number): boolean {
    let found = false;
    this.forEach((record) => {
      if (record.newerThanMap && record.volumeId === volumeId && record.chunkIndex === chunkIndex) found = true;
    });
    return found;
  }

  list(limit: number): QuarantineList {
    const records = this.options.store.tables.listQuarantined(limit + 1);
    return {
      replicas: records.slice(0, limit).map((record) => ({
        chunkId: record.chunkId,
        csId: record.csId,
        volumeId: record.volumeId,
        chunkIndex: record.chunkIndex,
        version: record.version,
        generation: record.generation,
        sizeBytes: record.sizeBytes,
        newerThanMap: record.newerThanMap,
        reason: record.reason,
        since: new Date(record.sinceMs).toISOString(),
        deleteAfter: record.newerThanMap ? null : new Date(record.sinceMs + this.options.graceMs).toISOString(),
      })),
      truncated: records.length > limit,
    };
  }

  /**
   * An admin's word: the named quarantined replicas (or all) are queued for deletion. Replicas
   * newer than the map are left unless `includeNewer`: their data may exist nowhere else.
   */
  async delete(body: QuarantineDeleteBody): Promise<QuarantineDeleteReply> {
    const chosen: QuarantineRecord[] = [];
    if (body.all === true) this.forEach((record) => chosen.push(record));
    for (const { chunkId, csId } of body.replicas ?? []) {
      const record = this.options.store.tables.getQuarantined(chunkId, csId);
      if (record === undefined) throw new StorageError('ERR_NOT_FOUND', `no quarantined replica of chunk ${chunkId} on chunk server ${csId}`);
      chosen.push(record);
    }
    const released = chosen.filter((record) => !record.newerThanMap || body.includeNewer === true);
    for (let start = 0; start < released.length; start += BATCH_MAX) {
      await this.options.store.submit({ type: 'releaseQuarantined', entries: released.slice(start, start + BATCH_MAX) });
    }
    this.options.log.warn('quarantined replicas released for deletion by an admin', { count: released.length, includeNewer: body.includeNewer === true });
    return { queued: released.length, keptNewer: chosen.length - released.length };
  }

  /** Quarantined replicas not newer than the map, past their grace: queued for deletion. */
  async expire(): Promise<void> {
    const nowMs = this.options.clock.nowMs();
    // A short grace (tests, impatient admins) is checked more often, never more than once a second.
    const intervalMs = Math.min(CHECK_INTERVAL_MS, Math.max(1_000, this.options.graceMs / 4));
    if (nowMs - this.checkedMs < intervalMs) return;
    this.checkedMs = nowMs;
    const expired: QuarantineRecord[] = [];
    this.forEach((record) => {
      if (!record.newerThanMap && nowMs - record.sinceMs >= this.options.graceMs) expired.push(record);
    });
    for (let start = 0; start < expired.length; start += BATCH_MAX) {
      await this.options.store.submit({ type: 'releaseQuarantined', entries: expired.slice(start, start + BATCH_MAX) });
    }
    if (expired.length > 0) this.options.log.info('quarantined replicas past their grace queued for deletion', { count: expired.length });
  }
}
