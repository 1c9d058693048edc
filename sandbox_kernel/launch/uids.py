"""One transient uid per kernel (or per run) under a root supervisor, like a dynamic user.

A uid is *leased* from the operator's range: the lease is an exclusive ``flock`` on a file
named after the uid in a root-owned 0700 directory shared by every supervisor on the host, so
two supervisors never hand out the same uid, and a lease dies with its holder (the kernel
drops a flock when the last descriptor of it closes: the supervisor's, and the janitor's,
which keeps it until the cleanup of a crashed supervisor is done).

A uid is never handed out while anything of it remains: a process that has it as real,
effective or saved uid or gid (from /proc, non-dumpable ones too), a file it owns near the top
of the world-writable temp dirs (what a kernel under ``filesystem: off`` may leave), an entry
in the user or group database. Releasing kills whatever still runs as the uid (it was
exclusively ours), then removes the lease file while still holding the lock.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import random
import signal
import stat
import time
from dataclasses import dataclass, field

from ..errors import UidLeaseError

LEASE_DIR = "/run/sandbox-kernel/uids"
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
MAX_TEMP_ENTRIES = 20000  # bound on the temp-dir scan
RESERVED_UIDS = (65534, 65535)  # nobody, and (uint16) -1
KILL_SETTLE = 2.0


@dataclass
class UidLease:
    uid: int
    gid: int
    fd: int  # holds the flock; inheritable copies (the janitor's) keep it alive
    path: str
    _dir_fd: int = field(repr=False, default=-1)
    released: bool = False

    def release(self, *, janitor_keeps: bool = False) -> None:
        """Kill what still runs as the uid, then give the uid back. Idempotent.
        ``janitor_keeps``: a janitor holding a copy of the lock still has cleanup to do: the
        lease file stays for it to remove (while it still holds the lock) when it is done."""
        if self.released:
            return
        self.released = True
        try:
            kill_processes_of(self.uid, self.gid)
            if not janitor_keeps:
                try:
                    os.unlink(os.path.basename(self.path), dir_fd=self._dir_fd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(self.fd)
            os.close(self._dir_fd)


def _ids(status: bytes, key: bytes) -> set[int]:
    at = status.find(key)
    return set(map(int, status[at + len(key):status.find(b"\n", at + 1)].split())) if at >= 0 else set()


def processes_of(uids: set[int] | None = None) -> dict[int, set[int]]:
    """pid -> every uid and gid it holds (real, effective, saved, fs), for all live processes,
    or for those holding one of ``uids``. From /proc/PID/status: a non-dumpable process shows
    /proc/PID as root's, but its status still tells the truth. Zombies are skipped: they hold
    nothing and can do nothing, and only their parent can make them go. (Raw reads: this runs
    at every lease and release, and text-mode line iteration doubles its cost.)"""
    found: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{entry}/status", os.O_RDONLY | os.O_CLOEXEC)
            try:
                status = os.read(fd, 8192)
            finally:
                os.close(fd)
        except OSError:
            continue
        state = status.find(b"\nState:\t")
        if state < 0 or status[state + 8:state + 9] in (b"Z", b"X"):
            continue
        ids = _ids(status, b"\nUid:") | _ids(status, b"\nGid:")
        if uids is None or ids & uids:
            found[int(entry)] = ids
    return found


def kill_processes_of(uid: int, gid: int, settle: float = KILL_SETTLE) -> int:
    """SIGKILL every process holding ``uid`` or ``gid`` until none is left (a fork loop may
    add some while we kill). Returns how many were killed."""
    killed, deadline = 0, time.monotonic() + settle
    while (pids := processes_of({uid, gid})) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return killed


def owners_in_temp_dirs(roots: tuple[str, ...] = TEMP_DIRS, limit: int = MAX_TEMP_ENTRIES) -> set[int]:
    """uids and gids owning an entry at the top of each temp dir, or inside a world-writable
    dir there (/tmp/.X11-unix, shared drop dirs). Bounded to ``limit`` entries."""
    owners: set[int] = set()
    seen = 0
    for root in roots:
        todo = [(root, True)]
        while todo and seen < limit:
            path, descend = todo.pop()
            try:
                with os.scandir(path) as entries:
                    for e in entries:
                        seen += 1
                        if seen >= limit:
                            break
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        owners.update((st.st_uid, st.st_gid))
                        if descend and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH:
                            todo.append((e.path, False))
            except OSError:
                continue
    return owners


def _in_databases(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _open_lease_dir(lease_dir: str) -> int:
    """The lease dir, created if needed: root-owned, 0700, not a symlink (anything else means
    someone else controls the leases, and we refuse)."""
    parent = os.path.dirname(lease_dir)
    for d in (parent, lease_dir):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            raise UidLeaseError(f"{d} must be a directory owned by root with mode 0700 "
                                f"(it is uid {st.st_uid}, mode {stat.filemode(st.st_mode)})")
    return os.open(lease_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _try_lock(dir_fd: int, name: str) -> int | None:
    """An fd holding the exclusive lock on ``name``, or None if someone else holds it."""
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        # The previous holder unlinks the file before unlocking it: if that happened between
        # our open and our lock, we hold a lock on a name nobody sees any more. Retry.
        try:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _sweep(dir_fd: int) -> None:
    """Remove lease files nobody holds (left when a supervisor and its janitor were both
    killed): the same lock-then-check-inode dance as taking a lease, so a holder racing us
    just retries with a fresh file."""
    for name in os.listdir(dir_fd):
        try:
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass  # held: a live lease
        finally:
            os.close(fd)


def lease_uid(first: int, last: int, *, lease_dir: str = LEASE_DIR) -> UidLease:
    """Lease a free uid (gid = uid) from ``first..last``. Raises :class:`UidLeaseError`."""
    if os.geteuid() != 0:
        raise UidLeaseError("only a root supervisor can switch to a leased uid")
    dir_fd = _open_lease_dir(lease_dir)
    try:
        _sweep(dir_fd)
        busy = set(RESERVED_UIDS) | {i for ids in processes_of().values() for i in ids} | owners_in_temp_dirs()
        count = last - first + 1
        start = random.randrange(count)  # spread leases: a released uid is rarely the next one
        for i in range(count):
            uid = first + (start + i) % count
            if uid in busy or _in_databases(uid):
                continue
            fd = _try_lock(dir_fd, str(uid))
            if fd is not None:
                return UidLease(uid, uid, fd, os.path.join(lease_dir, str(uid)), dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    os.close(dir_fd)
    raise UidLeaseError(f"no free uid in {first}-{last}: each is leased by a supervisor, still used by a "
                        f"process or a file in {', '.join(TEMP_DIRS)}, or a user/group on this host")
