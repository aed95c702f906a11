// Soft state about chunk servers: when each last sent a heartbeat and what space it reported.
// Not durable on purpose: after an MDS restart every server is offline until it reports again,
// which is the truth as far as the MDS can know it. Time comes in as an argument.

import type { ChunkServerState } from '../protocol/api.ts';

export interface ChunkServerReport {
  readonly capacityBytes: number;
  readonly freeBytes: number;
  readonly usedBytes: number;
  readonly chunkCount: number;
  readonly healthy: boolean;
  readonly lastError: string;
}

interface Entry {
  lastHeartbeatMs: number;
  report: ChunkServerReport;
}

export class ChunkServerRegistry {
  private readonly entries = new Map<number, Entry>();
  /** csId -> until when it is avoided for placement. */
  private readonly suspects = new Map<number, number>();
  readonly heartbeatTimeoutMs: number;
  /** When this MDS started: a server never heard from has been offline at least since then. */
  private readonly startedMs: number;

  constructor(heartbeatTimeoutMs: number, startedMs: number) {
    this.heartbeatTimeoutMs = heartbeatTimeoutMs;
    this.startedMs = startedMs;
  }

  /** 0 while online; otherwise how long since the server was last heard (or since our start). */
  offlineForMs(csId: number, nowMs: number): number {
    if (this.isOnline(csId, nowMs)) return 0;
    const entry = this.entries.get(csId);
    return nowMs - (entry === undefined ? this.startedMs : entry.lastHeartbeatMs + this.heartbeatTimeoutMs);
  }

  heartbeat(csId: number, report: ChunkServerReport, nowMs: number): void {
    this.entries.set(csId, { lastHeartbeatMs: nowMs, report });
  }

  /**
   * A client just failed to reach this server. Until its heartbeats say otherwise for a whole
   * timeout, it is not chosen for new replicas (it may be dead and not yet detected).
   */
  markSuspect(csId: number, nowMs: number): void {
    this.suspects.set(csId, nowMs + this.heartbeatTimeoutMs);
  }

  isSuspect(csId: number, nowMs: number): boolean {
    const untilMs = this.suspects.get(csId);
    if (untilMs === undefined) return false;
    if (untilMs > nowMs) return true;
    this.suspects.delete(csId);
    return false;
  }

  /** A server is online while its last heartbeat is younger than the timeout. */
  state(csId: number, nowMs: number): ChunkServerState {
    const entry = this.entries.get(csId);
    if (entry === undefined) return 'offline';
    return nowMs - entry.lastHeartbeatMs <= this.heartbeatTimeoutMs ? 'online' : 'offline';
  }

  isOnline(csId: number, nowMs: number): boolean {
    return this.state(csId, nowMs) === 'online';
  }

  report(csId: number): ChunkServerReport | undefined {
    return this.entries.get(csId)?.report;
  }

  heartbeatAgeMs(csId: number, nowMs: number): number | null {
    const entry = this.entries.get(csId);
    return entry === undefined ? null : Math.max(0, nowMs - entry.lastHeartbeatMs);
  }
}
