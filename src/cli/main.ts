// The admin CLI's entry (`shoal volume ...`, `shoal cs ...`, `shoal stat`, ...): finds the command
// in the table, parses its flags strictly (an unknown flag is an error, never ignored), builds the
// context (output, lazily resolved MDS client) and runs it. Errors are StorageErrors and leave
// through src/bin/shoal.ts, which maps ERR_INVALID_ARGUMENT / ERR_CONFIG to exit status 2 and
// every other error to 1; an ERR_INVALID_ARGUMENT from the MDS (a refused operation, not bad
// usage) is printed here the same way and exits 1.
//
// Global flags may stand anywhere: before the command words or among the command's own flags.
// A new command is one more entry in COMMANDS; dispatch and help follow from its table entry.

import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { StorageError } from '../errors.ts';
import { MdsClient } from '../protocol/mds_client.ts';
import { defineCommand, OperationRefused, usageError, type CliContext, type Command, type CommandArgs, type FlagOptions } from './command.ts';
import { csCommands } from './commands/cs.ts';
import { mdsCommands } from './commands/mds.ts';
import { hypervisorCommands } from './commands/hypervisor.ts';
import { quarantineCommands } from './commands/quarantine.ts';
import { statCommands } from './commands/stat.ts';
import { topCommands } from './commands/top.ts';
import { taskCommands } from './commands/task.ts';
import { volumeCommands } from './commands/volume.ts';
import { resolveConnection } from './config.ts';
import { commandHelp, groupHelp, groupUsage, overviewHelp } from './help.ts';
import { ansiPainter, plainPainter } from './table.ts';

const GLOBAL_OPTIONS = {
  json: { type: 'boolean' },
  mds: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  data: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const satisfies FlagOptions;

const TOP_USAGE = 'shoal COMMAND [ARGUMENTS] [FLAGS]   (shoal help lists the commands)';

const helpCommand = defineCommand({
  path: ['help'],
  synopsis: '[COMMAND]',
  summary: 'this overview, or the help of one command: shoal help volume create',
  // The words name the command to explain; helpFor checks them when it looks the command up.
  anyPositionals: true,
  parse: (args) => args.positionals,
  async run(context, words) {
    context.write(helpFor(words));
  },
});

const versionCommand = defineCommand({
  path: ['version'],
  synopsis: '',
  summary: 'print the version of shoal',
  parse: () => undefined,
  async run(context) {
    context.write(`shoal ${packageVersion()}\n`);
  },
});

const COMMANDS: readonly Command[] = [...volumeCommands, ...csCommands, ...statCommands, ...topCommands, ...taskCommands, ...quarantineCommands, ...hypervisorCommands, ...mdsCommands, helpCommand, versionCommand];

export async function runCli(argv: string[]): Promise<void> {
  // A reader that went away (`shoal volume list | head -1`) is not an error worth a stack trace.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0);
    throw error;
  });
  const { values: early, tokens } = parseArgs({
    args: argv,
    options: GLOBAL_OPTIONS,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  if (early.version === true) return void process.stdout.write(`shoal ${packageVersion()}\n`);
  const words = tokens.flatMap((token) => (token.kind === 'positional' ? [{ word: token.value, index: token.index }] : []));
  const command = findCommand(words.map(({ word }) => word));
  if (command === undefined) {
    if (early.help === true) return void process.stdout.write(helpFor(words.map(({ word }) => word)));
    throw missingCommand(words.map(({ word }) => word));
  }
  if (early.help === true && command !== helpCommand) return void process.stdout.write(commandHelp(command));

  const commandIndexes = new Set(words.slice(0, command.path.length).map(({ index }) => index));
  const rest = argv.filter((_, index) => !commandIndexes.has(index));
  const args = parseCommandArgs(command, rest);
  checkGlobalFlags(command, args.values);
  try {
    await command.execute(createContext(args.values), args);
  } catch (error) {
    if (!(error instanceof OperationRefused)) throw error;
    process.stderr.write(`shoal: ${error.error.code}: ${error.error.message}\n`);
    process.exitCode = 1;
  }
}

/** The command whose words begin the positional arguments; the longest such path wins. */
function findCommand(words: readonly string[]): Command | undefined {
  let found: Command | undefined;
  for (const command of COMMANDS) {
    const matches = command.path.every((word, index) => words[index] === word);
    if (matches && command.path.length > (found?.path.length ?? 0)) found = command;
  }
  return found;
}

function isGroup(word: string | undefined): word is string {
  return COMMANDS.some((command) => command.path.length > 1 && command.path[0] === word);
}

function helpFor(words: readonly string[]): string {
  if (words.length === 0) return overviewHelp(COMMANDS);
  const command = findCommand(words);
  if (command !== undefined && command.path.length === words.length) return commandHelp(command);
  if (words.length === 1 && isGroup(words[0])) return groupHelp(words[0], COMMANDS);
  throw missingCommand(words);
}

function missingCommand(words: readonly string[]): StorageError {
  const [first, second] = words;
  if (first === undefined) return usageError('missing command', TOP_USAGE);
  if (!isGroup(first)) return usageError(`unknown command "${first}"`, TOP_USAGE);
  const usage = groupUsage(first, COMMANDS);
  return usageError(second === undefined ? `missing ${first} command` : `unknown ${first} command "${second}"`, usage);
}

function parseCommandArgs(command: Command, args: string[]): CommandArgs {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...GLOBAL_OPTIONS, ...command.options },
      strict: true,
      allowPositionals: true,
    });
    return { values, positionals };
  } catch (error) {
    throw usageError(describeParseError(error), command.usage);
  }
}

function checkGlobalFlags(command: Command, values: CommandArgs['values']): void {
  if (values['token'] !== undefined && values['token-file'] !== undefined) {
    throw usageError('give either --token or --token-file, not both', command.usage);
  }
}

/** node:util's messages, without their advice about `--`, which does not apply to these commands. */
function describeParseError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  const message = error instanceof Error ? error.message : String(error);
  const flag = /'(-[^' ]+)/.exec(message)?.[1];
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && flag !== undefined) return `unknown flag ${flag}`;
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && flag !== undefined) {
    return message.includes('argument missing') ? `${flag} needs a value` : `${flag} does not take a value`;
  }
  return message.split('. ')[0] ?? message;
}

function createContext(values: CommandArgs['values']): CliContext {
  const text = (name: string): string | undefined => {
    const value = values[name];
    return typeof value === 'string' ? value : undefined;
  };
  const useColor = process.stdout.isTTY === true && (process.env['NO_COLOR'] ?? '') === '' && process.env['TERM'] !== 'dumb';
  let client: Promise<MdsClient> | undefined;
  return {
    json: values['json'] === true,
    paint: useColor ? ansiPainter : plainPainter,
    write: (output) => void process.stdout.write(output),
    writeJson: (body) => void process.stdout.write(`${JSON.stringify(body, null, 2)}\n`),
    interactive: process.stdout.isTTY === true,
    columns: () => (process.stdout.isTTY === true && process.stdout.columns > 0 ? process.stdout.columns : 80),
    mds() {
      client ??= resolveConnection({ mds: text('mds'), token: text('token'), tokenFile: text('token-file'), data: text('data') }).then(
        (connection) => new MdsClient(connection),
      );
      return client;
    },
  };
}

/** From package.json at run time: the repository root is three folders above build/src/cli/main.js. */
function packageVersion(): string {
  const manifest = createRequire(import.meta.url)('../../../package.json') as { version?: unknown };
  return typeof manifest.version === 'string' ? manifest.version : 'unknown';
}
