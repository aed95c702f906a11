// Value formatting shared by the command modules, so that the same quantity reads the same way in
// every table (sizes themselves come from src/util/size.ts).

import { formatBytes } from '../util/size.ts';

/** "42.0%"; "-" when the whole is zero, rather than a meaningless 0% or NaN. */
export function formatPercent(part: number, whole: number): string {
  return whole === 0 ? '-' : `${((part / whole) * 100).toFixed(1)}%`;
}

/** ISO timestamps from the API without the milliseconds: "2025-01-31 12:00:05Z". */
export function formatTimestamp(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function formatAgeMs(ageMs: number | null): string {
  if (ageMs === null) return 'never';
  if (ageMs < 10_000) return `${(ageMs / 1000).toFixed(1)} s ago`;
  if (ageMs < 120_000) return `${Math.round(ageMs / 1000)} s ago`;
  if (ageMs < 7_200_000) return `${Math.round(ageMs / 60_000)} min ago`;
  return `${Math.round(ageMs / 3_600_000)} h ago`;
}

/** Replication as the admin typed it in `volume create --replicas`: "normal:min". */
export function formatReplicas(replicas: { readonly normal: number; readonly min: number }): string {
  return `${replicas.normal}:${replicas.min}`;
}

/** Elapsed time as a clock reads: "0:07", "12:30", "1:02:03". */
export function formatDuration(ms: number): string {
  const total = Math.max(0, Math.floor(ms / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}` : `${minutes}:${seconds}`;
}

/** A copy rate: "48.0 MiB/s"; "-" while unknown. */
export function formatRate(bytesPerSecond: number | null): string {
  return bytesPerSecond === null ? '-' : `${formatBytes(Math.round(bytesPerSecond))}/s`;
}
