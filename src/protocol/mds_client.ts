// The calling end of the MDS REST API, shared by chunk servers (register, heartbeat), the client
// library (open, leases, chunk map) and the CLI (admin routes). Every call has a deadline; a
// non-2xx answer becomes the StorageError the MDS sent, and an unreachable MDS becomes
// ERR_UNAVAILABLE naming the URL.

import { StorageError } from '../errors.ts';
import type {
  AddHypervisorBody,
  AddHypervisorReply,
  BadBlocksBody,
  CapabilityReply,
  HypervisorInfo,
  HypervisorList,
  HypervisorVolumesBody,
  RevokeHypervisorReply,
  ChunkFailureBody,
  ChunkServerInfo,
  RepairReply,
  ChunkMapEntry,
  ChunkMapReply,
  ChunkServerList,
  ClusterStat,
  QuarantineDeleteBody,
  QuarantineDeleteReply,
  QuarantineList,
  RebuildReply,
  CreateVolumeBody,
  ExportList,
  HeartbeatBody,
  OpenVolumeBody,
  OkReply,
  IoReportReply,
  LeaseRenewReply,
  IoReportBody,
  IoStatsReply,
  StartTaskBody,
  TaskInfo,
  TaskList,
  UpdateVolumeBody,
  VolumeQos,
  OpenVolumeReply,
  PartialWriteBody,
  RegisterChunkServerBody,
  RegisterChunkServerReply,
  VolumeInfo,
  VolumeList,
} from './api.ts';

const REQUEST_TIMEOUT_MS_DEFAULT = 10_000;

export interface MdsClientOptions {
  readonly url: string;
  readonly token: string;
  readonly timeoutMs?: number;
}

export class MdsClient {
  readonly url: string;
  private readonly token: string;
  private readonly timeoutMs: number;
  /** Aborted by close(): a daemon that is stopping must not wait out a slow or vanished MDS. */
  private readonly closing = new AbortController();

  constructor(options: MdsClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? REQUEST_TIMEOUT_MS_DEFAULT;
  }

  /** Ends every call in flight (they fail with ERR_SHUTTING_DOWN) and refuses new ones. */
  close(): void {
    this.closing.abort();
  }

  /** fetch, with a failure to connect, a timeout or a close turned into an operating error. */
  private async fetch(path: string, init: RequestInit): Promise<Response> {
    if (this.closing.signal.aborted) throw new StorageError('ERR_SHUTTING_DOWN', `not calling the MDS at ${this.url}: stopping`);
    try {
      return await fetch(`${this.url}${path}`, init);
    } catch (error) {
      throw this.unreachable(error);
    }
  }

  /** GET of a binary body (an MDS backup), streamed into `sink`; the whole transfer may take `timeoutMs`. */
  async download(path: string, sink: (chunk: Uint8Array) => Promise<void>, timeoutMs: number): Promise<void> {
    const response = await this.fetch(path, {
      headers: { authorization: `Bearer ${this.token}` },
      signal: AbortSignal.any([AbortSignal.timeout(timeoutMs), this.closing.signal]),
    });
    if (!response.ok || response.body === null) {
      const text = await response.text();
      let error: { code?: unknown; message?: unknown } | null = null;
      try {
        error = JSON.parse(text) as { code?: unknown; message?: unknown };
      } catch {
        // not an error body: report the status
      }
      throw StorageError.fromWire(error?.code, error?.message ?? `HTTP ${response.status}`);
    }
    for await (const chunk of response.body) await sink(chunk);
  }

  async call<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await this.fetch(path, {
      method,
      headers,
      body: body === undefined ? null : JSON.stringify(body),
      signal: AbortSignal.any([AbortSignal.timeout(this.timeoutMs), this.closing.signal]),
    });
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      throw this.unreachable(error);
    }
    let parsed: unknown = null;
    try {
      parsed = text === '' ? null : JSON.parse(text);
    } catch {
      throw new StorageError('ERR_PROTOCOL', `the MDS at ${this.url} answered ${method} ${path} with non-JSON (HTTP ${response.status})`);
    }
    if (!response.ok) {
      const error = parsed as { code?: unknown; message?: unknown } | null;
      throw StorageError.fromWire(error?.code, error?.message ?? `HTTP ${response.status}`);
    }
    return parsed as T;
  }

  private unreachable(error: unknown): StorageError {
    if (this.closing.signal.aborted) return new StorageError('ERR_SHUTTING_DOWN', `call to the MDS at ${this.url} ended: stopping`);
    const reason = error instanceof Error ? ((error.cause as Error | undefined)?.message ?? error.message) : String(error);
    const code = error instanceof Error && error.name === 'TimeoutError' ? 'ERR_TIMEOUT' : 'ERR_UNAVAILABLE';
    return new StorageError(code, `cannot reach the MDS at ${this.url}: ${reason}`);
  }

  // ---- admin ------------------------------------------------------------------------------------

  listVolumes(): Promise<VolumeList> {
    return this.call('GET', '/v1/volumes');
  }
  createVolume(body: CreateVolumeBody): Promise<VolumeInfo> {
    return this.call('POST', '/v1/volumes', body);
  }
  getVolume(name: string): Promise<VolumeInfo> {
    return this.call('GET', `/v1/volumes/${encodeURIComponent(name)}`);
  }
  resizeVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    return this.updateVolume(name, { sizeBytes });
  }
  /** Grows a volume and/or changes its I/O limits. */
  updateVolume(name: string, body: UpdateVolumeBody): Promise<VolumeInfo> {
    return this.call('PATCH', `/v1/volumes/${encodeURIComponent(name)}`, body);
  }
  deleteVolume(name: string, force: boolean): Promise<{ ok: boolean }> {
    return this.call('DELETE', `/v1/volumes/${encodeURIComponent(name)}${force ? '?force=true' : ''}`);
  }
  /** Takes the write lease from its holder; its later writes are rejected. */
  fenceWriter(name: string): Promise<VolumeInfo> {
    return this.call('POST', `/v1/volumes/${encodeURIComponent(name)}/fence`);
  }
  listChunkServers(): Promise<ChunkServerList> {
    return this.call('GET', '/v1/chunk-servers');
  }
  stat(): Promise<ClusterStat> {
    return this.call('GET', '/v1/stat');
  }
  listTasks(): Promise<TaskList> {
    return this.call('GET', '/v1/tasks');
  }
  getTask(id: number): Promise<TaskInfo> {
    return this.call('GET', `/v1/tasks/${id}`);
  }
  startTask(body: StartTaskBody): Promise<TaskInfo> {
    return this.call('POST', '/v1/tasks', body);
  }
  taskAction(id: number, action: 'cancel' | 'pause' | 'resume'): Promise<TaskInfo> {
    return this.call('POST', `/v1/tasks/${id}/${action}`);
  }
  /** Each volume's and each chunk server's I/O rates (`shoal top`). */
  ioStats(): Promise<IoStatsReply> {
    return this.call('GET', '/v1/io');
  }
  rebuildMap(): Promise<RebuildReply> {
    return this.call('POST', '/v1/mds/rebuild');
  }
  listQuarantine(limit: number): Promise<QuarantineList> {
    return this.call('GET', `/v1/quarantine?limit=${limit}`);
  }
  deleteQuarantined(body: QuarantineDeleteBody): Promise<QuarantineDeleteReply> {
    return this.call('POST', '/v1/quarantine/delete', body);
  }
  setChunkServerState(csId: number, action: 'drain' | 'activate' | 'remove'): Promise<ChunkServerInfo> {
    return this.call('POST', `/v1/chunk-servers/${csId}/${action}`);
  }
  /** Starts or changes a maintenance window of `forSeconds` from now; null ends it. */
  setMaintenance(csId: number, forSeconds: number | null): Promise<ChunkServerInfo> {
    return forSeconds === null
      ? this.call('DELETE', `/v1/chunk-servers/${csId}/maintenance`)
      : this.call('POST', `/v1/chunk-servers/${csId}/maintenance`, { forSeconds });
  }
  listHypervisors(): Promise<HypervisorList> {
    return this.call('GET', '/v1/hypervisors');
  }
  /** Creates a hypervisor's credential; the reply is the only place its secret is ever shown. */
  addHypervisor(body: AddHypervisorBody): Promise<AddHypervisorReply> {
    return this.call('POST', '/v1/hypervisors', body);
  }
  setHypervisorVolumes(name: string, body: HypervisorVolumesBody): Promise<HypervisorInfo> {
    return this.call('POST', `/v1/hypervisors/${encodeURIComponent(name)}/volumes`, body);
  }
  revokeHypervisor(name: string): Promise<RevokeHypervisorReply> {
    return this.call('POST', `/v1/hypervisors/${encodeURIComponent(name)}/revoke`);
  }

  // ---- internal: chunk servers ----------------------------------------------------------------------

  registerChunkServer(body: RegisterChunkServerBody): Promise<RegisterChunkServerReply> {
    return this.call('POST', '/v1/internal/chunk-servers/register', body);
  }
  heartbeat(body: HeartbeatBody): Promise<{ ok: boolean }> {
    return this.call('POST', '/v1/internal/chunk-servers/heartbeat', body);
  }

  // ---- internal: clients --------------------------------------------------------------------------

  exports(): Promise<ExportList> {
    return this.call('GET', '/v1/internal/exports');
  }
  openVolume(name: string, body: OpenVolumeBody): Promise<OpenVolumeReply> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/open`, body);
  }
  renewLease(name: string, leaseId: string): Promise<LeaseRenewReply> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/lease/renew`, { leaseId });
  }
  /** This NBD server's totals per volume it serves (or served lately). */
  ioReport(body: IoReportBody): Promise<IoReportReply> {
    return this.call('POST', '/v1/internal/io-report', body);
  }
  volumeQos(name: string): Promise<VolumeQos> {
    return this.call('GET', `/v1/internal/volumes/${encodeURIComponent(name)}/qos`);
  }
  closeVolume(name: string, leaseId: string): Promise<{ ok: boolean }> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/close`, { leaseId });
  }
  /** The allocated chunks in [fromIndex, reply.endIndex): one page at most, however large `count`. */
  chunkMap(name: string, fromIndex: number, count: number): Promise<ChunkMapReply> {
    return this.call('GET', `/v1/internal/volumes/${encodeURIComponent(name)}/chunks?fromIndex=${fromIndex}&count=${count}`);
  }
  allocateChunk(name: string, chunkIndex: number, leaseId: string, host?: string): Promise<ChunkMapEntry> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/chunks/${chunkIndex}`, { leaseId, ...(host === undefined ? {} : { host }) });
  }
  /** One chunk's entry, once any replica-set change in progress on it has finished. */
  getChunk(name: string, chunkIndex: number): Promise<ChunkMapEntry> {
    return this.call('GET', `/v1/internal/volumes/${encodeURIComponent(name)}/chunks/${chunkIndex}`);
  }
  reportChunkFailure(name: string, chunkIndex: number, body: ChunkFailureBody): Promise<ChunkMapEntry> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/chunks/${chunkIndex}/failure`, body);
  }
  /** A chunk server's scrubber found blocks failing their checksums. */
  reportBadBlocks(body: BadBlocksBody): Promise<RepairReply> {
    return this.call('POST', '/v1/internal/bad-blocks', body);
  }
  /** A client read blocks failing their checksums on a member of a volume it serves. */
  reportVolumeBadBlocks(name: string, body: BadBlocksBody): Promise<RepairReply> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/bad-blocks`, body);
  }
  /** A fresh capability: for write with the lease held, else for read. */
  capability(name: string, leaseId?: string): Promise<CapabilityReply> {
    return this.call('POST', `/v1/internal/volumes/${encodeURIComponent(name)}/capability`, leaseId === undefined ? {} : { leaseId });
  }
  /** A primary could not complete a change on every member; its writer may be gone. */
  reportPartialWrite(body: PartialWriteBody): Promise<OkReply> {
    return this.call('POST', '/v1/internal/partial-writes', body);
  }
}
