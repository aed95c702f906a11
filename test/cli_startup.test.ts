// The admin CLI starts fast: loading it must not load the MDS's storage engine (LMDB's native
// module), which once made every `shoal` command take 0.5 s instead of 0.2 s (the backup-restore
// command named the database file through the store module). Checked in a fresh process, by what
// Node has loaded after importing the CLI; and, so that the check can fail, after importing the
// store too.

import t from 'tap';
import { fileURLToPath } from 'node:url';
import { run } from './helpers/run.ts';

const cliMain = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const store = fileURLToPath(new URL('../src/mds/store.js', import.meta.url));

/** How many modules whose path names lmdb a fresh process holds after importing `paths`. */
async function lmdbModulesAfter(...paths: string[]): Promise<number> {
  const script = [
    "import { createRequire } from 'node:module';",
    ...paths.map((path) => `await import(${JSON.stringify(path)});`),
    "console.log(Object.keys(createRequire(import.meta.url).cache).filter((key) => key.includes('lmdb')).length);",
  ].join('\n');
  const result = await run(process.execPath, ['--input-type=module', '-e', script], { timeoutMs: 30_000 });
  if (result.code !== 0) throw new Error(`node exited ${result.code}: ${result.stderr}`);
  return Number(result.stdout.trim());
}

t.test('loading the CLI does not load LMDB', async (t) => {
  t.equal(await lmdbModulesAfter(cliMain), 0, 'the CLI alone: no lmdb module');
  t.ok(await lmdbModulesAfter(cliMain, store) > 0, 'the store does load it (the check sees it)');
});
