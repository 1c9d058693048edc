"""Deliver a signal to the sandboxed command itself.

bwrap does not forward signals, and signalling the outer bwrap kills the whole sandbox. The
command is the child of bwrap's pid 1 inside the namespace: find it through /proc's
``children`` lists and signal it directly (e.g. SIGINT for a kernel interrupt).
"""

from __future__ import annotations

import os

from .process import SandboxProcess


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def command_pids(proc: SandboxProcess) -> list[int]:
    """The sandboxed command's pid(s): grandchildren of the outer bwrap (outer -> pid 1 -> cmd)."""
    if proc.popen is None or not proc.plan.sandboxed:
        return [proc.popen.pid] if proc.popen else []
    return [cmd for init in _children(proc.popen.pid) for cmd in _children(init)]


def signal_command(proc: SandboxProcess, signum: int) -> bool:
    sent = False
    for pid in command_pids(proc):
        try:
            os.kill(pid, signum)
            sent = True
        except ProcessLookupError:
            pass
    return sent
