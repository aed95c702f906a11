// Memory plans (--memory-budget): what each daemon's budget goes to, from its flags. The defaults
// fit the default budget; a budget too small for the flags is refused naming every share and the
// budget that would do; an explicit in-flight limit is honoured; and a real daemon refuses to
// start with a budget it cannot keep. The byte gate closes past its limit, opens at half, and
// shrinks under pressure.

import t from 'tap';
import { csMemoryPlan, CS_MEMORY_BUDGET_MIN } from '../src/cs/memory_plan.ts';
import { mdsMemoryPlan } from '../src/mds/memory_plan.ts';
import { nbdMemoryPlan, NBD_MEMORY_BUDGET_MIN } from '../src/nbd/memory_plan.ts';
import { ByteGate } from '../src/util/byte_gate.ts';
import { MEMORY_BUDGET_BYTES_DEFAULT, MemoryWatch, parseMemoryBudget, plannedBytes } from '../src/util/memory_budget.ts';
import { createLogger } from '../src/util/log.ts';
import { run } from './helpers/run.ts';

const MiB = 1024 * 1024;

t.test('the default flags fit the default budget, every share named', async (t) => {
  const cs = csMemoryPlan({ budgetBytes: MEMORY_BUDGET_BYTES_DEFAULT, inflightBytesMax: null, openChunksMax: 256, cacheSizeBytes: null });
  t.ok(plannedBytes(cs.plan) <= MEMORY_BUDGET_BYTES_DEFAULT, `cs plans ${plannedBytes(cs.plan) / MiB} MiB`);
  t.same(cs.plan.shares.map((share) => share.name), ['runtime', 'chunk_checksums', 'journal_buffers', 'connection_buffers', 'requests']);
  t.equal(cs.inflightBytesMax, 256 * MiB, 'the in-flight gate gets its full default when the budget leaves room');
  const nbd = nbdMemoryPlan({ budgetBytes: MEMORY_BUDGET_BYTES_DEFAULT, inflightBytesTotalMax: null, inflightBytesMax: null, cacheSizeBytes: 8 * 1024 * MiB });
  t.ok(plannedBytes(nbd.plan) <= MEMORY_BUDGET_BYTES_DEFAULT, `nbd with an 8 GiB cache plans ${plannedBytes(nbd.plan) / MiB} MiB`);
  t.ok(nbd.plan.shares.some((share) => share.name === 'read_cache_index' && share.bytes > 0), 'the cache index has a share');
  t.ok(nbd.inflightBytesMax <= nbd.inflightBytesTotalMax, 'one connection never gets more than all of them');
  const mds = mdsMemoryPlan({ budgetBytes: MEMORY_BUDGET_BYTES_DEFAULT, recoveryConcurrency: 4 });
  t.ok(plannedBytes(mds) <= MEMORY_BUDGET_BYTES_DEFAULT);
});

t.test('a smaller budget leaves less to requests in flight, down to the minimum', async (t) => {
  const cs = csMemoryPlan({ budgetBytes: CS_MEMORY_BUDGET_MIN + 8 * MiB, inflightBytesMax: null, openChunksMax: 256, cacheSizeBytes: null });
  t.equal(plannedBytes(cs.plan), cs.plan.budgetBytes, 'the requests take what the others leave');
  const nbd = nbdMemoryPlan({ budgetBytes: NBD_MEMORY_BUDGET_MIN, inflightBytesTotalMax: null, inflightBytesMax: null, cacheSizeBytes: null });
  t.equal(plannedBytes(nbd.plan), NBD_MEMORY_BUDGET_MIN);
});

t.test('a plan that does not fit is refused, naming the shares and the budget that would do', async (t) => {
  t.throws(() => csMemoryPlan({ budgetBytes: 256 * MiB, inflightBytesMax: 512 * MiB, openChunksMax: 256, cacheSizeBytes: null }), {
    code: 'ERR_CONFIG',
    message: /requests 512M \(--inflight-bytes-max\).*Raise --memory-budget to at least 720M/,
  });
  t.throws(() => nbdMemoryPlan({ budgetBytes: 256 * MiB, inflightBytesTotalMax: null, inflightBytesMax: null, cacheSizeBytes: 64 * 1024 * MiB }), {
    code: 'ERR_CONFIG',
    message: /read_cache_index \d+M \(--cache-size\)/,
  });
  t.throws(() => csMemoryPlan({ budgetBytes: MEMORY_BUDGET_BYTES_DEFAULT, inflightBytesMax: null, openChunksMax: 256, cacheSizeBytes: 64 * 1024 * MiB }), {
    code: 'ERR_CONFIG',
    message: /for this cs: .*read_cache_index \d+M \(--cache-size\)/,
  }, 'a chunk server\'s 64 GiB read cache needs an index larger than the default budget leaves');
  t.throws(() => parseMemoryBudget('64M', CS_MEMORY_BUDGET_MIN), { code: 'ERR_CONFIG', message: /--memory-budget 64M is too small/ });
  t.throws(() => parseMemoryBudget('lots', CS_MEMORY_BUDGET_MIN), { code: 'ERR_INVALID_ARGUMENT', message: /--memory-budget: cannot parse size "lots"/ });
  t.equal(parseMemoryBudget('1G', CS_MEMORY_BUDGET_MIN), 1024 * MiB);
});

t.test('an explicit in-flight limit is honoured', async (t) => {
  const cs = csMemoryPlan({ budgetBytes: 1024 * MiB, inflightBytesMax: 64 * MiB, openChunksMax: 16, cacheSizeBytes: null });
  t.equal(cs.inflightBytesMax, 64 * MiB);
  t.equal(cs.openSumsBytesMax, 16 * 128 * 1024, 'the checksums of 16 open 64 MiB chunks: 8 bytes per 4 KiB block');
  const nbd = nbdMemoryPlan({ budgetBytes: 1024 * MiB, inflightBytesTotalMax: 96 * MiB, inflightBytesMax: 512 * MiB, cacheSizeBytes: null });
  t.equal(nbd.inflightBytesTotalMax, 96 * MiB);
  t.equal(nbd.inflightBytesMax, 96 * MiB, 'a connection is capped at the total');
});

t.test('the byte gate closes past its limit, opens at half, and lets in a quarter under pressure', async (t) => {
  let nowMs = 0;
  const gate = new ByteGate('requests', 100, { monotonicMs: () => nowMs });
  let changes = 0;
  gate.onChange(() => { changes += 1; });
  gate.reserve(100);
  t.notOk(gate.isClosed, 'at its limit it is still open');
  gate.reserve(1);
  t.ok(gate.isClosed, 'past it, closed');
  nowMs = 2_000;
  gate.release(50);
  t.ok(gate.isClosed, 'not open again until half is free');
  gate.release(1);
  t.notOk(gate.isClosed, 'open at half');
  t.equal(gate.closedSecondsTotal(), 2);
  t.equal(changes, 2);
  gate.setPressure(true);
  t.ok(gate.isClosed, 'under pressure 50 held is past a quarter of 100');
  gate.release(38);
  t.notOk(gate.isClosed, 'and open again at half of that quarter');
  t.throws(() => gate.release(13), /more released than reserved/);
});

t.test('the watch turns pressure on at 90 % of the budget and off below 80 %', async (t) => {
  let resident = 0;
  const gate = new ByteGate('requests', 100, { monotonicMs: () => 0 });
  const plan = { daemon: 'cs' as const, budgetBytes: 1000, shares: [] };
  const watch = new MemoryWatch({ plan, gates: [gate], clock: { monotonicMs: () => 0 }, log: createLogger('test'), residentBytes: () => resident });
  resident = 899;
  watch.sample();
  t.notOk(watch.underPressure);
  resident = 900;
  watch.sample();
  t.ok(watch.underPressure, 'at 90 %');
  t.equal(gate.effectiveLimitBytes, 25, 'the gates shrink to a quarter');
  resident = 800;
  watch.sample();
  t.ok(watch.underPressure, 'still at 80 %');
  resident = 799;
  watch.sample();
  t.notOk(watch.underPressure, 'over below 80 %');
  t.equal(gate.effectiveLimitBytes, 100);
  t.equal(watch.peakResidentBytes, 900);
});

t.test('a chunk server refuses to start with a budget it cannot keep', async (t) => {
  const result = await run(process.execPath, ['build/src/bin/shoal.js', 'run', 'cs', '--data', '/nonexistent-never-created', '--mds', 'http://127.0.0.1:1',
    '--cluster-key', '/nonexistent-key', '--memory-budget', '300M', '--inflight-bytes-max', '512M'], { timeoutMs: 30_000 });
  t.not(result.code, 0, 'it does not start');
  t.match(result.stderr, /ERR_CONFIG: --memory-budget 300M is too small for this cs: .*requests 512M \(--inflight-bytes-max\)/, result.stderr);
});
