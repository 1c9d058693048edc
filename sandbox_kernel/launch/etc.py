"""The sandbox's /etc as two read-only directories the supervisor prepares once and its runs
share, each bound by bwrap in one mount, instead of a bind per curated host entry and per
staged file (the plan's ``ETC_PLACEHOLDER`` and ``STAGED_PLACEHOLDER``).

The prepared /etc holds copies of the host /etc entries the plan names (``Plan.etc_entries``:
regular files, directories and symlinks only, and only what every user may read, i.e. what the
sandbox could read through a bind of the host's), an empty ``STAGED_SUBDIR`` and, for each
staged file (passwd, group, hosts, ...), a symlink into it. Nothing in it is a run's own: one
per entry list (per filesystem mode), made on first use; a new kernel's uid costs no new copy.

The staged-files dir holds the plan's staged files, bound on ``STAGED_SUBDIR``: one per
content and sandbox gid (so per run_as, home and nameserver: a kernel's cells share their
kernel's). One unused for ``IDLE`` seconds is removed at the next launch.

Ownership: the supervisor's; nothing writable by group or others. The prepared /etc is
readable by all (it only holds what every user may read on the host anyway); a staged-files
dir under a root supervisor has the sandbox's gid as group and mode 0750, like the per-run
staging dir it replaces: only that sandbox (kernel) may enter it. All of them live in one
``sandbox-kernel-etc-*`` temp dir (mode 0711: no listing), removed when the supervisor exits
(atexit) or, if it dies, by a janitor started with it. Runs hold what they use until they close.

Stale host files (a CA bundle update, a package upgrade): before every use a prepared /etc is
checked against the host: (inode, mtime, ctime, size) of every top-level entry and every
directory it was copied from. Package managers and update-ca-certificates write new files and
rename them into place, which changes the directory, so the next run after such an update gets
a fresh copy. An in-place edit deep inside an entry changes no directory: a copy older than
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
from ..planner.filesystem import STAGED_SUBDIR
from .janitor import JANITOR

MAX_AGE = 300.0  # seconds a prepared /etc is reused before it is copied again
IDLE = 600.0  # seconds an unused staged-files dir is kept for the next run of its identity
MAX_ENTRIES = 10000  # bounds on what one prepared /etc may copy from the host
MAX_BYTES = 64 * 2**20
HOST_ETC = "/etc"


@dataclass
class PreparedEtc:
    path: str
    key: tuple
    made: float
    watched: tuple[tuple[str, bool], ...] = ()  # (host path, follow symlinks) whose change makes it stale
    fingerprint: tuple = ()
    users: int = 0
    last_used: float = 0.0
    retired: bool = False

    def stale(self, now: float) -> bool:
        return self.key[0] == "etc" and (now - self.made > MAX_AGE or _fingerprint(self.watched) != self.fingerprint)


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
        target = os.path.realpath(src) if top else None
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
    """A supervisor's prepared /etc and staged-files directories, by content. Thread-safe."""

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

    def acquire(self, entries: tuple[str, ...], staged: tuple[str, ...]) -> PreparedEtc:
        """The prepared /etc with copies of ``entries`` and links to the ``staged`` files,
        made or made again if need be; hold it until :meth:`release`."""
        return self._get(("etc", tuple(entries), tuple(staged)), lambda path: _fill_etc(path, entries, staged))

    def acquire_staged(self, files: dict[str, str], gid: int) -> PreparedEtc:
        """The dir holding the staged ``files`` for a sandbox of group ``gid``; hold it until
        :meth:`release`."""
        return self._get(("staged", tuple(sorted(files.items())), gid), lambda path: _fill_staged(path, files, gid))

    def release(self, copy: PreparedEtc) -> None:
        with self._lock:
            copy.users -= 1
            copy.last_used = time.monotonic()
            if copy.retired and copy.users == 0:
                shutil.rmtree(copy.path, ignore_errors=True)

    def _get(self, key: tuple, fill) -> PreparedEtc:
        now = time.monotonic()
        with self._lock:
            for old in [c for c in self._copies.values() if c.key[0] == "staged" and not c.users and now - c.last_used > IDLE]:
                self._retire(old)
            copy = self._copies.get(key)
            if copy is not None and copy.stale(now):
                self._retire(copy)
                copy = None
            if copy is None:
                copy = self._make(key, fill)
                self._copies[key] = copy
            copy.users += 1
            return copy

    def close(self) -> None:
        """Remove every prepared /etc (the supervisor is done: no run holds one)."""
        with self._lock:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None
            if self._janitor is not None:
                JANITOR.forget(self._janitor)
                self._janitor = None
            self._copies.clear()

    def _retire(self, copy: PreparedEtc) -> None:
        del self._copies[copy.key]
        copy.retired = True
        if copy.users == 0:
            shutil.rmtree(copy.path, ignore_errors=True)

    def _make(self, key: tuple, fill) -> PreparedEtc:
        if self._root is None:
            root = tempfile.mkdtemp(prefix="sandbox-kernel-etc-")
            os.chmod(root, 0o711)  # every sandbox uid enters its own dirs, none lists them
            self._janitor = JANITOR.watch(paths=[root])  # removes it if we die without close()
            self._root = root
        path = tempfile.mkdtemp(dir=self._root)
        try:
            watched = fill(path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return PreparedEtc(path, key, time.monotonic(), watched, _fingerprint(watched))


def _fill_etc(path: str, entries: tuple[str, ...], staged: tuple[str, ...]) -> tuple:
    budget = _Budget()
    for name in entries:
        _copy(os.path.join(HOST_ETC, name), os.path.join(path, name), budget, top=True)
    os.mkdir(os.path.join(path, STAGED_SUBDIR), 0o755)
    for name in staged:  # never a host entry's name (planner.filesystem)
        os.symlink(f"{STAGED_SUBDIR}/{name}", os.path.join(path, name))
    os.chmod(path, 0o755)
    return tuple(budget.watched)


def _fill_staged(path: str, files: dict[str, str], gid: int) -> tuple:
    for name, content in files.items():
        with open(os.path.join(path, name), "x") as f:
            f.write(content)
        os.chmod(os.path.join(path, name), 0o444)
    if os.geteuid() == 0:
        os.chown(path, 0, gid)  # bwrap binds it as the sandbox uid: only its group may enter
        os.chmod(path, 0o750)
    else:
        os.chmod(path, 0o700)
    return ()


CACHE = EtcCache()
atexit.register(CACHE.close)
