#!/usr/bin/env python3
# A FUSE pass-through file system that behaves like one spinning disk, so tests and benchmarks can
# run "HDD" tiers and journals in front of them on a machine that has only fast storage.
#
# Run it with Debian's Python (python3-fusepy lives there):
#   /usr/bin/python3 slow_fs.py --backing B --mount M [--seek-ms 8] [--bandwidth-bytes 150000000]
#                               [--dirty-limit-bytes 67108864] [--parent-pid PID]
# test/helpers/slow_disk.ts drives it.
#
# Model: one actuator, one queue. Every transfer to or from the "platter" holds one lock for
#   (a seek, unless it starts where the previous transfer ended in the same file) + bytes / bandwidth,
# so concurrent callers wait for each other as they would on one disk, and random I/O costs a
# seek each while sequential I/O streams at the bandwidth.
# - Reads that reach this file system are disk reads (the kernel's page cache above FUSE serves
#   repeated reads without asking us, as it would above a real disk).
# - Writes go to the backing file at once but cost nothing yet: they are dirty pages, tracked per
#   file. fsync/fdatasync pays for that file's dirty pages (sorted, a seek per discontiguous run)
#   and then fsyncs the backing file. Past --dirty-limit-bytes of dirty pages in all, a write first
#   pays for writing back the oldest file's pages (the kernel's dirty throttling): writers slow
#   down, they never fail.
# - Metadata (create, rename, unlink, mkdir, directory fsync) costs one seek.
# Nothing is volatile here: a killed process loses nothing (power cuts are powercut_fs.py's job).
#
# stdout: one JSON line {"event": "ready"} once mounted. Stats on SIGUSR1 to stderr.

import argparse
import collections
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

try:
    import fusepy  # Debian's python3-fusepy
except ImportError:
    import fuse as fusepy

PAGE_BYTES = 4096
log = logging.getLogger('slow_fs')


class Platter:
    """The one disk head: charges each transfer its seek and transfer time, one at a time."""

    def __init__(self, seek_s, bandwidth_bytes):
        self.seek_s = seek_s
        self.bandwidth_bytes = bandwidth_bytes
        self.lock = threading.Lock()
        self.head = (None, 0)  # (file key, byte position after the last transfer)
        self.busy_s = 0.0
        self.seeks = 0
        self.bytes = 0

    def transfer(self, key, offset, length):
        with self.lock:
            cost = length / self.bandwidth_bytes
            if self.head != (key, offset):
                cost += self.seek_s
                self.seeks += 1
            self.head = (key, offset + length)
            self.busy_s += cost
            self.bytes += length
            if cost > 0:
                time.sleep(cost)

    def seek(self):
        self.transfer(('meta',), -1, 0)


class SlowFS(fusepy.Operations):
    def __init__(self, backing, platter, dirty_limit_bytes):
        self.backing = backing
        self.platter = platter
        self.dirty_limit_bytes = dirty_limit_bytes
        self.dirty_lock = threading.Lock()
        # file key (st_dev, st_ino) -> set of dirty page indexes; insertion order = oldest first
        self.dirty = collections.OrderedDict()
        self.dirty_pages = 0

    # -- helpers ---------------------------------------------------------------------------------
    def real(self, path):
        return os.path.join(self.backing, path.lstrip('/'))

    @staticmethod
    def key_of(fd):
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    def mark_dirty(self, key, offset, length):
        first = offset // PAGE_BYTES
        last = (offset + length - 1) // PAGE_BYTES
        with self.dirty_lock:
            pages = self.dirty.get(key)
            if pages is None:
                pages = self.dirty[key] = set()
            before = len(pages)
            pages.update(range(first, last + 1))
            self.dirty_pages += len(pages) - before

    def take_dirty(self, key):
        with self.dirty_lock:
            pages = self.dirty.pop(key, None)
            if pages is None:
                return []
            self.dirty_pages -= len(pages)
            return sorted(pages)

    def write_back(self, key, pages):
        """Charges the platter for these pages: one transfer per contiguous run."""
        run_start = None
        previous = None
        for page in pages + [None]:
            if run_start is not None and (page is None or page != previous + 1):
                self.platter.transfer(key, run_start * PAGE_BYTES, (previous - run_start + 1) * PAGE_BYTES)
                run_start = None
            if page is not None and run_start is None:
                run_start = page
            previous = page

    def throttle(self):
        """Past the dirty limit, writers pay for writing back the oldest dirty file first."""
        while True:
            with self.dirty_lock:
                if self.dirty_pages * PAGE_BYTES <= self.dirty_limit_bytes or not self.dirty:
                    return
                key = next(iter(self.dirty))
            self.write_back(key, self.take_dirty(key))

    # -- files -----------------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        st = os.lstat(self.real(path))
        return {name: getattr(st, name) for name in (
            'st_mode', 'st_nlink', 'st_uid', 'st_gid', 'st_size', 'st_atime', 'st_mtime', 'st_ctime', 'st_blocks')}

    def access(self, path, amode):
        if not os.access(self.real(path), amode):
            raise fusepy.FuseOSError(errno.EACCES)

    # Backing files are always opened read-write: the kernel reads through any handle of a file to
    # fill its page cache (a write-only handle would fail those reads, and mmap users get SIGBUS).
    def open(self, path, flags):
        keep = flags & ~(os.O_ACCMODE | os.O_DIRECT | os.O_APPEND)
        return os.open(self.real(path), keep | os.O_RDWR | os.O_CLOEXEC)

    def create(self, path, mode, fi=None):
        fd = os.open(self.real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        self.platter.seek()
        return fd

    def read(self, path, size, offset, fh):
        data = os.pread(fh, size, offset)
        self.platter.transfer(self.key_of(fh), offset, max(len(data), 1))
        return data

    def write(self, path, data, offset, fh):
        self.throttle()
        written = os.pwrite(fh, data, offset)
        if written > 0:
            self.mark_dirty(self.key_of(fh), offset, written)
        return written

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self.real(path), length)

    def fsync(self, path, datasync, fh):
        key = self.key_of(fh)
        self.write_back(key, self.take_dirty(key))
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def statfs(self, path):
        st = os.statvfs(self.real(path))
        return {name: getattr(st, name) for name in (
            'f_bavail', 'f_bfree', 'f_blocks', 'f_bsize', 'f_favail', 'f_ffree', 'f_files', 'f_flag', 'f_frsize', 'f_namemax')}

    def chmod(self, path, mode):
        os.chmod(self.real(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self.real(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self.real(path), times)

    # -- directories -----------------------------------------------------------------------------
    def readdir(self, path, fh):
        return ['.', '..'] + os.listdir(self.real(path))

    def mkdir(self, path, mode):
        os.mkdir(self.real(path), mode)
        self.platter.seek()

    def rmdir(self, path):
        os.rmdir(self.real(path))
        self.platter.seek()

    def unlink(self, path):
        key = None
        try:
            st = os.lstat(self.real(path))
            key = (st.st_dev, st.st_ino)
        except OSError:
            pass
        os.unlink(self.real(path))
        if key is not None and st.st_nlink <= 1:
            self.take_dirty(key)
        self.platter.seek()

    def rename(self, old, new):
        os.rename(self.real(old), self.real(new))
        self.platter.seek()

    def link(self, target, source):
        os.link(self.real(source), self.real(target))
        self.platter.seek()

    def symlink(self, target, source):
        os.symlink(source, self.real(target))
        self.platter.seek()

    def readlink(self, path):
        return os.readlink(self.real(path))

    def fsyncdir(self, path, datasync, fh):
        fd = os.open(self.real(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.platter.seek()
        return 0

    def init(self, path):
        sys.stdout.write(json.dumps({'event': 'ready', 'pid': os.getpid()}) + '\n')
        sys.stdout.flush()

    def stats(self):
        p = self.platter
        return {'busySeconds': round(p.busy_s, 3), 'seeks': p.seeks, 'bytes': p.bytes, 'dirtyBytes': self.dirty_pages * PAGE_BYTES}


def watch_stats_signal(fs):
    """SIGUSR1 prints the stats. A Python signal handler would never run: the main thread stays
    inside libfuse's C loop. So the signal is blocked in every thread (FUSE's workers inherit the
    mask) and one thread waits for it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    def loop():
        while True:
            signal.sigwait({signal.SIGUSR1})
            sys.stderr.write(json.dumps({'event': 'stats', **fs.stats()}) + '\n')
            sys.stderr.flush()
    threading.Thread(target=loop, daemon=True).start()


def watch_parent(parent_pid, mount):
    """A test runner that died leaves no mount behind."""
    def loop():
        while os.getppid() == parent_pid:
            time.sleep(1)
        log.warning('parent process %d is gone: unmounting %s', parent_pid, mount)
        subprocess.call(['umount', '-l', mount])
        os._exit(1)
    threading.Thread(target=loop, daemon=True).start()


def main():
    parser = argparse.ArgumentParser(description='FUSE pass-through with the timing of one spinning disk')
    parser.add_argument('--backing', required=True)
    parser.add_argument('--mount', required=True)
    parser.add_argument('--seek-ms', type=float, default=8.0, help='cost of a non-sequential transfer')
    parser.add_argument('--bandwidth-bytes', type=int, default=150_000_000, help='sequential bytes per second')
    parser.add_argument('--dirty-limit-bytes', type=int, default=64 * 1024 * 1024,
                        help='dirty bytes past which writers pay for write-back first')
    parser.add_argument('--parent-pid', type=int, help='unmount and exit when this process is gone')
    args = parser.parse_args()
    if args.seek_ms < 0 or args.bandwidth_bytes <= 0 or args.dirty_limit_bytes < 0:
        parser.error('--seek-ms must be >= 0, --bandwidth-bytes > 0, --dirty-limit-bytes >= 0')
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format='slow_fs: %(message)s')
    os.umask(0)  # the kernel already applied the caller's umask to the modes we get
    fs = SlowFS(os.path.realpath(args.backing), Platter(args.seek_ms / 1000, args.bandwidth_bytes), args.dirty_limit_bytes)
    watch_stats_signal(fs)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, os.path.realpath(args.mount))
    # No direct_io: the kernel page cache sits above us as above a disk, and mmap (LMDB) works.
    fusepy.FUSE(fs, args.mount, foreground=True, fsname='slowdisk', subtype='slowdisk',
                default_permissions=True, hard_remove=True, big_writes=True, max_write=131072)


if __name__ == '__main__':
    main()
