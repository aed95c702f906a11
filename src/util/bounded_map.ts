// A Map used as a bounded table: inserting a new key into a full one first drops the oldest
// entry (Maps iterate in insertion order). For soft state that may forget its oldest entries.

import { assert } from './assert.ts';

export function setBounded<K, V>(map: Map<K, V>, key: K, value: V, entriesMax: number): void {
  assert(entriesMax > 0, 'a bounded map holds at least one entry');
  if (!map.has(key) && map.size >= entriesMax) {
    const oldest = map.keys().next();
    if (oldest.done !== true) map.delete(oldest.value);
  }
  map.set(key, value);
}
