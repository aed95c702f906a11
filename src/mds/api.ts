// The MDS REST API on fastify: schema-first routes (src/protocol/api.ts) in three scopes, each a
// plugin with its own bearer-token hook: admin routes for people and scripts (admin token), routes
// for chunk servers (cluster token), and routes for hypervisors' clients (each hypervisor's own
// credential, and only for the volumes attached to it). /metrics, /v1/health and
// /v1/openapi.json are open.
//
// Every error leaves as { statusCode, code, message, details } (ErrorBody): StorageErrors keep
// their code; schema violations become ERR_INVALID_ARGUMENT naming the field. The OpenAPI document
// (openApiDocument, served at /v1/openapi.json) is committed as docs/openapi.json, and a test
// fails when the routes and it drift apart.

import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type RawServerDefault,
} from 'fastify';
import { createReadStream } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { Registry as PromRegistry, type Registry } from 'prom-client';
import { ERRORS, StorageError, type ErrorCode } from '../errors.ts';
import { API_BODY_BYTES_MAX, IO_REPORT_VOLUMES_MAX } from '../limits.ts';

/** An I/O report names up to IO_REPORT_VOLUMES_MAX volumes, each in well under 512 bytes of JSON. */
const IO_REPORT_BODY_BYTES_MAX = IO_REPORT_VOLUMES_MAX * 512;
import { encodeBackupPrefix } from './backup.ts';
import {
  AddHypervisorBody,
  AddHypervisorReply,
  BadBlocksBody,
  CapabilityBody,
  CapabilityReply,
  HypervisorInfo,
  HypervisorList,
  HypervisorNameParams,
  HypervisorVolumesBody,
  RevokeHypervisorReply,
  ChunkFailureBody,
  ChunkIndexParams,
  ChunkServerIdParams,
  ChunkServerInfo,
  RepairReply,
  ChunkMapEntry,
  ChunkMapQuery,
  ChunkMapReply,
  ChunkServerList,
  ClusterStat,
  RebuildReply,
  QuarantineDeleteBody,
  QuarantineDeleteReply,
  QuarantineList,
  QuarantineListQuery,
  CreateVolumeBody,
  DeleteVolumeQuery,
  ErrorBody,
  ExportList,
  HeartbeatBody,
  HeartbeatReply,
  LeaseBody,
  PartialWriteBody,
  OkReply,
  LeaseRenewReply,
  VolumeQos,
  IoReportBody,
  IoReportReply,
  IoStatsReply,
  StartTaskBody,
  AllocateChunkBody,
  MaintenanceBody,
  TaskIdParams,
  TaskInfo,
  TaskList,
  OpenVolumeBody,
  OpenVolumeReply,
  RegisterChunkServerBody,
  RegisterChunkServerReply,
  UpdateVolumeBody,
  VolumeInfo,
  VolumeList,
  VolumeNameParams,
} from '../protocol/api.ts';
import { tokenEqual } from '../protocol/auth.ts';
import { createLogger, type Logger } from '../util/log.ts';
import type { HypervisorRecord } from './model.ts';
import type { MdsMetrics } from './metrics.ts';
import type { MetadataService } from './service.ts';
import { STATUS_PAGE_CSP, STATUS_PAGE_HTML } from './status_page.ts';

export interface ApiOptions {
  readonly service: MetadataService;
  readonly adminToken: string;
  readonly clusterToken: string;
  readonly metricsRegistry: Registry;
  readonly metrics: MdsMetrics;
  readonly log: Logger;
}

const errorResponses = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 409: ErrorBody, 503: ErrorBody };

declare module 'fastify' {
  interface FastifyRequest {
    /** On client routes: the hypervisor whose credential came with the request. */
    hypervisor: HypervisorRecord | null;
  }
}

export async function buildApi(options: ApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: false,
    bodyLimit: API_BODY_BYTES_MAX,
    // Reject unknown fields instead of silently dropping them: a typo in a script must be seen.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  await app.register(swagger, {
    openapi: {
      info: { title: 'shoal MDS API', version: '1' },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      },
      security: [{ bearer: [] }],
    },
  });

  app.setErrorHandler((error: FastifyError, _request, reply) => sendError(reply, error, options.log));
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send(errorBody(404, 'ERR_NOT_FOUND', `no route ${request.method} ${request.url}`, {
      method: request.method, path: request.url.split('?', 1)[0] ?? request.url,
    })),
  );
  app.addHook('onResponse', async (request, reply) => {
    options.metrics.observeHttp(request.routeOptions.url ?? 'unknown', request.method, reply.statusCode, reply.elapsedTime / 1000);
  });

  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', options.metricsRegistry.contentType);
    return options.metricsRegistry.metrics();
  });
  app.get('/v1/health', { schema: { response: { 200: OkReply } } }, async () => ({ ok: true }));
  // The status page: a document with no data in it (its script reads the admin API with the
  // admin token), so it needs no token itself. Not part of the API document.
  app.get('/status', { schema: { hide: true } }, async (_request, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    reply.header('content-security-policy', STATUS_PAGE_CSP);
    reply.header('cache-control', 'no-store');
    reply.header('x-content-type-options', 'nosniff');
    return STATUS_PAGE_HTML;
  });
  app.get('/v1/openapi.json', async () => app.swagger());

  await app.register(async (scope) => {
    scope.addHook('onRequest', bearerHook(options.adminToken, 'admin'));
    adminRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), options.service);
  });
  await app.register(async (scope) => {
    scope.addHook('onRequest', bearerHook(options.clusterToken, 'cluster'));
    chunkServerRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), options.service);
  });
  await app.register(async (scope) => {
    scope.decorateRequest('hypervisor', null);
    scope.addHook('onRequest', async (request) => {
      request.hypervisor = options.service.hypervisors.authenticate(bearerToken(request));
    });
    // Every route about one volume: only a volume attached to this hypervisor.
    scope.addHook('preHandler', async (request) => {
      const name = (request.params as { name?: unknown } | undefined)?.name;
      if (typeof name === 'string') options.service.hypervisors.requireVolume(hypervisorOf(request), name);
    });
    clientRoutes(scope.withTypeProvider<TypeBoxTypeProvider>(), options.service);
  });
  return app;
}

/**
 * The API's OpenAPI document, built from the route schemas without an MDS: the routes are
 * registered on an app whose service is never called (a handler that ran would throw). What
 * `/v1/openapi.json` serves; `shoal mds openapi` prints it and docs/openapi.json is its copy.
 */
export async function openApiDocument(): Promise<unknown> {
  const absent = new Proxy({}, {
    get(_target, property) {
      throw new Error(`bug: the OpenAPI document's routes touched the service (${String(property)})`);
    },
  });
  const app = await buildApi({
    service: absent as MetadataService,
    adminToken: 'unused',
    clusterToken: 'unused',
    metricsRegistry: new PromRegistry(),
    metrics: absent as MdsMetrics,
    log: createLogger('openapi'),
  });
  await app.ready();
  const document = app.swagger();
  await app.close();
  return document;
}

type TypedApp = FastifyInstance<RawServerDefault, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider>;

function adminRoutes(app: TypedApp, service: MetadataService): void {
  const tags = ['admin'];
  app.get('/v1/volumes', { schema: { tags, response: { 200: VolumeList } } }, async () => ({
    volumes: service.listVolumes(),
  }));
  app.post(
    '/v1/volumes',
    { schema: { tags, body: CreateVolumeBody, response: { 201: VolumeInfo, ...errorResponses } } },
    async (request, reply) => reply.code(201).send(await service.createVolume(request.body)),
  );
  app.get(
    '/v1/volumes/:name',
    { schema: { tags, params: VolumeNameParams, response: { 200: VolumeInfo, ...errorResponses } } },
    async (request) => service.getVolume(request.params.name),
  );
  app.patch(
    '/v1/volumes/:name',
    { schema: { tags, params: VolumeNameParams, body: UpdateVolumeBody, response: { 200: VolumeInfo, ...errorResponses } } },
    async (request) => service.updateVolume(request.params.name, request.body),
  );
  app.delete(
    '/v1/volumes/:name',
    { schema: { tags, params: VolumeNameParams, querystring: DeleteVolumeQuery, response: { 200: OkReply, ...errorResponses } } },
    async (request) => {
      await service.deleteVolume(request.params.name, request.query.force === true);
      return { ok: true };
    },
  );
  app.post(
    '/v1/volumes/:name/fence',
    { schema: { tags, params: VolumeNameParams, response: { 200: VolumeInfo, ...errorResponses } } },
    async (request) => service.fenceWriter(request.params.name),
  );
  app.get('/v1/chunk-servers', { schema: { tags, response: { 200: ChunkServerList } } }, async () => ({
    chunkServers: service.cluster.listChunkServers(),
  }));
  const serverState = (path: string, adminState: 'active' | 'draining' | 'removed') =>
    app.post(
      path,
      { schema: { tags, params: ChunkServerIdParams, response: { 200: ChunkServerInfo, ...errorResponses } } },
      async (request) => service.cluster.setChunkServerState(request.params.id, adminState),
    );
  // Drain: replicas move off (rate-limited), progress shows in `mappedReplicaCount`. This older
  // route starts a drain task, or joins the one going (POST /v1/tasks refuses a second).
  app.post(
    '/v1/chunk-servers/:id/drain',
    { schema: { tags, params: ChunkServerIdParams, response: { 200: ChunkServerInfo, ...errorResponses } } },
    async (request) => {
      await service.tasks.startDrain(request.params.id, null, true);
      return service.cluster.serverInfo(request.params.id);
    },
  );
  serverState('/v1/chunk-servers/:id/activate', 'active');
  // Maintenance: the server may go away for the window without its replicas being replaced.
  app.post(
    '/v1/chunk-servers/:id/maintenance',
    { schema: { tags, params: ChunkServerIdParams, body: MaintenanceBody, response: { 200: ChunkServerInfo, ...errorResponses } } },
    async (request) => service.cluster.setMaintenance(request.params.id, request.body.forSeconds * 1000),
  );
  app.delete(
    '/v1/chunk-servers/:id/maintenance',
    { schema: { tags, params: ChunkServerIdParams, response: { 200: ChunkServerInfo, ...errorResponses } } },
    async (request) => service.cluster.setMaintenance(request.params.id, null),
  );
  // Remove: only an emptied server; it is never placed on again.
  serverState('/v1/chunk-servers/:id/remove', 'removed');
  app.get('/v1/stat', { schema: { tags, response: { 200: ClusterStat } } }, async () => service.cluster.stat());
  app.get('/v1/io', { schema: { tags, response: { 200: IoStatsReply } } }, async () => service.ioStats());
  app.get('/v1/tasks', { schema: { tags, response: { 200: TaskList } } }, async () => ({ tasks: service.tasks.list() }));
  app.post(
    '/v1/tasks',
    { schema: { tags, body: StartTaskBody, response: { 200: TaskInfo, 201: TaskInfo, ...errorResponses } } },
    async (request, reply) => {
      const body = request.body;
      const key = body.idempotencyKey ?? null;
      const { task, created } = body.kind === 'drain'
        ? await service.tasks.startDrain(drainTarget(body), key)
        : body.kind === 'tier'
          ? await startTierMove(service, body, key)
          : await service.tasks.startRebalance(rebalanceThreshold(body), key);
      // 201 for a new task; 200 for the one an earlier request with the same key started.
      return reply.code(created ? 201 : 200).send(task);
    },
  );
  app.get(
    '/v1/tasks/:id',
    { schema: { tags, params: TaskIdParams, response: { 200: TaskInfo, ...errorResponses } } },
    async (request) => service.tasks.get(request.params.id),
  );
  for (const action of ['cancel', 'pause', 'resume'] as const) {
    app.post(
      `/v1/tasks/:id/${action}`,
      { schema: { tags, params: TaskIdParams, response: { 200: TaskInfo, ...errorResponses } } },
      async (request) => service.tasks[action](request.params.id),
    );
  }
  app.get('/v1/hypervisors', { schema: { tags, response: { 200: HypervisorList } } }, async () => ({
    hypervisors: service.hypervisors.list(),
  }));
  app.post(
    '/v1/hypervisors',
    { schema: { tags, body: AddHypervisorBody, response: { 201: AddHypervisorReply, ...errorResponses } } },
    async (request, reply) => reply.code(201).send(
      await service.hypervisors.add(request.body.name, request.body.allVolumes === true, request.body.volumes ?? [])),
  );
  app.post(
    '/v1/hypervisors/:name/volumes',
    { schema: { tags, params: HypervisorNameParams, body: HypervisorVolumesBody, response: { 200: HypervisorInfo, ...errorResponses } } },
    async (request) => service.hypervisors.setVolumes(request.params.name, request.body),
  );
  app.post(
    '/v1/hypervisors/:name/revoke',
    { schema: { tags, params: HypervisorNameParams, response: { 200: RevokeHypervisorReply, ...errorResponses } } },
    async (request) => service.hypervisors.revoke(request.params.name),
  );
  app.get('/v1/mds/backup', { schema: { tags } }, async (_request, reply) => {
    const backup = await service.cluster.backup();
    const body = Readable.from((async function* () {
      yield encodeBackupPrefix(backup.header);
      yield* createReadStream(backup.path);
    })());
    reply.raw.once('close', () => void backup.discard());
    reply.header('content-type', 'application/octet-stream');
    reply.header('content-length', String(encodeBackupPrefix(backup.header).length + backup.header.lmdbBytes));
    return reply.send(body);
  });
  app.post(
    '/v1/mds/rebuild',
    { schema: { tags, response: { 200: RebuildReply, ...errorResponses } } },
    async () => service.cluster.rebuild(),
  );
  app.get(
    '/v1/quarantine',
    { schema: { tags, querystring: QuarantineListQuery, response: { 200: QuarantineList, ...errorResponses } } },
    async (request) => service.cluster.quarantine.list(request.query.limit ?? 1000),
  );
  app.post(
    '/v1/quarantine/delete',
    { schema: { tags, body: QuarantineDeleteBody, response: { 200: QuarantineDeleteReply, ...errorResponses } } },
    async (request) => service.cluster.quarantine.delete(request.body),
  );
}

function chunkServerRoutes(app: TypedApp, service: MetadataService): void {
  const tags = ['chunk servers'];
  app.post(
    '/v1/internal/chunk-servers/register',
    { schema: { tags, body: RegisterChunkServerBody, response: { 200: RegisterChunkServerReply, ...errorResponses } } },
    async (request) => service.cluster.registerChunkServer(request.body),
  );
  app.post(
    '/v1/internal/chunk-servers/heartbeat',
    { schema: { tags, body: HeartbeatBody, response: { 200: HeartbeatReply, ...errorResponses } } },
    async (request) => {
      await service.cluster.heartbeat(request.body);
      if (request.body.io !== undefined) service.recordServerIo(request.body.csId, request.body.io);
      return { ok: true };
    },
  );
  app.post(
    '/v1/internal/bad-blocks',
    { schema: { tags, body: BadBlocksBody, response: { 200: RepairReply, ...errorResponses } } },
    async (request) => ({ repairedBlocks: await service.cluster.reportBadBlocks(request.body) }),
  );
  app.post(
    '/v1/internal/partial-writes',
    { schema: { tags, body: PartialWriteBody, response: { 200: OkReply, ...errorResponses } } },
    async (request) => {
      await service.cluster.reportPartialWrite(request.body);
      return { ok: true };
    },
  );
}

function clientRoutes(app: TypedApp, service: MetadataService): void {
  const tags = ['clients'];
  app.get('/v1/internal/exports', { schema: { tags, response: { 200: ExportList } } }, async (request) => ({
    names: service.exportNames(hypervisorOf(request)),
  }));
  app.post(
    '/v1/internal/volumes/:name/open',
    { schema: { tags, params: VolumeNameParams, body: OpenVolumeBody, response: { 200: OpenVolumeReply, ...errorResponses } } },
    async (request) => service.openVolume(request.params.name, request.body, hypervisorOf(request)),
  );
  app.post(
    '/v1/internal/volumes/:name/capability',
    { schema: { tags, params: VolumeNameParams, body: CapabilityBody, response: { 200: CapabilityReply, ...errorResponses } } },
    async (request) => service.capabilityFor(request.params.name, hypervisorOf(request), request.body.leaseId),
  );
  app.post(
    '/v1/internal/volumes/:name/bad-blocks',
    { schema: { tags, params: VolumeNameParams, body: BadBlocksBody, response: { 200: RepairReply, ...errorResponses } } },
    async (request) => {
      if (service.volumeByName(request.params.name).id !== request.body.volumeId) {
        throw new StorageError('ERR_INVALID_ARGUMENT', `volume "${request.params.name}" is not volume ${request.body.volumeId}`);
      }
      return { repairedBlocks: await service.cluster.reportBadBlocks(request.body) };
    },
  );
  app.post(
    '/v1/internal/volumes/:name/lease/renew',
    { schema: { tags, params: VolumeNameParams, body: LeaseBody, response: { 200: LeaseRenewReply, ...errorResponses } } },
    async (request) => ({ ok: true, qos: service.renewLease(request.params.name, request.body.leaseId) }),
  );
  app.post(
    '/v1/internal/io-report',
    { bodyLimit: IO_REPORT_BODY_BYTES_MAX, schema: { tags, body: IoReportBody, response: { 200: IoReportReply, ...errorResponses } } },
    async (request) => {
      service.recordVolumeIo(hypervisorOf(request), request.body);
      // The answer tells the NBD server which replicas to read last (it asks every couple of seconds).
      return { ok: true, avoidCsIds: service.cluster.sickDisks.illServers() };
    },
  );
  app.get(
    '/v1/internal/volumes/:name/qos',
    { schema: { tags, params: VolumeNameParams, response: { 200: VolumeQos, ...errorResponses } } },
    async (request) => service.volumeQosOf(request.params.name, hypervisorOf(request)),
  );
  app.post(
    '/v1/internal/volumes/:name/close',
    { schema: { tags, params: VolumeNameParams, body: LeaseBody, response: { 200: OkReply, ...errorResponses } } },
    async (request) => {
      await service.closeVolume(request.params.name, request.body.leaseId);
      return { ok: true };
    },
  );
  app.get(
    '/v1/internal/volumes/:name/chunks',
    { schema: { tags, params: VolumeNameParams, querystring: ChunkMapQuery, response: { 200: ChunkMapReply, ...errorResponses } } },
    async (request) => service.chunkMap(request.params.name, request.query.fromIndex ?? 0, request.query.count ?? 65536),
  );
  app.post(
    '/v1/internal/volumes/:name/chunks/:chunkIndex',
    { schema: { tags, params: ChunkIndexParams, body: AllocateChunkBody, response: { 200: ChunkMapEntry, ...errorResponses } } },
    async (request) => service.allocateChunk(request.params.name, request.params.chunkIndex, request.body.leaseId, request.body.host ?? null),
  );
  app.get(
    '/v1/internal/volumes/:name/chunks/:chunkIndex',
    { schema: { tags, params: ChunkIndexParams, response: { 200: ChunkMapEntry, ...errorResponses } } },
    async (request) => service.getChunk(request.params.name, request.params.chunkIndex),
  );
  app.post(
    '/v1/internal/volumes/:name/chunks/:chunkIndex/failure',
    { schema: { tags, params: ChunkIndexParams, body: ChunkFailureBody, response: { 200: ChunkMapEntry, ...errorResponses } } },
    async (request) => service.reportChunkFailure(request.params.name, request.params.chunkIndex, request.body),
  );
}

function hypervisorOf(request: FastifyRequest): HypervisorRecord {
  const hypervisor = request.hypervisor;
  if (hypervisor === null) throw new StorageError('ERR_UNAUTHORIZED', 'this route needs a hypervisor credential');
  return hypervisor;
}

function bearerToken(request: FastifyRequest): string {
  const header = request.headers.authorization ?? '';
  return header.startsWith('Bearer ') ? header.slice('Bearer '.length).trim() : '';
}

function bearerHook(expected: string, scope: string) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const token = bearerToken(request);
    if (token === '' || !tokenEqual(expected, token)) {
      await reply.code(401).send(errorBody(401, 'ERR_UNAUTHORIZED', `this route needs the ${scope} token as "Authorization: Bearer <token>"`));
    }
  };
}

function errorBody(statusCode: number, code: ErrorCode, message: string, details: Record<string, string> = {}): ErrorBody {
  return { statusCode, code, message, details: { summary: ERRORS[code].summary, ...details } };
}

function sendError(reply: FastifyReply, error: FastifyError | StorageError, log: Logger): FastifyReply {
  if (error instanceof StorageError) {
    return reply.code(error.httpStatus).send(errorBody(error.httpStatus, error.code, error.message));
  }
  if (error.validation !== undefined) {
    return reply.code(400).send(errorBody(400, 'ERR_INVALID_ARGUMENT', validationMessage(error), validationDetails(error)));
  }
  const status = error.statusCode ?? 500;
  if (status >= 500) log.error('request failed', { error });
  const code: ErrorCode = status === 413 ? 'ERR_TOO_LARGE' : status < 500 ? 'ERR_INVALID_ARGUMENT' : 'ERR_INTERNAL';
  return reply.code(status).send(errorBody(status, code, error.message));
}

function drainTarget(body: StartTaskBody): number {
  if (body.thresholdPercent !== undefined) throw new StorageError('ERR_INVALID_ARGUMENT', 'thresholdPercent is for a rebalance, not a drain');
  notTierFields(body, 'a drain');
  if (body.chunkServerId === undefined) throw new StorageError('ERR_INVALID_ARGUMENT', 'a drain names the chunk server to empty: chunkServerId');
  return body.chunkServerId;
}

function rebalanceThreshold(body: StartTaskBody): number | null {
  if (body.chunkServerId !== undefined) {
    throw new StorageError('ERR_INVALID_ARGUMENT', 'a rebalance works on every chunk server: leave out chunkServerId (a drain empties one)');
  }
  notTierFields(body, 'a rebalance');
  return body.thresholdPercent ?? null;
}

function notTierFields(body: StartTaskBody, what: string): void {
  for (const field of ['volume', 'tier'] as const) {
    if (body[field] !== undefined) throw new StorageError('ERR_INVALID_ARGUMENT', `${field} is for a tier move (kind "tier"), not ${what}`);
  }
}

/** A tier move names one chunk server or one volume, and the new tier. */
async function startTierMove(service: MetadataService, body: StartTaskBody, key: string | null): Promise<{ task: TaskInfo; created: boolean }> {
  if (body.thresholdPercent !== undefined) throw new StorageError('ERR_INVALID_ARGUMENT', 'thresholdPercent is for a rebalance, not a tier move');
  if ((body.chunkServerId === undefined) === (body.volume === undefined)) {
    throw new StorageError('ERR_INVALID_ARGUMENT', 'a tier move names either the chunk server (chunkServerId) or the volume (volume) whose tier changes');
  }
  const tier = tierOf(body);
  return body.volume !== undefined ? service.startVolumeTier(body.volume, tier, key)
    : service.tasks.startTier({ chunkServerId: body.chunkServerId ?? 0 }, tier, key);
}

function tierOf(body: StartTaskBody): number {
  if (body.tier === undefined) throw new StorageError('ERR_INVALID_ARGUMENT', 'a tier move names the new tier (0-3): tier');
  return body.tier;
}

/** The first schema violation: where (`body`, `body.replicas`), the rule broken, the property it names (an unknown or missing one). */
function firstViolation(error: FastifyError): { path: string; rule: string; property: string | undefined; text: string | undefined } | null {
  const first = error.validation?.[0];
  if (first === undefined) return null;
  const params = first.params as Record<string, unknown>;
  const named = first.keyword === 'additionalProperties' ? params['additionalProperty']
    : first.keyword === 'required' ? params['missingProperty'] : undefined;
  return {
    path: `${error.validationContext ?? 'request'}${first.instancePath.replaceAll('/', '.')}`,
    rule: first.keyword,
    property: named === undefined ? undefined : String(named),
    text: first.message,
  };
}

/** The field a schema violation is about (`body.sizeBytes`) and the rule it broke (`minimum`). */
function validationDetails(error: FastifyError): Record<string, string> {
  const violation = firstViolation(error);
  if (violation === null) return {};
  const { path, rule, property } = violation;
  return { field: property === undefined ? path : `${path}.${property}`, rule };
}

/** Names the field and what is wrong with it, e.g. `body has unknown property "colour"`. */
function validationMessage(error: FastifyError): string {
  const violation = firstViolation(error);
  if (violation === null) return `${error.validationContext ?? 'request'}: ${error.message}`;
  const { path, rule, property, text } = violation;
  if (rule === 'additionalProperties') return `${path} has unknown property "${String(property)}"`;
  if (rule === 'required') return `${path} is missing required property "${String(property)}"`;
  const allowed = error.validation?.[0]?.params['allowedValues'];
  if (rule === 'enum' && Array.isArray(allowed)) return `${path} must be one of: ${allowed.map(String).join(', ')}`;
  return `${path} ${text ?? 'is invalid'}`;
}
