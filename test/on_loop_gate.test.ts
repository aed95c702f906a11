// When a chunk server stops doing small chunk-file I/O on the event loop: an isolated slow call
// (preemption, a file-system journal commit) leaves a gate open; slow calls adding up within a
// second, or one long stall, close it for the pause. Reads have tighter limits than writes.

import t from 'tap';
import { READ_NOW_GATE_LIMITS, WRITE_NOW_GATE_LIMITS, OnLoopGate } from '../src/cs/store/on_loop_gate.ts';

const { slowMs, slowBudgetMs, windowMs, stallMs, pauseMs } = WRITE_NOW_GATE_LIMITS;

t.test('isolated slow writes keep the gate open', async (t) => {
  const gate = new OnLoopGate();
  let nowMs = 1_000;
  const verdicts = new Set<string>();
  for (let second = 0; second < 30; second += 1) {
    // One 20 ms write a second, a thousand fast ones around it.
    for (let write = 0; write < 1_000; write += 1) verdicts.add(gate.observe(nowMs += 0.5, 0.01));
    verdicts.add(gate.observe(nowMs += 20, 20));
  }
  t.same([...verdicts], ['ok'], 'thirty seconds with one 20 ms write in each');
  t.ok(gate.isOpen(nowMs));
});

t.test('slow writes over the budget within one window close the gate for the pause', async (t) => {
  const gate = new OnLoopGate();
  let nowMs = 5_000;
  const each = slowMs * 2;
  let verdict = 'ok';
  let writes = 0;
  while (verdict === 'ok') {
    verdict = gate.observe(nowMs += each, each);
    writes += 1;
    t.ok(writes * each <= slowBudgetMs + each && writes * each < windowMs, 'closed by the budget, inside one window');
  }
  t.equal(writes, Math.floor(slowBudgetMs / each) + 1, `closed at the write past ${slowBudgetMs} ms`);
  t.notOk(gate.isOpen(nowMs), 'closed');
  t.notOk(gate.isOpen(nowMs + pauseMs - 1), 'still closed just before the pause ends');
  t.ok(gate.isOpen(nowMs + pauseMs), 'open again after the pause');
});

t.test('one stall closes it at once; a new window forgets the old slow writes', async (t) => {
  const stalled = new OnLoopGate();
  t.equal(stalled.observe(100, stallMs), 'closed');
  t.notOk(stalled.isOpen(101));

  const gate = new OnLoopGate();
  const each = slowBudgetMs * 0.6;
  t.equal(gate.observe(10_000, each), 'ok');
  t.equal(gate.observe(10_000 + windowMs, each), 'ok', 'the next window starts from zero');
  t.equal(gate.observe(10_000 + windowMs + 1, each), 'closed', 'two in one window are over the budget');
});

t.test('reads: page-cache hits and one preempted read keep it open; a few HDD seeks close it', async (t) => {
  const gate = new OnLoopGate(READ_NOW_GATE_LIMITS);
  let nowMs = 1_000;
  const hits = new Set<string>();
  for (let read = 0; read < 10_000; read += 1) hits.add(gate.observe(nowMs += 0.1, 0.02));
  t.same([...hits], ['ok'], 'ten thousand page-cache reads');
  t.equal(gate.observe(nowMs += 5, 5), 'ok', 'one read of 5 ms (the process was preempted)');
  nowMs += READ_NOW_GATE_LIMITS.windowMs;
  const seekMs = 8;
  const verdicts = [1, 2, 3].map(() => gate.observe(nowMs += seekMs, seekMs));
  t.same(verdicts, ['ok', 'ok', 'closed'], `the third ${seekMs} ms miss in a second closes it (${READ_NOW_GATE_LIMITS.slowBudgetMs} ms budget)`);
  t.notOk(gate.isOpen(nowMs + READ_NOW_GATE_LIMITS.pauseMs - 1), 'reads go through the thread pool for the pause');
  t.ok(gate.isOpen(nowMs + READ_NOW_GATE_LIMITS.pauseMs));
});

t.test('inconsistent limits are refused', async (t) => {
  t.throws(() => new OnLoopGate({ ...WRITE_NOW_GATE_LIMITS, slowBudgetMs: 1 }));
});
