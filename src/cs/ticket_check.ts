// The primary's check of a client write's chunk ticket (protocol/capability.ts), with a memory of
// the last ticket verified per chunk. A ticket is a MAC of (chunk, version, volume, members): once
// one has been verified, a request carrying the same ticket bytes for the same inputs would verify
// the same way, so it is accepted on a byte comparison instead of an HMAC and its allocations, per
// write. Anything that differs (a new version, other members, another ticket) is verified afresh.

import { timingSafeEqual } from 'node:crypto';
import { chunkTicket, type TicketMember } from '../protocol/capability.ts';
import { assert } from '../util/assert.ts';
import { setBounded } from '../util/bounded_map.ts';

/** Chunks whose last verified ticket is remembered; past it the oldest is forgotten (and re-verified when next used). */
export const VERIFIED_TICKETS_MAX = 16_384;

interface Verified {
  readonly version: number;
  readonly volumeId: number;
  readonly members: readonly TicketMember[];
  readonly ticket: Buffer;
}

export interface TicketedChange {
  readonly chunkId: number;
  readonly version: number;
  readonly volumeId: number;
  readonly forward: readonly TicketMember[];
  readonly ticket?: Buffer | undefined;
}

export class TicketChecker {
  private readonly key: Buffer;
  private readonly verified = new Map<number, Verified>();

  constructor(capabilityKey: Buffer) {
    assert(capabilityKey.length > 0, 'ticket key is not empty');
    this.key = capabilityKey;
  }

  /** True when the change's ticket vouches for `self` as primary with its forward list. */
  check(change: TicketedChange, self: TicketMember): boolean {
    const { ticket } = change;
    if (ticket === undefined) return false;
    const known = this.verified.get(change.chunkId);
    if (known !== undefined && known.version === change.version && known.volumeId === change.volumeId &&
      sameMembers(known.members, self, change.forward) && known.ticket.equals(ticket)) {
      return true;
    }
    const members = [self, ...change.forward];
    const expected = chunkTicket(this.key, change.chunkId, change.version, change.volumeId, members);
    if (expected.length !== ticket.length || !timingSafeEqual(expected, ticket)) return false;
    setBounded(this.verified, change.chunkId,
      { version: change.version, volumeId: change.volumeId, members: members.map(copyMember), ticket: Buffer.from(ticket) },
      VERIFIED_TICKETS_MAX);
    return true;
  }
}

function copyMember(member: TicketMember): TicketMember {
  return { csId: member.csId, host: member.host, port: member.port };
}

function sameMember(a: TicketMember, b: TicketMember): boolean {
  return a.csId === b.csId && a.port === b.port && a.host === b.host;
}

function sameMembers(known: readonly TicketMember[], self: TicketMember, forward: readonly TicketMember[]): boolean {
  if (known.length !== forward.length + 1 || !sameMember(known[0]!, self)) return false;
  for (let index = 0; index < forward.length; index += 1) if (!sameMember(known[index + 1]!, forward[index]!)) return false;
  return true;
}
