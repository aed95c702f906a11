// Raw requests to the MDS's admin API, for tests that check status codes and error bodies (what
// MdsClient turns into exceptions).

import type { LocalCluster } from '../../src/local/cluster.ts';

export interface RawReply {
  readonly status: number;
  readonly code: string | undefined;
  readonly message: string | undefined;
  readonly body: unknown;
}

/** POSTs `body` as JSON to `path` (e.g. /v1/tasks) with the admin token. */
export async function postAdmin(cluster: LocalCluster, path: string, body: unknown): Promise<RawReply> {
  const reply = await fetch(`${cluster.mdsUrl}${path}`, {
    method: 'POST', headers: { authorization: `Bearer ${cluster.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const parsed = (await reply.json()) as { code?: string; message?: string };
  return { status: reply.status, code: parsed.code, message: parsed.message, body: parsed };
}
