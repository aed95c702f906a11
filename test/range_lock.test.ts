import t from 'tap';
import { RangeLock } from '../src/util/range_lock.ts';

t.test('overlapping writers wait; disjoint ones and readers share', async (t) => {
  const lock = new RangeLock();
  const order: string[] = [];
  const a = await lock.acquire(0, 10, true);
  const b = lock.acquire(5, 6, true).then((release) => { order.push('b'); return release; });
  const c = await lock.acquire(11, 20, true);
  order.push('c');
  const r1 = await lock.acquire(30, 40, false);
  const r2 = await lock.acquire(35, 45, false);
  order.push('readers');
  t.same(order, ['c', 'readers'], 'b waits for a while others proceed');
  a();
  (await b)();
  t.same(order, ['c', 'readers', 'b']);
  c(); r1(); r2();
  t.ok(lock.idle);
});

t.test('a waiting writer is not overtaken by later readers', async (t) => {
  const lock = new RangeLock();
  const order: string[] = [];
  const reader = await lock.acquire(0, 0, false);
  const writer = lock.acquire(0, 0, true).then((release) => { order.push('writer'); release(); });
  const later = lock.acquire(0, 0, false).then((release) => { order.push('reader2'); release(); });
  reader();
  await Promise.all([writer, later]);
  t.same(order, ['writer', 'reader2']);
  t.throws(() => reader(), /released twice/);
});
