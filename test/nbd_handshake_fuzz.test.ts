// Fuzzes the NBD parsers with random and mutated byte streams, cut into random pieces: the
// handshake reader and the option negotiator, then the request reader and request checks. Each
// must yield a valid event or a clean close decision, never throw, never buffer beyond its
// limit. A failure prints its SEED; rerun one case with NBD_FUZZ_SEED=<seed>.
//
// The negotiator needs a provider to answer LIST/INFO/GO; the one here returns fixed sizes and
// serves no data. It exercises option parsing only and proves nothing about devices.

import t from 'tap';
import type { Test } from 'tap';
import type { BlockDeviceHandle, BlockDeviceProvider } from '../src/client/block_device.ts';
import { StorageError } from '../src/errors.ts';
import { ByteQueue } from '../src/nbd/byte_queue.ts';
import { HandshakeReader, Negotiator } from '../src/nbd/handshake.ts';
import type { OptionOutcome } from '../src/nbd/handshake.ts';
import {
  BLOCK_SIZE, COMMAND, MAGIC, OPTION, OPTION_DATA_BYTES_MAX, OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
} from '../src/nbd/protocol.ts';
import { RequestReader, validateRequest } from '../src/nbd/transmission.ts';
import type { ExportState, NbdRequest } from '../src/nbd/transmission.ts';
import { seededRandom } from '../src/util/clock.ts';
import type { Logger } from '../src/util/log.ts';

const CASES = 5000;
const TIME_BUDGET_MS = 4000;
const VALID_ERRNOS = new Set([1, 5, 12, 22, 28, 75, 95, 108]);

type Rng = () => number;
const int = (rng: Rng, below: number): number => Math.floor(rng() * below);

function randomBytes(rng: Rng, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let index = 0; index < length; index += 1) out[index] = int(rng, 256);
  return out;
}

/** Flips, overwrites, inserts, deletes, truncates or duplicates a few bytes of a valid stream. */
function mutate(rng: Rng, input: Buffer): Buffer {
  let bytes: Buffer = Buffer.from(input);
  const rounds = 1 + int(rng, 4);
  for (let round = 0; round < rounds && bytes.length > 0; round += 1) {
    const at = int(rng, bytes.length);
    switch (int(rng, 6)) {
      case 0: bytes[at] = (bytes[at] ?? 0) ^ (1 << int(rng, 8)); break;
      case 1: bytes[at] = [0, 0xff, 0x7f, 0x80][int(rng, 4)] ?? 0; break;
      case 2: bytes = splice(bytes, at, at, randomBytes(rng, 1 + int(rng, 8))); break;
      case 3: bytes = splice(bytes, at, at + 1 + int(rng, 8), Buffer.alloc(0)); break;
      case 4: bytes = bytes.subarray(0, at); break;
      default: bytes = Buffer.concat([bytes, bytes.subarray(at)]); break;
    }
  }
  return bytes;
}

function splice(bytes: Buffer, start: number, end: number, insert: Buffer): Buffer {
  return Buffer.concat([bytes.subarray(0, start), insert, bytes.subarray(end)]);
}

/** Feeds `bytes` to `consume` in random pieces, as a socket would deliver them. */
async function feedInPieces(
  rng: Rng, bytes: Buffer, consume: (piece: Buffer) => Promise<boolean>,
): Promise<void> {
  let at = 0;
  while (at < bytes.length) {
    const size = 1 + int(rng, rng() < 0.5 ? 32 : 4096);
    if (!(await consume(bytes.subarray(at, at + size)))) return;
    at += size;
  }
}

const silentLogger: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

const parserStubProvider: BlockDeviceProvider = {
  list: async () => ['vol', 'vol2'],
  open: async (name): Promise<BlockDeviceHandle> => {
    if (name === 'leased') throw new StorageError('ERR_VOLUME_LEASED', 'leased by host-3');
    if (name !== 'vol' && name !== 'vol2') throw new StorageError('ERR_NOT_FOUND', `no ${name}`);
    const sizeBytes = 1 << 30;
    const device = { name, sizeBytes, readOnly: name === 'vol2' } as BlockDeviceHandle['device'];
    return { device, release: async () => {} };
  },
};

function option(code: number, data: Buffer): Buffer {
  const head = Buffer.alloc(OPTION_HEADER_BYTES);
  head.write('IHAVEOPT', 0, 'latin1');
  head.writeUInt32BE(code, 8);
  head.writeUInt32BE(data.length, 12);
  return Buffer.concat([head, data]);
}

function nameAnd(name: string, tail: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(Buffer.byteLength(name), 0);
  return Buffer.concat([length, Buffer.from(name), tail]);
}

/** A plausible client conversation, the seed for mutations. */
function validHandshake(rng: Rng): Buffer {
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(int(rng, 4), 0);
  const names = ['vol', 'vol2', '', 'leased', 'nope'];
  const name = names[int(rng, names.length)] ?? '';
  const baseAllocation = nameAnd('base:allocation', Buffer.alloc(0));
  const oneQuery = Buffer.concat([Buffer.from([0, 0, 0, 1]), baseAllocation]);
  const parts: Buffer[] = [flags];
  const choices = [
    () => option(OPTION.STRUCTURED_REPLY, Buffer.alloc(0)),
    () => option(OPTION.LIST, Buffer.alloc(0)),
    () => option(OPTION.SET_META_CONTEXT, nameAnd(name, oneQuery)),
    () => option(OPTION.LIST_META_CONTEXT, nameAnd(name, Buffer.from([0, 0, 0, 0]))),
    () => option(OPTION.INFO, nameAnd(name, Buffer.from([0, 2, 0, 1, 0, 3]))),
    () => option(int(rng, 20), randomBytes(rng, int(rng, 40))),
    () => option(OPTION.GO, nameAnd(name, Buffer.from([0, 1, 0, 2]))),
    () => option(OPTION.EXPORT_NAME, Buffer.from(name)),
    () => option(OPTION.ABORT, Buffer.alloc(0)),
    () => option(OPTION.STARTTLS, Buffer.alloc(0)),
  ];
  const count = 1 + int(rng, 6);
  for (let index = 0; index < count; index += 1) {
    const choice = choices[int(rng, choices.length)];
    if (choice !== undefined) parts.push(choice());
  }
  return Buffer.concat(parts);
}

function checkOutcome(t: Test, outcome: OptionOutcome, seed: number): void {
  for (const reply of outcome.replies) {
    const isOptionReply = reply.length >= 20 &&
      reply.readUInt32BE(0) === MAGIC.OPTION_REPLY[0] &&
      reply.readUInt32BE(4) === MAGIC.OPTION_REPLY[1] &&
      reply.readUInt32BE(16) === reply.length - 20;
    const isExportNameReply =
      outcome.next === 'transmission' && (reply.length === 10 || reply.length === 134);
    if (!isOptionReply && !isExportNameReply) {
      t.fail(`SEED=${seed}: malformed reply ${reply.toString('hex')}`);
    }
    if (reply.length > 20 + 4 + 4096 + 64) t.fail(`SEED=${seed}: reply of ${reply.length} bytes`);
  }
}

/** Runs one byte stream through the reader and negotiator; returns how the conversation ended. */
async function runHandshakeCase(t: Test, seed: number, bytes: Buffer, rng: Rng): Promise<string> {
  const reader = new HandshakeReader();
  const negotiator = new Negotiator({
    provider: parserStubProvider, defaultExport: rng() < 0.5 ? 'vol' : undefined, readOnly: false,
    logger: silentLogger, connectionTag: 'fuzz', tls: rng() < 0.3 ? 'required' : 'off', isShuttingDown: () => false,
  });
  const queue = new ByteQueue();
  let ending = 'starved';
  await feedInPieces(rng, bytes, async (piece) => {
    queue.push(piece);
    for (let event = reader.next(queue); event !== null; event = reader.next(queue)) {
      let outcome: OptionOutcome | null = null;
      if (event.kind === 'close') ending = 'close';
      else if (event.kind === 'clientFlags') negotiator.setClientFlags(event.flags);
      else if (event.kind === 'oversizeOption') {
        outcome = negotiator.handleOversizeOption(event.option, event.lengthBytes);
      } else {
        if (event.data.length > OPTION_DATA_BYTES_MAX) t.fail(`SEED=${seed}: option data too big`);
        outcome = await negotiator.handleOption(event.option, event.data);
      }
      // The connection wraps its socket in TLS after the ACK; the stream here goes on as if it had.
      if (outcome?.next === 'starttls') negotiator.tlsStarted();
      if (outcome !== null) {
        checkOutcome(t, outcome, seed);
        if (outcome.next !== 'continue' && outcome.next !== 'starttls') ending = outcome.next;
      }
      if (ending !== 'starved') return false;
    }
    if (queue.lengthBytes > HandshakeReader.bufferedBytesMax) {
      t.fail(`SEED=${seed}: reader waits with ${queue.lengthBytes} bytes buffered`);
    }
    return true;
  });
  await negotiator.dispose();
  return ending;
}

/** Client flags, then a LIST whose data is too large to buffer and must be skipped. */
function oversizeList(rng: Rng): Buffer {
  return Buffer.concat([Buffer.from([0, 0, 0, 3]), option(OPTION.LIST, randomBytes(rng, 70_000))]);
}

t.test('handshake reader and negotiator: random and mutated streams', async (t) => {
  const only = process.env['NBD_FUZZ_SEED'];
  const startedMs = Date.now();
  const endings = new Map<string, number>();
  let cases = 0;
  for (let seed = 1; seed <= CASES && Date.now() - startedMs < TIME_BUDGET_MS; seed += 1) {
    if (only !== undefined && Number(only) !== seed) continue;
    const rng = seededRandom(seed);
    let bytes: Buffer;
    const kind = int(rng, 10);
    if (kind === 0) bytes = randomBytes(rng, int(rng, 2000));
    else if (kind === 1) bytes = oversizeList(rng);
    else if (kind <= 4) bytes = validHandshake(rng);
    else bytes = mutate(rng, validHandshake(rng));
    try {
      const ending = await runHandshakeCase(t, seed, bytes, rng);
      endings.set(ending, (endings.get(ending) ?? 0) + 1);
    } catch (error) {
      t.fail(`SEED=${seed}: threw ${String(error)}`);
    }
    cases += 1;
  }
  t.ok(cases >= (only === undefined ? 500 : 1), `${cases} cases ran within the budget`);
  if (only === undefined) {
    for (const ending of ['starved', 'close', 'transmission']) {
      t.ok((endings.get(ending) ?? 0) > 0, `some cases end in ${ending}`);
    }
  }
  t.comment(`endings: ${JSON.stringify(Object.fromEntries(endings))}`);
});

function validRequest(rng: Rng): Buffer {
  const head = Buffer.alloc(REQUEST_HEADER_BYTES);
  const command = rng() < 0.9 ? int(rng, 8) : int(rng, 65536);
  const edges = [0, 1, 0xffffffff, BLOCK_SIZE.MAX_BYTES + 1];
  const lengthBytes = rng() < 0.8 ? int(rng, 9000) : edges[int(rng, edges.length)] ?? 0;
  head.writeUInt32BE(MAGIC.REQUEST, 0);
  head.writeUInt16BE(rng() < 0.7 ? 0 : int(rng, 65536), 4);
  head.writeUInt16BE(command, 6);
  head.writeUInt32BE(int(rng, 2 ** 32), 8);
  head.writeUInt32BE(int(rng, 2 ** 32), 12);
  head.writeUInt32BE(rng() < 0.8 ? 0 : int(rng, 2 ** 32), 16);
  head.writeUInt32BE(int(rng, 2 ** 32), 20);
  head.writeUInt32BE(lengthBytes, 24);
  const payloadBytes = command === COMMAND.WRITE && lengthBytes <= 9000 ? lengthBytes : 0;
  return Buffer.concat([head, randomBytes(rng, payloadBytes)]);
}

t.test('request reader and request checks: random and mutated streams', async (t) => {
  const only = process.env['NBD_FUZZ_SEED'];
  const startedMs = Date.now();
  let requests = 0;
  let closes = 0;
  for (let seed = 1; seed <= CASES && Date.now() - startedMs < TIME_BUDGET_MS; seed += 1) {
    if (only !== undefined && Number(only) !== seed) continue;
    const rng = seededRandom(seed ^ 0x5eed);
    const stream = Buffer.concat(Array.from({ length: 1 + int(rng, 8) }, () => validRequest(rng)));
    const pick = rng();
    let bytes = pick < 0.55 ? stream : mutate(rng, stream);
    if (pick < 0.1) bytes = randomBytes(rng, int(rng, 500));
    const state: ExportState = {
      sizeBytes: [0, 1, 1 << 20, 2 ** 50][int(rng, 4)] ?? 0, readOnly: rng() < 0.3,
      structuredReplies: rng() < 0.5, baseAllocation: rng() < 0.5,
    };
    const reader = new RequestReader();
    const queue = new ByteQueue();
    try {
      await feedInPieces(rng, bytes, async (piece) => {
        queue.push(piece);
        for (let event = reader.next(queue); event !== null; event = reader.next(queue)) {
          if (event.kind === 'close') {
            closes += 1;
            return false;
          }
          requests += 1;
          checkRequest(t, seed, event.request, state);
        }
        if (!reader.midPayload && queue.lengthBytes >= REQUEST_HEADER_BYTES) {
          t.fail(`SEED=${seed}: a whole header left unparsed`);
        }
        return true;
      });
    } catch (error) {
      t.fail(`SEED=${seed}: threw ${String(error)}`);
    }
  }
  t.ok(requests > 1000, `${requests} requests parsed`);
  t.ok(only !== undefined || closes > 0, `${closes} streams closed`);
});

function checkRequest(t: Test, seed: number, request: NbdRequest, state: ExportState): void {
  const isWrite = request.command === COMMAND.WRITE;
  if (isWrite && request.lengthBytes > 0 && request.payload?.length !== request.lengthBytes) {
    t.fail(`SEED=${seed}: WRITE payload of ${request.payload?.length} for ${request.lengthBytes}`);
  }
  if ((request.payload?.length ?? 0) > BLOCK_SIZE.MAX_BYTES) t.fail(`SEED=${seed}: huge payload`);
  const refusal = validateRequest(request, state);
  if (refusal !== null) {
    if (!VALID_ERRNOS.has(refusal.errno) || refusal.message === '') {
      t.fail(`SEED=${seed}: refusal ${refusal.errno} "${refusal.message}"`);
    }
    return;
  }
  const runsOnDevice = request.command !== COMMAND.FLUSH && request.command !== COMMAND.DISC;
  const endBytes = request.offsetBytes + request.lengthBytes;
  if (runsOnDevice && (request.lengthBytes === 0 || endBytes > state.sizeBytes)) {
    t.fail(`SEED=${seed}: accepted an empty or out-of-range ${request.command}`);
  }
}
