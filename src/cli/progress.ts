// Progress display for commands that follow a background operation on the MDS (`task wait`, `cs drain --wait`, `top`):
// a bar re-drawn in place on a terminal, and a copy rate measured from a cumulative byte counter.
// Pure pieces, so that the command decides what to say and when.

import { StorageError } from '../errors.ts';

/** "[#########...........]": `done` of `total`, `width` characters between the brackets. */
export function progressBar(done: number, total: number, width: number): string {
  const fraction = total <= 0 ? 1 : Math.min(1, Math.max(0, done / total));
  const filled = Math.round(fraction * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

/**
 * One line to re-draw in place: back to the line's start, the text cut to the terminal's width
 * (a line that wraps cannot be re-drawn with \r), then clear what a longer previous line left.
 */
export function redrawLine(text: string, columns: number): string {
  const width = Math.max(10, columns - 1);
  return `\r${text.length > width ? text.slice(0, width) : text}\u001b[K`;
}

/** Errors worth riding out while following the MDS: it is restarting or briefly unreachable. */
const MDS_AWAY_CODES: ReadonlySet<string> = new Set(['ERR_UNAVAILABLE', 'ERR_TIMEOUT', 'ERR_SHUTTING_DOWN']);

export function isMdsAway(error: unknown): error is StorageError {
  return error instanceof StorageError && MDS_AWAY_CODES.has(error.code);
}

/** Clears a line re-drawn with redrawLine, so that the next output starts on a clean line. */
export const CLEAR_LINE = '\r\u001b[K';

export { RateMeter } from '../util/rate_meter.ts';
