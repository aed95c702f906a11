// The primary's chunk-ticket check: a ticket is accepted only for the inputs it was issued for,
// whether it is verified afresh or recognised from an earlier verification.

import t from 'tap';
import { chunkTicket } from '../src/protocol/capability.ts';
import { TicketChecker, VERIFIED_TICKETS_MAX } from '../src/cs/ticket_check.ts';

const key = Buffer.alloc(32, 7);
const self = { csId: 1, host: '127.0.0.1', port: 7001 };
const forward = [{ csId: 2, host: '127.0.0.1', port: 7002 }, { csId: 3, host: '127.0.0.1', port: 7003 }];
const change = (over: Record<string, unknown> = {}) => {
  const base = { chunkId: 42, version: 5, volumeId: 9, forward };
  const merged = { ...base, ...over } as typeof base;
  return { ...merged, ticket: chunkTicket(key, base.chunkId, base.version, base.volumeId, [self, ...base.forward]), ...over };
};

t.test('a ticket vouches for its chunk, version, volume and members, the first time and every time after', async (t) => {
  const checker = new TicketChecker(key);
  for (let round = 0; round < 2; round += 1) {
    const label = round === 0 ? 'verified' : 'recognised';
    t.ok(checker.check(change(), self), `${label}: the issued ticket is accepted`);
    t.notOk(checker.check(change({ version: 6 }), self), `${label}: not for another version`);
    t.notOk(checker.check(change({ volumeId: 10 }), self), `${label}: not for another volume`);
    t.notOk(checker.check(change({ chunkId: 43 }), self), `${label}: not for another chunk`);
    t.notOk(checker.check(change({ forward: forward.slice(0, 1) }), self), `${label}: not with a member left out`);
    t.notOk(checker.check(change({ forward: [forward[1], forward[0]] }), self), `${label}: not with members reordered`);
    t.notOk(checker.check(change({ forward: [{ ...forward[0]!, port: 9999 }, forward[1]] }), self), `${label}: not with a member moved`);
    t.notOk(checker.check(change(), { ...self, csId: 4 }), `${label}: not at another primary`);
    const forged = Buffer.from(change().ticket);
    forged[0]! ^= 1;
    t.notOk(checker.check(change({ ticket: forged }), self), `${label}: not a ticket with a bit flipped`);
    t.notOk(checker.check(change({ ticket: undefined }), self), `${label}: not without a ticket`);
  }
});

t.test('a ticket whose bytes change after the check is not trusted from memory', async (t) => {
  const checker = new TicketChecker(key);
  const first = change();
  t.ok(checker.check(first, self));
  first.ticket[0]! ^= 1;
  t.notOk(checker.check(first, self), 'the remembered ticket is a copy, not the request\'s buffer');
});

t.test('memory is bounded: forgotten chunks are verified afresh', async (t) => {
  const checker = new TicketChecker(key);
  for (let chunkId = 0; chunkId <= VERIFIED_TICKETS_MAX; chunkId += 1) {
    const ticket = chunkTicket(key, chunkId, 1, 1, [self]);
    if (!checker.check({ chunkId, version: 1, volumeId: 1, forward: [], ticket }, self)) t.fail(`chunk ${chunkId}`);
  }
  t.ok(checker.check({ chunkId: 0, version: 1, volumeId: 1, forward: [], ticket: chunkTicket(key, 0, 1, 1, [self]) }, self),
    'the oldest, forgotten, still verifies');
  t.equal((checker as unknown as { verified: Map<number, unknown> }).verified.size, VERIFIED_TICKETS_MAX);
});
