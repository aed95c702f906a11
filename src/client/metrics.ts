// Client-side metrics, exported by the process that hosts the client library (the NBD server):
// how long each chunk-server request takes from being handed to the connection until its reply
// arrives. Set beside the NBD server's own request histogram, it splits a guest's latency into
// the NBD server's part and the chunk servers' (the primary, its replicas and their journals).

import { Histogram, exponentialBuckets, type Registry } from 'prom-client';
import { CS_OP } from '../protocol/cs_messages.ts';

/** Called once per reply: the request's op and its time in seconds. */
export type RequestObserver = (op: number, seconds: number) => void;

/** The observer that records into `registry`; each op's series exists (at zero) from the start. */
export function clientRequestObserver(registry: Registry): RequestObserver {
  const histogram = new Histogram({
    name: 'shoal_client_request_duration_seconds',
    help: 'Time from a chunk-server request being sent until its reply arrived, by op (a write: the primary, its replicas and their journal commits)',
    labelNames: ['op'] as const,
    // 25 µs to about 1.6 s.
    buckets: exponentialBuckets(25e-6, 2, 17),
    registers: [registry],
  });
  const byOp: Array<Histogram.Internal<'op'> | undefined> = [];
  for (const [name, op] of Object.entries(CS_OP)) {
    if (op === CS_OP.READ || op === CS_OP.WRITE || op === CS_OP.ZERO || op === CS_OP.BLOCK_STATUS) {
      histogram.zero({ op: name.toLowerCase() });
      byOp[op] = histogram.labels(name.toLowerCase());
    }
  }
  return (op, seconds) => byOp[op]?.observe(seconds);
}
