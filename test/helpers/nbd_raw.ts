// A deliberately naive NBD client for sending what real clients refuse to send (out-of-range and
// oversized requests, unknown commands, garbage): fixed-newstyle handshake with NBD_OPT_GO, then
// requests with simple replies, one at a time. Constants come from the server's protocol module
// so both sides agree on the numbers; the byte layout here is written out independently.

import { connect, type Socket } from 'node:net';
import { COMMAND, MAGIC, OPTION, OPTION_REPLY } from '../../src/nbd/protocol.ts';

export interface RawReply {
  readonly error: number;
  readonly cookie: number;
  readonly data: Buffer;
}

export class RawNbdClient {
  private readonly socket: Socket;
  private buffered = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private ended = false;
  sizeBytes = 0;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (data: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, data]);
      this.waiter?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.waiter?.();
    });
    socket.on('error', () => undefined);
  }

  static async connect(path: string): Promise<RawNbdClient> {
    const socket = connect({ path });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawNbdClient(socket);
  }

  /** Reads exactly `count` bytes, or rejects when the server closes first or time runs out. */
  async read(count: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < count) {
      if (this.ended) throw new Error(`server closed the connection (wanted ${count} bytes, had ${this.buffered.length})`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} bytes`);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 100);
      });
      this.waiter = null;
    }
    const bytes = this.buffered.subarray(0, count);
    this.buffered = this.buffered.subarray(count);
    return bytes;
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Waits until the server closes the connection; false if it stays open past the deadline. */
  async closedByServer(timeoutMs = 5_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    return this.ended;
  }

  /** Greeting, client flags, NBD_OPT_GO for `name`; leaves the connection in transmission. */
  async handshake(name: string): Promise<void> {
    const greeting = await this.read(18);
    if (greeting.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('no NBDMAGIC');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
    this.write(flags);
    const nameBytes = Buffer.from(name);
    const option = Buffer.alloc(16 + 4 + nameBytes.length + 2);
    option.writeUInt32BE(MAGIC.IHAVEOPT[0], 0);
    option.writeUInt32BE(MAGIC.IHAVEOPT[1], 4);
    option.writeUInt32BE(OPTION.GO, 8);
    option.writeUInt32BE(4 + nameBytes.length + 2, 12);
    option.writeUInt32BE(nameBytes.length, 16);
    nameBytes.copy(option, 20);
    option.writeUInt16BE(0, 20 + nameBytes.length); // no information requests
    this.write(option);
    for (;;) {
      const header = await this.read(20);
      const type = header.readUInt32BE(12);
      const data = await this.read(header.readUInt32BE(16));
      if (type === OPTION_REPLY.ACK) return;
      if (type === OPTION_REPLY.INFO && data.readUInt16BE(0) === 0) this.sizeBytes = Number(data.readBigUInt64BE(2));
      if ((type & 0x80000000) !== 0) throw new Error(`NBD_OPT_GO refused: ${type.toString(16)} ${data.toString()}`);
    }
  }

  /** Sends one request and reads its simple reply (and, for a successful READ, the data). */
  async request(type: number, offsetBytes: number, lengthBytes: number, payload?: Buffer, cookie = 1): Promise<RawReply> {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(MAGIC.REQUEST, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(BigInt(cookie), 8);
    header.writeBigUInt64BE(BigInt(offsetBytes), 16);
    header.writeUInt32BE(lengthBytes, 24);
    this.write(payload === undefined ? header : Buffer.concat([header, payload]));
    const reply = await this.read(16);
    if (reply.readUInt32BE(0) !== MAGIC.SIMPLE_REPLY) throw new Error('not a simple reply');
    const error = reply.readUInt32BE(4);
    const data = type === COMMAND.READ && error === 0 ? await this.read(lengthBytes) : Buffer.alloc(0);
    return { error, cookie: Number(reply.readBigUInt64BE(8)), data };
  }

  close(): void {
    this.socket.destroy();
  }
}

/** What a server sent a client that spoke once, after the greeting: bytes received in all, and whether it closed. */
export interface AfterGreeting {
  readonly bytes: number;
  readonly closed: boolean;
}

/**
 * Connects (a unix socket path, or a TCP port on 127.0.0.1), waits for the 18-byte greeting,
 * sends `bytes` (client flags, then options), and reports what came back until the server closed
 * or `timeoutMs` passed.
 */
export function speakAfterGreeting(target: string | number, bytes: Buffer, timeoutMs = 10_000): Promise<AfterGreeting> {
  return new Promise((resolve, reject) => {
    let received = 0;
    const socket = typeof target === 'string' ? connect(target) : connect(target, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ bytes: received, closed: false });
    }, timeoutMs);
    socket.on('error', reject);
    socket.on('data', (piece: Buffer) => {
      received += piece.length;
      if (received === 18) socket.write(bytes);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ bytes: received, closed: true });
    });
  });
}
