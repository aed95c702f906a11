// Help text, generated from the command table so that a new command documents itself: the
// overview (`shoal help`), one group (`shoal volume --help`) and one command
// (`shoal volume create --help`). The daemons (`run`, `start`) are dispatched before the CLI, in
// src/bin/shoal.ts, and are only listed here.

import type { Command } from './command.ts';

const DAEMON_LINES: ReadonlyArray<[words: string, summary: string]> = [
  ['run mds|cs|nbd', 'run one daemon in the foreground (each takes --help)'],
  ['start', 'a whole cluster on this machine: MDS, chunk servers, NBD (takes --help)'],
];

export const GLOBAL_FLAG_LINES: readonly string[] = [
  '--json             print the API response body as JSON, for scripts',
  '--mds URL          MDS REST API, e.g. http://10.0.0.5:9630 [SHOAL_MDS]',
  '--token TOKEN      admin token; visible to other local users in ps, prefer the next two [SHOAL_TOKEN]',
  '--token-file FILE  file holding the admin token (64 hex digits)',
  '--data DIR         folder of a `shoal start` cluster, read for cluster.json [SHOAL_DATA, default ./data]',
  '-h, --help         help; with a command, its arguments',
  '--version          print the version',
];

const RESOLUTION_NOTE =
  'The MDS URL and token come from the flags, else the environment, else DIR/cluster.json (and its token file).';
const EXIT_NOTE = 'Exit status: 0 done; 1 the operation failed (the MDS refused, or cannot be reached); 2 bad usage or configuration.';

function twoColumns(rows: ReadonlyArray<readonly [string, string]>): string[] {
  const width = Math.max(0, ...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`);
}

function indent(lines: readonly string[]): string[] {
  return lines.map((line) => `  ${line}`);
}

export function overviewHelp(commands: readonly Command[]): string {
  const rows = [...commands.map((command) => [command.path.join(' '), command.summary] as const), ...DAEMON_LINES];
  return [
    'shoal: replicated block storage. This is the admin command line for the metadata server (MDS).',
    '',
    'usage: shoal COMMAND [ARGUMENTS] [FLAGS]      (shoal COMMAND --help for its arguments)',
    '',
    'commands:',
    ...twoColumns(rows),
    '',
    'global flags, accepted by every command:',
    ...indent(GLOBAL_FLAG_LINES),
    '',
    RESOLUTION_NOTE,
    EXIT_NOTE,
    '',
  ].join('\n');
}

export function groupHelp(group: string, commands: readonly Command[]): string {
  const members = commands.filter((command) => command.path[0] === group);
  return [
    `usage: shoal ${group} COMMAND ...`,
    '',
    // Usage lines are long: each summary goes under its line rather than beside it.
    ...members.flatMap((command) => [`  ${command.usage}`, `      ${command.summary}`]),
    '',
    `shoal ${group} COMMAND --help for details; shoal help for the global flags.`,
    '',
  ].join('\n');
}

export function commandHelp(command: Command): string {
  return [
    `usage: ${command.usage}`,
    '',
    command.summary,
    ...(command.details.length === 0 ? [] : ['', ...indent(command.details)]),
    '',
    'global flags:',
    ...indent(GLOBAL_FLAG_LINES),
    '',
  ].join('\n');
}

/** The usage lines of a group, for the error when its subcommand is missing or unknown. */
export function groupUsage(group: string, commands: readonly Command[]): string {
  return commands
    .filter((command) => command.path[0] === group)
    .map((command) => command.usage)
    .join('\n       ');
}
