// A small NBD client that keeps several requests in flight on one connection and tells the caller
// exactly when each one was answered: the reply to a WRITE is its acknowledgement, which is what
// the power-cut tests track. It negotiates nothing but NBD_OPT_GO (no structured replies, no
// extended headers), so every reply is a simple reply: 16 bytes, then the data for a good READ.
// Constants come from the server's protocol module; the byte layout is written out here.

import { connect, type Socket } from 'node:net';
import { COMMAND, MAGIC, OPTION, OPTION_REPLY } from '../../src/nbd/protocol.ts';

const HANDSHAKE_TIMEOUT_MS = 15_000;

/** The connection ended (server killed, closed) before the request was answered. */
export class NbdConnectionLost extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdConnectionLost';
  }
}

interface Pending {
  readonly type: number;
  readonly lengthBytes: number;
  readonly resolve: (reply: { error: number; data: Buffer }) => void;
  readonly reject: (error: Error) => void;
}

export class PipelinedNbdClient {
  sizeBytes = 0;
  private readonly socket: Socket;
  private buffered: Buffer = Buffer.alloc(0);
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closedError: Error | null = null;
  /** During the handshake: woken when bytes arrive or the connection ends. */
  private waiter: (() => void) | null = null;
  private transmission = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (data: Buffer) => {
      this.buffered = this.buffered.length === 0 ? data : Buffer.concat([this.buffered, data]);
      if (this.transmission) this.drainReplies();
      else this.waiter?.();
    });
    socket.on('close', () => this.fail(new NbdConnectionLost('the NBD server closed the connection')));
    socket.on('error', (error) => this.fail(new NbdConnectionLost(`NBD connection error: ${error.message}`)));
  }

  /** Connects to a unix socket and opens `exportName` with NBD_OPT_GO. */
  static async connect(socketPath: string, exportName: string): Promise<PipelinedNbdClient> {
    const socket = connect({ path: socketPath });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const client = new PipelinedNbdClient(socket);
    try {
      await client.handshake(exportName);
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  get open(): boolean {
    return this.closedError === null;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Resolves with the NBD error number of the reply (0: done and acknowledged). */
  async write(offsetBytes: number, data: Buffer): Promise<number> {
    return (await this.send(COMMAND.WRITE, offsetBytes, data.length, data)).error;
  }

  /** Resolves with the bytes; rejects when the server answers with an error. */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const reply = await this.send(COMMAND.READ, offsetBytes, lengthBytes);
    if (reply.error !== 0) throw new Error(`NBD READ ${offsetBytes}+${lengthBytes} failed with error ${reply.error}`);
    return reply.data;
  }

  async flush(): Promise<number> {
    return (await this.send(COMMAND.FLUSH, 0, 0)).error;
  }

  close(): void {
    this.socket.destroy();
    this.fail(new NbdConnectionLost('closed by the client'));
  }

  private send(type: number, offsetBytes: number, lengthBytes: number, payload?: Buffer): Promise<{ error: number; data: Buffer }> {
    if (this.closedError !== null) return Promise.reject(this.closedError);
    const cookie = this.nextCookie;
    this.nextCookie += 1n;
    const header = Buffer.alloc(28);
    header.writeUInt32BE(MAGIC.REQUEST, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(cookie, 8);
    header.writeBigUInt64BE(BigInt(offsetBytes), 16);
    header.writeUInt32BE(lengthBytes, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { type, lengthBytes, resolve, reject });
      this.socket.write(payload === undefined ? header : Buffer.concat([header, payload]));
    });
  }

  private drainReplies(): void {
    for (;;) {
      if (this.buffered.length < 16) return;
      if (this.buffered.readUInt32BE(0) !== MAGIC.SIMPLE_REPLY) {
        this.socket.destroy();
        this.fail(new Error(`unexpected reply magic 0x${this.buffered.readUInt32BE(0).toString(16)} (structured replies were not negotiated)`));
        return;
      }
      const error = this.buffered.readUInt32BE(4);
      const cookie = this.buffered.readBigUInt64BE(8);
      const request = this.pending.get(cookie);
      if (request === undefined) {
        this.socket.destroy();
        this.fail(new Error(`reply to unknown cookie ${cookie}`));
        return;
      }
      const dataBytes = request.type === COMMAND.READ && error === 0 ? request.lengthBytes : 0;
      if (this.buffered.length < 16 + dataBytes) return;
      const data = Buffer.from(this.buffered.subarray(16, 16 + dataBytes));
      this.buffered = this.buffered.subarray(16 + dataBytes);
      this.pending.delete(cookie);
      request.resolve({ error, data });
    }
  }

  private fail(error: Error): void {
    if (this.closedError !== null) return;
    this.closedError = error;
    // Replies already received are delivered first: they were acknowledgements.
    if (this.transmission) this.drainReplies();
    for (const request of this.pending.values()) request.reject(error);
    this.pending.clear();
    this.waiter?.();
  }

  private async readExactly(count: number): Promise<Buffer> {
    const deadline = Date.now() + HANDSHAKE_TIMEOUT_MS;
    while (this.buffered.length < count) {
      if (this.closedError !== null) throw this.closedError;
      if (Date.now() > deadline) throw new Error(`NBD handshake: timed out waiting for ${count} bytes`);
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

  private async handshake(exportName: string): Promise<void> {
    const greeting = await this.readExactly(18);
    if (greeting.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('NBD handshake: no NBDMAGIC');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
    this.socket.write(flags);
    const name = Buffer.from(exportName);
    const option = Buffer.alloc(16 + 4 + name.length + 2);
    option.writeUInt32BE(MAGIC.IHAVEOPT[0], 0);
    option.writeUInt32BE(MAGIC.IHAVEOPT[1], 4);
    option.writeUInt32BE(OPTION.GO, 8);
    option.writeUInt32BE(4 + name.length + 2, 12);
    option.writeUInt32BE(name.length, 16);
    name.copy(option, 20);
    option.writeUInt16BE(0, 20 + name.length);
    this.socket.write(option);
    for (;;) {
      const header = await this.readExactly(20);
      const type = header.readUInt32BE(12);
      const data = await this.readExactly(header.readUInt32BE(16));
      if (type === OPTION_REPLY.ACK) break;
      if (type === OPTION_REPLY.INFO && data.readUInt16BE(0) === 0) this.sizeBytes = Number(data.readBigUInt64BE(2));
      if ((type & 0x80000000) !== 0) throw new Error(`NBD_OPT_GO for ${exportName} refused (0x${type.toString(16)}): ${data.toString()}`);
    }
    this.transmission = true;
    this.drainReplies();
  }
}
