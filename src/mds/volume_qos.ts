// How a requested change of a volume's I/O limits becomes the limits stored (pure; run inside the
// MDS's op, against the record being changed): fields not named keep their value; a new limit
// set without its burst gets one second's worth; a limit removed
// takes its burst with it. A burst without a limit means nothing and is refused, so that an admin
// never believes a volume limited that is not.

import { StorageError } from '../errors.ts';
import type { VolumeQos, VolumeQosChange } from '../protocol/api.ts';
import { assert } from '../util/assert.ts';

export function resolveQosChange(current: VolumeQos, change: VolumeQosChange): VolumeQos {
  const iops = resolvePair(
    { limit: current.iopsLimit, burst: current.iopsBurst },
    change.iopsLimit, change.iopsBurst, 'iopsLimit', 'iopsBurst',
  );
  const bandwidth = resolvePair(
    { limit: current.bandwidthLimitBytesPerSecond, burst: current.bandwidthBurstBytes },
    change.bandwidthLimitBytesPerSecond, change.bandwidthBurstBytes, 'bandwidthLimitBytesPerSecond', 'bandwidthBurstBytes',
  );
  return { iopsLimit: iops.limit, iopsBurst: iops.burst, bandwidthLimitBytesPerSecond: bandwidth.limit, bandwidthBurstBytes: bandwidth.burst };
}

interface LimitPair {
  readonly limit: number;
  readonly burst: number;
}

function resolvePair(current: LimitPair, limit: number | undefined, burst: number | undefined, limitName: string, burstName: string): LimitPair {
  const nextLimit = limit ?? current.limit;
  if (nextLimit === 0) {
    if (burst !== undefined && burst > 0) {
      throw new StorageError('ERR_INVALID_ARGUMENT', `${burstName} ${burst} without ${limitName}: a burst is allowed only above a limit`);
    }
    return { limit: 0, burst: 0 };
  }
  // A new limit without a burst of its own: one second's worth, not the old limit's burst (the
  // same limit given again keeps its burst).
  const nextBurst = burst ?? (limit === undefined || limit === current.limit ? current.burst : 0);
  const resolved = { limit: nextLimit, burst: nextBurst === 0 ? nextLimit : nextBurst };
  assert(resolved.burst > 0, 'a limit has a burst');
  return resolved;
}
