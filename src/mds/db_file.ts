// The name of the MDS's database file, apart from the store (store.ts), so that code that only
// names the file (the CLI's backup restore) does not load LMDB's native module with it: every
// CLI command starts faster.

/** The database file in an MDS's data directory (LMDB adds `<name>-lock` beside it). */
export const MDS_DB_FILE = 'mds.lmdb';
