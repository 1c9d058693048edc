"""The prepared /etc: one read-only directory that bwrap binds over the sandbox's /etc in one
mount (the plan's ``ETC_PLACEHOLDER``), instead of a bind per curated host entry and staged file.

It holds copies of the host /etc entries the plan names (``Plan.etc_entries``: regular files,
directories and symlinks only, and only what every user may read, i.e. what the sandbox could
read through a bind of the host's) plus the plan's staged files (passwd, group, hosts, ...).
A supervisor makes one per distinct content (the entry list, the staged files, the sandbox's
gid: so per filesystem mode, run_as and nameserver) on first use and reuses it for every run
that asks for the same; runs hold it until they close.

Ownership: the supervisor's, nothing in it writable by group or others. Under a root
supervisor its group is the sandbox's gid and its mode 0750, like the staging dir: only that
sandbox (kernel) may enter it. All of them live in one ``sandbox-kernel-etc-*`` temp dir that
is removed when the supervisor exits (atexit) or, if it dies, by a janitor started with it.

Stale host files (a CA bundle update, a package upgrade): before every use a copy is checked
against the host: (inode, mtime, ctime, size) of every top-level entry and every directory it
was copied from. Package managers and update-ca-certificates write new files and rename them
into place, which changes the directory, so the next run after such an update gets a fresh
copy. An in-place edit deep inside an entry changes no directory: a copy older than
``MAX_AGE`` seconds is made again anyway. A run that holds an old copy keeps it until it closes.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ..errors import LaunchError
from ..host import SYSTEM_DIRS

MAX_AGE = 300.0  # seconds a prepared /etc is reused before it is copied again
MAX_ENTRIES = 10000  # bounds on what one prepared /etc may copy from the host
MAX_BYTES = 64 * 2**20
HOST_ETC = "/etc"


@dataclass
class PreparedEtc:
    path: str
    key: tuple
    watched: tuple[tuple[str, bool], ...]  # (host path, follow symlinks) whose change makes it stale
    fingerprint: tuple
    made: float
    users: int = 0
    retired: bool = False


@dataclass
class _Budget:
    entries: int = 0
    bytes: int = 0
    watched: list[tuple[str, bool]] = field(default_factory=list)


def _signature(path: str, follow: bool):
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


def _fingerprint(watched) -> tuple:
    return tuple(_signature(p, follow) for p, follow in watched)


def _inside_sandbox_view(target: str) -> bool:
    """Does a host path resolve under a system dir the sandbox sees as the host does?"""
    return any(target == d or target.startswith(d + "/") for d in SYSTEM_DIRS)


def _copy_file(src: str, dst: str, st: os.stat_result, budget: _Budget) -> None:
    budget.bytes += st.st_size
    if budget.bytes > MAX_BYTES:
        raise LaunchError(f"the curated /etc entries exceed {MAX_BYTES} bytes")
    # No following a symlink swapped in after the lstat, no blocking on a FIFO.
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        with open(dst, "xb") as out, open(fd, "rb", closefd=False) as f:
            shutil.copyfileobj(f, out)
    finally:
        os.close(fd)
    os.chmod(dst, 0o555 if st.st_mode & 0o111 else 0o444)


def _copy(src: str, dst: str, budget: _Budget, top: bool = False) -> None:
    budget.entries += 1
    if budget.entries > MAX_ENTRIES:
        raise LaunchError(f"the curated /etc entries hold more than {MAX_ENTRIES} files")
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return
    if top:
        budget.watched.append((src, False))
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(src)
        if not top or _inside_sandbox_view(target):
            # Resolved inside the sandbox, against its own /etc and read-only system dirs,
            # exactly as a bind of the host entry would show it.
            os.symlink(os.readlink(src), dst)
            return
        # A top-level entry pointing elsewhere (/var/lib/...): a bind followed it; so does this.
        budget.watched.append((target, True))
        try:
            st = os.stat(target)
        except OSError:
            return
        src = target
    if not st.st_mode & stat.S_IROTH:
        return  # not readable to the sandbox through a bind either (/etc/ssl/private)
    if stat.S_ISREG(st.st_mode):
        _copy_file(src, dst, st, budget)
    elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IXOTH:
        budget.watched.append((src, True))
        os.mkdir(dst, 0o755)
        for name in sorted(os.listdir(src)):
            _copy(os.path.join(src, name), os.path.join(dst, name), budget)
    # Anything else (devices, FIFOs, sockets) is left out.


class EtcCache:
    """A supervisor's prepared /etc directories, by content. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root: str | None = None
        self._janitor = None
        self._copies: dict[tuple, PreparedEtc] = {}

    @property
    def root(self) -> str | None:
        """The temp dir holding this supervisor's prepared /etc dirs, if any were made."""
        return self._root

    def in_use(self) -> int:
        """How many runs hold a prepared /etc now."""
        with self._lock:
            return sum(c.users for c in self._copies.values())

    def acquire(self, entries: tuple[str, ...], files: dict[str, str], gid: int) -> PreparedEtc:
        """The prepared /etc for this content, made or refreshed if need be; hold it until
        :meth:`release`."""
        key = (tuple(entries), tuple(sorted(files.items())), gid)
        with self._lock:
            copy = self._copies.get(key)
            if copy is not None and (time.monotonic() - copy.made > MAX_AGE
                                     or _fingerprint(copy.watched) != copy.fingerprint):
                self._retire(copy)
                copy = None
            if copy is None:
                copy = self._make(key, entries, files, gid)
                self._copies[key] = copy
            copy.users += 1
            return copy

    def release(self, copy: PreparedEtc) -> None:
        with self._lock:
            copy.users -= 1
            if copy.retired and copy.users == 0:
                shutil.rmtree(copy.path, ignore_errors=True)

    def close(self) -> None:
        """Remove every prepared /etc (the supervisor is done: no run holds one)."""
        from .process import stop_janitor

        with self._lock:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None
            if self._janitor is not None:
                stop_janitor(self._janitor)
                self._janitor = None
            self._copies.clear()

    def _retire(self, copy: PreparedEtc) -> None:
        del self._copies[copy.key]
        copy.retired = True
        if copy.users == 0:
            shutil.rmtree(copy.path, ignore_errors=True)

    def _make(self, key: tuple, entries: tuple[str, ...], files: dict[str, str], gid: int) -> PreparedEtc:
        if self._root is None:
            from .process import start_janitor

            root = tempfile.mkdtemp(prefix="sandbox-kernel-etc-")
            os.chmod(root, 0o711)  # each sandbox's group enters its own copy, lists none
            self._janitor = start_janitor([root], [])  # removes it if we die without close()
            self._root = root
        path = tempfile.mkdtemp(dir=self._root)
        try:
            budget = _Budget()
            for name in entries:
                _copy(os.path.join(HOST_ETC, name), os.path.join(path, name), budget, top=True)
            for name, content in files.items():
                target = os.path.join(path, name)
                with open(target, "x") as f:  # never a host entry's name (planner.filesystem)
                    f.write(content)
                os.chmod(target, 0o444)
            if os.geteuid() == 0:
                os.chown(path, 0, gid)
                os.chmod(path, 0o750)
            else:
                os.chmod(path, 0o700)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return PreparedEtc(path, key, tuple(budget.watched), _fingerprint(budget.watched), time.monotonic())


CACHE = EtcCache()
atexit.register(CACHE.close)
