// `shoal hypervisor ...`: the hypervisors allowed to serve volumes. Each gets its own credential
// (shown once, at `add`; its NBD server reads it from a file), serves the volumes attached to it
// (or every volume), and can be revoked alone: its credential and its capabilities stop working at
// once, the other hypervisors go on.

import { writeFile } from 'node:fs/promises';
import { StorageError } from '../../errors.ts';
import type { HypervisorInfo } from '../../protocol/api.ts';
import { booleanFlag, defineCommand, positional, show, stringFlag, type Command, type CommandArgs } from '../command.ts';
import { formatTimestamp } from '../format.ts';
import { renderTable, type Column } from '../table.ts';
import { parseVolumeName } from './volume.ts';

const HYPERVISOR_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function parseHypervisorName(text: string): string {
  if (!HYPERVISOR_NAME.test(text)) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `a hypervisor name is 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit; got "${text}"`);
  }
  return text;
}

/** NAME VOLUME...: the hypervisor, then at least one volume. */
function parseNameAndVolumes(args: CommandArgs): { name: string; volumes: string[] } {
  if (args.positionals.length < 2) throw new StorageError('ERR_INVALID_ARGUMENT', 'give the hypervisor and at least one volume');
  return { name: parseHypervisorName(positional(args, 0)), volumes: args.positionals.slice(1).map(parseVolumeName) };
}

const COLUMNS: ReadonlyArray<Column<HypervisorInfo>> = [
  { header: 'ID', align: 'right', value: (h) => String(h.id) },
  { header: 'NAME', value: (h) => h.name },
  { header: 'VOLUMES', value: (h) => (h.allVolumes ? 'all' : h.volumes.length === 0 ? '-' : h.volumes.join(',')) },
  { header: 'CREATED', value: (h) => formatTimestamp(h.createdAt) },
  { header: 'STATE', value: (h) => (h.revokedAt === null ? 'active' : `revoked ${formatTimestamp(h.revokedAt)}`),
    style: (h) => (h.revokedAt === null ? undefined : 'red') },
];

const list = defineCommand({
  path: ['hypervisor', 'list'],
  synopsis: '',
  summary: 'list the hypervisors, the volumes each may serve, and which were revoked',
  parse: () => null,
  run: (context) => show(context, (mds) => mds.listHypervisors(), ({ hypervisors }) =>
    hypervisors.length === 0 ? 'no hypervisor has a credential yet (shoal hypervisor add NAME)\n' : renderTable(COLUMNS, hypervisors, context.paint)),
});

const add = defineCommand({
  path: ['hypervisor', 'add'],
  synopsis: 'NAME [--volume V]... [--all-volumes] [--out FILE]',
  summary: 'give a hypervisor its own credential, for the volumes attached to it',
  details: [
    'NAME           the hypervisor, as admins know it (its host name, say)',
    '--volume V     attach volume V (repeat for more; more later with shoal hypervisor allow)',
    '--all-volumes  it may serve every volume, present and future',
    '--out FILE     write the credential to FILE (mode 0600) instead of printing it; either way it is',
    '               shown only once: copy it to the hypervisor, for shoal run nbd --credential FILE',
  ],
  options: { volume: { type: 'string', multiple: true }, 'all-volumes': { type: 'boolean' }, out: { type: 'string' } },
  positionals: ['NAME'],
  parse(args) {
    const given = args.values['volume'];
    const volumes = (Array.isArray(given) ? given : typeof given === 'string' ? [given] : []).map((v) => parseVolumeName(String(v)));
    return { name: parseHypervisorName(positional(args, 0)), volumes, allVolumes: booleanFlag(args, 'all-volumes'), out: stringFlag(args, 'out') };
  },
  async run(context, { name, volumes, allVolumes, out }) {
    const mds = await context.mds();
    const reply = await mds.addHypervisor({ name, volumes, allVolumes });
    if (out !== undefined) await writeFile(out, `${reply.credential}\n`, { mode: 0o600, flag: 'wx' });
    if (context.json) {
      context.writeJson(out === undefined ? reply : { hypervisor: reply.hypervisor, credentialFile: out });
      return;
    }
    context.write(`hypervisor ${reply.hypervisor.name} added (id ${reply.hypervisor.id})\n`);
    context.write(out === undefined
      ? `credential (shown once; put it in a 0600 file on the hypervisor for shoal run nbd --credential):\n${reply.credential}\n`
      : `credential written to ${out} (mode 0600): copy it to the hypervisor, for shoal run nbd --credential\n`);
  },
});

const allow = defineCommand({
  path: ['hypervisor', 'allow'],
  synopsis: 'NAME VOLUME...',
  summary: 'attach volumes to a hypervisor: it may serve them from now on',
  anyPositionals: true,
  parse: parseNameAndVolumes,
  run: (context, { name, volumes }) =>
    show(context, (mds) => mds.setHypervisorVolumes(name, { allow: volumes }), (h) => `${h.name} may serve: ${h.allVolumes ? 'all volumes' : h.volumes.join(', ')}\n`),
});

const deny = defineCommand({
  path: ['hypervisor', 'deny'],
  synopsis: 'NAME VOLUME...',
  summary: 'detach volumes from a hypervisor (its open capabilities run out; revoke it to cut it off at once)',
  anyPositionals: true,
  parse: parseNameAndVolumes,
  run: (context, { name, volumes }) =>
    show(context, (mds) => mds.setHypervisorVolumes(name, { deny: volumes }), (h) =>
      `${h.name} may serve: ${h.allVolumes ? 'all volumes' : h.volumes.length === 0 ? 'no volume' : h.volumes.join(', ')}\n`),
});

const revoke = defineCommand({
  path: ['hypervisor', 'revoke'],
  synopsis: 'NAME',
  summary: 'cut a hypervisor off at once: its credential and capabilities stop working everywhere',
  positionals: ['NAME'],
  parse: (args) => parseHypervisorName(positional(args, 0)),
  run: (context, name) =>
    show(context, (mds) => mds.revokeHypervisor(name), ({ hypervisor, serversTold, serversMissed }) =>
      `hypervisor ${hypervisor.name} revoked; ${serversTold} chunk servers voided its capabilities` +
        (serversMissed.length > 0 ? `; servers ${serversMissed.join(', ')} did not answer: they take no writes until they register again, which tells them` : '') + '\n'),
});

export const hypervisorCommands: readonly Command[] = [list, add, allow, deny, revoke];
