// The REST API's OpenAPI document: docs/openapi.json is what the route schemas of this version
// produce (`shoal mds openapi`, which the MDS also serves at /v1/openapi.json), so a route or
// schema changed without `npm run openapi` fails here; and every error response it declares has
// the one error shape (statusCode, code, message, details).

import t from 'tap';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { SHOAL_ENTRY } from '../src/local/daemon_process.ts';
import { runOk } from './helpers/run.ts';

const COMMITTED = fileURLToPath(new URL('../../docs/openapi.json', import.meta.url));

interface Operation { responses?: Record<string, { content?: Record<string, { schema?: { properties?: Record<string, unknown>; required?: string[] } }> }> }

t.test('docs/openapi.json is the document the routes produce', async (t) => {
  const { stdout } = await runOk(process.execPath, [SHOAL_ENTRY, 'mds', 'openapi']);
  const generated = JSON.parse(stdout) as unknown;
  const committed = JSON.parse(await readFile(COMMITTED, 'utf8')) as unknown;
  t.same(generated, committed, 'no drift (if the routes changed on purpose: npm run openapi, and commit docs/openapi.json)');
});

t.test('every route declares its success reply, and every error reply has the one error shape', async (t) => {
  const document = JSON.parse(await readFile(COMMITTED, 'utf8')) as { openapi: string; paths: Record<string, Record<string, Operation>> };
  t.match(document.openapi, /^3\./, `OpenAPI ${document.openapi}`);
  let operations = 0;
  let errorReplies = 0;
  const problems: string[] = [];
  for (const [path, methods] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      operations += 1;
      const responses = operation.responses ?? {};
      const success = Object.keys(responses).filter((status) => status.startsWith('2'));
      // /metrics is Prometheus text and /v1/openapi.json this document: neither has a JSON schema.
      if (success.length === 0 && path !== '/metrics' && path !== '/v1/openapi.json') problems.push(`${method} ${path}: no success reply declared`);
      for (const [status, response] of Object.entries(responses)) {
        if (!/^[45]/.test(status)) continue;
        errorReplies += 1;
        const schema = response.content?.['application/json']?.schema;
        const fields = Object.keys(schema?.properties ?? {}).sort();
        if (fields.join(',') !== 'code,details,message,statusCode' || (schema?.required ?? []).length !== 4) {
          problems.push(`${method} ${path} ${status}: error reply has fields ${fields.join(',')}`);
        }
      }
    }
  }
  t.ok(operations > 25, `${operations} operations`);
  t.ok(errorReplies > 50, `${errorReplies} error replies declared`);
  t.same(problems, [], 'no route without a success reply, no error reply of another shape');
});
