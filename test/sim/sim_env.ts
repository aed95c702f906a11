// Shared pieces of the seeded storage simulations: a settable clock, a logger that keeps the last
// lines (printed when a seed fails), event-loop turns, and seed-derived random streams.

import { seededRandom, type Clock, type Timers } from '../../src/util/clock.ts';
import type { Logger } from '../../src/util/log.ts';

export class SimClock implements Clock {
  private currentMs = 1_000_000;

  nowMs(): number {
    return this.currentMs;
  }

  advance(ms: number): void {
    this.currentMs += ms;
  }
}

/**
 * Timers on the simulated clock, so that what the code under test times (the journal's drain rate,
 * its pacing of writers) depends on the seed and not on how busy the machine running the
 * simulation is: a sleep or a background task runs after one event-loop turn, the clock moved on
 * by its delay.
 */
export function simTimers(clock: SimClock): Timers {
  return {
    monotonicMs: () => clock.nowMs(),
    sleep: (delayMs) => new Promise<void>((resolve) => setImmediate(() => {
      clock.advance(delayMs);
      resolve();
    })),
    background: (delayMs, run) => {
      const immediate = setImmediate(() => {
        clock.advance(delayMs);
        run();
      });
      return () => clearImmediate(immediate);
    },
  };
}

/** Keeps the last `linesMax` lines; prints them as they come when `echo` (one seed, debugging). */
export class RecordingLogger implements Logger {
  private readonly lines: string[] = [];
  private readonly linesMax: number;
  private readonly echo: boolean;
  errorsTotal = 0;

  constructor(linesMax: number, echo: boolean) {
    this.linesMax = linesMax;
    this.echo = echo;
  }

  debug(message: string, fields?: Record<string, unknown>): void {
    this.add('debug', message, fields);
  }

  info(message: string, fields?: Record<string, unknown>): void {
    this.add('info', message, fields);
  }

  warn(message: string, fields?: Record<string, unknown>): void {
    this.add('warn', message, fields);
  }

  error(message: string, fields?: Record<string, unknown>): void {
    this.errorsTotal += 1;
    this.add('error', message, fields);
  }

  /** A line from the simulation itself, in the same stream. */
  note(message: string): void {
    this.add('sim', message);
  }

  tail(): string {
    return this.lines.join('\n');
  }

  private add(level: string, message: string, fields?: Record<string, unknown>): void {
    const line = `${level} ${message}${fields === undefined ? '' : ` ${brief(fields)}`}`;
    if (this.echo) process.stderr.write(`${line}\n`);
    this.lines.push(line);
    if (this.lines.length > this.linesMax) this.lines.shift();
  }
}

function brief(fields: Record<string, unknown>): string {
  return JSON.stringify(fields, (_key, value: unknown) => {
    if (value instanceof Error) return `${value.message}`;
    return value;
  });
}

/** Waits `turns` event-loop turns. */
export async function turns(count: number): Promise<void> {
  for (let turn = 0; turn < count; turn += 1) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Independent random streams of one seed: the workload's choices do not shift the disk's. */
export function streams(seed: number): { workload: () => number; disk: () => number; cut: () => number } {
  return {
    workload: seededRandom(seed * 3 + 1),
    disk: seededRandom(seed * 3 + 2),
    cut: seededRandom(seed * 3 + 3),
  };
}

export function pick<T>(random: () => number, items: readonly T[]): T {
  const item = items[Math.floor(random() * items.length)];
  if (item === undefined) throw new Error('pick from an empty list');
  return item;
}

export function between(random: () => number, low: number, high: number): number {
  return low + Math.floor(random() * (high - low + 1));
}

export function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'none';
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
