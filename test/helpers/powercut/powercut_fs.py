#!/usr/bin/env python3
# A FUSE pass-through file system with its own volatile cache, so tests can cut the power of a
# simulated host: whatever was not made durable (fsync/fdatasync of a file, fsync of a directory
# for the entries in it) is lost at a cut, as on a real machine. A SIGKILLed process keeps the
# kernel's page cache; this file system does not. Same idea as Jepsen's LazyFS.
#
# Run it with Debian's Python (python3-fusepy lives there):
#   /usr/bin/python3 powercut_fs.py --backing B --mount M --control SOCKET [--punch-hole]
#                                   [--dirty-limit-bytes N] [--dir-model posix|journal] [--parent-pid PID]
# test/helpers/power_cut.ts drives it; see there for the life cycle.
#
# Model
# - File data and size: writes and truncations stay in a per-file cache of 4 KiB pages; reads
#   overlay that cache on the backing file. fsync/fdatasync on any handle of the file (and every
#   write through a handle opened O_SYNC/O_DSYNC) writes the file's pages and size to the backing
#   file and fsyncs it. Files are tracked by backing inode, so renames and hard links keep their
#   cache. Metadata (mode, owner, times) is applied at once and not modelled.
# - Directory entries (create, mknod, mkdir, symlink, link, unlink, rmdir, rename) change the
#   backing directory at once and are logged with what undoes them; an unlinked or replaced entry
#   moves to B/.powercut-trash instead of being deleted. fsync of a directory commits the logged
#   changes of that directory; a rename between two directories commits once both were fsynced
#   after it. This is the strict POSIX reading (--dir-model posix, the default). On ext4 or xfs a
#   file's fsync commits the whole journal, directory changes included: --dir-model journal models
#   that (any fsync/fdatasync of a file, or O_SYNC write, commits every pending directory change).
#   LMDB, for one, never fsyncs its directory. Committed removals are deleted from the trash.
# - Cut `none`: every cached page and size change is dropped and every uncommitted directory
#   change undone, newest first (a file whose creation is undone disappears with its data).
# - Cut `random SEED`: each cached page is kept or dropped by a coin derived from (SEED, the order
#   in which files became dirty, page index): the disk wrote some of the cache back, in any order,
#   tearing multi-page writes. A file's size change is kept or dropped by its own coin (pages past
#   the surviving size are cut off; a kept larger size may expose zeroes, as ext4 data=writeback
#   can). Uncommitted directory changes: a random prefix of them (in the order they happened) is
#   kept and the rest undone, as a journal that committed some transactions and not the next.
# - Punching holes (fallocate PUNCH_HOLE): refused with EOPNOTSUPP unless --punch-hole; then the
#   punched range is cached as zero pages and punched in the backing file at fsync.
# - Bounded memory: a write that would take the cached page bytes past --dirty-limit-bytes fails
#   with ENOSPC (fsync frees them).
# - If this process dies without a cut, B keeps what was synced, and every directory change stays
#   applied (as if committed); the trash is emptied at the next start.
#
# Control channel: a unix socket (outside the mount); one line per connection, one JSON line back.
#   ping | stats | sync-all | cut none | cut random SEED
# After `cut` every file system call fails with EIO until the caller unmounts, and this process
# exits when the mount goes away.

import argparse
import ctypes
import ctypes.util
import errno
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import socket
import stat
import sys
import threading
import time

try:
    import fusepy  # Debian's python3-fusepy
except ImportError:  # the same library installed from PyPI is called `fuse`
    import fuse as fusepy

PAGE_BYTES = 4096
TRASH_NAME = '.powercut-trash'
DEFAULT_DIRTY_LIMIT_BYTES = 256 * 1024 * 1024
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
MNT_DETACH = 2
MISSING = object()

log = logging.getLogger('powercut_fs')


class ErrorCounter(logging.Handler):
    """Counts errors logged here or by fusepy (an exception in an operation): bugs of this helper."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record):
        self.count += 1


ERROR_COUNTER = ErrorCounter()
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def fail(code):
    raise fusepy.FuseOSError(code)


def inode_key(st):
    return (st.st_dev, st.st_ino)


def split_path(path):
    parent, _, name = path.rpartition('/')
    return (parent or '/'), name


def coin(seed, *parts):
    """A reproducible fair coin for (seed, parts), independent of the order of the questions."""
    digest = hashlib.blake2b(repr((seed,) + parts).encode(), digest_size=8).digest()
    return digest[0] & 1 == 1


def punch_backing(fd, offset, length):
    """Punches a hole in a backing file, or writes zeroes where the backing file system cannot."""
    if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    zeroes = bytes(min(length, 1024 * 1024))
    done = 0
    while done < length:
        done += os.pwrite(fd, zeroes[:length - done], offset + done)


class FileState:
    """The volatile view of one backing inode: cached pages over a valid prefix of the backing file."""
    __slots__ = ('key', 'fd', 'lock', 'pages', 'size', 'base_len', 'backing_size', 'handles', 'dirty_seq')

    def __init__(self, key, fd, backing_size):
        self.key = key
        self.fd = fd  # O_RDWR on the backing inode: works after renames and unlinks
        self.lock = threading.Lock()
        self.pages = {}  # page index -> bytearray(PAGE_BYTES), or None for a punched (zero) page
        self.size = backing_size  # the size readers see now
        self.base_len = backing_size  # backing bytes past this read as zeroes (a volatile shrink)
        self.backing_size = backing_size
        self.handles = 0
        self.dirty_seq = None  # when the file became dirty, for reproducible random cuts

    def dirty(self):
        return bool(self.pages) or self.size != self.backing_size or self.base_len != self.backing_size


class Handle:
    __slots__ = ('state', 'sync_writes')

    def __init__(self, state, sync_writes):
        self.state = state
        self.sync_writes = sync_writes


class DirOp:
    """One logged directory change. src/dst are (dir key, name); trash is a name in the trash."""
    __slots__ = ('seq', 'kind', 'src', 'dst', 'trash', 'pending', 'refs')

    def __init__(self, seq, kind, src, dst, trash):
        self.seq = seq
        self.kind = kind  # 'add' (dst appeared), 'remove' (src went to trash), 'rename' (src -> dst)
        self.src = src
        self.dst = dst
        self.trash = trash  # the removed entry, or the entry a rename replaced
        self.refs = [entry[0] for entry in (src, dst) if entry is not None]
        self.pending = set(self.refs)  # directories whose fsync this change still waits for


class DirRefs:
    """O_PATH descriptors of directories that logged changes refer to (valid across renames)."""

    def __init__(self):
        self.entries = {}  # key -> [fd, references]

    def acquire(self, real_dir):
        fd = os.open(real_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        key = inode_key(os.fstat(fd))
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = [fd, 1]
        else:
            os.close(fd)
            entry[1] += 1
        return key

    def fd(self, key):
        return self.entries[key][0]

    def release(self, key):
        entry = self.entries[key]
        entry[1] -= 1
        if entry[1] == 0:
            os.close(entry[0])
            del self.entries[key]


class PowerCutFS:
    use_ns = True
    flag_nullpath_ok = True  # with hard_remove: calls on open, unlinked files come without a path

    def __init__(self, backing, punch_hole, dirty_limit_bytes, dir_model):
        self.backing = backing
        self.dir_model = dir_model
        self.punch_hole = punch_hole
        self.dirty_limit_bytes = dirty_limit_bytes
        self.ns_lock = threading.RLock()  # namespace, state map, dir log; taken before a file lock
        self.acct_lock = threading.Lock()  # cache_bytes only
        self.cache_bytes = 0
        self.states = {}  # inode key -> FileState
        self.handles = {}  # fh -> Handle
        self.fh_counter = itertools.count(1)
        self.seq_counter = itertools.count(1)
        self.dirs = DirRefs()
        self.pending_ops = {}  # seq -> DirOp, oldest first
        self.pending_by_dir = {}  # dir key -> {seq: DirOp}
        self.powered_off = False
        self.last_cut = None
        self.totals = {'writes': 0, 'writeBytes': 0, 'syncs': 0, 'dirSyncs': 0, 'dirOps': 0, 'internalErrors': 0}
        self.trash_path = os.path.join(backing, TRASH_NAME)
        shutil.rmtree(self.trash_path, ignore_errors=True)  # left by a helper that died
        os.mkdir(self.trash_path, 0o700)
        self.trash_fd = os.open(self.trash_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.trash_counter = itertools.count(1)

    def __call__(self, op, *args):
        return getattr(self, op)(*args)

    # ---- helpers ----

    def real(self, path):
        if path == '/' + TRASH_NAME or path.startswith('/' + TRASH_NAME + '/'):
            fail(errno.ENOENT)
        return self.backing + path

    def check_on(self):
        if self.powered_off:
            fail(errno.EIO)

    def handle(self, fi):
        handle = self.handles.get(fi.fh)
        if handle is None:
            fail(errno.EBADF)
        return handle

    def reserve(self, nbytes):
        with self.acct_lock:
            if nbytes > 0 and self.cache_bytes + nbytes > self.dirty_limit_bytes:
                log.warning('dirty limit %d bytes reached: failing a write with ENOSPC', self.dirty_limit_bytes)
                fail(errno.ENOSPC)
            self.cache_bytes += nbytes

    def mark_dirty(self, state):
        if state.dirty_seq is None and state.dirty():
            state.dirty_seq = next(self.seq_counter)

    def state_for_fd(self, fd):
        """The state of the inode `fd` opened; takes ownership of fd. Caller holds ns_lock."""
        st = os.fstat(fd)
        key = inode_key(st)
        state = self.states.get(key)
        if state is not None:
            os.close(fd)
            return state
        state = FileState(key, fd, st.st_size)
        self.states[key] = state
        return state

    def forget_if_idle(self, state):
        """Drops a state nobody holds open that is clean or whose inode is gone. Caller holds ns_lock."""
        if state.handles > 0 or self.states.get(state.key) is not state:
            return
        if state.dirty() and os.fstat(state.fd).st_nlink > 0:
            return
        with state.lock:
            self.drop_pages(state)
            os.close(state.fd)
            state.fd = -1
        del self.states[state.key]

    def drop_pages(self, state):
        freed = sum(PAGE_BYTES for page in state.pages.values() if page is not None)
        state.pages.clear()
        with self.acct_lock:
            self.cache_bytes -= freed

    def new_handle(self, state, flags):
        state.handles += 1
        fh = next(self.fh_counter)
        self.handles[fh] = Handle(state, bool(flags & os.O_DSYNC))
        return fh

    # ---- file data ----

    def read_base_into(self, state, out, out_offset, start, end):
        end = min(end, state.base_len)
        if start < end:
            data = os.pread(state.fd, end - start, start)
            out[out_offset:out_offset + len(data)] = data

    def read_range(self, state, offset, length):
        end = min(offset + length, state.size)
        if offset >= end:
            return b''
        out = bytearray(end - offset)
        pages = state.pages
        index, last = offset // PAGE_BYTES, (end - 1) // PAGE_BYTES
        while index <= last:
            run_end = index
            if index not in pages:
                while run_end < last and (run_end + 1) not in pages:
                    run_end += 1
            start, stop = max(offset, index * PAGE_BYTES), min(end, (run_end + 1) * PAGE_BYTES)
            if index in pages:
                page = pages[index]
                if page is not None:
                    out[start - offset:stop - offset] = page[start - index * PAGE_BYTES:stop - index * PAGE_BYTES]
            else:
                self.read_base_into(state, out, start - offset, start, stop)
            index = run_end + 1
        return bytes(out)

    def base_page(self, state, index):
        page = bytearray(PAGE_BYTES)
        self.read_base_into(state, page, 0, index * PAGE_BYTES, (index + 1) * PAGE_BYTES)
        return page

    def write_range(self, state, offset, data):
        if not data:
            return
        end = offset + len(data)
        first, last = offset // PAGE_BYTES, (end - 1) // PAGE_BYTES
        pages = state.pages
        self.reserve(sum(PAGE_BYTES for index in range(first, last + 1) if pages.get(index) is None))
        view = memoryview(data)
        for index in range(first, last + 1):
            page_start = index * PAGE_BYTES
            start, stop = max(offset, page_start), min(end, page_start + PAGE_BYTES)
            if stop - start == PAGE_BYTES:
                pages[index] = bytearray(view[start - offset:stop - offset])
                continue
            page = pages.get(index, MISSING)
            if page is MISSING:
                page = self.base_page(state, index)
            elif page is None:
                page = bytearray(PAGE_BYTES)
            page[start - page_start:stop - page_start] = view[start - offset:stop - offset]
            pages[index] = page
        state.size = max(state.size, end)
        self.mark_dirty(state)

    def truncate_state(self, state, length):
        if length < state.size:
            freed = 0
            for index in [index for index in state.pages if index * PAGE_BYTES >= length]:
                if state.pages.pop(index) is not None:
                    freed += PAGE_BYTES
            with self.acct_lock:
                self.cache_bytes -= freed
            tail = state.pages.get(length // PAGE_BYTES)
            if tail is not None and length % PAGE_BYTES:
                tail[length % PAGE_BYTES:] = bytes(PAGE_BYTES - length % PAGE_BYTES)
            state.base_len = min(state.base_len, length)
        state.size = length
        self.mark_dirty(state)

    def punch_state(self, state, offset, length):
        end = min(offset + length, state.size)
        index = offset // PAGE_BYTES
        while index * PAGE_BYTES < end:
            page_start = index * PAGE_BYTES
            start, stop = max(offset, page_start), min(end, page_start + PAGE_BYTES)
            if stop - start == PAGE_BYTES:
                if state.pages.get(index) is not None:
                    with self.acct_lock:
                        self.cache_bytes -= PAGE_BYTES
                state.pages[index] = None
            else:
                self.write_range(state, start, bytes(stop - start))
            index += 1
        self.mark_dirty(state)

    def write_back(self, state, keep_page, keep_size):
        """Writes the surviving part of a file's cache to its backing file (caller holds state.lock)."""
        target_size = state.size if keep_size else state.backing_size
        if keep_size and state.base_len < state.backing_size:
            os.ftruncate(state.fd, state.base_len)
        run_start, run = None, []
        for index in sorted(state.pages) + [None]:
            page = state.pages.get(index) if index is not None else None
            writable = index is not None and keep_page(index) and index * PAGE_BYTES < target_size
            if run and (not writable or index != run_start + len(run) or (page is None) != (run[0] is None)):
                self.write_run(state.fd, run_start, run, target_size)
                run_start, run = None, []
            if writable:
                if not run:
                    run_start = index
                run.append(page)
        if os.fstat(state.fd).st_size != target_size:
            os.ftruncate(state.fd, target_size)

    def write_run(self, fd, first_index, run, target_size):
        start = first_index * PAGE_BYTES
        stop = min(target_size, (first_index + len(run)) * PAGE_BYTES)
        if run[0] is None:
            punch_backing(fd, start, stop - start)
        else:
            os.pwrite(fd, b''.join(run)[:stop - start], start)

    def sync_state(self, state, datasync):
        """fsync: the whole cache of the file goes to the backing file (caller holds state.lock)."""
        self.totals['syncs'] += 1
        if state.dirty():
            self.write_back(state, lambda index: True, True)
            self.drop_pages(state)
            state.size = state.base_len = state.backing_size = os.fstat(state.fd).st_size
            state.dirty_seq = None
        if datasync:
            os.fdatasync(state.fd)
        else:
            os.fsync(state.fd)

    # ---- file operations ----

    def getattr(self, path, fi=None):
        self.check_on()
        if fi:
            state = self.handle(fi).state
            st = os.fstat(state.fd)
        else:
            st = os.lstat(self.real(path))
            state = self.states.get(inode_key(st)) if stat.S_ISREG(st.st_mode) else None
        attrs = {key: getattr(st, key) for key in (
            'st_mode', 'st_ino', 'st_nlink', 'st_uid', 'st_gid', 'st_size', 'st_blocks', 'st_blksize', 'st_rdev')}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        if state is not None:
            attrs['st_size'] = state.size
            attrs['st_blocks'] = max(st.st_blocks, (state.size + 511) // 512) if state.size > st.st_size else st.st_blocks
        return attrs

    def open(self, path, fi):
        with self.ns_lock:
            self.check_on()
            state = self.state_for_fd(os.open(self.real(path), os.O_RDWR | os.O_CLOEXEC))
            fi.fh = self.new_handle(state, fi.flags)
        return 0

    def create(self, path, mode, fi):
        with self.ns_lock:
            self.check_on()
            parent, name = split_path(path)
            dir_key = self.dirs.acquire(self.real(parent))
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=self.dirs.fd(dir_key))
            except BaseException:
                self.dirs.release(dir_key)
                raise
            self.log_op('add', None, (dir_key, name), None)
            state = self.state_for_fd(fd)
            fi.fh = self.new_handle(state, fi.flags)
        return 0

    def read(self, path, size, offset, fi):
        state = self.handle(fi).state
        with state.lock:
            self.check_on()
            return self.read_range(state, offset, size)

    def write(self, path, data, offset, fi):
        handle = self.handle(fi)
        state = handle.state
        with state.lock:
            self.check_on()
            self.write_range(state, offset, data)
            self.totals['writes'] += 1
            self.totals['writeBytes'] += len(data)
            if handle.sync_writes:
                self.sync_state(state, True)
        if handle.sync_writes:
            self.journal_commit()
        return len(data)

    def truncate(self, path, length, fi=None):
        if fi:
            state = self.handle(fi).state
            with state.lock:
                self.check_on()
                self.truncate_state(state, length)
            return 0
        with self.ns_lock:  # held throughout: a state without handles could be forgotten meanwhile
            self.check_on()
            state = self.state_for_fd(os.open(self.real(path), os.O_RDWR | os.O_CLOEXEC))
            with state.lock:
                self.truncate_state(state, length)
            self.forget_if_idle(state)  # only if the size did not change
        return 0

    def fallocate(self, path, mode, offset, length, fi):
        state = self.handle(fi).state
        with state.lock:
            self.check_on()
            if mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE and self.punch_hole:
                self.punch_state(state, offset, length)
            elif mode == 0:
                if offset + length > state.size:
                    self.truncate_state(state, offset + length)
            elif mode != FALLOC_FL_KEEP_SIZE:
                fail(errno.EOPNOTSUPP)
        return 0

    def fsync(self, path, datasync, fi):
        state = self.handle(fi).state
        with state.lock:
            self.check_on()
            self.sync_state(state, bool(datasync))
        self.journal_commit()
        return 0

    def release(self, path, fi):
        with self.ns_lock:
            handle = self.handles.pop(fi.fh, None)
            if handle is not None:
                handle.state.handles -= 1
                if not self.powered_off:
                    self.forget_if_idle(handle.state)
        return 0

    def statfs(self, path):
        st = os.statvfs(self.backing)
        return {key: getattr(st, key) for key in (
            'f_bsize', 'f_frsize', 'f_blocks', 'f_bfree', 'f_bavail', 'f_files', 'f_ffree', 'f_favail', 'f_namemax')}

    # ---- metadata, applied at once ----

    def readlink(self, path):
        self.check_on()
        return os.readlink(self.real(path))

    def chmod(self, path, mode):
        self.check_on()
        if not stat.S_ISLNK(os.lstat(self.real(path)).st_mode):
            os.chmod(self.real(path), mode)
        return 0

    def chown(self, path, uid, gid):
        self.check_on()
        os.lchown(self.real(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        self.check_on()
        if times is None:
            os.utime(self.real(path), follow_symlinks=False)
        else:
            os.utime(self.real(path), ns=times, follow_symlinks=False)
        return 0

    def access(self, path, amode):
        self.check_on()
        os.lstat(self.real(path))
        return 0

    def opendir(self, path):
        self.check_on()
        return 0

    def releasedir(self, path, fh):
        return 0

    def readdir(self, path, fh):
        self.check_on()
        names = os.listdir(self.real(path))
        if path == '/':
            names = [name for name in names if name != TRASH_NAME]
        return ['.', '..'] + names

    # ---- directory changes, logged ----

    def log_op(self, kind, src, dst, trash):
        """Records an applied change; the dir keys in src/dst carry one DirRefs reference each."""
        op = DirOp(next(self.seq_counter), kind, src, dst, trash)
        self.pending_ops[op.seq] = op
        for key in op.pending:
            self.pending_by_dir.setdefault(key, {})[op.seq] = op
        self.totals['dirOps'] += 1

    def new_entry(self, path, make):
        with self.ns_lock:
            self.check_on()
            parent, name = split_path(path)
            dir_key = self.dirs.acquire(self.real(parent))
            try:
                make(name, self.dirs.fd(dir_key))
            except BaseException:
                self.dirs.release(dir_key)
                raise
            self.log_op('add', None, (dir_key, name), None)
        return 0

    def mkdir(self, path, mode):
        return self.new_entry(path, lambda name, dir_fd: os.mkdir(name, mode, dir_fd=dir_fd))

    def mknod(self, path, mode, dev):
        return self.new_entry(path, lambda name, dir_fd: os.mknod(name, mode, dev, dir_fd=dir_fd))

    def symlink(self, path, target):
        return self.new_entry(path, lambda name, dir_fd: os.symlink(target, name, dir_fd=dir_fd))

    def link(self, path, source):
        source_real = self.real(source)
        return self.new_entry(path, lambda name, dir_fd: os.link(source_real, name, dst_dir_fd=dir_fd, follow_symlinks=False))

    def to_trash(self, dir_fd, name):
        trash = str(next(self.trash_counter))
        os.rename(name, trash, src_dir_fd=dir_fd, dst_dir_fd=self.trash_fd)
        return trash

    def remove_entry(self, path, want_dir):
        with self.ns_lock:
            self.check_on()
            st = os.lstat(self.real(path))
            if want_dir and not stat.S_ISDIR(st.st_mode):
                fail(errno.ENOTDIR)
            if not want_dir and stat.S_ISDIR(st.st_mode):
                fail(errno.EISDIR)
            if want_dir and os.listdir(self.real(path)):
                fail(errno.ENOTEMPTY)
            parent, name = split_path(path)
            dir_key = self.dirs.acquire(self.real(parent))
            try:
                trash = self.to_trash(self.dirs.fd(dir_key), name)
            except BaseException:
                self.dirs.release(dir_key)
                raise
            self.log_op('remove', (dir_key, name), None, trash)
        return 0

    def unlink(self, path):
        return self.remove_entry(path, False)

    def rmdir(self, path):
        return self.remove_entry(path, True)

    def rename(self, old, new):
        with self.ns_lock:
            self.check_on()
            old_st = os.lstat(self.real(old))
            try:
                new_st = os.lstat(self.real(new))
            except FileNotFoundError:
                new_st = None
            if new_st is not None:
                if inode_key(new_st) == inode_key(old_st):
                    return 0  # two names of one inode: POSIX says do nothing
                check_replace(old_st, new_st, self.real(new))
            return self.rename_logged(old, new, new_st is not None)

    def rename_logged(self, old, new, replaces):
        (old_parent, old_name), (new_parent, new_name) = split_path(old), split_path(new)
        src_key = self.dirs.acquire(self.real(old_parent))
        dst_key = self.dirs.acquire(self.real(new_parent))
        src_fd, dst_fd = self.dirs.fd(src_key), self.dirs.fd(dst_key)
        trash = None
        try:
            if replaces:
                trash = self.to_trash(dst_fd, new_name)
            try:
                os.rename(old_name, new_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except BaseException:
                if trash is not None:
                    os.rename(trash, new_name, src_dir_fd=self.trash_fd, dst_dir_fd=dst_fd)
                raise
        except BaseException:
            self.dirs.release(src_key)
            self.dirs.release(dst_key)
            raise
        self.log_op('rename', (src_key, old_name), (dst_key, new_name), trash)
        return 0

    def fsyncdir(self, path, datasync, fh):
        if path is None:
            return 0  # a removed directory: nothing left to commit
        with self.ns_lock:
            self.check_on()
            fd = os.open(self.real(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self.commit_dir(inode_key(os.fstat(fd)))
                os.fsync(fd)
            finally:
                os.close(fd)
            self.totals['dirSyncs'] += 1
        return 0

    def commit_dir(self, key):
        removed = False
        for op in self.pending_by_dir.pop(key, {}).values():
            op.pending.discard(key)
            if not op.pending:
                removed = self.finish_op(op) or removed
        if removed:
            for state in list(self.states.values()):
                self.forget_if_idle(state)

    def commit_all(self):
        """Every pending directory change becomes durable. Caller holds ns_lock."""
        removed = False
        for op in list(self.pending_ops.values()):
            removed = self.finish_op(op) or removed
        self.pending_by_dir.clear()
        if removed:
            for state in list(self.states.values()):
                self.forget_if_idle(state)

    def journal_commit(self):
        """--dir-model journal: a file fsync commits the whole journal, directory changes included."""
        if self.dir_model == 'journal':
            with self.ns_lock:
                self.check_on()
                self.commit_all()

    def finish_op(self, op):
        """A committed (or kept) change: its trash entry is gone for good. True if one was deleted."""
        del self.pending_ops[op.seq]
        for key in op.refs:
            self.dirs.release(key)
        if op.trash is None:
            return False
        path = os.path.join(self.trash_path, op.trash)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
        return True

    def undo_op(self, op):
        fd = self.dirs.fd
        if op.kind == 'add':
            self.to_trash(fd(op.dst[0]), op.dst[1])
        elif op.kind == 'remove':
            os.rename(op.trash, op.src[1], src_dir_fd=self.trash_fd, dst_dir_fd=fd(op.src[0]))
        else:
            os.rename(op.dst[1], op.src[1], src_dir_fd=fd(op.dst[0]), dst_dir_fd=fd(op.src[0]))
            if op.trash is not None:
                os.rename(op.trash, op.dst[1], src_dir_fd=self.trash_fd, dst_dir_fd=fd(op.dst[0]))

    def sync_backing(self):
        """syncfs of the backing file system (directory entries, trash removals)."""
        fd = os.open(self.backing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            libc.syncfs(fd)
        finally:
            os.close(fd)

    # ---- init / teardown ----

    def init(self, path):
        sys.stdout.write(json.dumps({'event': 'ready', 'pid': os.getpid()}) + '\n')
        sys.stdout.flush()

    def destroy(self, path):
        """A clean unmount: everything becomes durable and the trash goes."""
        if not self.powered_off:
            self.sync_all()
            shutil.rmtree(self.trash_path, ignore_errors=True)

    # ---- control commands ----

    def lock_all(self):
        """Takes every file lock (caller holds ns_lock), so no read or write is half done."""
        states = list(self.states.values())
        for state in states:
            state.lock.acquire()
        return states

    def stats(self):
        self.totals['internalErrors'] = ERROR_COUNTER.count
        with self.ns_lock:
            dirty = [state for state in self.states.values() if state.dirty()]
            pages = sum(len(state.pages) for state in dirty)
            return {
                'dirtyFiles': len(dirty), 'dirtyPages': pages, 'dirtyBytes': pages * PAGE_BYTES,
                'cacheBytes': self.cache_bytes, 'dirtyLimitBytes': self.dirty_limit_bytes,
                'pendingDirOps': len(self.pending_ops), 'poweredOff': self.powered_off,
                'totals': dict(self.totals), 'lastCut': self.last_cut,
            }

    def sync_all(self):
        with self.ns_lock:
            self.check_on()
            states = self.lock_all()
            try:
                for state in states:
                    self.sync_state(state, False)
            finally:
                for state in states:
                    state.lock.release()
            self.commit_all()
            for state in states:
                self.forget_if_idle(state)
            self.sync_backing()
        return self.stats()

    def cut(self, mode, seed):
        with self.ns_lock:
            self.check_on()
            self.powered_off = True  # from here on every call fails with EIO
            states = self.lock_all()
            try:
                return self.cut_locked(states, mode, seed)
            finally:
                for state in states:
                    state.lock.release()

    def cut_locked(self, states, mode, seed):
        result = {'mode': mode, 'droppedPages': 0, 'keptPages': 0, 'droppedSizeChanges': 0,
                  'keptSizeChanges': 0, 'undoneDirOps': 0, 'keptDirOps': 0, 'undoFailures': []}
        if seed is not None:
            result['seed'] = seed
        dirty = sorted((state for state in states if state.dirty()), key=lambda state: state.dirty_seq or 0)
        for state in dirty:
            self.cut_file(state, mode, seed, result)
        self.cut_dirs(mode, seed, result)
        result['droppedBytes'] = result['droppedPages'] * PAGE_BYTES
        result['keptBytes'] = result['keptPages'] * PAGE_BYTES
        shutil.rmtree(self.trash_path, ignore_errors=True)
        self.sync_backing()
        result['internalErrors'] = ERROR_COUNTER.count
        self.last_cut = result
        log.warning('power cut (%s): %s', mode, json.dumps(result))
        return result

    def cut_file(self, state, mode, seed, result):
        if mode == 'none':
            kept = set()
            keep_size = False
        else:
            keep_size = coin(seed, state.dirty_seq, 'size')
            target_size = state.size if keep_size else state.backing_size
            kept = {index for index in state.pages
                    if index * PAGE_BYTES < target_size and coin(seed, state.dirty_seq, index)}
        result['keptPages'] += len(kept)
        result['droppedPages'] += len(state.pages) - len(kept)
        if state.size != state.backing_size or state.base_len != state.backing_size:
            result['keptSizeChanges' if keep_size else 'droppedSizeChanges'] += 1
        if kept or keep_size:
            self.write_back(state, lambda index: index in kept, keep_size)
            os.fsync(state.fd)

    def cut_dirs(self, mode, seed, result):
        ops = list(self.pending_ops.values())
        keep = 0 if mode == 'none' else random.Random(seed).randint(0, len(ops))
        for op in reversed(ops[keep:]):
            try:
                self.undo_op(op)
            except OSError as error:
                result['undoFailures'].append('%s #%d: %s' % (op.kind, op.seq, error))
        result['undoneDirOps'] = len(ops) - keep
        result['keptDirOps'] = keep


def check_replace(old_st, new_st, new_real):
    """The errors rename(2) gives before it would replace `new`, checked before we move it away."""
    old_dir, new_dir = stat.S_ISDIR(old_st.st_mode), stat.S_ISDIR(new_st.st_mode)
    if old_dir and not new_dir:
        fail(errno.ENOTDIR)
    if new_dir and not old_dir:
        fail(errno.EISDIR)
    if new_dir and os.listdir(new_real):
        fail(errno.ENOTEMPTY)


class FuseOperationsWithFallocate(ctypes.Structure):
    """fusepy 3.0.1 stops at ioctl; libfuse 2.9's struct goes on to fallocate."""
    _fields_ = fusepy.fuse_operations._fields_ + [
        ('poll', ctypes.c_voidp),
        ('write_buf', ctypes.c_voidp),
        ('read_buf', ctypes.c_voidp),
        ('flock', ctypes.c_voidp),
        ('fallocate', ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_char_p, ctypes.c_int, fusepy.c_off_t, fusepy.c_off_t,
            ctypes.POINTER(fusepy.fuse_file_info))),
    ]


class PowerCutFUSE(fusepy.FUSE):
    def fallocate(self, path, mode, offset, length, fip):
        return self.operations('fallocate', self._decode_optional_path(path), mode, offset, length, fip.contents)


def serve_control(fs, control_path):
    """One command per connection on a unix socket; replies with one JSON line."""
    if os.path.exists(control_path):
        os.unlink(control_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control_path)
    server.listen(8)

    def answer(connection):
        with connection:
            line = connection.makefile('r').readline().strip()
            try:
                reply = run_command(fs, line.split())
            except Exception as error:  # the caller gets it as an error reply
                log.exception('control command %r failed', line)
                reply = {'error': '%s: %s' % (type(error).__name__, error)}
            connection.sendall((json.dumps(reply) + '\n').encode())

    def loop():
        while True:
            connection, _ = server.accept()
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def remove_control(control_path):
    """The socket, and its folder if that is now empty (power_cut.ts makes one per mount)."""
    for remove, path in ((os.unlink, control_path), (os.rmdir, os.path.dirname(control_path))):
        try:
            remove(path)
        except OSError:
            pass


def watch_parent(parent_pid, mount, control_path):
    """A test runner that died leaves no mount behind: unmount lazily when our parent is gone."""
    def loop():
        while os.getppid() == parent_pid:
            time.sleep(1)
        log.warning('parent process %d is gone: unmounting %s', parent_pid, mount)
        libc.umount2(mount.encode(), MNT_DETACH)
        time.sleep(10)
        remove_control(control_path)
        os._exit(1)  # someone still holds files on the detached mount: they get ENOTCONN

    threading.Thread(target=loop, daemon=True).start()


def run_command(fs, words):
    if words == ['ping']:
        return {'ok': True}
    if words == ['stats']:
        return fs.stats()
    if words == ['sync-all']:
        return fs.sync_all()
    if words == ['cut', 'none']:
        return fs.cut('none', None)
    if len(words) == 3 and words[:2] == ['cut', 'random']:
        return fs.cut('random', int(words[2]))
    return {'error': 'unknown command %r (ping, stats, sync-all, cut none, cut random SEED)' % ' '.join(words)}


def main():
    parser = argparse.ArgumentParser(description='FUSE pass-through that loses unsynced writes at a power cut')
    parser.add_argument('--backing', required=True)
    parser.add_argument('--mount', required=True)
    parser.add_argument('--control', required=True,
                        help='unix socket path outside the mount, in a folder of its own (removed at exit if empty)')
    parser.add_argument('--punch-hole', action='store_true', help='support fallocate(PUNCH_HOLE)')
    parser.add_argument('--dirty-limit-bytes', type=int, default=DEFAULT_DIRTY_LIMIT_BYTES)
    parser.add_argument('--dir-model', choices=('posix', 'journal'), default='posix',
                        help='posix: only a directory fsync commits its entries; journal: any fsync commits all')
    parser.add_argument('--parent-pid', type=int, help='unmount and exit when this process is gone')
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format='powercut_fs: %(message)s')
    logging.getLogger().addHandler(ERROR_COUNTER)
    os.umask(0)  # the kernel already applied the caller's umask to the modes we get
    fs = PowerCutFS(os.path.realpath(args.backing), args.punch_hole, args.dirty_limit_bytes, args.dir_model)
    serve_control(fs, args.control)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, os.path.realpath(args.mount), args.control)
    fusepy.fuse_operations = FuseOperationsWithFallocate
    # No writeback cache (libfuse 2 has none), no direct_io: every write reaches us, and mmap
    # (LMDB) works. hard_remove: an unlinked open file is not renamed to .fuse_hidden*.
    try:
        PowerCutFUSE(fs, args.mount, foreground=True, raw_fi=True, fsname='powercut', subtype='powercut',
                     default_permissions=True, hard_remove=True, big_writes=True, max_write=131072)
    finally:
        remove_control(args.control)


if __name__ == '__main__':
    main()
