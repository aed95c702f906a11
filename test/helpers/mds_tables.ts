// MDS tables in memory with a few registered chunk servers: the starting point of the state
// machine's unit tests.

import { MemoryTables } from '../../src/mds/memory_tables.ts';

/** In-memory tables with `servers` chunk servers registered, each on its own host. */
export function tablesWithServers(servers = 3): MemoryTables {
  const tables = new MemoryTables();
  for (let i = 1; i <= servers; i += 1) {
    tables.submit({
      type: 'registerChunkServer', uuid: `00000000-0000-0000-0000-00000000000${i}`, host: '127.0.0.1', port: 9630 + i,
      metricsPort: 0, failureDomainHost: `h${i}`, rack: 'r', tier: 0, nowMs: 1,
    });
  }
  return tables;
}
