// The shape of a CLI command, shared by the dispatcher (main.ts), the help text (help.ts) and the
// command modules. A command is a table entry: its words, its usage line, its flags, a pure
// `parse` step that checks the arguments locally, and a `run` step that talks to the MDS. Keeping
// `parse` separate means every local mistake (bad size, bad name) fails before any request is
// sent, and is reported with the command's usage line without each command having to add it.

import type { ParseArgsConfig } from 'node:util';
import { StorageError } from '../errors.ts';
import type { MdsClient } from '../protocol/mds_client.ts';
import type { Painter } from './table.ts';

export type FlagOptions = NonNullable<ParseArgsConfig['options']>;

/** What the dispatcher hands a command: flags by long name, and its positional arguments. */
export interface CommandArgs {
  readonly values: Readonly<Record<string, string | boolean | (string | boolean)[] | undefined>>;
  readonly positionals: readonly string[];
}

export interface CliContext {
  /** --json: print the API's response body instead of text. */
  readonly json: boolean;
  readonly paint: Painter;
  write(text: string): void;
  writeJson(body: unknown): void;
  /** stdout is a terminal: progress may be re-drawn in place with \r. */
  readonly interactive: boolean;
  /** The terminal's width, for lines re-drawn in place (80 when unknown). */
  columns(): number;
  /** The MDS client, resolved on first use so that help and bad usage never need a cluster. */
  mds(): Promise<MdsClient>;
}

export interface CommandSpec<Params> {
  /** The words that select the command: ['volume', 'create']. */
  readonly path: readonly string[];
  /** Everything after the words in the usage line: 'NAME --size SIZE [--replicas N:M]'. */
  readonly synopsis: string;
  readonly summary: string;
  /** Extra help lines: one per flag or argument, then notes. */
  readonly details?: readonly string[];
  readonly options?: FlagOptions;
  /** Names of the positional arguments, all required, in order. */
  readonly positionals?: readonly string[];
  /** Takes any number of positionals and checks them itself in `parse`. */
  readonly anyPositionals?: boolean;
  parse(args: CommandArgs): Params;
  run(context: CliContext, params: Params): Promise<void>;
}

/** A command with its parameter type erased, so that one table can hold them all. */
export interface Command {
  readonly path: readonly string[];
  readonly usage: string;
  readonly summary: string;
  readonly details: readonly string[];
  readonly options: FlagOptions;
  execute(context: CliContext, args: CommandArgs): Promise<void>;
}

export function defineCommand<Params>(spec: CommandSpec<Params>): Command {
  const usage = `shoal ${[...spec.path, spec.synopsis].filter((part) => part !== '').join(' ')}`;
  const positionalNames = spec.positionals ?? [];
  return {
    path: spec.path,
    usage,
    summary: spec.summary,
    details: spec.details ?? [],
    options: spec.options ?? {},
    async execute(context, args) {
      let params: Params;
      try {
        if (spec.anyPositionals !== true) checkPositionals(args.positionals, positionalNames);
        params = spec.parse(args);
      } catch (error) {
        throw withUsage(error, usage);
      }
      try {
        await spec.run(context, params);
      } catch (error) {
        throw asRefusal(error);
      }
    },
  };
}

/**
 * The MDS (or the state of the cluster) refused an operation whose arguments passed the local
 * checks: the operation failed, exit status 1, even when the MDS calls the request invalid
 * (ERR_INVALID_ARGUMENT: `cs rm` of a server that still holds replicas). Exit status 2 is kept
 * for mistakes found before anything is sent. The dispatcher prints it like any StorageError.
 */
export class OperationRefused extends Error {
  readonly error: StorageError;

  constructor(error: StorageError) {
    super(error.message, { cause: error });
    this.name = 'OperationRefused';
    this.error = error;
  }
}

function asRefusal(error: unknown): unknown {
  return error instanceof StorageError && error.code === 'ERR_INVALID_ARGUMENT' ? new OperationRefused(error) : error;
}

function checkPositionals(given: readonly string[], names: readonly string[]): void {
  if (given.length < names.length) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `missing ${names.slice(given.length).join(' ')}`);
  }
  if (given.length > names.length) {
    const extra = given.slice(names.length).map((text) => `"${text}"`).join(' ');
    throw new StorageError('ERR_INVALID_ARGUMENT', `unexpected argument ${extra}`);
  }
}

/** A usage mistake: exit status 2, the problem first, then the line that shows the right form. */
export function usageError(message: string, usage: string): StorageError {
  return new StorageError('ERR_INVALID_ARGUMENT', `${message}\nusage: ${usage}`);
}

function withUsage(error: unknown, usage: string): unknown {
  if (error instanceof StorageError && error.code === 'ERR_INVALID_ARGUMENT') {
    return usageError(error.message, usage);
  }
  return error;
}

/** The n-th positional, which checkPositionals has already guaranteed to exist. */
export function positional(args: CommandArgs, index: number): string {
  const value = args.positionals[index];
  if (value === undefined) throw new StorageError('ERR_INVALID_ARGUMENT', `missing argument ${index + 1}`);
  return value;
}

export function stringFlag(args: CommandArgs, name: string): string | undefined {
  const value = args.values[name];
  return typeof value === 'string' ? value : undefined;
}

export function booleanFlag(args: CommandArgs, name: string): boolean {
  return args.values[name] === true;
}

/**
 * What most commands do: one request, then its response body verbatim for --json (scripts depend
 * on it being exactly the API's), or rendered for a person.
 */
export async function show<Body>(
  context: CliContext,
  request: (mds: MdsClient) => Promise<Body>,
  render: (body: Body) => string,
): Promise<void> {
  const body = await request(await context.mds());
  if (context.json) context.writeJson(body);
  else context.write(render(body));
}
