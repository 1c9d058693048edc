"""What a sandboxed interpreter needs from the host: the interpreter's command and the host
paths it must read. Facts read from the file system, used when a kernel's or a cell's
:class:`~sandbox_kernel.planner.RunSpec` is built."""

from __future__ import annotations

import os
import shutil
import sys

from .errors import RuntimeMissing

__all__ = ["python_runtime_paths", "cell_argv", "cell_runtime_paths", "CELL_RUNTIMES"]

# A cell's kind (the magic: %%sh, %%node, %%sandbox) -> the planner's runtime name.
CELL_RUNTIMES = {"sh": "shell", "node": "node", "python": "python"}


def python_runtime_paths() -> tuple[str, ...]:
    """Host paths the sandboxed Python needs read-only: the ``bin/`` and ``lib*/`` trees of its
    prefix (the venv) and of the base interpreter's prefix, the venv's ``pyvenv.cfg``, and this
    package if it is installed outside them (editable). Never a prefix's ``etc/`` or
    ``share/``: ``sys.prefix/etc/jupyter`` holds server config (tokens, passwords) on real
    servers. Paths inside the system dirs are bound with them (see ``host.hidden_dirs``)."""
    prefixes = []
    for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))):
        if p not in prefixes:
            prefixes.append(p)
    out: list[str] = []
    for prefix in prefixes:
        try:
            names = sorted(os.listdir(prefix))
        except OSError:
            continue
        for name in names:
            if name == "bin" or name.startswith("lib") or name == "pyvenv.cfg":
                out.append(os.path.join(prefix, name))
    pkg = os.path.dirname(os.path.abspath(__file__))
    if not any(pkg.startswith(p.rstrip("/") + "/") for p in out):
        out.append(pkg)
    return tuple(dict.fromkeys(out))


def cell_runtime_paths(kind: str, argv: tuple[str, ...]) -> tuple[str, ...]:
    """Host paths a cell's interpreter needs read-only. Node installed outside the system dirs
    (nvm, ``/opt``) brings the real directory of its binary, as Python brings its prefix."""
    if kind == "python":
        return python_runtime_paths()
    if kind == "node":
        return (os.path.dirname(argv[0]),)  # cell_argv resolved it: the real directory
    return ()


def cell_argv(kind: str) -> tuple[str, ...]:
    """The interpreter reads the cell body from stdin: no argv length limit, nothing spliced.
    Raises :class:`RuntimeMissing` if the kind's interpreter is not installed."""
    if kind == "sh":
        return ("/bin/sh", "-s")
    if kind == "node":
        node = shutil.which("node")
        if node is None:
            raise RuntimeMissing("node is not installed on this host (apt-get install nodejs)")
        return (os.path.realpath(node), "-")
    return (sys.executable, "-")
