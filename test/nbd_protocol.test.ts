// NBD wire codecs and pure decisions, checked byte for byte against the layouts in the protocol
// document (NetworkBlockDevice/nbd doc/proto.md). No sockets and no devices: the server as a
// whole is proven against real clients (qemu, libnbd, fio) in the integration tests.

import t from 'tap';
import { NBD_ERRNO, StorageError } from '../src/errors.ts';
import type { ErrorCode } from '../src/errors.ts';
import { IO_BYTES_MAX } from '../src/limits.ts';
import { ByteQueue } from '../src/nbd/byte_queue.ts';
import {
  optionErrorFor, parseInfoRequest, parseMetaContextRequest, selectMetaContexts,
  transmissionFlagsFor,
} from '../src/nbd/handshake.ts';
import {
  COMMAND, COMMAND_FLAG, INFO, OPTION, OPTION_REPLY, STATE, decideClientFlags, decodeOptionHeader,
  decodeRequestHeader, encodeBlockStatusChunk, encodeErrorChunk, encodeExportNameReply,
  encodeGreeting, encodeInfoBlockSize, encodeInfoExport, encodeInfoString, encodeMessage,
  encodeMetaContextData, encodeOffsetDataHead, encodeOptionReply, encodeServerReplyData,
  encodeSimpleReply, readU64, writeU64,
} from '../src/nbd/protocol.ts';
import type { RequestHeader } from '../src/nbd/protocol.ts';
import {
  errnoForDeviceError, statusDescriptors, validateRequest,
} from '../src/nbd/transmission.ts';
import type { ExportState } from '../src/nbd/transmission.ts';

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');

t.test('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', async (t) => {
  t.same(encodeGreeting(), Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT', 'latin1'), hex('0003')]));
});

t.test('client flags: fixed and plain newstyle, unknown bits refused', async (t) => {
  t.same(decideClientFlags(1), { ok: true, fixedNewstyle: true, noZeroes: false });
  t.same(decideClientFlags(3), { ok: true, fixedNewstyle: true, noZeroes: true });
  t.same(decideClientFlags(0), { ok: true, fixedNewstyle: false, noZeroes: false });
  t.same(decideClientFlags(2), { ok: true, fixedNewstyle: false, noZeroes: true });
  t.equal(decideClientFlags(1 | 4).ok, false);
  t.equal(decideClientFlags(0x80000001).ok, false);
});

t.test('option header and option replies', async (t) => {
  const goHeader = (magic: string): Buffer =>
    Buffer.concat([Buffer.from(magic), hex('00000007 0000000a')]);
  t.same(decodeOptionHeader(goHeader('IHAVEOPT')), { magicOk: true, option: 7, lengthBytes: 10 });
  t.equal(decodeOptionHeader(goHeader('IHAVEOPX')).magicOk, false);
  t.same(
    encodeOptionReply(OPTION.STRUCTURED_REPLY, OPTION_REPLY.ACK),
    hex('0003e889045565a9 00000008 00000001 00000000'),
  );
  t.same(
    encodeOptionReply(OPTION.LIST, OPTION_REPLY.SERVER, encodeServerReplyData('vol')),
    hex('0003e889045565a9 00000003 00000002 00000007 00000003 766f6c'),
  );
  t.same(
    encodeOptionReply(OPTION.INFO, OPTION_REPLY.ERR_UNKNOWN, Buffer.from('no')),
    hex('0003e889045565a9 00000006 80000006 00000002 6e6f'),
  );
  t.same(encodeMetaContextData(1, 'base:a'), hex('00000001 626173653a61'));
});

t.test('info replies and the EXPORT_NAME reply', async (t) => {
  t.same(encodeInfoExport(2 ** 40 + 5, 0x016d), hex('0000 0000010000000005 016d'));
  t.same(encodeInfoBlockSize(1, 4096, IO_BYTES_MAX), hex('0003 00000001 00001000 02000000'));
  t.same(encodeInfoString(INFO.NAME, 'vol'), hex('0001 766f6c'));
  t.same(encodeInfoString(INFO.DESCRIPTION, 'd'), hex('0002 64'));
  t.same(encodeExportNameReply(512, 0x0003, true), hex('0000000000000200 0003'));
  const padded = encodeExportNameReply(512, 0x0003, false);
  t.equal(padded.length, 134);
  t.same(padded.subarray(10), Buffer.alloc(124));
});

t.test('request header decoding', async (t) => {
  const bytes = hex('25609513 0001 0001 0102030405060708 0000000100000200 00001000');
  t.same(decodeRequestHeader(bytes), {
    magic: 0x25609513, flags: 1, command: COMMAND.WRITE, cookieHigh: 0x01020304,
    cookieLow: 0x05060708, offsetBytes: 2 ** 32 + 512, lengthBytes: 4096, payload: null,
  });
  const huge = decodeRequestHeader(
    hex('25609513 0000 0000 0000000000000000 ffffffffffffffff 00000001'),
  );
  t.ok(huge.offsetBytes > 2 ** 63, 'an offset beyond 2^53 stays larger than any export');
});

t.test('simple and structured replies', async (t) => {
  const simple = Buffer.alloc(16);
  encodeSimpleReply(simple, 0, NBD_ERRNO.EINVAL, 0xdeadbeef, 0x00000001);
  t.same(simple, hex('67446698 00000016 deadbeef00000001'));
  const head = Buffer.alloc(28);
  encodeOffsetDataHead(head, 0, 0, 9, 4096, 512);
  t.same(head, hex('668e33ef 0001 0001 0000000000000009 00000208 0000000000001000'));
  t.same(
    encodeErrorChunk(0, 9, NBD_ERRNO.ENOSPC, 'full'),
    hex('668e33ef 0001 8001 0000000000000009 0000000a 0000001c 0004 66756c6c'),
  );
  t.same(
    encodeBlockStatusChunk(0, 9, 1, [
      { lengthBytes: 4096, status: 0 },
      { lengthBytes: 512, status: 3 },
    ]),
    hex('668e33ef 0001 0005 0000000000000009 00000014 00000001' +
      '00001000 00000000 00000200 00000003'),
  );
});

t.test('u64 fields and messages', async (t) => {
  const buffer = Buffer.alloc(8);
  writeU64(buffer, Number.MAX_SAFE_INTEGER, 0);
  t.same(buffer, hex('001fffffffffffff'));
  t.equal(readU64(buffer, 0), Number.MAX_SAFE_INTEGER);
  t.throws(() => writeU64(buffer, -1, 0));
  t.equal(encodeMessage('x'.repeat(5000)).length, 4096);
  // A 3-byte character straddling the limit is dropped whole, never cut.
  const cut = encodeMessage('a' + '€'.repeat(2000), 4096);
  t.equal(cut.length, 4096 - ((4096 - 1) % 3));
  t.doesNotThrow(() => new TextDecoder('utf-8', { fatal: true }).decode(cut));
  t.same(encodeMessage('a\0b'), Buffer.from('a b'));
});

t.test('INFO/GO option data', async (t) => {
  const go = (name: string, infos: number[]): Buffer => {
    const nameBytes = Buffer.from(name);
    const out = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
    out.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(out, 4);
    out.writeUInt16BE(infos.length, 4 + nameBytes.length);
    infos.forEach((info, index) => out.writeUInt16BE(info, 6 + nameBytes.length + 2 * index));
    return out;
  };
  t.same(parseInfoRequest(go('vol', [1, 3])), {
    ok: true, value: { exportName: 'vol', infoTypes: [1, 3] },
  });
  t.same(parseInfoRequest(go('', [])), { ok: true, value: { exportName: '', infoTypes: [] } });
  const invalid = (data: Buffer): boolean => {
    const parsed = parseInfoRequest(data);
    return !parsed.ok && parsed.error === OPTION_REPLY.ERR_INVALID;
  };
  t.ok(invalid(Buffer.alloc(5)), 'too short');
  t.ok(invalid(Buffer.concat([go('vol', [1]), Buffer.alloc(1)])), 'trailing byte');
  t.ok(invalid(go('vol', [1]).subarray(0, 10)), 'count larger than the data');
  t.ok(invalid(hex('ffffffff 0000')), 'name length beyond the data');
  t.ok(invalid(go('a\0b', [])), 'NUL in the name');
  t.ok(invalid(go('x'.repeat(4097), [])), 'name over 4096 bytes');
});

t.test('META_CONTEXT option data and context selection', async (t) => {
  const meta = (name: string, queries: string[]): Buffer => {
    const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
    parts[0]?.writeUInt32BE(Buffer.byteLength(name), 0);
    parts[2]?.writeUInt32BE(queries.length, 0);
    for (const query of queries) {
      const length = Buffer.alloc(4);
      length.writeUInt32BE(Buffer.byteLength(query), 0);
      parts.push(length, Buffer.from(query));
    }
    return Buffer.concat(parts);
  };
  t.same(parseMetaContextRequest(meta('vol', ['base:allocation'])), {
    ok: true, value: { exportName: 'vol', queries: ['base:allocation'] },
  });
  t.equal(parseMetaContextRequest(meta('vol', ['a']).subarray(0, 14)).ok, false);
  t.equal(parseMetaContextRequest(Buffer.concat([meta('vol', []), Buffer.alloc(1)])).ok, false);
  const many = parseMetaContextRequest(meta('vol', Array.from({ length: 200 }, () => 'base:')));
  t.ok(!many.ok && many.error === OPTION_REPLY.ERR_TOO_BIG);
  t.same(selectMetaContexts([], 'list'), ['base:allocation']);
  t.same(selectMetaContexts(['base:'], 'list'), ['base:allocation']);
  t.same(selectMetaContexts(['base:'], 'set'), []);
  t.same(selectMetaContexts([], 'set'), []);
  const repeated = ['x-foo:bar', 'base:allocation', 'base:allocation'];
  t.same(selectMetaContexts(repeated, 'set'), ['base:allocation']);
  t.same(selectMetaContexts(['qemu:dirty-bitmap:a', 'nocolon'], 'list'), []);
});

t.test('transmission flags', async (t) => {
  t.equal(transmissionFlagsFor(false, true), 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80 | 0x100);
  const simple = 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100;
  t.equal(transmissionFlagsFor(false, false), simple, 'DF needs structured replies');
  t.equal(transmissionFlagsFor(true, false), 0x1 | 0x2 | 0x4 | 0x100, 'read-only');
});

t.test('provider errors become option errors', async (t) => {
  const message = 'volume v is leased by host-7';
  const leased = optionErrorFor(new StorageError('ERR_VOLUME_LEASED', message));
  t.same(leased, { type: OPTION_REPLY.ERR_POLICY, message, bug: false });
  t.equal(optionErrorFor(new StorageError('ERR_NOT_FOUND', 'no v')).type, OPTION_REPLY.ERR_UNKNOWN);
  const stopping = optionErrorFor(new StorageError('ERR_SHUTTING_DOWN', 'bye'));
  t.equal(stopping.type, OPTION_REPLY.ERR_SHUTDOWN);
  t.equal(optionErrorFor(new TypeError('oops')).bug, true);
});

const state: ExportState = {
  sizeBytes: 1 << 20, readOnly: false, structuredReplies: true, baseAllocation: true,
};

function header(
  command: number, offsetBytes: number, lengthBytes: number, flags = 0,
): RequestHeader {
  const cookie = { cookieHigh: 0, cookieLow: 1 };
  return { magic: 0x25609513, flags, command, ...cookie, offsetBytes, lengthBytes };
}

t.test('request checks', async (t) => {
  const errno = (request: RequestHeader, exportState: ExportState = state): number =>
    validateRequest(request, exportState)?.errno ?? 0;
  const size = state.sizeBytes;
  t.equal(errno(header(COMMAND.READ, 0, 4096)), 0);
  t.equal(errno(header(COMMAND.READ, size - 1, 1)), 0, 'the last byte');
  t.equal(errno(header(COMMAND.READ, size - 1, 2)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.READ, 2 ** 64, 1)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.WRITE, size - 1, 2)), NBD_ERRNO.ENOSPC);
  t.equal(errno(header(COMMAND.WRITE_ZEROES, size, 1)), NBD_ERRNO.ENOSPC);
  t.equal(errno(header(COMMAND.TRIM, size, 1)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.BLOCK_STATUS, size, 1)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.READ, 0, 0)), NBD_ERRNO.EINVAL, 'length 0');
  const large = { ...state, sizeBytes: 2 ** 40 };
  t.equal(errno(header(COMMAND.READ, 0, IO_BYTES_MAX + 1), large), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.TRIM, 0, 0xffffffff), large), 0, 'trim is not capped');
  t.equal(errno(header(COMMAND.WRITE_ZEROES, 0, 0xffffffff), large), 0, 'zero is not capped');
  t.equal(errno(header(COMMAND.FLUSH, 123, 456)), 0, 'reserved flush fields are ignored');
  t.equal(errno(header(COMMAND.CACHE, 0, 512)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(99, 0, 512)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.READ, 0, 512, COMMAND_FLAG.FUA | COMMAND_FLAG.DF)), 0);
  const simple = { ...state, structuredReplies: false };
  t.equal(errno(header(COMMAND.READ, 0, 512, COMMAND_FLAG.DF), simple), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.READ, 0, 512, COMMAND_FLAG.REQ_ONE)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.WRITE_ZEROES, 0, 512, COMMAND_FLAG.NO_HOLE)), 0);
  t.equal(errno(header(COMMAND.WRITE_ZEROES, 0, 512, COMMAND_FLAG.FAST_ZERO)), NBD_ERRNO.EINVAL);
  t.equal(errno(header(COMMAND.BLOCK_STATUS, 0, 512, COMMAND_FLAG.REQ_ONE)), 0);
  const noContext = { ...state, baseAllocation: false };
  t.equal(errno(header(COMMAND.BLOCK_STATUS, 0, 512), noContext), NBD_ERRNO.EINVAL);
  const readOnly = { ...state, readOnly: true };
  t.equal(errno(header(COMMAND.WRITE, 0, 512), readOnly), NBD_ERRNO.EPERM);
  t.equal(errno(header(COMMAND.TRIM, 0, 512), readOnly), NBD_ERRNO.EPERM);
  t.equal(errno(header(COMMAND.READ, 0, 512), readOnly), 0);
});

t.test('device errors become errnos', async (t) => {
  const errnoOf = (code: ErrorCode): ReturnType<typeof errnoForDeviceError> =>
    errnoForDeviceError(new StorageError(code, 'x'));
  t.same(errnoOf('ERR_NO_SPACE'), { errno: NBD_ERRNO.ENOSPC, bug: false });
  t.same(errnoOf('ERR_TOO_LARGE'), { errno: NBD_ERRNO.EINVAL, bug: false }, 'EOVERFLOW is for DF');
  t.same(errnoOf('ERR_SHUTTING_DOWN'), { errno: NBD_ERRNO.ESHUTDOWN, bug: false });
  t.same(errnoOf('ERR_LEASE_FENCED'), { errno: NBD_ERRNO.EIO, bug: false });
  t.same(errnoForDeviceError(new Error('bug')), { errno: NBD_ERRNO.EIO, bug: true });
});

t.test('block status descriptors', async (t) => {
  const hole = STATE.HOLE | STATE.ZERO;
  const extents = [
    { lengthBytes: 4096, allocated: true },
    { lengthBytes: 4096, allocated: true },
    { lengthBytes: 8192, allocated: false },
    { lengthBytes: 4096, allocated: true },
  ];
  t.same(statusDescriptors(extents, 20480, false), [
    { lengthBytes: 8192, status: 0 },
    { lengthBytes: 8192, status: hole },
    { lengthBytes: 4096, status: 0 },
  ]);
  t.same(statusDescriptors(extents, 10000, false), [
    { lengthBytes: 8192, status: 0 }, { lengthBytes: 1808, status: hole },
  ], 'never more than requested');
  t.same(statusDescriptors(extents, 20480, true), [{ lengthBytes: 8192, status: 0 }], 'REQ_ONE');
  t.same(statusDescriptors(extents, 100, true), [{ lengthBytes: 100, status: 0 }]);
  t.equal(statusDescriptors([], 100, false), null);
  t.equal(statusDescriptors([{ lengthBytes: 0, allocated: true }], 100, false), null);
  t.equal(statusDescriptors([{ lengthBytes: -1, allocated: true }], 100, false), null);
  const alternating = Array.from({ length: 5000 }, (_, index) => ({
    lengthBytes: 512, allocated: index % 2 === 0,
  }));
  t.equal(statusDescriptors(alternating, 5000 * 512, false)?.length, 2048, 'capped count');
});

t.test('byte queue: views, copies, discards', async (t) => {
  const queue = new ByteQueue();
  queue.push(Buffer.from('abc'));
  queue.push(Buffer.from('defgh'));
  t.equal(queue.lengthBytes, 8);
  t.same(queue.take(2), Buffer.from('ab'));
  t.same(queue.take(3), Buffer.from('cde'), 'spanning chunks');
  t.equal(queue.discard(10), 3);
  t.equal(queue.lengthBytes, 0);
  t.throws(() => queue.take(1));
});
