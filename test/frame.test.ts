// The chunk-server framing and message parsers: round trips, streams cut at every byte, limits,
// and a fuzzer that feeds random and mutated bytes and accepts only a frame or a StorageError.

import t from 'tap';
import { StorageError } from '../src/errors.ts';
import { FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES_MAX, FRAME_PREFIX_BYTES } from '../src/limits.ts';
import { CS_OP, decodeExtents, encodeExtents, parseReply, parseRequest } from '../src/protocol/cs_messages.ts';
import { FrameReader, encodeFrameHead, type RawFrame } from '../src/protocol/frame.ts';
import { seededRandom } from '../src/util/clock.ts';
import { changeFields } from '../src/client/replica_io.ts';
import type { ChunkMapEntry } from '../src/protocol/api.ts';

function frameBytes(header: object, payload = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeFrameHead(header, payload.length), payload]);
}

function drain(reader: FrameReader): RawFrame[] {
  const frames: RawFrame[] = [];
  for (let frame = reader.next(); frame !== null; frame = reader.next()) frames.push(frame);
  return frames;
}

const write = {
  op: CS_OP.WRITE, id: 7, chunkId: 2 ** 40 + 1, version: 3, volumeId: 9, epoch: 2, offsetBytes: 4096, lengthBytes: 5,
  forward: [{ csId: 2, host: '127.0.0.1', port: 9632 }],
};

t.test('a write request survives the stream cut at every byte', async (t) => {
  const bytes = Buffer.concat([frameBytes(write, Buffer.from('hello')), frameBytes({ op: CS_OP.FLUSH, id: 8 })]);
  for (let cut = 0; cut <= bytes.length; cut += 1) {
    const reader = new FrameReader();
    reader.push(bytes.subarray(0, cut));
    const early = drain(reader);
    reader.push(bytes.subarray(cut));
    const frames = [...early, ...drain(reader)];
    t.equal(frames.length, 2, `two frames with a cut at ${cut}`);
    const request = parseRequest(frames[0]!);
    t.same(request, { ...write }, 'fields intact');
    t.equal(frames[0]!.payload.toString(), 'hello');
    t.same(parseRequest(frames[1]!), { op: CS_OP.FLUSH, id: 8 });
  }
});

t.test('limits are checked before the body is buffered', async (t) => {
  const reader = new FrameReader();
  const prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
  prefix.writeUInt32BE(FRAME_BODY_BYTES_MAX + 1, 0);
  prefix.writeUInt16BE(10, 4);
  reader.push(prefix);
  t.throws(() => reader.next(), { code: 'ERR_FRAME_TOO_LARGE' });

  const badHeader = Buffer.alloc(FRAME_PREFIX_BYTES);
  badHeader.writeUInt32BE(100, 0);
  badHeader.writeUInt16BE(FRAME_HEADER_BYTES_MAX + 1, 4);
  const second = new FrameReader();
  second.push(badHeader);
  t.throws(() => second.next(), { code: 'ERR_PROTOCOL' });
});

t.test('invalid requests name the field that is wrong', async (t) => {
  const parse = (header: Record<string, unknown>, payload = Buffer.alloc(0)) => {
    const reader = new FrameReader();
    reader.push(frameBytes(header, payload));
    return parseRequest(reader.next()!);
  };
  t.throws(() => parse({ ...write, offsetBytes: -1 }, Buffer.from('hello')), /offsetBytes/);
  t.throws(() => parse({ ...write, lengthBytes: 6 }, Buffer.from('hello')), /announces 6 bytes but carries 5/);
  t.throws(() => parse({ op: 99, id: 1 }), /unknown op 99/);
  t.throws(() => parse({ op: CS_OP.READ, id: 1, chunkId: 1, version: 1, offsetBytes: 0, lengthBytes: 64 * 1024 * 1024 }), { code: 'ERR_TOO_LARGE' });
  t.throws(() => parse({ ...write, forward: [{ csId: 1, host: '', port: 1 }] }, Buffer.from('hello')), /host/);
  t.throws(() => parse({ op: CS_OP.CREATE_CHUNK, id: 1, chunkId: 1, volumeId: 1, chunkIndex: 0, sizeBytes: 1000, version: 1 }), /multiple of 4096/);
});

t.test('extents round-trip and reject malformed payloads', async (t) => {
  const extents = [4096, 1, 8192, 0];
  t.same(decodeExtents(encodeExtents(extents)), [{ lengthBytes: 4096, allocated: true }, { lengthBytes: 8192, allocated: false }]);
  t.throws(() => decodeExtents(Buffer.alloc(12)), { code: 'ERR_PROTOCOL' });
  t.throws(() => decodeExtents(encodeExtents([0, 1])), /length 0/);
});

t.test('fuzz: random and mutated streams give frames or StorageErrors, nothing else', async (t) => {
  const random = seededRandom(Number(process.env['FUZZ_SEED'] ?? 20261121));
  const valid = Buffer.concat([frameBytes(write, Buffer.from('hello')), frameBytes({ op: CS_OP.REPLY, id: 1, code: 'ERR_IO', message: 'x' })]);
  let frames = 0;
  let errors = 0;
  for (let round = 0; round < 3000; round += 1) {
    const bytes = Buffer.from(valid);
    const mutations = 1 + Math.floor(random() * 4);
    for (let m = 0; m < mutations; m += 1) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
    const input = round % 3 === 0 ? Buffer.from(Array.from({ length: 64 }, () => Math.floor(random() * 256))) : bytes;
    const reader = new FrameReader();
    reader.push(input);
    try {
      for (let frame = reader.next(); frame !== null; frame = reader.next()) {
        frames += 1;
        try {
          if (frame.header['op'] === CS_OP.REPLY) parseReply(frame);
          else parseRequest(frame);
        } catch (error) {
          if (!(error instanceof StorageError)) throw error;
          errors += 1;
        }
      }
    } catch (error) {
      if (!(error instanceof StorageError)) throw error;
      errors += 1;
    }
  }
  t.ok(frames > 0 && errors > 0, `fuzzer reached both outcomes (${frames} frames, ${errors} errors)`);
});

t.test('data-path headers travel binary and parse as their msgpack form would', async (t) => {
  const ticket = Buffer.alloc(16, 0xab);
  const cases: Array<[Record<string, unknown>, Buffer]> = [
    [{ op: CS_OP.READ, id: 0xffffffff, chunkId: Number.MAX_SAFE_INTEGER, version: 2 ** 33, offsetBytes: 8192, lengthBytes: 4096 }, Buffer.alloc(0)],
    [{ ...write, ticket, forward: [{ csId: 2, host: '127.0.0.1', port: 9632 }, { csId: 70000, host: 'cs-b.example', port: 1 }] }, Buffer.from('hello')],
    [{ ...write, op: CS_OP.ZERO, lengthBytes: 64 * 1024 * 1024, forward: [] }, Buffer.alloc(0)],
  ];
  for (const [header, payload] of cases) {
    const head = encodeFrameHead(header, payload.length);
    t.ok(head[FRAME_PREFIX_BYTES]! < 0x80, `op ${String(header['op'])} has a binary header`);
    const reader = new FrameReader();
    reader.push(Buffer.concat([head, payload]));
    t.same(parseRequest(reader.next()!), header, `op ${String(header['op'])} round-trips`);
  }
  const reply = encodeFrameHead({ op: CS_OP.REPLY, id: 12 }, 5);
  t.equal(reply.length, FRAME_PREFIX_BYTES + 5, 'a plain reply is 5 header bytes');
  const reader = new FrameReader();
  reader.push(Buffer.concat([reply, Buffer.from('abcde')]));
  const frame = reader.next()!;
  t.same(parseReply(frame), { op: CS_OP.REPLY, id: 12 });
  t.equal(frame.payload.toString(), 'abcde');
});

t.test('the client\'s change request travels binary, its members\' host labels left out', async (t) => {
  const entry: ChunkMapEntry = {
    chunkIndex: 3, chunkId: 41, version: 5, ticket: 'ab'.repeat(16),
    replicas: [
      { csId: 1, host: '127.0.0.1', port: 9631, hostLabel: 'hv-a' },
      { csId: 2, host: '127.0.0.1', port: 9632, hostLabel: 'hv-b' },
      { csId: 3, host: '127.0.0.1', port: 9633 },
    ],
  };
  const fields = changeFields(entry, CS_OP.WRITE, 9, 2, { chunkIndex: 3, offsetInChunk: 8192, lengthBytes: 4096, bufferOffset: 0 });
  const header = { ...fields, id: 1 };
  const head = encodeFrameHead(header, 4096);
  t.ok(head[FRAME_PREFIX_BYTES]! < 0x80, 'a write from the map\'s entry has a binary header');
  const reader = new FrameReader();
  reader.push(Buffer.concat([head, Buffer.alloc(4096)]));
  const parsed = parseRequest(reader.next()!);
  t.same(parsed, header, 'it parses as sent');
  t.same(fields.forward, [{ csId: 2, host: '127.0.0.1', port: 9632 }, { csId: 3, host: '127.0.0.1', port: 9633 }], 'forward: the members after the primary');
  t.equal(changeFields(entry, CS_OP.ZERO, 9, 2, { chunkIndex: 3, offsetInChunk: 0, lengthBytes: 1, bufferOffset: 0 }).forward, fields.forward,
    'the forward list is made once per entry');
});

t.test('headers outside the binary layouts keep msgpack', async (t) => {
  const msgpack = (header: Record<string, unknown>) => encodeFrameHead(header, 0)[FRAME_PREFIX_BYTES]! >= 0x80;
  t.ok(msgpack({ op: CS_OP.REPLY, id: 1, code: 'ERR_IO', message: 'x' }), 'an error reply');
  t.ok(msgpack({ op: CS_OP.REPLY, id: 1, version: 3 }), 'a reply with fields');
  t.ok(msgpack({ ...write, extra: 1 }), 'a write with a field the layout lacks');
  t.ok(msgpack({ ...write, forward: [{ csId: 1, host: 'hôte-ü', port: 1 }] }), 'a host that is not ASCII');
  t.ok(msgpack({ ...write, forward: [{ csId: 1, host: 'h', port: 1, tier: 2 }] }), 'a forward entry with more fields');
  t.ok(msgpack({ ...write, ticket: Buffer.alloc(15) }), 'a ticket of the wrong length');
  t.ok(msgpack({ op: CS_OP.FLUSH, id: 1 }), 'another op');
  t.ok(msgpack({ op: CS_OP.READ, id: 1, chunkId: 1, version: 1, offsetBytes: 2 ** 32, lengthBytes: 1 }), 'an offset past 32 bits');
});

t.test('fuzz: random binary headers give a map or a StorageError naming the binary header', async (t) => {
  const random = seededRandom(Number(process.env['FUZZ_SEED'] ?? 20261130));
  const ops = [CS_OP.REPLY, CS_OP.WRITE, CS_OP.READ, CS_OP.ZERO, 0, 0x7f];
  let parsed = 0;
  let refused = 0;
  for (let round = 0; round < 5000; round += 1) {
    const headerBytes = 1 + Math.floor(random() * 120);
    const header = Buffer.from(Array.from({ length: headerBytes }, () => Math.floor(random() * 256)));
    header[0] = ops[Math.floor(random() * ops.length)]!;
    if (round % 2 === 0) header.fill(0, 1, Math.min(headerBytes, 1 + Math.floor(random() * 60)));
    const prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
    prefix.writeUInt32BE(headerBytes, 0);
    prefix.writeUInt16BE(headerBytes, 4);
    const reader = new FrameReader();
    reader.push(Buffer.concat([prefix, header]));
    try {
      const frame = reader.next();
      t.ok(frame !== null);
      parsed += 1;
    } catch (error) {
      if (!(error instanceof StorageError) || error.code !== 'ERR_PROTOCOL' || !/binary frame header/.test(error.message)) throw error;
      refused += 1;
    }
  }
  t.ok(parsed > 0 && refused > 0, `both outcomes reached (${parsed} parsed, ${refused} refused)`);
});
