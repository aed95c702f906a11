// The client volume's pure parts, without a cluster: ranges cut into pieces, the retry loop's
// backoff, deadline and classification on a fake clock, the lease and capability renewal timing on
// fake timers, the chunk map's page eviction, and the read order and a primary's answer to a change.

import t from 'tap';
import { StorageError, type ErrorCode } from '../src/errors.ts';
import { CS_PAYLOAD_BYTES_MAX } from '../src/limits.ts';
import { UNLIMITED_QOS, type CapabilityReply, type LeaseGrant } from '../src/protocol/api.ts';
import { capabilityKey, issueCapability, type HypervisorId } from '../src/protocol/capability.ts';
import { FakeTimers } from './helpers/fake_timers.ts';
import type { Logger } from '../src/util/log.ts';
import { ChunkMap, PAGE_NOT_HELD } from '../src/client/chunk_map.ts';
import { LeaseKeeper, capabilityGrant } from '../src/client/lease.ts';
import { blockSpan, checkRange, firstPiece, splitRange } from '../src/client/ranges.ts';
import { changeOutcome, readOrder } from '../src/client/replica_io.ts';
import { Retrier, backoffDelayMs, changeRefusal, isRetryable, losesLease, retryLater } from '../src/client/retry.ts';

const MiB = 1024 * 1024;

const quiet: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

t.test('a range is cut at chunk boundaries and at the frame limit, in order', async (t) => {
  const chunkBytes = 64 * MiB;
  const pieces = splitRange(chunkBytes - MiB, 6 * MiB, chunkBytes);
  t.same(pieces, [
    { chunkIndex: 0, offsetInChunk: chunkBytes - MiB, lengthBytes: MiB, bufferOffset: 0 },
    { chunkIndex: 1, offsetInChunk: 0, lengthBytes: CS_PAYLOAD_BYTES_MAX, bufferOffset: MiB },
    { chunkIndex: 1, offsetInChunk: CS_PAYLOAD_BYTES_MAX, lengthBytes: 5 * MiB - CS_PAYLOAD_BYTES_MAX, bufferOffset: MiB + CS_PAYLOAD_BYTES_MAX },
  ]);
  t.same(splitRange(4096, 3 * chunkBytes, chunkBytes, chunkBytes).map((p) => [p.chunkIndex, p.lengthBytes]),
    [[0, chunkBytes - 4096], [1, chunkBytes], [2, chunkBytes], [3, 4096]], 'a zeroing: one piece a chunk');
  t.same(firstPiece(chunkBytes + 8192, 2 * chunkBytes, chunkBytes), { chunkIndex: 1, offsetInChunk: 8192, lengthBytes: chunkBytes - 8192, bufferOffset: 0 });
  t.same(blockSpan(4095, 2), { firstBlock: 0, lastBlock: 1 });
  t.same(blockSpan(4096, 4096), { firstBlock: 1, lastBlock: 1 });
  t.throws(() => checkRange('v', MiB, -1, 1), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => checkRange('v', MiB, 0, 0), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => checkRange('v', MiB, 1.5, 1), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => checkRange('v', MiB, MiB - 1, 2), { code: 'ERR_OUT_OF_RANGE', message: /ends past the end of volume "v" \(1048576 bytes\)/ });
  t.doesNotThrow(() => checkRange('v', MiB, MiB - 1, 1));
});

t.test('retryable codes, by where they happen', async (t) => {
  const error = (code: ErrorCode) => new StorageError(code, code);
  t.ok(isRetryable('mapLoad', error('ERR_TIMEOUT')));
  t.notOk(isRetryable('mapLoad', error('ERR_NOT_ENOUGH_SERVERS')), 'a map load does not wait for servers');
  t.ok(isRetryable('allocation', error('ERR_NOT_ENOUGH_SERVERS')));
  t.ok(isRetryable('replicaRead', error('ERR_CHECKSUM')), 'a damaged block is read from another member');
  t.notOk(isRetryable('replicaRead', error('ERR_UNAUTHORIZED')));
  t.notOk(isRetryable('replicaRead', new Error('ERR_UNAVAILABLE')), 'only StorageErrors are retried');
  t.equal(changeRefusal('ERR_CHUNK_VERSION'), 'stale');
  for (const code of ['ERR_LEASE_FENCED', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARGUMENT', 'ERR_PROTOCOL', 'ERR_TOO_LARGE', 'ERR_UNAUTHORIZED'] as const) {
    t.equal(changeRefusal(code), 'fatal', code);
  }
  t.equal(changeRefusal('ERR_NO_SPACE'), 'failed', "the primary's own copy failed: the MDS replaces it");
  t.ok(losesLease('leaseRenewal', error('ERR_NOT_FOUND')));
  t.notOk(losesLease('capabilityRenewal', error('ERR_NOT_FOUND')));
  t.notOk(losesLease('change', error('ERR_UNAVAILABLE')));
});

t.test('the retry loop backs off exponentially to a cap and gives up at the deadline naming what it tried', async (t) => {
  t.same([1, 2, 3, 4, 5, 6, 7, 20].map(backoffDelayMs), [50, 100, 200, 400, 800, 1600, 1600, 1600]);
  const timers = new FakeTimers();
  let open = true;
  const retrier = new Retrier({ subject: 'volume "v"', timeoutMs: 1_000, timers, checkWanted: () => {
    if (!open) throw new StorageError('ERR_SHUTTING_DOWN', 'closed');
  } });

  let attempts = 0;
  t.equal(await retrier.run('thing', retrier.deadline(), async () => (++attempts < 3 ? retryLater('not yet') : 'ok')), 'ok');
  t.same(timers.sleeps, [50, 100]);

  timers.sleeps.length = 0;
  await t.rejects(retrier.run('write to chunk 7', retrier.deadline(), async () => retryLater('chunk server 2: down')), {
    code: 'ERR_IO',
    message: 'volume "v": gave up on write to chunk 7 after 1000 ms and 6 attempts (I/O timeout 1000 ms): chunk server 2: down',
  });
  t.same(timers.sleeps, [50, 100, 200, 400, 250], 'the last wait ends at the deadline; one more attempt is made');

  await t.rejects(retrier.run('x', retrier.deadline(), async () => { throw new StorageError('ERR_PROTOCOL', 'bad'); }),
    { code: 'ERR_PROTOCOL' }, 'an error thrown by an attempt ends the loop');
  open = false;
  await t.rejects(retrier.run('x', retrier.deadline(), async () => retryLater('no')), { code: 'ERR_SHUTTING_DOWN' },
    'a closed volume stops waiting');
});

function capabilityReply(issuedAtMs: number, lifetimeMs: number): CapabilityReply {
  const grant = issueCapability(capabilityKey(Buffer.alloc(32, 7)), {
    hypervisorId: 1 as HypervisorId, volumeId: 9, mode: 'write', epoch: 3, issuedAtMs, expiresAtMs: issuedAtMs + lifetimeMs,
  });
  return { capability: grant.encoded.toString('hex'), sessionKey: grant.sessionKey.toString('hex'), expiresAt: new Date(issuedAtMs + lifetimeMs).toISOString() };
}

t.test('the lease is renewed every interval and the capability a third into its life, retried each second', async (t) => {
  const timers = new FakeTimers();
  const calls: string[] = [];
  const capabilityAnswers: (CapabilityReply | StorageError)[] = [new StorageError('ERR_UNAVAILABLE', 'MDS restarting'), capabilityReply(31_000, 6_000), capabilityReply(33_000, 600_000)];
  let renewAnswer: StorageError | null = null;
  const lease: LeaseGrant = { leaseId: 'L1', epoch: 3, renewIntervalMs: 4_000, timeoutMs: 20_000 };
  const keeper = new LeaseKeeper({
    volumeName: 'v', lease, grant: capabilityGrant(capabilityReply(0, 90_000)), log: quiet, timers,
    mds: {
      renewLease: async (_name, leaseId) => {
        calls.push(`renew ${leaseId} @${timers.nowMs}`);
        if (renewAnswer !== null) throw renewAnswer;
        return { ok: true, qos: UNLIMITED_QOS };
      },
      capability: async (_name, leaseId) => {
        calls.push(`capability ${leaseId} @${timers.nowMs}`);
        const answer = capabilityAnswers.shift();
        if (answer === undefined || answer instanceof StorageError) throw answer ?? new StorageError('ERR_INTERNAL', 'none');
        return answer;
      },
      volumeQos: async () => UNLIMITED_QOS,
      closeVolume: async (_name, leaseId) => {
        calls.push(`close ${leaseId} @${timers.nowMs}`);
        return { ok: true };
      },
    },
  });
  keeper.start();
  t.equal(keeper.epoch, 3);
  await timers.advance(29_999);
  t.same(calls, ['renew L1 @4000', 'renew L1 @8000', 'renew L1 @12000', 'renew L1 @16000', 'renew L1 @20000', 'renew L1 @24000', 'renew L1 @28000']);
  calls.length = 0;
  await timers.advance(3_000);
  t.same(calls, ['capability L1 @30000', 'capability L1 @31000', 'renew L1 @32000'], 'at a third of 90 s; after a failure, 1 s later');
  t.equal(keeper.grant.capability.expiresAtMs, 37_000, 'the new capability replaced the old');
  calls.length = 0;
  await timers.advance(2_000);
  t.same(calls, ['capability L1 @33000'], 'a short-lived capability: renewed after 2 s (a third of 6 s), not sooner than 1 s');

  calls.length = 0;
  renewAnswer = new StorageError('ERR_LEASE_EXPIRED', 'taken over by host B');
  await timers.advance(10_000);
  t.same(calls.filter((call) => call.startsWith('renew')), ['renew L1 @36000'], 'renewals stop once the MDS says the lease is gone');
  t.equal(keeper.lost?.code, 'ERR_LEASE_EXPIRED');
  t.equal(keeper.noteFenced(new StorageError('ERR_LEASE_FENCED', 'later')).message, 'later', 'the error is passed back to throw');
  t.equal(keeper.lost?.message, 'taken over by host B', 'the first reason is kept');

  calls.length = 0;
  await keeper.stop();
  t.same(calls, [], 'a lost lease is not released');
  t.equal(timers.pending, 0, 'no timer is left');
});

t.test('stopping releases a held lease once and cancels the renewals', async (t) => {
  const timers = new FakeTimers();
  const calls: string[] = [];
  const keeper = new LeaseKeeper({
    volumeName: 'v', lease: { leaseId: 'L2', epoch: 1, renewIntervalMs: 1_000, timeoutMs: 5_000 },
    grant: capabilityGrant(capabilityReply(0, 60_000)), log: quiet, timers,
    mds: {
      renewLease: async () => ({ ok: true, qos: UNLIMITED_QOS }),
      capability: async () => capabilityReply(0, 60_000),
      volumeQos: async () => UNLIMITED_QOS,
      closeVolume: async (_name, leaseId) => {
        calls.push(`close ${leaseId}`);
        return { ok: true };
      },
    },
  });
  keeper.start();
  t.equal(timers.pending, 2);
  await keeper.stop();
  await keeper.stop();
  t.same(calls, ['close L2']);
  t.equal(timers.pending, 0);
});

t.test('reads try local members first, rotating among equals, ill servers last; a change answer is sorted', async (t) => {
  const replicas = [{ csId: 1, host: '10.0.0.1', id: 'a' }, { csId: 2, host: '127.0.0.1', id: 'b' }, { csId: 3, host: '10.0.0.3', id: 'c' }];
  const local = new Set(['127.0.0.1']);
  t.same([0, 1, 2, 3].map((rotation) => readOrder(replicas, rotation, local).map((r) => r.id).join('')), ['bac', 'bca', 'bca', 'bac']);
  t.same([0, 1, 2].map((rotation) => readOrder(replicas, rotation, new Set()).map((r) => r.id).join('')), ['abc', 'bca', 'cab']);
  // The local member's disk is ill: it is read last, after the remote ones.
  t.same([0, 1, 2].map((rotation) => readOrder(replicas, rotation, local, undefined, new Set([2])).map((r) => r.id).join('')), ['acb', 'cab', 'cab']);

  t.same(changeOutcome(4, {}), { kind: 'done' });
  const failed = changeOutcome(4, { code: 'ERR_IO', message: 'forward', failedReplicas: [{ csId: 6, code: 'ERR_TIMEOUT', message: 'slow' }] });
  t.match(failed, { kind: 'failed', failedCsIds: [6], error: { code: 'ERR_IO', message: 'chunk server 4: forward [6: ERR_TIMEOUT slow]' } });
  const fenced = changeOutcome(4, { code: 'ERR_IO', failedReplicas: [{ csId: 6, code: 'ERR_LEASE_FENCED', message: 'epoch 2 < 3' }] });
  t.match(fenced, { kind: 'fatal', error: { code: 'ERR_LEASE_FENCED', message: 'chunk server 6: epoch 2 < 3' } });
  t.match(changeOutcome(4, { code: 'ERR_CHUNK_VERSION' }), { kind: 'stale' });
  t.match(changeOutcome(4, { code: 'ERR_NO_SPACE' }), { kind: 'failed', failedCsIds: [4] });
  t.match(changeOutcome(4, { code: 'ERR_TOO_LARGE' }), { kind: 'fatal' });
});

t.test('the chunk map keeps the pages used last', async (t) => {
  const loads: number[] = [];
  const heldId = (chunkIndex: number) => {
    const held = map.held(chunkIndex);
    return held === PAGE_NOT_HELD ? 'not held' : held?.chunkId;
  };
  const map = new ChunkMap({
    volumeName: 'v', chunkCount: 16, pagesMax: 2, pageChunks: 4,
    source: {
      chunkMap: async (_name, fromIndex, count) => {
        loads.push(fromIndex / 4);
        return { chunks: [{ chunkIndex: fromIndex, chunkId: 100 + fromIndex, version: 1, replicas: [], ticket: '0'.repeat(32) }], endIndex: fromIndex + count };
      },
    },
  });
  t.equal(map.held(0), PAGE_NOT_HELD);
  t.equal((await map.lookup(0))?.chunkId, 100);
  t.equal(await map.lookup(5), undefined, 'a chunk absent from a loaded page was never written');
  t.equal(map.held(1), undefined, 'held: page 0 is in memory, chunk 1 never written');
  t.equal((await map.lookup(8))?.chunkId, 108, 'page 2 evicts page 1, used before page 0');
  t.equal(map.held(4), PAGE_NOT_HELD);
  t.equal(heldId(0), 100);
  await map.lookup(12);
  t.same(loads, [0, 1, 2, 3]);
  t.equal(heldId(0), 100, 'page 0, used after page 2, stays');
  t.equal(map.held(8), PAGE_NOT_HELD, 'page 2 was evicted');
  t.equal(map.pageCount, 2);
});
