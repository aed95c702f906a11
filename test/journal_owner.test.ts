// Whose journal is it (src/cs/journal/ownership.ts): the decisions a chunk server's start takes
// from the segment headers it finds and what its data directory says of its last stop.

import t from 'tap';
import { decideJournalOwner, type FoundSegment, type JournalOwnerFacts } from '../src/cs/journal/ownership.ts';

const SELF = '11111111-1111-4111-8111-111111111111';
const OTHER = '22222222-2222-4222-8222-222222222222';

const own = (name: string, hasRecords = true): FoundSegment => ({ name, header: { format: 3, ownerUuid: SELF, segmentNumber: 1 }, hasRecords });
const others = (name: string): FoundSegment => ({ name, header: { format: 3, ownerUuid: OTHER, segmentNumber: 1 }, hasRecords: true });
const format2 = (name: string, hasRecords = true): FoundSegment => ({ name, header: { format: 2 }, hasRecords });

function decide(facts: Partial<JournalOwnerFacts>): string {
  const decision = decideJournalOwner({
    dataDir: '/hdd/cs', dataDirUuid: SELF, journalDir: '/ssd/j', isDataDirJournal: false, segments: [], spareOwners: [],
    mayHoldUnapplied: true, hadJournal: true, ...facts,
  });
  return decision.kind === 'refuse' ? `refuse ${decision.error.code}` : decision.kind;
}

t.test('whose journal', async (t) => {
  t.equal(decide({ segments: [own('1.log')] }), 'open', 'its own segments');
  t.equal(decide({ segments: [own('1.log'), others('2.log')] }), 'refuse ERR_JOURNAL_OWNER', 'a segment of another disk, among its own');
  t.equal(decide({ segments: [others('1.log')], mayHoldUnapplied: false }), 'refuse ERR_JOURNAL_OWNER', 'another disk\'s, even after a clean stop');
  t.equal(decide({ segments: [format2('1.log')] }), 'refuse ERR_JOURNAL_OWNER', 'format 2 with records, outside DATA/journal');
  t.equal(decide({ segments: [format2('1.log')], isDataDirJournal: true }), 'open', 'format 2 with records in DATA/journal');
  t.equal(decide({ segments: [format2('1.log', false)] }), 'refuse ERR_JOURNAL_LOST',
    'a headerless empty segment (zeroes) is no journal of this disk: lost after an unclean stop');
  t.equal(decide({}), 'refuse ERR_JOURNAL_LOST', 'nothing there after an unclean stop');
  t.equal(decide({ spareOwners: [OTHER] }), 'refuse ERR_JOURNAL_LOST', 'spares of another disk do not stand for this one\'s journal');
  t.equal(decide({ spareOwners: [SELF] }), 'open', 'only its own recycled spares: a start crashed after replaying everything');
  t.equal(decide({ mayHoldUnapplied: false }), 'recreate', 'nothing there after a clean stop: recreated, with a warning');
  t.equal(decide({ mayHoldUnapplied: false, hadJournal: false }), 'open', 'a first start');
});
