// Chunk-allocation latency: what the first write to a chunk costs, against a write to a chunk that
// already exists, measured in the same run on a local three-server cluster. The first write asks
// the MDS for the chunk (placement, CREATE_CHUNK on each server: two files created and synced, the
// directory synced, the server's catalog committed), records it (one LMDB commit), then writes;
// the baseline is a 4 KiB write to an allocated chunk (journal commit on three servers). Nothing
// is asserted: it prints percentiles and their ratio.
//
// Usage: node build/bench/alloc.js [--chunks 200] [--rounds 3] [--dir DIR] [--json FILE]

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Volume } from '../src/client/volume.ts';
import { LocalCluster } from '../src/local/cluster.ts';
import { createLogger } from '../src/util/log.ts';

const MiB = 1024 * 1024;
const CHUNK_BYTES = MiB;

interface Percentiles {
  readonly p50Us: number;
  readonly p90Us: number;
  readonly p99Us: number;
  readonly meanUs: number;
}

function percentiles(samplesUs: number[]): Percentiles {
  const sorted = [...samplesUs].sort((a, b) => a - b);
  const at = (fraction: number): number => sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? 0;
  const mean = sorted.reduce((sum, value) => sum + value, 0) / Math.max(1, sorted.length);
  return { p50Us: Math.round(at(0.5)), p90Us: Math.round(at(0.9)), p99Us: Math.round(at(0.99)), meanUs: Math.round(mean) };
}

async function timeWrites(volume: Volume, offsets: readonly number[]): Promise<number[]> {
  const block = Buffer.alloc(4096, 0x5a);
  const samples: number[] = [];
  for (const offset of offsets) {
    const startedNs = process.hrtime.bigint();
    await volume.write(offset, block);
    samples.push(Number(process.hrtime.bigint() - startedNs) / 1000);
  }
  return samples;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      chunks: { type: 'string', default: '200' },
      rounds: { type: 'string', default: '3' },
      dir: { type: 'string', default: tmpdir() },
      json: { type: 'string' },
    },
  });
  const chunks = Number(values.chunks);
  const rounds = Number(values.rounds);
  const runDir = await mkdtemp(join(values.dir, 'shoal-alloc-'));
  const cluster = await LocalCluster.start({ parentDir: runDir, chunkServers: 3, nbd: false });
  const pool = cluster.pool();
  const first: number[] = [];
  const existing: number[] = [];
  try {
    for (let round = 0; round < rounds; round += 1) {
      const name = `alloc${round}`;
      await cluster.admin.createVolume({ name, sizeBytes: chunks * CHUNK_BYTES, chunkSizeBytes: CHUNK_BYTES });
      const volume = await Volume.open({ mds: cluster.internal, pool, name, readOnly: false, log: createLogger('bench') });
      const offsets = Array.from({ length: chunks }, (_, index) => index * CHUNK_BYTES);
      // Interleaved in time so that a noisy moment hits both kinds alike.
      first.push(...(await timeWrites(volume, offsets)));
      existing.push(...(await timeWrites(volume, offsets.map((offset) => offset + 8192))));
      await volume.close();
    }
  } finally {
    pool.closeAll();
    await cluster.destroy();
    await rm(runDir, { recursive: true, force: true });
  }
  const result = {
    chunks: chunks * rounds,
    firstWrite: percentiles(first),
    existingChunkWrite: percentiles(existing),
    ratioP50: Number((percentiles(first).p50Us / Math.max(1, percentiles(existing).p50Us)).toFixed(2)),
  };
  process.stdout.write(
    `first write to a new chunk (allocation): p50 ${result.firstWrite.p50Us} us, p90 ${result.firstWrite.p90Us} us, ` +
      `p99 ${result.firstWrite.p99Us} us\n` +
      `write to an existing chunk:             p50 ${result.existingChunkWrite.p50Us} us, p90 ${result.existingChunkWrite.p90Us} us, ` +
      `p99 ${result.existingChunkWrite.p99Us} us\n` +
      `allocation / existing at p50: ${result.ratioP50}x over ${result.chunks} chunks\n`,
  );
  if (values.json !== undefined) await writeFile(values.json, `${JSON.stringify(result, null, 2)}\n`);
}

await main();
