// When a chunk server stops applying small writes on the event loop: an isolated slow page-cache
// write (preemption, a file-system journal commit) leaves the gate open; slow writes adding up
// within a second, or one long stall, close it for the pause.

import t from 'tap';
import { WRITE_NOW_GATE_LIMITS, WriteNowGate } from '../src/cs/store/write_now_gate.ts';

const { slowMs, slowBudgetMs, windowMs, stallMs, pauseMs } = WRITE_NOW_GATE_LIMITS;

t.test('isolated slow writes keep the gate open', async (t) => {
  const gate = new WriteNowGate();
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
  const gate = new WriteNowGate();
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
  const stalled = new WriteNowGate();
  t.equal(stalled.observe(100, stallMs), 'closed');
  t.notOk(stalled.isOpen(101));

  const gate = new WriteNowGate();
  const each = slowBudgetMs * 0.6;
  t.equal(gate.observe(10_000, each), 'ok');
  t.equal(gate.observe(10_000 + windowMs, each), 'ok', 'the next window starts from zero');
  t.equal(gate.observe(10_000 + windowMs + 1, each), 'closed', 'two in one window are over the budget');
});

t.test('inconsistent limits are refused', async (t) => {
  t.throws(() => new WriteNowGate({ ...WRITE_NOW_GATE_LIMITS, slowBudgetMs: 1 }));
});
