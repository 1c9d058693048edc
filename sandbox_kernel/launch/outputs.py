"""Copying a kernel's results out of its scratch dir: the only way files leave a sandbox.

Code in the kernel writes results under ``/scratch/<outputs dir>`` (policy
``filesystem.outputs``); the supervisor copies them to where the user looks (the notebook's
``outputs/`` under Jupyter, ``<output-dir>/<notebook>_files/`` for ``sandbox-kernel run``).
The sandbox never gets a writable bind of a host directory.

Everything under the scratch dir is the kernel's, so hostile, and the supervisor is usually
root. Hence:

- the source is read through the session holder's mount namespace
  (``/proc/<holder>/root/<scratch>``), one component at a time with ``O_NOFOLLOW``: a link
  anywhere (``outputs -> /etc/shadow``) is refused, never read through; only regular files
  are copied (no links, FIFOs, sockets or devices), each opened ``O_NONBLOCK`` and checked
  again with ``fstat``;
- sizes are bounded while reading (a file growing during the copy is cut off and refused),
  and so are the number of files, the total bytes, the entries scanned and the depth;
- names are sanitised: a dotfile, a name that is not printable UTF-8 or too long is refused;
- the destination is opened with :class:`~sandbox_kernel.launch.results.ResultDir` (no link
  followed, owned by the supervisor) and each file written under a temporary name with
  ``O_NOFOLLOW`` and renamed over its final name, so a planted ``outputs -> /etc`` in the
  notebook's directory makes root write nowhere.

Unchanged files (same size and mtime as when last copied) are not copied again, so collecting
after every cell costs a directory scan.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from ..policy import OutputsPolicy
from .results import ResultDir, UnsafeResultPath

__all__ = ["OutputCollector", "MAX_SCANNED", "MAX_DEPTH"]

MAX_SCANNED = 10000  # directory entries looked at per collection
MAX_DEPTH = 8
_CHUNK = 1 << 20
MAX_REPORTED = 50  # names listed in a report (the counts are always complete)


@dataclass
class _Pass:
    copied: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    scanned: int = 0

    def refuse(self, name: str, reason: str) -> None:
        self.refused.append({"path": name, "reason": reason})


class OutputCollector:
    """Copies ``<scratch>/<policy.dir>`` out to ``dest`` (a host directory, made if missing).
    ``source_root``: the host path at which the scratch dir is reachable, e.g.
    ``/proc/<holder pid>/root/<scratch source>``; everything below it is untrusted."""

    def __init__(self, source_root: str, dest: str, policy: OutputsPolicy):
        self.source_root, self.dest, self.policy = source_root, dest, policy
        self._seen: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last copied
        self.files = 0  # copied so far (against max_files), by this collector
        self.bytes = 0  # copied so far (against max_total_bytes)
        self._noted: set[tuple[str, str]] = set()  # refusals already reported (each is said once)

    def collect(self) -> dict:
        """Copy what is new or changed; return what was copied and refused (for the report)."""
        run = _Pass()
        try:
            root = os.open(self.source_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return self._summary(run, note=f"the scratch dir is gone ({e.strerror}); nothing copied")
        try:
            src = _open_dir(root, self.policy.dir)
        except FileNotFoundError:
            return self._summary(run)
        except UnsafeResultPath as e:
            run.refuse(self.policy.dir, str(e))
            return self._summary(run)
        finally:
            os.close(root)
        try:
            self._walk(src, "", 1, run)
        finally:
            os.close(src)
        return self._summary(run)

    def _summary(self, run: _Pass, note: str | None = None) -> dict:
        new = [r for r in run.refused if (r["path"], r["reason"]) not in self._noted]
        self._noted.update((r["path"], r["reason"]) for r in new)
        run.refused = new
        out = {"dest": self.dest, "copied": run.copied[:MAX_REPORTED], "copied_count": len(run.copied),
               "refused": run.refused[:MAX_REPORTED], "refused_count": len(run.refused),
               "limits": {"max_files": self.policy.max_files, "max_file_bytes": self.policy.max_file_bytes,
                          "max_total_bytes": self.policy.max_total_bytes}}
        if note:
            out["note"] = note
        return out

    def _walk(self, dir_fd: int, rel: str, depth: int, run: _Pass) -> None:
        """Copy the files of one directory (its destination opened on the first file)."""
        holder: list[ResultDir] = []
        try:
            self._walk_entries(dir_fd, rel, depth, run, holder)
        finally:
            for dest in holder:
                dest.close()

    def _walk_entries(self, dir_fd: int, rel: str, depth: int, run: _Pass, holder: list[ResultDir]) -> None:
        try:
            names = sorted(os.listdir(dir_fd))
        except OSError as e:
            run.refuse(rel or ".", f"cannot list: {e.strerror}")
            return
        for raw in names:
            run.scanned += 1
            if run.scanned > MAX_SCANNED:
                run.refuse(rel or ".", f"more than {MAX_SCANNED} entries; the rest were not looked at")
                return
            path = f"{rel}/{raw}" if rel else raw
            problem = _name_problem(raw)
            if problem:
                run.refuse(path, problem)
                continue
            try:
                st = os.stat(raw, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                run.refuse(path, f"cannot stat: {e.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth >= MAX_DEPTH:
                    run.refuse(path, f"deeper than {MAX_DEPTH} directories; not copied")
                    continue
                try:
                    sub = _open_dir(dir_fd, raw)
                except (UnsafeResultPath, OSError) as e:
                    run.refuse(path, str(e))
                    continue
                try:
                    self._walk(sub, path, depth + 1, run)
                finally:
                    os.close(sub)
            elif not stat.S_ISREG(st.st_mode):
                run.refuse(path, f"not a regular file ({_kind(st.st_mode)}); only regular files are copied")
            elif self._seen.get(path) == (st.st_size, st.st_mtime_ns):
                continue
            else:
                if not holder:
                    try:
                        holder.append(ResultDir.open(os.path.join(self.dest, rel) if rel else self.dest))
                    except UnsafeResultPath as e:
                        run.refuse(path, f"destination refused: {e}")
                        continue
                self._copy(dir_fd, raw, path, st, holder[0], run)

    def _copy(self, dir_fd: int, name: str, path: str, st: os.stat_result, dest: ResultDir, run: _Pass) -> None:
        policy = self.policy
        if self.files >= policy.max_files:
            run.refuse(path, f"over the cap of {policy.max_files} files (filesystem.outputs.max_files)")
            return
        if st.st_size > policy.max_file_bytes:
            run.refuse(path, f"{st.st_size} bytes, over the cap of {policy.max_file_bytes} "
                             "(filesystem.outputs.max_file_bytes); not copied")
            return
        room = min(policy.max_file_bytes, policy.max_total_bytes - self.bytes)
        if st.st_size > room:
            run.refuse(path, f"{st.st_size} bytes, over what is left of filesystem.outputs.max_total_bytes "
                             f"({policy.max_total_bytes - self.bytes} bytes); not copied")
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as e:
            run.refuse(path, "a symbolic link; not copied" if e.errno == errno.ELOOP else f"cannot open: {e.strerror}")
            return
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode):  # swapped since the stat
                run.refuse(path, "not a regular file; not copied")
                return
            written = 0
            try:
                with dest.create(name, binary=True) as out:
                    while chunk := os.read(fd, min(_CHUNK, room + 1 - written)):
                        written += len(chunk)
                        if written > room:
                            raise _TooBig
                        out.write(chunk)
            except _TooBig:
                run.refuse(path, f"grew past {room} bytes while being copied; not copied")
                return
            except (UnsafeResultPath, OSError) as e:
                run.refuse(path, f"not written: {e}")
                return
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += written
        self._seen[path] = (now.st_size, now.st_mtime_ns)
        run.copied.append(path)


class _TooBig(Exception):
    pass


def _open_dir(dir_fd: int, name: str) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            raise UnsafeResultPath(f"{name} is {_kind(st.st_mode)}, not a directory; nothing under it is copied") from None
        raise


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "a special file")


def _name_problem(name: str) -> str | None:
    """Why a name is not copied as is (None: fine). Names are refused, never rewritten: two
    rewritten names could collide."""
    if name.startswith("."):
        return "a dotfile; not copied"
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        return "name longer than 200 bytes; not copied"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not UTF-8; not copied"
    if not name.isprintable() or "\\" in name:
        return "name holds control or unprintable characters; not copied"
    return None
