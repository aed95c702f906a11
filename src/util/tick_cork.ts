// Batching of socket writes per tick: the first write of a tick corks the socket and a nextTick
// uncorks it, so every frame written in the same tick (and in the promise callbacks that run
// before the nextTick queue is next drained) leaves in one writev. On loopback a socket write
// costs tens of microseconds of kernel time, most of it delivering to the peer; under load (a
// journal commit completing a batch of writes, a data event carrying many requests) this turns
// one syscall per frame into one per tick. It adds no latency: the tick ends right after.

export interface Corkable {
  cork(): void;
  uncork(): void;
  readonly destroyed: boolean;
}

export class TickCorker {
  private readonly socket: Corkable;
  private corked = false;

  constructor(socket: Corkable) {
    this.socket = socket;
  }

  /** Call before writing: the writes of this tick are held until its end. */
  hold(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.release);
  }

  private readonly release = (): void => {
    this.corked = false;
    if (!this.socket.destroyed) this.socket.uncork();
  };
}
