// `npm run bench:cache-soak` — the read cache's soak: 10^6 reads, each checked, across a forced
// takeover by another NBD server and back, a kill -9 and restart, and a cache file damaged under
// a running server and under a stopped one: not one stale or wrong byte (the read-cache issue).
//
// A real cluster (MDS and three chunk servers, each its own process, on hosts host-a, host-b and
// host-c) and two NBD servers of two hypervisors, hv-a (--host host-a) and hv-b (--host host-b),
// each with a small read cache of its own (so blocks are evicted all the time) and --force-open.
// The guest (bench/soak/workload.ts, over the repo's pipelined NBD client) keeps `--workers`
// requests in flight: reads of zipf-drawn 64 KiB blocks of a volume several times the cache, a few
// writes; every sector read is checked against the model of what it must hold (bench/soak/model.ts).
// Spread over the run (fault i of 9 at i/10 of the reads, each at least half a share after the
// previous one ended), the harness:
//   - damages hv-a's slot file while it runs (random ranges overwritten with random bytes);
//   - moves the guest to hv-b, which takes the volume by force while hv-a still holds it and
//     still has requests in flight; hv-a's connections stay open for a while and are probed:
//     reads (must be fresh or fail) and writes (must be refused: hv-a is fenced);
//   - damages hv-b's slot file while it runs;
//   - kills hv-b with SIGKILL under load, damages its slot file while it is down, starts it
//     again with the same cache directory (it reclaims its lease) and reconnects;
//   - moves the guest back to hv-a by force (hv-b fenced and probed the same way);
//   - damages hv-a's slot file again;
//   - reconnects to hv-a after a clean close (its next lease follows its last: the cache is kept);
//   - hands the volume to hv-b cleanly (hv-a closes, hv-b opens and writes) and back to hv-a
//     (whose cache must not answer from before hv-b's writes).
// Prints progress every few seconds and a report; exits 1 on any stale or wrong read (or a write a
// fenced server acknowledged), 2 when the time limit came first, 3 when the harness itself failed,
// 0 otherwise.
//
// Usage: node --enable-source-maps build/bench/cache-soak.js [--reads N | --quick] [--max-seconds S] [...] (--help)

import { randomBytes, randomInt } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { LocalCluster } from '../src/local/cluster.ts';
import { seededRandom } from '../src/util/clock.ts';
import { formatBytes, parseSizeBytes } from '../src/util/size.ts';
import { PipelinedNbdClient } from '../test/helpers/nbd_pipelined.ts';
import { NbdServer } from '../test/helpers/nbd_server.ts';
import { damageCacheFile, readCacheArgs, readCacheCounters, type ReadCacheCounters } from '../test/helpers/read_cache.ts';
import { zipf } from '../test/helpers/zipf.ts';
import { SECTOR_BYTES, SoakModel } from './soak/model.ts';
import { formatProgress, formatReport, verdict, type CacheFigures, type EventRecord, type SoakReport } from './soak/report.ts';
import { BLOCK_BYTES, Workload, type Target } from './soak/workload.ts';

const USAGE = `usage: node build/bench/cache-soak.js [options]
  --reads N              reads to check (default 1000000)
  --quick                20000 reads (and --max-seconds 900): a check that the soak works
  --max-seconds S        stop there whatever was reached (default 3600); exit 2
  --volume-size BYTES    the volume (default 64M)
  --cache-size BYTES     each NBD server's read cache (default 8M)
  --chunk-size BYTES     the volume's chunk size (default 4M)
  --zipf S               skew of the block distribution (default 1.1)
  --write-percent P      share of requests that are writes (default 3)
  --workers N            requests in flight (default 32)
  --connections N        NBD connections per server (default 2)
  --lease-timeout-ms N   the MDS's (default 4000: renewals every second)
  --seed N               the workload's random seed (default: random)
  --progress-seconds S   between progress lines (default 5)
  --dir DIR              parent of the run folder (default: the OS temp folder)
  --json FILE            the report's numbers as JSON
  --keep                 keep the run folder (daemon logs are in memory: see the failure output)`;

const VOLUME = 'soak';

/** A flag the harness cannot use: said in one line, with the usage. */
class UsageError extends Error {}

interface Settings {
  readonly reads: number;
  readonly maxSeconds: number;
  readonly volumeBytes: number;
  readonly cacheBytes: number;
  readonly chunkBytes: number;
  readonly zipfS: number;
  readonly writeShare: number;
  readonly workers: number;
  readonly connections: number;
  readonly leaseTimeoutMs: number;
  readonly seed: number;
  readonly progressSeconds: number;
  readonly dir: string;
  readonly json: string | undefined;
  readonly keep: boolean;
}

function settingsFrom(argv: string[]): Settings | null {
  const { values } = parseArgs({
    args: argv,
    options: {
      reads: { type: 'string' },
      quick: { type: 'boolean' },
      'max-seconds': { type: 'string' },
      'volume-size': { type: 'string', default: '64M' },
      'cache-size': { type: 'string', default: '8M' },
      'chunk-size': { type: 'string', default: '4M' },
      zipf: { type: 'string', default: '1.1' },
      'write-percent': { type: 'string', default: '3' },
      workers: { type: 'string', default: '32' },
      connections: { type: 'string', default: '2' },
      'lease-timeout-ms': { type: 'string', default: '4000' },
      seed: { type: 'string' },
      'progress-seconds': { type: 'string', default: '5' },
      dir: { type: 'string', default: tmpdir() },
      json: { type: 'string' },
      keep: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) return null;
  const quick = values.quick === true;
  const number = (text: string, flag: string, min: number): number => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < min) throw new UsageError(`${flag} must be a number of at least ${min}, not "${text}"`);
    return value;
  };
  const settings: Settings = {
    reads: Math.floor(number(values.reads ?? (quick ? '20000' : '1000000'), '--reads', 1)),
    maxSeconds: number(values['max-seconds'] ?? (quick ? '900' : '3600'), '--max-seconds', 1),
    volumeBytes: parseSizeBytes(values['volume-size'], '--volume-size'),
    cacheBytes: parseSizeBytes(values['cache-size'], '--cache-size'),
    chunkBytes: parseSizeBytes(values['chunk-size'], '--chunk-size'),
    zipfS: number(values.zipf, '--zipf', 0),
    writeShare: number(values['write-percent'], '--write-percent', 0) / 100,
    workers: Math.floor(number(values.workers, '--workers', 1)),
    connections: Math.floor(number(values.connections, '--connections', 1)),
    leaseTimeoutMs: Math.floor(number(values['lease-timeout-ms'], '--lease-timeout-ms', 1000)),
    seed: values.seed === undefined ? randomInt(1, 2 ** 31) : Math.floor(number(values.seed, '--seed', 0)),
    progressSeconds: number(values['progress-seconds'], '--progress-seconds', 0.5),
    dir: values.dir,
    json: values.json,
    keep: values.keep === true,
  };
  if (settings.volumeBytes % BLOCK_BYTES !== 0 || settings.volumeBytes < 4 * BLOCK_BYTES) throw new UsageError('--volume-size must be a multiple of 64 KiB, at least 256 KiB');
  if (settings.volumeBytes <= settings.cacheBytes) throw new UsageError('--volume-size must be larger than --cache-size: the cache must evict');
  if (settings.writeShare >= 1) throw new UsageError('--write-percent must be below 100');
  return settings;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

/** A server's cache counters over its runs: what earlier runs ended with, plus the running one's last scrape. */
class CacheTracker {
  private readonly server: NbdServer;
  private carried: CacheFigures = { hits: 0, misses: 0, admissions: 0, evictions: 0, invalidations: 0, corrupt: 0, restarts: 0 };
  private last: ReadCacheCounters | null = null;

  constructor(server: NbdServer) {
    this.server = server;
  }

  async scrape(): Promise<void> {
    try {
      this.last = await readCacheCounters(this.server.metricsPort);
    } catch {
      // Down (being restarted): the last scrape stands.
    }
  }

  /** The running server is about to die: what it counted so far is kept. */
  async carry(): Promise<void> {
    await this.scrape();
    const last = this.last;
    this.carried = {
      hits: this.carried.hits + (last?.hits ?? 0),
      misses: this.carried.misses + (last?.misses ?? 0),
      admissions: this.carried.admissions + (last?.admissions ?? 0),
      evictions: this.carried.evictions + (last?.evictions ?? 0),
      invalidations: this.carried.invalidations + (last?.invalidations ?? 0),
      corrupt: this.carried.corrupt + (last?.corrupt ?? 0),
      restarts: this.carried.restarts + 1,
    };
    this.last = null;
  }

  get figures(): CacheFigures {
    const last = this.last;
    return {
      hits: this.carried.hits + (last?.hits ?? 0),
      misses: this.carried.misses + (last?.misses ?? 0),
      admissions: this.carried.admissions + (last?.admissions ?? 0),
      evictions: this.carried.evictions + (last?.evictions ?? 0),
      invalidations: this.carried.invalidations + (last?.invalidations ?? 0),
      corrupt: this.carried.corrupt + (last?.corrupt ?? 0),
      restarts: this.carried.restarts,
    };
  }
}

/** Opens `count` connections to the volume on `server` (the first one opens it there), retrying while it starts. */
async function connect(server: NbdServer, count: number, timeoutMs = 60_000): Promise<PipelinedNbdClient[]> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      const first = await PipelinedNbdClient.connect(server.socket, VOLUME);
      const rest = await Promise.all(Array.from({ length: count - 1 }, () => PipelinedNbdClient.connect(server.socket, VOLUME)));
      return [first, ...rest];
    } catch (error) {
      if (performance.now() > deadline) throw new Error(`could not open ${VOLUME} on ${server.name} within ${timeoutMs} ms: ${String(error)}`);
      await sleep(250);
    }
  }
}

async function main(): Promise<number> {
  const settings = settingsFrom(process.argv.slice(2));
  if (settings === null) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const random = seededRandom(settings.seed);
  const hosts = ['host-a', 'host-b', 'host-c'];
  log(`starting a cluster (MDS, 3 chunk servers on ${hosts.join(', ')}) in ${settings.dir}`);
  const cluster = await LocalCluster.start({
    parentDir: settings.dir,
    chunkServers: 3,
    nbd: false,
    mdsArgs: ['--lease-timeout-ms', String(settings.leaseTimeoutMs)],
    csArgs: ['--journal-segment-bytes', '8M'],
    csArgsFor: (index) => ['--failure-domain-host', hosts[index] ?? 'host-x'],
  });
  const servers: NbdServer[] = [];
  const clients = new Set<PipelinedNbdClient>();
  let stopping = false;
  const cleanup = async (): Promise<void> => {
    for (const client of clients) client.close();
    await Promise.all(servers.map((server) => server.stop('SIGKILL').catch(() => undefined)));
    if (settings.keep) {
      await Promise.all([cluster.mds, ...cluster.chunkServers].map((daemon) => daemon?.stop('SIGTERM').catch(() => undefined)));
      log(`kept ${cluster.dir}`);
    } else {
      await cluster.destroy().catch(() => undefined);
    }
  };
  const onSignal = (): void => {
    if (stopping) return;
    stopping = true;
    log('interrupted: stopping every daemon');
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const cacheDir = (name: string): string => join(cluster.dir, `cache-${name}`);
    const startServer = async (name: string, host: string): Promise<NbdServer> => {
      const server = await NbdServer.start(cluster, name, ['--holder', name, '--host', host, '--force-open', ...readCacheArgs(cacheDir(name), settings.cacheBytes)]);
      servers.push(server);
      return server;
    };
    const a = await startServer('hv-a', 'host-a');
    const b = await startServer('hv-b', 'host-b');
    const trackers = new Map([[a.name, new CacheTracker(a)], [b.name, new CacheTracker(b)]]);
    const tracked = (server: NbdServer): CacheTracker => trackers.get(server.name) as CacheTracker;
    await cluster.admin.createVolume({ name: VOLUME, sizeBytes: settings.volumeBytes, chunkSizeBytes: settings.chunkBytes });

    // The model, and every sector written once (generation 1) through hv-a.
    const sectors = settings.volumeBytes / SECTOR_BYTES;
    const model = new SoakModel(sectors, randomInt(1, 2 ** 31));
    const open = async (server: NbdServer): Promise<Target> => {
      const opened = await connect(server, settings.connections);
      for (const client of opened) clients.add(client);
      return { server: server.name, clients: opened };
    };
    const closeTarget = (target: Target | null): void => {
      for (const client of target?.clients ?? []) {
        client.close();
        clients.delete(client as PipelinedNbdClient);
      }
    };
    log(`prefilling ${formatBytes(settings.volumeBytes)} through ${a.name}`);
    let current = await open(a);
    const prefillSectors = (1024 * 1024) / SECTOR_BYTES;
    const prefillClient = current.clients[0] as PipelinedNbdClient;
    for (let first = 0; first < sectors; first += 4 * prefillSectors) {
      await Promise.all(Array.from({ length: 4 }, async (_, i) => {
        const start = first + i * prefillSectors;
        if (start >= sectors) return;
        const count = Math.min(prefillSectors, sectors - start);
        const { generations, data } = model.beginWrite(start, count);
        const error = await prefillClient.write(start * SECTOR_BYTES, data);
        if (error !== 0) throw new Error(`prefill write at ${start * SECTOR_BYTES} failed with NBD error ${error}`);
        model.acknowledge(start, generations);
      }));
    }

    const blocks = settings.volumeBytes / BLOCK_BYTES;
    let eventRunning = false;
    let unexpectedDisconnects = 0;
    let reconnecting: Promise<void> | null = null;
    const serverNamed = (name: string): NbdServer => (name === a.name ? a : b);
    const workload = new Workload({
      model,
      random,
      pickBlock: zipf(blocks, settings.zipfS, random),
      workers: settings.workers,
      writeShare: settings.writeShare,
      readsWanted: settings.reads,
      onConnectionsLost: (target) => {
        // Lost without a fault of ours (a server closed them): counted, and the guest reconnects.
        if (eventRunning || reconnecting !== null || stopping) return;
        unexpectedDisconnects += 1;
        log(`the connections to ${target.server} were lost outside a fault: reconnecting`);
        reconnecting = (async () => {
          closeTarget(target);
          current = await open(serverNamed(target.server));
          workload.setTarget(current);
        })().catch((error: unknown) => {
          log(`could not reconnect to ${target.server}: ${String(error)}; stopping`);
          workload.stop();
        }).finally(() => {
          reconnecting = null;
        });
      },
    });

    const damage = async (server: NbdServer, running: boolean): Promise<string> => {
      const ranges = Array.from({ length: 32 }, () => {
        const length = 1 + Math.floor(random() * 16 * 1024);
        return { offsetBytes: Math.floor(random() * (settings.cacheBytes - length)), data: randomBytes(length) };
      });
      await damageCacheFile(cacheDir(server.name), ranges);
      const bytes = ranges.reduce((sum, range) => sum + range.data.length, 0);
      return `${ranges.length} ranges (${formatBytes(bytes)}) of ${server.name}'s slot file overwritten ${running ? 'under the running server' : 'while it was down'}`;
    };
    const epochNote = async (): Promise<string> => {
      const info = await cluster.admin.getVolume(VOLUME);
      return `epoch ${info.epoch}, lease ${info.lease?.holder ?? 'none'}`;
    };
    const probeMs = Math.round(1.5 * settings.leaseTimeoutMs);
    /** The guest moves to `to`, which takes the volume by force while `from` holds it; `from` is probed, then let go. */
    const takeover = async (from: NbdServer, to: NbdServer): Promise<string> => {
      const old = current;
      const before = await epochNote();
      current = await open(to);
      workload.setTarget(current);
      const after = await epochNote();
      const probe = await workload.probe(from.name, old.clients, performance.now() + probeMs);
      closeTarget(old);
      return `${before} -> ${after}; ${from.name} probed ${(probeMs / 1000).toFixed(1)} s: ${probe.reads} reads checked (${probe.failedReads} failed), ` +
        `writes refused ${probe.fencedWritesRefused}, acknowledged ${probe.fencedWritesAcknowledged}`;
    };
    const cacheUsed = async (server: NbdServer): Promise<string> => formatBytes((await readCacheCounters(server.metricsPort)).used);
    /**
     * Every request done, the guest closes its connections to `from` (its lease released) and
     * opens `to`. What `to`'s cache holds before and after says whether it kept its blocks.
     */
    const handover = async (from: NbdServer, to: NbdServer): Promise<string> => {
      const before = await epochNote();
      workload.setTarget(null);
      await workload.idle();
      closeTarget(current);
      const deadline = performance.now() + 20_000;
      while ((await cluster.admin.getVolume(VOLUME)).lease !== null) {
        if (performance.now() > deadline) throw new Error(`${from.name} did not release the lease within 20 s of its guest leaving`);
        await sleep(100);
      }
      const usedBefore = await cacheUsed(to);
      current = await open(to);
      workload.setTarget(current);
      return `${before} -> released -> ${await epochNote()}; ${to.name}'s cache held ${usedBefore} before the open, ${await cacheUsed(to)} after`;
    };
    const restart = async (server: NbdServer): Promise<string> => {
      const tracker = tracked(server);
      await tracker.carry();
      await server.stop('SIGKILL');
      const damaged = await damage(server, false);
      const startedAt = performance.now();
      await server.restart();
      closeTarget(current);
      current = await open(server);
      workload.setTarget(current);
      return `killed under load; ${damaged}; up and reopened in ${((performance.now() - startedAt) / 1000).toFixed(1)} s (${await epochNote()})`;
    };

    const events: Array<{ name: string; run: () => Promise<string> }> = [
      { name: `damage ${a.name}'s cache (running)`, run: () => damage(a, true) },
      { name: `forced takeover ${a.name} -> ${b.name}`, run: () => takeover(a, b) },
      { name: `damage ${b.name}'s cache (running)`, run: () => damage(b, true) },
      { name: `kill -9 ${b.name}, damage its cache, restart`, run: () => restart(b) },
      { name: `forced takeover ${b.name} -> ${a.name}`, run: () => takeover(b, a) },
      { name: `damage ${a.name}'s cache (running)`, run: () => damage(a, true) },
      { name: `clean reconnect to ${a.name} (cache kept)`, run: () => handover(a, a) },
      { name: `clean handover ${a.name} -> ${b.name}`, run: () => handover(a, b) },
      { name: `clean handover ${b.name} -> ${a.name}`, run: () => handover(b, a) },
    ];

    log(`workload: ${settings.reads} reads, ${settings.workers} in flight over ${settings.connections} connections, ` +
      `zipf(${settings.zipfS}) over ${blocks} blocks of 64 KiB, ${settings.writeShare * 100} % writes, seed ${settings.seed}`);
    const startedAt = performance.now();
    const seconds = (): number => (performance.now() - startedAt) / 1000;
    let timedOut = false;
    const limit = setTimeout(() => {
      timedOut = true;
      log(`time limit (${settings.maxSeconds} s) reached: stopping`);
      workload.stop();
    }, settings.maxSeconds * 1000);
    let progressReads = 0;
    let progressAt = performance.now();
    const progress = setInterval(() => {
      void (async () => {
        await Promise.all([...trackers.values()].map((tracker) => tracker.scrape()));
        const now = performance.now();
        const rate = ((workload.total.reads - progressReads) * 1000) / Math.max(now - progressAt, 1);
        progressReads = workload.total.reads;
        progressAt = now;
        const caches = Object.fromEntries([...trackers].map(([name, tracker]) => [name, tracker.figures]));
        log(formatProgress(seconds(), workload.total.reads, settings.reads, rate, workload.target?.server ?? '-', workload.total, caches, workload.phase));
      })();
    }, settings.progressSeconds * 1000);

    workload.setTarget(current);
    const running = workload.run();
    const records: EventRecord[] = [];
    const skipped: string[] = [];
    // The faults are spread over the run, fault i at i/(faults + 1) of --reads, but each at least
    // half a share after the previous one ended (the guest reads on during a fault, and a takeover
    // lasts seconds). The run ends at --reads, and not before half a share after the last fault.
    const spacing = Math.floor(settings.reads / (events.length + 1));
    workload.readsWanted = Number.POSITIVE_INFINITY;
    let lastEnded = 0;
    for (const [index, event] of events.entries()) {
      const startAt = Math.max((index + 1) * spacing, lastEnded + Math.floor(spacing / 2));
      while (!workload.done && workload.total.reads < startAt) await sleep(50);
      if (workload.done) {
        skipped.push(event.name);
        continue;
      }
      while (reconnecting !== null) await reconnecting;
      eventRunning = true;
      workload.phase = event.name;
      const atReads = workload.total.reads;
      const atSeconds = seconds();
      log(`event: ${event.name} (at read ${atReads})`);
      const eventStart = performance.now();
      const note = await event.run();
      records.push({ name: event.name, atReads, atSeconds, tookMs: performance.now() - eventStart, note });
      log(`  ${note}`);
      workload.phase = 'steady';
      eventRunning = false;
      lastEnded = workload.total.reads;
    }
    workload.readsWanted = Math.max(settings.reads, lastEnded + Math.floor(spacing / 2));
    await running;
    const elapsed = seconds();
    clearTimeout(limit);
    clearInterval(progress);
    await Promise.all([...trackers.values()].map((tracker) => tracker.scrape()));

    const report: SoakReport = {
      settings: {
        seed: settings.seed,
        volume: formatBytes(settings.volumeBytes),
        chunks: formatBytes(settings.chunkBytes),
        'cache per server': formatBytes(settings.cacheBytes),
        zipf: `${settings.zipfS} over ${blocks} blocks`,
        writes: `${settings.writeShare * 100} %`,
        'in flight': `${settings.workers} on ${settings.connections} connections`,
        'lease timeout': `${settings.leaseTimeoutMs} ms`,
      },
      readsWanted: settings.reads,
      seconds: elapsed,
      timedOut,
      total: workload.total,
      byServer: Object.fromEntries(workload.byServer),
      probes: Object.fromEntries(workload.probes),
      caches: Object.fromEntries([...trackers].map(([name, tracker]) => [name, tracker.figures])),
      events: records,
      skipped,
      failuresByPhase: Object.fromEntries(workload.failuresByPhase),
      unexpectedDisconnects,
      problems: workload.problems,
    };
    const result = verdict(report);
    if (result.code === 1) {
      for (const server of servers) process.stderr.write(`\n----- ${server.name} log (last lines) -----\n${server.daemon.log.slice(-4000)}\n`);
    }
    process.stdout.write(`\n${formatReport(report)}`);
    if (settings.json !== undefined) await writeFile(settings.json, `${JSON.stringify(report, null, 2)}\n`);
    return result.code;
  } finally {
    if (!stopping) {
      stopping = true;
      await cleanup();
    }
  }
}

main().then((code) => process.exit(code), (error: unknown) => {
  const code = error instanceof Error && 'code' in error ? String(error.code) : '';
  if (error instanceof UsageError || code.startsWith('ERR_PARSE_ARGS') || code === 'ERR_INVALID_ARGUMENT') {
    process.stderr.write(`cache-soak: ${(error as Error).message}\n${USAGE}\n`);
  } else {
    process.stderr.write(`cache-soak: ${String(error instanceof Error ? error.stack : error)}\n`);
  }
  process.exit(3);
});
