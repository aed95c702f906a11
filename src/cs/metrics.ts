// Chunk-server metrics for Prometheus. Per-request work is one counter increment and one histogram
// observation through pre-created label children; totals kept by the store and the journal are
// read at scrape time.

import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { IoTotals } from '../protocol/api.ts';
import { CS_OP, type CsOp } from '../protocol/cs_messages.ts';
import type { Journal } from './journal/journal.ts';
import type { ChunkStore } from './store/chunk_store.ts';
import type { PartialWriteReporter } from './partial_writes.ts';
import type { Scrubber } from './scrubber.ts';
import { collectProcessMetrics, counterFromTotal } from '../util/metrics.ts';

const OP_NAMES: Record<number, string> = Object.fromEntries(Object.entries(CS_OP).map(([name, op]) => [op, name.toLowerCase()]));

export type WriteStage = 'primary_total' | 'primary_local' | 'primary_forward' | 'replica_total';

export interface SpaceReport {
  readonly capacityBytes: number;
  readonly freeBytes: number;
  readonly usedBytes: number;
}

export class CsMetrics {
  readonly registry = new Registry();
  readonly connections: Gauge;
  /** Connections that have not authenticated yet (a subset of `connections`). */
  readonly unauthenticatedConnections: Gauge;
  /** New connections closed at once: the server was full of authenticated ones. */
  readonly connectionsRefused: Counter;
  /** Unauthenticated connections closed to make room for a newer one. */
  readonly connectionsEvicted: Counter;
  /** Unauthenticated connections closed for announcing a frame above the pre-auth limit. */
  readonly preauthFramesTooLarge: Counter;
  readonly authFailures: Counter;
  readonly protocolErrors: Counter;
  private readonly requests: Counter<'op' | 'code'>;
  private readonly latency: Histogram<'op'>;
  private readonly writeStages: Readonly<Record<WriteStage, Histogram.Internal<'stage'>>>;
  private readonly store: () => ChunkStore | null;
  private readonly requestTotals = { readOps: 0, writeOps: 0, readSeconds: 0, writeSeconds: 0 };

  constructor(store: () => ChunkStore | null, space: () => SpaceReport | null) {
    this.store = store;
    const registers = [this.registry];
    collectProcessMetrics(this.registry, 'shoal_cs_');
    this.connections = new Gauge({ name: 'shoal_cs_connections', help: 'Open client and peer connections', registers });
    this.unauthenticatedConnections = new Gauge({
      name: 'shoal_cs_unauthenticated_connections', help: 'Open connections that have not authenticated yet', registers,
    });
    this.connectionsRefused = new Counter({
      name: 'shoal_cs_connections_refused_total',
      help: 'New connections closed at once because --connections-max authenticated connections were open',
      registers,
    });
    this.connectionsEvicted = new Counter({
      name: 'shoal_cs_connections_evicted_total',
      help: 'Unauthenticated connections closed, oldest first, to make room for a new connection',
      registers,
    });
    this.preauthFramesTooLarge = new Counter({
      name: 'shoal_cs_preauth_frames_too_large_total',
      help: 'Unauthenticated connections closed for announcing a frame above the pre-authentication limit',
      registers,
    });
    this.authFailures = new Counter({ name: 'shoal_cs_auth_failures_total', help: 'Connections refused for bad credentials', registers });
    this.protocolErrors = new Counter({ name: 'shoal_cs_protocol_errors_total', help: 'Malformed requests answered with an error', registers });
    this.requests = new Counter({ name: 'shoal_cs_requests_total', help: 'Requests by op and result code', labelNames: ['op', 'code'], registers });
    this.latency = new Histogram({
      name: 'shoal_cs_request_duration_seconds',
      help: 'Request latency by op, including journal commit and forwarding',
      labelNames: ['op'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    const stages = new Histogram({
      name: 'shoal_cs_write_stage_seconds',
      help: 'Where a write\'s time goes: on the primary the whole write (primary_total), its own copy (primary_local) ' +
        'and the wait for the replicas it forwarded to (primary_forward); on a replica the whole write (replica_total)',
      labelNames: ['stage'] as const,
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    const stage = (name: WriteStage): Histogram.Internal<'stage'> => {
      stages.zero({ stage: name });
      return stages.labels(name);
    };
    this.writeStages = {
      primary_total: stage('primary_total'), primary_local: stage('primary_local'),
      primary_forward: stage('primary_forward'), replica_total: stage('replica_total'),
    };
    storeGauges(registers, store, space);
  }

  /** Records one stage of a write (WRITE or ZERO), in seconds. */
  observeWriteStage(stage: WriteStage, seconds: number): void {
    this.writeStages[stage].observe(seconds);
  }

  /**
   * Times each journal record from its append until its batch is durable; exports where the
   * journal is, its space, and how writers were paced to the data disk's drain rate.
   */
  watchJournal(journal: Journal, where: { readonly directory: string; readonly ownDevice: boolean }): void {
    const registers = [this.registry];
    const wait = new Histogram({
      name: 'shoal_cs_journal_wait_seconds',
      help: 'Time from a record\'s append to the journal until its batch is durable (group commit wait plus write and fdatasync)',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    journal.observeWait = (seconds) => wait.observe(seconds);
    new Gauge({
      name: 'shoal_cs_journal_info',
      help: 'Where the journal is: its directory, and own_device="1" when that is another device than the data directory\'s',
      labelNames: ['directory', 'own_device'],
      registers,
    }).set({ directory: where.directory, own_device: where.ownDevice ? '1' : '0' }, 1);
    const space = new Gauge({
      name: 'shoal_cs_journal_space_bytes',
      help: 'The journal\'s space: kind="capacity" (--journal-size), "files" (what its segments and spares take), "held" (records not yet freed by a checkpoint)',
      labelNames: ['kind'],
      registers,
      collect() {
        const facts = journal.spaceFacts();
        space.set({ kind: 'capacity' }, facts.capacityBytes);
        space.set({ kind: 'files' }, facts.filesBytes);
        space.set({ kind: 'held' }, facts.heldBytes);
      },
    });
    new Gauge({
      name: 'shoal_cs_journal_drain_bytes_per_second',
      help: 'The rate the data disk was last seen to take the journal\'s changes at (checkpoint syncs); writers are paced to it once the journal holds more than a segment',
      registers,
      collect() {
        const rate = journal.spaceFacts().drainBytesPerSecond;
        if (rate !== null) this.set(rate);
      },
    });
    new Gauge({
      name: 'shoal_cs_journal_waiting_records',
      help: 'Records waiting to go into the journal (paced, or the journal full)',
      registers,
      collect() {
        this.set(journal.spaceFacts().waitingRecords);
      },
    });
    this.exportTotals([
      ['shoal_cs_journal_paced_records_total', 'Records that waited before going into the journal (paced to the drain rate, or the journal full)', () => journal.paceStats.pacedRecordsTotal],
      ['shoal_cs_journal_paced_seconds_total', 'Seconds records waited before going into the journal, summed', () => journal.paceStats.pacedSecondsTotal],
      ['shoal_cs_journal_full_waits_total', 'Times the journal\'s space was full and the next record waited for a checkpoint', () => journal.paceStats.fullWaitsTotal],
    ]);
  }

  /** Exports the scrubber's progress and findings. */
  watchScrubber(scrubber: Scrubber): void {
    this.exportTotals([
      ['shoal_cs_scrub_scanned_bytes_total', 'Bytes the scrubber has checked', () => scrubber.stats.scannedBytesTotal],
      ['shoal_cs_scrub_bad_blocks_total', 'Blocks the scrubber found failing their checksum', () => scrubber.stats.badBlocksTotal],
      ['shoal_cs_scrub_passes_total', 'Completed scrub passes over every replica', () => scrubber.stats.passesTotal],
    ]);
  }

  /** Exports how often this server, as a primary, reported changes incomplete on members. */
  watchPartialWrites(reporter: PartialWriteReporter): void {
    this.exportTotals([
      ['shoal_cs_partial_writes_reported_total', 'Changes incomplete on members that this primary reported to the MDS', () => reporter.stats.reportedTotal],
      ['shoal_cs_partial_writes_report_failures_total', 'Reports of incomplete changes the MDS did not take', () => reporter.stats.failedTotal],
      ['shoal_cs_partial_writes_unreported_total', 'Incomplete changes not reported (not registered, or too many in flight)', () => reporter.stats.skippedTotal],
    ]);
  }

  /** Exports each [name, help, read] as a counter that follows a running total. */
  private exportTotals(totals: ReadonlyArray<[string, string, () => number]>): void {
    for (const [name, help, read] of totals) counterFromTotal([this.registry], name, help, read);
  }

  /** Starts timing one request; call the result with the reply's error code (or undefined). */
  startRequest(op: CsOp): (code: string | undefined) => void {
    const startedNs = process.hrtime.bigint();
    const name = OP_NAMES[op] ?? 'unknown';
    return (code) => {
      const seconds = Number(process.hrtime.bigint() - startedNs) / 1e9;
      this.latency.observe({ op: name }, seconds);
      this.requests.inc({ op: name, code: code ?? 'ok' });
      if (op === CS_OP.READ) {
        this.requestTotals.readOps += 1;
        this.requestTotals.readSeconds += seconds;
      } else if (op === CS_OP.WRITE) {
        this.requestTotals.writeOps += 1;
        this.requestTotals.writeSeconds += seconds;
      }
    };
  }

  /** Reads and writes served since start (clients' and peers'), for the MDS's heartbeat (`shoal top`). */
  ioTotals(): IoTotals {
    const stats = this.store()?.stats;
    const journal = this.store()?.journal.stats;
    return {
      ...this.requestTotals, readBytes: stats?.readBytesTotal ?? 0, writtenBytes: stats?.writtenBytesTotal ?? 0,
      journalCommits: journal?.commitsTotal ?? 0, journalCommitSeconds: journal?.commitSecondsTotal ?? 0,
    };
  }
}

function storeGauges(registers: Registry[], store: () => ChunkStore | null, space: () => SpaceReport | null): void {
  const totals: Array<[string, string, (s: ChunkStore) => number]> = [
    ['shoal_cs_read_bytes_total', 'Bytes read from chunk replicas', (s) => s.stats.readBytesTotal],
    ['shoal_cs_written_bytes_total', 'Bytes written to chunk replicas', (s) => s.stats.writtenBytesTotal],
    ['shoal_cs_zeroed_bytes_total', 'Bytes zeroed or trimmed', (s) => s.stats.zeroedBytesTotal],
    ['shoal_cs_replica_fill_bytes_total', 'Data bytes copied into replicas from other servers (re-replication, resync, settling); holes are not counted',
      (s) => s.stats.filledBytesTotal],
    ['shoal_cs_checksum_errors_total', 'Blocks that failed their checksum on read', (s) => s.stats.checksumErrorsTotal],
    ['shoal_cs_repaired_blocks_total', 'Blocks replaced from another replica after failing their checksum', (s) => s.stats.repairedBlocksTotal],
    ['shoal_cs_journal_appends_total', 'Records appended to the journal', (s) => s.journal.stats.appendsTotal],
    ['shoal_cs_journal_commits_total', 'Journal group commits (one fdatasync each)', (s) => s.journal.stats.commitsTotal],
    ['shoal_cs_journal_bytes_total', 'Bytes written to the journal', (s) => s.journal.stats.bytesTotal],
    ['shoal_cs_journal_commit_seconds_total', 'Time spent in journal commits', (s) => s.journal.stats.commitSecondsTotal],
    ['shoal_cs_journal_checkpoints_total', 'Journal checkpoints', (s) => s.journal.stats.checkpointsTotal],
    ['shoal_cs_journal_damaged_records_total', 'Damaged journal records found at start-up (data after them not replayed)', (s) => s.journal.damagedRecordsTotal],
  ];
  for (const [name, help, read] of totals) {
    counterFromTotal(registers, name, help, () => {
      const current = store();
      return current === null ? null : read(current);
    });
  }
  new Gauge({
    name: 'shoal_cs_chunks',
    help: 'Chunk replicas stored',
    registers,
    collect() {
      const current = store();
      if (current !== null) this.set(current.chunkCount);
    },
  });
  new Gauge({
    name: 'shoal_cs_healthy',
    help: '1 while the server takes new replicas; 0 after disk errors, a full disk or damage found at start-up',
    registers,
    collect() {
      const current = store();
      if (current !== null) this.set(current.healthProblem === null ? 1 : 0);
    },
  });
  new Gauge({
    name: 'shoal_cs_journal_healthy',
    help: '1 while the journal accepts writes, 0 after a write error',
    registers,
    collect() {
      const current = store();
      if (current !== null) this.set(current.journal.healthError === null ? 1 : 0);
    },
  });
  new Gauge({
    name: 'shoal_cs_space_bytes',
    help: 'Space of the data directory file system',
    labelNames: ['kind'],
    registers,
    collect() {
      const report = space();
      if (report === null) return;
      this.set({ kind: 'capacity' }, report.capacityBytes);
      this.set({ kind: 'free' }, report.freeBytes);
      this.set({ kind: 'used' }, report.usedBytes);
    },
  });
}
