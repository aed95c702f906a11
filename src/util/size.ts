// Human byte sizes for the CLI and flags: "4G", "64MiB", "512k", "1048576". Powers of two, as
// storage admins expect from qemu-img and lvm.

import { StorageError } from '../errors.ts';

const UNIT_SHIFT: Record<string, number> = { '': 0, b: 0, k: 10, m: 20, g: 30, t: 40, p: 50 };

export function parseSizeBytes(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$/i.exec(text);
  if (match === null) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${what}: cannot parse size "${text}" (use e.g. 4G, 64M, 4096)`);
  }
  const unit = (match[2] ?? '').toLowerCase();
  const shift = UNIT_SHIFT[unit] ?? 0;
  const bytes = Math.round(Number(match[1]) * 2 ** shift);
  if (!Number.isSafeInteger(bytes)) {
    throw new StorageError('ERR_INVALID_ARGUMENT', `${what}: size "${text}" is too large`);
  }
  return bytes;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let index = 0;
  while (Math.abs(value) >= 1024 && index < units.length - 1) {
    value /= 1024;
    index += 1;
  }
  const text = index === 0 ? String(value) : value.toFixed(value >= 100 ? 0 : 1);
  return `${text} ${units[index]}`;
}
