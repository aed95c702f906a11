// Fills a stopped MDS's database with a volume's whole chunk map (a million entries) in seconds:
// one op reserves the chunk ids (so the MDS never hands them out again), then the records go in
// through the store's own table code (with the indexes kept beside them) in large write
// transactions. Submitting a million
// allocateChunk ops one by one takes minutes; a test of a multi-TiB volume cannot wait that long.
// The records name real chunk servers, but their replicas do not exist there: only the chunks a
// test reads or writes need to, and those the test creates through the normal path first.

import { open } from 'lmdb';
import { join } from 'node:path';
import type { ChunkRecord } from '../../src/mds/model.ts';
import { LmdbTables, MDS_DB_FILE, MDS_DB_TABLES_MAX, MdsStore } from '../../src/mds/store.ts';

/** Records per write transaction: each transaction takes a second or two on a loaded machine. */
const RECORDS_PER_TRANSACTION = 131_072;

export interface FilledMap {
  readonly volumeId: number;
  readonly chunkCount: number;
  /** Records added (the chunks that were already allocated are kept as they are). */
  readonly added: number;
}

/**
 * Gives every chunk index of volume `name` that has no record a record at version 1 whose
 * members are `replicas` (chunk-server ids). The MDS owning `mdsDir` must be stopped.
 */
export async function fillChunkMap(mdsDir: string, name: string, replicas: readonly number[]): Promise<FilledMap> {
  const path = join(mdsDir, MDS_DB_FILE);
  const store = await MdsStore.open(path);
  let volumeId: number;
  let chunkCount: number;
  let existing: Set<number>;
  let firstChunkId: number;
  try {
    const id = store.tables.getVolumeIdByName(name);
    const volume = id === undefined ? undefined : store.tables.getVolume(id);
    if (volume === undefined) throw new Error(`volume "${name}" does not exist`);
    volumeId = volume.id;
    chunkCount = Math.ceil(volume.sizeBytes / volume.chunkSizeBytes);
    for (const csId of replicas) if (store.tables.getChunkServer(csId) === undefined) throw new Error(`no chunk server ${csId}`);
    // A test's handful of real chunks: the rest of the map is filled around them.
    const allocated = store.tables.listChunks(volumeId, 0, 1024);
    if (allocated.length === 1024) throw new Error('fillChunkMap expects a volume with few chunks written');
    existing = new Set(allocated.map((chunk) => chunk.chunkIndex));
    const reserved = await store.submit({ type: 'reserveChunkIds', count: chunkCount });
    if (reserved.type !== 'chunkIdRange') throw new Error('reserveChunkIds yields a range');
    firstChunkId = reserved.firstChunkId;
  } finally {
    await store.close();
  }
  // The same settings as MdsStore.open (no compression; several named databases).
  const root = open({ path, compression: false, maxDbs: MDS_DB_TABLES_MAX });
  let added = 0;
  try {
    const tables = new LmdbTables(root);
    for (let from = 0; from < chunkCount; from += RECORDS_PER_TRANSACTION) {
      const to = Math.min(chunkCount, from + RECORDS_PER_TRANSACTION);
      const records: ChunkRecord[] = [];
      for (let chunkIndex = from; chunkIndex < to; chunkIndex += 1) {
        if (!existing.has(chunkIndex)) records.push({ volumeId, chunkIndex, chunkId: firstChunkId + chunkIndex, version: 1, replicas: [...replicas] });
      }
      // With their indexes and counts, as putChunk keeps them, counted once per transaction.
      root.transactionSync(() => tables.putNewChunks(records));
      added += records.length;
    }
  } finally {
    await root.close();
  }
  return { volumeId, chunkCount, added };
}
