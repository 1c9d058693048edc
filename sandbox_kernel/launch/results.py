"""Writing results without following links: the one way the batch runner writes files.

The runner usually runs as root, and it writes into directories an untrusted repository may
have shaped: ``sandbox-out/evil.ipynb -> /root/.bashrc`` would otherwise get root's shell
startup file overwritten with the executed notebook (whose outputs the notebook controls).
So a result directory is opened one component at a time without following symbolic links
(a link anywhere in the path is refused, the operator gives the real path) and must be owned
by the runner. Each file is written under a fresh temporary name (``O_CREAT|O_EXCL|O_NOFOLLOW``)
in that directory and renamed over its final name; an existing final name must be a regular
file owned by the runner, anything else is refused and left untouched.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from contextlib import contextmanager
from typing import IO, Any, Iterator

from ..errors import UntrustedInputError

__all__ = ["ResultDir", "UnsafeResultPath", "dump_json"]


class UnsafeResultPath(UntrustedInputError):
    """A result path the runner refuses to write through (a link, another owner, not a file)."""


class ResultDir:
    """A directory the runner writes results into, held open by file descriptor so nothing
    swapped into the path afterwards can redirect the writes."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = True) -> "ResultDir":
        """Open (creating missing components if ``create``) without following any link."""
        path = os.path.abspath(os.fspath(path))
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        walked = ""
        try:
            for part in [p for p in path.split("/") if p]:
                walked += "/" + part
                parent, fd = fd, -1
                fd = _enter(parent, part, walked, create)
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise UnsafeResultPath(f"{path} is owned by uid {st.st_uid}, not by this runner (uid {os.geteuid()}); "
                                       "refusing to write results into it")
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return cls(fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ResultDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def identity(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    @contextmanager
    def create(self, name: str, binary: bool = False) -> Iterator[IO]:
        """``with results.create("a.ipynb") as f: f.write(...)``: the file appears under its
        name only when the block succeeds. ``binary``: the file takes bytes."""
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise UnsafeResultPath(f"{name!r} is not a plain file name")
        self.check_replaceable(name)
        tmp = f".sandbox-kernel-{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=self.fd)
        try:
            with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
                yield f
            self.check_replaceable(name)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            raise

    def check_writable(self) -> None:
        """Refuse now, before anything runs, a directory no result could be written into."""
        tmp = f".sandbox-kernel-{secrets.token_hex(8)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd))
            os.unlink(tmp, dir_fd=self.fd)
        except OSError as e:
            raise UnsafeResultPath(f"{self.path} is not writable ({e.strerror}); give a directory this runner can write") from None

    def write_json(self, name: str, obj: Any) -> str:
        with self.create(name) as f:
            dump_json(obj, f.write)
        return os.path.join(self.path, name)

    def check_replaceable(self, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else None if stat.S_ISREG(st.st_mode) else "not a regular file"
        if what is None and st.st_uid != os.geteuid():
            what = f"owned by uid {st.st_uid}, not by this runner"
        if what:
            raise UnsafeResultPath(f"{os.path.join(self.path, name)} exists and is {what}; refusing to replace it")


def _enter(dir_fd: int, part: str, walked: str, create: bool) -> int:
    """Open ``part`` under ``dir_fd`` as a directory, never through a link; closes ``dir_fd``."""
    try:
        try:
            return _open_dir(part, dir_fd)
        except FileNotFoundError:
            if not create:
                raise UnsafeResultPath(f"{walked} does not exist") from None
            try:
                os.mkdir(part, 0o777, dir_fd=dir_fd)
            except FileExistsError:
                pass  # created meanwhile: open it with the same checks
            return _open_dir(part, dir_fd)
    except NotADirectoryError:
        st = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise UnsafeResultPath(f"{walked} is {kind}; results are never written through links (give the real path)") from None
    except OSError as e:
        raise UnsafeResultPath(f"{walked}: {e.strerror}") from None
    finally:
        os.close(dir_fd)


def _open_dir(part: str, dir_fd: int) -> int:
    return os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


# Strings longer than this are written in slices: an executed notebook may hold one output of
# hundreds of MB, and json.dumps would make a second, escaped copy of it in memory.
_SLICE = 1 << 20


def dump_json(obj: Any, write) -> None:
    """Stream ``obj`` as JSON (one space indent, like nbformat) through ``write`` without
    building the whole text in memory. ``obj``'s nesting is bounded by its producer."""
    _dump(obj, write, 0)
    write("\n")


def _dump(obj: Any, write, depth: int) -> None:
    pad = "\n" + " " * (depth + 1)
    if isinstance(obj, str):
        if len(obj) <= _SLICE:
            write(json.dumps(obj, ensure_ascii=False))
            return
        write('"')
        for i in range(0, len(obj), _SLICE):
            write(json.dumps(obj[i:i + _SLICE], ensure_ascii=False)[1:-1])
        write('"')
    elif isinstance(obj, dict):
        if not obj:
            write("{}")
            return
        write("{")
        for i, key in enumerate(sorted(obj)):
            write(("," if i else "") + pad + json.dumps(str(key), ensure_ascii=False) + ": ")
            _dump(obj[key], write, depth + 1)
        write("\n" + " " * depth + "}")
    elif isinstance(obj, (list, tuple)):
        if not obj:
            write("[]")
            return
        write("[")
        for i, item in enumerate(obj):
            write(("," if i else "") + pad)
            _dump(item, write, depth + 1)
        write("\n" + " " * depth + "]")
    else:
        write(json.dumps(obj))
