// The NBD server's connection slots against slow and hostile TCP clients, with a real cluster and
// a real NBD daemon process: every TCP slot is taken by clients that never finish negotiating,
// trickle options, or send reads and never read the replies, yet the unix socket serves qemu-io
// and nbdinfo at once; the slow clients are cut after the (shortened) timeouts, their slots come
// back, and an idle client that finished its handshake is kept throughout.

import t from 'tap';
import { connect, type Socket } from 'node:net';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { COMMAND, MAGIC, OPTION, OPTION_REPLY } from '../src/nbd/protocol.ts';
import { startCluster } from './helpers/cluster.ts';
import { metricValue } from './helpers/metrics.ts';
import { run, runOk } from './helpers/run.ts';

const MiB = 1024 * 1024;
const VOLUME_BYTES = 64 * MiB;
// Long enough that every check of the full state fits before the first cut, even on a busy box.
const HANDSHAKE_TIMEOUT_MS = 6_000;
const WRITE_STALL_TIMEOUT_MS = 4_000;
const TCP_CONNECTIONS_MAX = 5;
const TCP_PER_ADDRESS_MAX = 4;
/** Timers fire late on a busy 2-core machine; a drop must come within this after its deadline. */
const LATE_MS = 2_500;
const GREETING_BYTES = 18;

/** A minimal TCP NBD client that can misbehave: stay silent, trickle options, stop reading. */
class TcpClient {
  readonly connectedAtMs: number;
  closedAtMs: number | null = null;
  private buffered = Buffer.alloc(0);
  private wake: (() => void) | null = null;

  private readonly socket: Socket;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.connectedAtMs = Date.now();
    socket.on('data', (data: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, data]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closedAtMs = Date.now();
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  static async connect(port: number, localAddress = '127.0.0.1'): Promise<TcpClient> {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new TcpClient(socket);
  }

  get closed(): boolean {
    return this.closedAtMs !== null;
  }

  /** Waits until `count` bytes are buffered or the server closes; returns what arrived. */
  async waitBytes(count: number, timeoutMs = 5_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < count && !this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 50);
      });
      this.wake = null;
    }
    return this.buffered.length;
  }

  async read(count: number): Promise<Buffer> {
    const have = await this.waitBytes(count);
    if (have < count) throw new Error(`wanted ${count} bytes, got ${have} (closed: ${this.closed})`);
    const bytes = this.buffered.subarray(0, count);
    this.buffered = this.buffered.subarray(count);
    return bytes;
  }

  /** Waits for the server to close; the close time, or null if still open at the deadline. */
  async closedBy(timeoutMs: number): Promise<number | null> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closedAtMs;
  }

  sendClientFlags(): void {
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
    this.socket.write(flags);
  }

  sendOption(option: number, data = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    header.writeUInt32BE(MAGIC.IHAVEOPT[0], 0);
    header.writeUInt32BE(MAGIC.IHAVEOPT[1], 4);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([header, data]));
  }

  /** Greeting, flags, NBD_OPT_GO: the connection is then in transmission (simple replies). */
  async handshake(name: string): Promise<void> {
    await this.read(GREETING_BYTES);
    this.sendClientFlags();
    const nameBytes = Buffer.from(name);
    const data = Buffer.alloc(4 + nameBytes.length + 2);
    data.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(data, 4);
    this.sendOption(OPTION.GO, data);
    for (;;) {
      const header = await this.read(20);
      const type = header.readUInt32BE(12);
      await this.read(header.readUInt32BE(16));
      if (type === OPTION_REPLY.ACK) return;
      if ((type & 0x80000000) !== 0) throw new Error(`NBD_OPT_GO refused: ${type.toString(16)}`);
    }
  }

  sendRead(offsetBytes: number, lengthBytes: number, cookie: number): void {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(MAGIC.REQUEST, 0);
    header.writeUInt16BE(COMMAND.READ, 6);
    header.writeBigUInt64BE(BigInt(cookie), 8);
    header.writeBigUInt64BE(BigInt(offsetBytes), 16);
    header.writeUInt32BE(lengthBytes, 24);
    this.socket.write(header);
  }

  /** Reads our replies no more: the kernel buffers fill and the server's writes stall. */
  stopReading(): void {
    this.socket.pause();
  }

  /** Reads again, dropping what arrives (only the end of the stream matters then). */
  resume(): void {
    this.socket.removeAllListeners('data');
    this.socket.resume();
  }

  close(): void {
    this.socket.destroy();
  }
}

t.test('slow TCP clients cannot lock out the unix socket and lose their slots', async (t) => {
  t.setTimeout(90_000);
  // One chunk server and one replica: slots are the subject here, and fewer daemons start faster.
  const cluster = await startCluster(t, {
    chunkServers: 1,
    nbdArgs: [
      '--tcp-connections-max', String(TCP_CONNECTIONS_MAX),
      '--tcp-connections-per-address-max', String(TCP_PER_ADDRESS_MAX),
      '--unix-connections-max', '8',
      '--handshake-timeout-ms', String(HANDSHAKE_TIMEOUT_MS),
      '--write-stall-timeout-ms', String(WRITE_STALL_TIMEOUT_MS),
    ],
  });
  await cluster.admin.createVolume({
    name: 'vol', sizeBytes: VOLUME_BYTES, chunkSizeBytes: 8 * MiB, replicas: { normal: 1, min: 1 },
  });
  const port = cluster.nbdTcpPort;
  const metricsPort = Number(cluster.nbd?.ready['metricsPort']);
  const clients: TcpClient[] = [];
  const open = async (localAddress?: string): Promise<TcpClient> => {
    const client = await TcpClient.connect(port, localAddress);
    clients.push(client);
    return client;
  };
  const dropped = (labels: string): Promise<number> =>
    metricValue(metricsPort, 'shoal_nbd_connections_dropped_total', labels);
  let trickle: NodeJS.Timeout | undefined;
  t.teardown(() => {
    clearInterval(trickle);
    for (const client of clients) client.close();
  });

  // Slot 1: a well-behaved client that negotiates and then does nothing at all.
  const idle = await open();
  await idle.handshake('vol');
  // Slot 2: connects and never sends a byte.
  const silent = await open();
  t.equal(await silent.waitBytes(GREETING_BYTES), GREETING_BYTES, 'the silent client got a slot');
  // Slot 3: keeps negotiating, one option every 400 ms, never asking for an export.
  const trickler = await open();
  await trickler.read(GREETING_BYTES);
  trickler.sendClientFlags();
  let optionsSent = 0;
  trickle = setInterval(() => {
    if (trickler.closed) return;
    trickler.sendOption(OPTION.STRUCTURED_REPLY);
    optionsSent += 1;
  }, 400);
  // Slot 4: negotiates, then (below) asks for 128 MiB of reads and reads none of it.
  const nonReader = await open();
  await nonReader.handshake('vol');
  // 127.0.0.1 now holds its share: a fifth connection from it is closed before any greeting.
  const overShare = await open();
  t.equal(await overShare.waitBytes(GREETING_BYTES, 2_000), 0, 'no greeting over the address share');
  t.ok(await overShare.closedBy(2_000), 'a fifth client from one address is refused');
  // Slot 5, from another address, and then the listener is full for every address.
  const otherHost = await open('127.0.0.2');
  t.equal(await otherHost.waitBytes(GREETING_BYTES), GREETING_BYTES, 'another address gets slot 5');
  const overFull = await open('127.0.0.3');
  t.equal(await overFull.waitBytes(GREETING_BYTES, 2_000), 0, 'no greeting when TCP is full');
  t.ok(await overFull.closedBy(2_000), 'a sixth TCP client is refused');
  const tcp = await run('nbdinfo', ['--size', cluster.nbdTcpUri('vol')], { timeoutMs: 10_000 });
  t.not(tcp.code, 0, 'a real client over TCP finds no free slot either');
  // The stall clock starts here, so the checks below run before any cut even on a busy machine.
  nonReader.stopReading();
  for (let index = 0; index < 32; index += 1) {
    nonReader.sendRead((index % 16) * 4 * MiB, 4 * MiB, index + 1);
  }
  const readsSentAtMs = Date.now();

  await t.test('the unix socket serves at once while TCP is full', async (t) => {
    const startedMs = Date.now();
    const uri = cluster.nbdUnixUri('vol');
    const size = await runOk('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
    t.equal(Number(size.stdout.trim()), VOLUME_BYTES, 'nbdinfo over the unix socket');
    const io = await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 1048576 65536',
      '-c', 'read -P 0x6b 1048576 65536', uri], { timeoutMs: 10_000 });
    t.notMatch(io.stdout, /verification failed/, 'qemu-io writes and reads back over the unix socket');
    t.ok(Date.now() - startedMs < 3_000, `served in ${Date.now() - startedMs} ms`);
    const cuts = await dropped('{listener="tcp",reason="handshake_timeout"}') +
      await dropped('{listener="tcp",reason="write_stall"}');
    t.equal(cuts, 0, 'while every slow TCP client still held its slot');
  });

  await t.test('clients that never finish negotiating are cut at the deadline', async (t) => {
    for (const [name, client] of [['silent', silent], ['trickling', trickler], ['other-host', otherHost]] as const) {
      const closedAtMs = await client.closedBy(HANDSHAKE_TIMEOUT_MS + LATE_MS);
      t.not(closedAtMs, null, `the ${name} client was cut`);
      const afterMs = (closedAtMs ?? Infinity) - client.connectedAtMs;
      t.ok(afterMs >= HANDSHAKE_TIMEOUT_MS - 100 && afterMs <= HANDSHAKE_TIMEOUT_MS + LATE_MS,
        `the ${name} client was cut ${afterMs} ms after connecting`);
    }
    t.ok(optionsSent >= 5, `the trickling client kept sending options (${optionsSent}) and was cut anyway`);
  });

  await t.test('a client that reads no replies is cut after the stall timeout', async (t) => {
    // The paused client cannot see the close behind the replies its kernel holds, so the cut is
    // timed at the server, then confirmed by reading to the end of what was sent.
    const stalls = '{listener="tcp",reason="write_stall"}';
    const deadline = readsSentAtMs + WRITE_STALL_TIMEOUT_MS + LATE_MS + 2_000;
    while (await dropped(stalls) === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const afterMs = Date.now() - readsSentAtMs;
    t.equal(await dropped(stalls), 1, `the client that stopped reading was cut (${afterMs} ms)`);
    t.ok(afterMs >= WRITE_STALL_TIMEOUT_MS, `cut ${afterMs} ms after its reads, not before the limit`);
    nonReader.resume();
    t.ok(await nonReader.closedBy(5_000), 'its connection ends once the client reads again');
  });

  await t.test('metrics count every refusal and drop by listener and reason', async (t) => {
    const value = (name: string, labels: string): Promise<number> =>
      metricValue(metricsPort, `shoal_nbd_connections_${name}`, labels);
    t.equal(await value('dropped_total', '{listener="tcp",reason="handshake_timeout"}'), 3);
    t.equal(await value('dropped_total', '{listener="tcp",reason="write_stall"}'), 1);
    t.equal(await value('refused_total', '{listener="tcp",reason="address_full"}'), 1,
      'refused over the address share');
    t.equal(await value('refused_total', '{listener="tcp",reason="full"}'), 2,
      'refused when full (the raw client and nbdinfo)');
    for (const reason of ['full', 'address_full', 'shutting_down']) {
      t.equal(await value('refused_total', `{listener="unix",reason="${reason}"}`), 0, `unix ${reason}`);
    }
    // Slots are released once the cut connections' in-flight reads have finished.
    const deadline = Date.now() + 5_000;
    while (await value('open', '{listener="tcp"}') !== 1 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    t.equal(await value('open', '{listener="tcp"}'), 1, 'only the idle client is open over TCP');
  });

  await t.test('the slots come back', async (t) => {
    const uri = cluster.nbdTcpUri('vol');
    const size = await runOk('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
    t.equal(Number(size.stdout.trim()), VOLUME_BYTES, 'nbdinfo over TCP again');
    const io = await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x6b 1048576 65536', uri], { timeoutMs: 10_000 });
    t.notMatch(io.stdout, /verification failed/, 'qemu-io reads over TCP again');
    const again = [await open('127.0.0.2'), await open('127.0.0.3')];
    for (const client of again) await client.handshake('vol');
    t.ok(again.every((client) => !client.closed), 'new clients from other addresses negotiate');
  });

  await t.test('the idle client that finished negotiating is kept', async (t) => {
    // Idle for longer than both limits together, whatever the machine's speed.
    const idleMinMs = HANDSHAKE_TIMEOUT_MS + WRITE_STALL_TIMEOUT_MS + 500;
    const waitMs = idle.connectedAtMs + idleMinMs - Date.now();
    if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
    t.ok(!idle.closed, `still connected after ${Date.now() - idle.connectedAtMs} ms without a request`);
    idle.sendRead(MiB, 4096, 7);
    const reply = await idle.read(16);
    t.equal(reply.readUInt32BE(0), MAGIC.SIMPLE_REPLY, 'a simple reply');
    t.equal(reply.readUInt32BE(4), 0, 'without error');
    t.ok((await idle.read(4096)).every((byte) => byte === 0x6b), 'with the data qemu-io wrote');
  });
});

t.test('the old shared limit flag is refused with what replaced it', async (t) => {
  t.setTimeout(20_000);
  const result = await run('node', [SHOAL_ENTRY, 'run', 'nbd', '--mds', 'http://127.0.0.1:1',
    '--credential', '/nonexistent', '--socket', '/nonexistent.sock', '--connections-max', '5']);
  t.not(result.code, 0, 'the daemon does not start');
  t.match(result.stderr + result.stdout, /--unix-connections-max and --tcp-connections-max/);
});
