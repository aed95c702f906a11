// Reading node's CPU profiles (`node --cpu-prof`, one .cpuprofile per process) of shoal's daemons:
// which daemon a profile belongs to, the part of it that falls in one job's time window, and per
// daemon the frames with the most self time and the shares of idle, GC and program time. Used by
// the harness (`nbd-fio --profile DIR`) and by bench/profile-summary.ts on its own.
//
// A .cpuprofile is `{ nodes, startTime, endTime, samples, timeDeltas }`: nodes form the call tree
// (each with a callFrame: functionName, url, 0-based lineNumber and columnNumber), `samples[i]` is
// the node that was on top of the stack at sample i, and `timeDeltas[i]` the µs since the previous
// sample (the first one: since startTime). Times are µs of V8's monotonic clock, on Linux
// CLOCK_MONOTONIC: the clock of process.hrtime in every process, so the harness's job start and
// end (process.hrtime) place a window in a daemon's profile.
//
// Self time of a sample: the time until the next sample (the last one: until endTime), as Chrome's
// DevTools count it. A window keeps the samples taken within [start, end).
//
// The harness writes a manifest (MANIFEST_NAME) next to the profiles: pid -> daemon name and the
// window of each job on shoal. The file name of a profile holds its pid
// (CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile).
//
// Non-goals: total (inclusive) time per function, call trees, flame graphs: open the .cpuprofile
// in Chrome DevTools (Performance, load profile) or speedscope for those.

import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { SourceMap } from 'node:module';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const MANIFEST_NAME = 'bench-profile.json';
const MANIFEST_FORMAT = 1;

/** What the harness records for the summariser. */
export interface ProfileManifest {
  readonly format: number;
  /** pid (as a string) -> daemon name (mds, cs0, cs1, cs2, nbd). */
  readonly roles: Record<string, string>;
  /** Each job's run on shoal, in process.hrtime µs. */
  readonly windows: readonly ProfileWindow[];
}

export interface ProfileWindow {
  readonly job: string;
  readonly startUs: number;
  readonly endUs: number;
}

export function manifest(roles: ReadonlyMap<string, number>, windows: readonly ProfileWindow[],
): ProfileManifest {
  const byPid: Record<string, string> = {};
  for (const [name, pid] of roles) byPid[String(pid)] = name;
  return { format: MANIFEST_FORMAT, roles: byPid, windows };
}

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
  readonly columnNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** One profile file and the daemon it belongs to. */
export interface ProfileFile {
  readonly path: string;
  readonly pid: number;
  /** Daemon name from the manifest, or `pid N` when there is none. */
  readonly role: string;
}

export interface FrameTime {
  readonly functionName: string;
  /** Where the function is: repo-relative file:line, mapped to the .ts source when possible. */
  readonly location: string;
  readonly selfUs: number;
}

export interface ProfileSummary {
  readonly role: string;
  readonly pid: number;
  /** Length of the window covered by samples (the whole profile, or the job's part of it). */
  readonly totalUs: number;
  readonly idleUs: number;
  readonly gcUs: number;
  /** `(program)`: V8 busy outside JavaScript it can name (parsing, compiling, native glue). */
  readonly programUs: number;
  /** Top frames by self time, idle / GC / program / root excluded. */
  readonly frames: readonly FrameTime[];
  /** True when no sample fell in the window (e.g. a job window outside this profile). */
  readonly empty: boolean;
}

/** Profiles in `path` (a .cpuprofile file or a folder of them) and the manifest found beside. */
export function findProfiles(path: string): { files: ProfileFile[]; manifest: ProfileManifest | null } {
  const folder = statSync(path).isDirectory() ? path : dirname(path);
  const names = statSync(path).isDirectory()
    ? readdirSync(path).filter((name) => name.endsWith('.cpuprofile')).sort()
    : [basename(path)];
  const manifestPath = join(folder, MANIFEST_NAME);
  const found = existsSync(manifestPath)
    ? JSON.parse(readFileSync(manifestPath, 'utf8')) as ProfileManifest : null;
  if (found !== null && found.format !== MANIFEST_FORMAT) {
    throw new Error(`${manifestPath}: format ${found.format}, this summariser reads ` +
      `${MANIFEST_FORMAT}`);
  }
  const files = names.map((name) => {
    const pid = pidOf(name);
    return { path: join(folder, name), pid, role: found?.roles[String(pid)] ?? `pid ${pid}` };
  });
  // Daemons in the manifest's order (mds, cs0..., nbd); unknown pids last.
  const order = Object.values(found?.roles ?? {});
  const rank = (file: ProfileFile): number => {
    const at = order.indexOf(file.role);
    return at === -1 ? order.length : at;
  };
  files.sort((a, b) => rank(a) - rank(b) || a.pid - b.pid);
  return { files, manifest: found };
}

/** The pid in node's profile file name (CPU.20261130.101525.19724.0.001.cpuprofile), or -1. */
export function pidOf(fileName: string): number {
  const match = /^CPU\.\d+\.\d+\.(\d+)\.\d+\.\d+\.cpuprofile$/.exec(fileName);
  return match === null ? -1 : Number(match[1]);
}

export function readProfile(path: string): CpuProfile {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  if (!Array.isArray(profile.nodes) || !Array.isArray(profile.samples) ||
    !Array.isArray(profile.timeDeltas) || profile.samples.length !== profile.timeDeltas.length) {
    throw new Error(`${path}: not a V8 CPU profile (nodes, samples, timeDeltas)`);
  }
  return profile;
}

/**
 * Self time per frame and the idle / GC / program shares of `profile`, over the samples taken in
 * [window.startUs, window.endUs) (all samples when window is null), top `top` frames.
 */
export function summarise(profile: CpuProfile, file: ProfileFile,
  window: { startUs: number; endUs: number } | null, top: number): ProfileSummary {
  const nodeById = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfByNode = new Map<number, number>();
  let timeUs = profile.startTime;
  for (let index = 0; index < profile.samples.length; index += 1) {
    timeUs += profile.timeDeltas[index] ?? 0;
    const nextUs = index + 1 < profile.samples.length
      ? timeUs + (profile.timeDeltas[index + 1] ?? 0) : profile.endTime;
    if (window !== null && (timeUs < window.startUs || timeUs >= window.endUs)) continue;
    const node = profile.samples[index]!;
    selfByNode.set(node, (selfByNode.get(node) ?? 0) + Math.max(0, nextUs - timeUs));
  }
  let totalUs = 0;
  let idleUs = 0;
  let gcUs = 0;
  let programUs = 0;
  const byFrame = new Map<string, { frame: CallFrame; selfUs: number }>();
  for (const [id, selfUs] of selfByNode) {
    totalUs += selfUs;
    const frame = nodeById.get(id)?.callFrame;
    if (frame === undefined) continue;
    if (frame.functionName === '(idle)') idleUs += selfUs;
    else if (frame.functionName === '(garbage collector)') gcUs += selfUs;
    else if (frame.functionName === '(program)') programUs += selfUs;
    else if (frame.functionName !== '(root)') {
      const key = `${frame.functionName}\0${frame.url}\0${frame.lineNumber}\0${frame.columnNumber}`;
      const entry = byFrame.get(key) ?? { frame, selfUs: 0 };
      entry.selfUs += selfUs;
      byFrame.set(key, entry);
    }
  }
  const frames = [...byFrame.values()].sort((a, b) => b.selfUs - a.selfUs).slice(0, top)
    .map(({ frame, selfUs }) => ({
      functionName: frame.functionName === '' ? '(anonymous)' : frame.functionName,
      location: locate(frame),
      selfUs,
    }));
  return { role: file.role, pid: file.pid, totalUs, idleUs, gcUs, programUs, frames,
    empty: selfByNode.size === 0 };
}

/** The checkout (bench/nbd/profile.ts is built to build/bench/nbd/profile.js). */
const REPO_DIR = fileURLToPath(new URL('../../..', import.meta.url));
const sourceMaps = new Map<string, SourceMap | null>();

/**
 * file:line of a frame, 1-based, relative to the checkout; for built files with a source map, the
 * TypeScript source's line. Native frames (no url) are `(native)`.
 */
function locate(frame: CallFrame): string {
  if (frame.url === '') return '(native)';
  if (!frame.url.startsWith('file://')) return `${frame.url}:${frame.lineNumber + 1}`;
  const path = fileURLToPath(frame.url);
  const map = sourceMapFor(path);
  const entry = map?.findEntry(frame.lineNumber, frame.columnNumber) as
    { originalSource?: string; originalLine?: number } | undefined;
  if (entry?.originalSource !== undefined && entry.originalLine !== undefined) {
    const source = entry.originalSource.startsWith('file://')
      ? fileURLToPath(entry.originalSource) : join(dirname(path), entry.originalSource);
    return `${shortPath(source)}:${entry.originalLine + 1}`;
  }
  return `${shortPath(path)}:${frame.lineNumber + 1}`;
}

function shortPath(path: string): string {
  // Dependencies (wherever node_modules is, e.g. behind a symlink): the package and its file.
  const dependency = /^.*\/node_modules\/(.*)$/.exec(path);
  if (dependency !== null) return dependency[1]!;
  const inRepo = relative(REPO_DIR, path);
  return inRepo.startsWith('..') ? path : inRepo;
}

function sourceMapFor(path: string): SourceMap | null {
  if (!sourceMaps.has(path)) {
    let map: SourceMap | null = null;
    try {
      map = new SourceMap(JSON.parse(readFileSync(`${path}.map`, 'utf8')));
    } catch {
      map = null;
    }
    sourceMaps.set(path, map);
  }
  return sourceMaps.get(path) ?? null;
}

/** One daemon's summary as markdown: a line of shares, then its top frames. */
export function formatSummary(summary: ProfileSummary): string {
  const ms = (us: number): string => (us / 1000).toFixed(1);
  const share = (us: number): string =>
    summary.totalUs === 0 ? '-' : `${((us / summary.totalUs) * 100).toFixed(1)}%`;
  const busyUs = summary.totalUs - summary.idleUs;
  const ofBusy = (us: number): string =>
    busyUs <= 0 ? '-' : `${((us / busyUs) * 100).toFixed(1)}%`;
  const title = summary.role === `pid ${summary.pid}` ? `### ${summary.role}`
    : `### ${summary.role} (pid ${summary.pid})`;
  if (summary.empty) return `${title}\n\nno samples in this window`;
  const lines = [title, '',
    `${ms(summary.totalUs)} ms sampled: idle ${share(summary.idleUs)}, ` +
      `GC ${share(summary.gcUs)}, program ${share(summary.programUs)}, ` +
      `JavaScript and native ${share(busyUs - summary.gcUs - summary.programUs)}; ` +
      `busy ${ms(busyUs)} ms (GC ${ofBusy(summary.gcUs)} of busy)`, ''];
  lines.push('| function | file:line | self ms | self % | % of busy |');
  lines.push('|----------|-----------|--------:|-------:|----------:|');
  for (const frame of summary.frames) {
    lines.push(`| ${frame.functionName.replaceAll('|', '\\|')} | ${frame.location} | ` +
      `${ms(frame.selfUs)} | ${share(frame.selfUs)} | ${ofBusy(frame.selfUs)} |`);
  }
  return lines.join('\n');
}

/**
 * Summaries of every profile in `path`, one section per window (each job of the manifest, or
 * the whole profile when there is no manifest, `whole` is set, or `job` names none).
 */
export function summariseFolder(path: string, options: { top: number; whole: boolean;
  job: string | null }): string {
  const { files, manifest: found } = findProfiles(path);
  if (files.length === 0) return `no .cpuprofile files in ${path}`;
  const windows = options.whole || found === null ? [null]
    : found.windows.filter((window) => options.job === null || window.job === options.job);
  if (windows.length === 0) {
    const known = found?.windows.map((window) => window.job).join(', ') ?? '';
    throw new Error(`no job ${options.job ?? ''} in ${MANIFEST_NAME} (it has: ${known})`);
  }
  const profiles = files.map((file) => ({ file, profile: readProfile(file.path) }));
  const sections: string[] = [];
  for (const window of windows) {
    sections.push(window === null ? `## Whole profiles`
      : `## ${window.job} on shoal (${((window.endUs - window.startUs) / 1e6).toFixed(1)} s)`);
    for (const { file, profile } of profiles) {
      sections.push(formatSummary(summarise(profile, file, window, options.top)));
    }
  }
  return sections.join('\n\n');
}
