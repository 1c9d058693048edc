"""What a sandboxed kernel sees of its inputs: one listing, computed on the host, handed to the
planner as data.

The inputs of a notebook are a directory (usually its own) whose contents appear read-only
inside the sandbox's scratch dir, plus optional extra data paths (``--data``), each appearing
there under its own name. What is exposed, at any depth:

- never a dotfile or dot-directory (``.env``, ``.git``, ``sub/.ssh``): a notebook's folder
  often holds secrets next to the data;
- never a symbolic link: bwrap resolves a bind source on the host, and an untrusted tree's
  ``notes -> /home/alice/.bashrc`` must not show a host file; nor sockets, FIFOs, devices;
- never an excluded path (in a batch run: every other notebook of the run, the output dir,
  the summary file), nor a directory that contains one, which is then exposed entry by entry
  so that files the runner writes there later never appear inside a sandbox.

A directory with nothing hidden inside is bound whole; otherwise its visible entries are bound
one by one. The work is bounded (entries scanned, depth, number of binds); what the bounds cut
off is not exposed and the listing says so.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

__all__ = ["InputListing", "list_inputs", "MAX_INPUT_BINDS"]

MAX_SCANNED_ENTRIES = 20000
MAX_DEPTH = 32
MAX_INPUT_BINDS = 1000


@dataclass(frozen=True)
class InputListing:
    binds: tuple[tuple[str, str], ...] = ()  # (host path, path relative to the scratch dir); dirs end in "/"
    hidden: int = 0  # entries left out (dot, link, special file, excluded)
    notes: tuple[tuple[str, str], ...] = ()  # ("filesystem", note) facts for the report

    @property
    def exposed(self) -> list[str]:
        return [dest for _, dest in self.binds]


@dataclass
class _Walk:
    excluded: frozenset[str]
    budget: int
    hidden: int = 0
    cut: bool = False
    binds: list[tuple[str, str]] = field(default_factory=list)

    def holds_excluded(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(e.startswith(prefix) for e in self.excluded)


def list_inputs(root: str | None, *, exclude=(), data=(), uid: int, gid: int,
                max_binds: int = MAX_INPUT_BINDS) -> InputListing:
    """What a sandbox running as (uid, gid) may see: the entries of ``root`` (None: nothing)
    and the ``data`` paths, minus ``exclude`` (host paths) and everything hidden by the rules
    above. Never raises for a bad tree: problems become notes."""
    walk = _Walk(frozenset(os.path.realpath(p) for p in exclude), MAX_SCANNED_ENTRIES)
    notes: list[tuple[str, str]] = []
    data_names = set()
    for path in data:
        real = os.path.realpath(path)
        name = os.path.basename(real.rstrip("/")) or real
        if name in data_names:
            notes.append(("filesystem", f"data path {path}: another data path is already named {name!r}; not exposed"))
            continue
        if any(real == e or real.startswith(e.rstrip("/") + "/") for e in walk.excluded):
            notes.append(("filesystem", f"data path {path} is excluded (the runner writes it, or it is another notebook "
                                        "of the run); not exposed"))
            continue
        if not _usable_root(real, uid, gid, notes, "data path"):
            continue
        data_names.add(name)
        if os.path.isdir(real):
            _expose_dir(walk, real, name, 1, whole_ok=True)
        elif os.path.isfile(real):
            walk.binds.append((real, name))
        else:
            notes.append(("filesystem", f"data path {path} is not a regular file or directory; not exposed"))
    if root is not None:
        real = os.path.realpath(root)
        if os.path.isdir(real) and _usable_root(real, uid, gid, notes, "the working directory"):
            walk.excluded |= {os.path.join(real, n) for n in data_names}  # a data path wins over a same-named entry
            _expose_dir(walk, real, "", 1, whole_ok=False)
    binds = sorted(walk.binds, key=lambda b: b[1])
    if len(binds) > max_binds:
        binds, walk.cut = binds[:max_binds], True
    if walk.hidden:
        notes.append(("filesystem", f"inputs: {walk.hidden} entries not exposed (dotfiles, links, special files, "
                                    "other notebooks of the run, the runner's output paths)"))
    if walk.cut:
        notes.append(("filesystem", f"inputs: the listing stopped at its bounds ({MAX_SCANNED_ENTRIES} entries, depth "
                                    f"{MAX_DEPTH}, {max_binds} binds); entries beyond them are not exposed"))
    return InputListing(tuple(binds), walk.hidden, tuple(notes))


def _usable_root(path: str, uid: int, gid: int, notes: list, what: str) -> bool:
    if not os.path.exists(path):
        notes.append(("filesystem", f"{what} {path} does not exist; not exposed"))
        return False
    if not _reachable(path, uid, gid):
        notes.append(("filesystem", f"{what} {path} is not reachable by uid {uid}: its files are not visible in the sandbox"))
        return False
    return True


def _reachable(path: str, uid: int, gid: int) -> bool:
    """Can (uid, gid), with no supplementary groups, search every directory down to ``path``?
    bwrap resolves bind sources as the sandbox uid: an unreachable one would fail the start."""
    if uid == 0:
        return True
    parts = os.path.realpath(path).split("/")
    for i in range(1, len(parts) + os.path.isdir(path)):  # every directory on the way, and path if one
        st = os.stat("/".join(parts[:i]) or "/")
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _expose_dir(walk: _Walk, path: str, dest: str, depth: int, whole_ok: bool) -> bool:
    """Add binds for what is visible under ``path``; return True if nothing under it is hidden
    (so the caller may bind the directory whole instead). ``whole_ok``: bind it whole here."""
    clean = not walk.holds_excluded(path)
    mark = len(walk.binds)
    try:
        with os.scandir(path) as it:
            entries = []
            for entry in it:
                if walk.budget <= 0:
                    walk.cut, clean = True, False
                    break
                walk.budget -= 1
                entries.append(entry)
    except OSError:
        walk.hidden += 1
        return False
    for entry in sorted(entries, key=lambda e: e.name):
        child = os.path.join(path, entry.name)
        child_dest = f"{dest}/{entry.name}" if dest else entry.name
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        if entry.name.startswith(".") or child in walk.excluded or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            walk.hidden += 1
            clean = False
        elif stat.S_ISREG(mode):
            walk.binds.append((child, child_dest))
        elif depth >= MAX_DEPTH:
            walk.cut, clean = True, False
        elif not _expose_dir(walk, child, child_dest, depth + 1, whole_ok=True):
            clean = False
    if clean and whole_ok:
        del walk.binds[mark:]  # the children's binds collapse into one for the whole directory
        walk.binds.append((path, dest + "/"))
    return clean
