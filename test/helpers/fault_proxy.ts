// A TCP proxy that can cut a link the way networks fail: `blackhole()` stops moving bytes in both
// directions while the connections stay open (a partition: the peers see silence and time out),
// `heal()` lets the held bytes through again. Used to cut one chunk server off from everyone.
// `holdReplies()` holds only what the target sends back (requests still arrive): a reply delayed
// on the way. `trickleReplies()` lets the replies through at a set pace: a server slow but alive.

import { createServer, connect, type Server, type Socket } from 'node:net';

export class FaultProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  private target: { host: string; port: number } | null;
  private holding: 'nothing' | 'both' | 'replies' = 'nothing';
  private trickle: { bytesPerTick: number; tickMs: number } | null = null;
  private readonly timers = new Set<NodeJS.Timeout>();
  port = 0;

  private constructor(target: { host: string; port: number } | null) {
    this.target = target;
    this.server = createServer((client) => this.accept(client));
  }

  /** Listens on 127.0.0.1 (a free port); `target` may be set later with `setTarget`. */
  static async start(target: { host: string; port: number } | null = null): Promise<FaultProxy> {
    const proxy = new FaultProxy(target);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    const address = proxy.server.address();
    proxy.port = typeof address === 'object' && address !== null ? address.port : 0;
    return proxy;
  }

  setTarget(host: string, port: number): void {
    this.target = { host, port };
  }

  /** Partition: nothing passes either way; new connections are accepted and hang. */
  blackhole(): void {
    this.holding = 'both';
    for (const [a, b] of this.pairs) {
      a.pause();
      b.pause();
    }
  }

  /** Replies are held (the target's bytes stop at the proxy); requests go through. */
  holdReplies(): void {
    this.holding = 'replies';
    for (const [, upstream] of this.pairs) upstream.pause();
  }

  heal(): void {
    this.holding = 'nothing';
    for (const [a, b] of this.pairs) {
      a.resume();
      b.resume();
    }
  }

  /**
   * For connections made from now on: the target's bytes reach the client `bytesPerTick` at a time
   * every `tickMs` (requests go through at once).
   */
  trickleReplies(bytesPerTick: number, tickMs: number): void {
    this.trickle = { bytesPerTick, tickMs };
  }

  async close(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer);
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    const target = this.target;
    if (target === null) {
      client.destroy();
      return;
    }
    const upstream = connect({ host: target.host, port: target.port });
    const pair: [Socket, Socket] = [client, upstream];
    this.pairs.add(pair);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    // pipe() respects backpressure; pausing the sources holds the bytes during a blackhole.
    client.pipe(upstream);
    if (this.trickle === null) {
      upstream.pipe(client);
    } else {
      const { bytesPerTick, tickMs } = this.trickle;
      let queued = Buffer.alloc(0);
      upstream.on('data', (data: Buffer) => {
        queued = Buffer.concat([queued, data]);
      });
      const timer = setInterval(() => {
        if (this.holding !== 'nothing' || queued.length === 0) return;
        client.write(queued.subarray(0, bytesPerTick));
        queued = queued.subarray(bytesPerTick);
      }, tickMs);
      this.timers.add(timer);
      client.on('close', () => {
        clearInterval(timer);
        this.timers.delete(timer);
      });
    }
    if (this.holding === 'both') client.pause();
    if (this.holding !== 'nothing') upstream.pause();
  }
}
