"""Every reader of /proc the integration tests use: one home, so a fix reaches every caller.

Imported by test modules (``from .procs import ...``) and by ``scenarios.py`` run as a script."""

from __future__ import annotations

import os
import time


def cmdline(pid: int | str) -> bytes:
    """A process's argv, NUL-separated ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process in /proc."""
    table = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        table[int(entry)] = (int(ppid), state)
    return table


def describe(pid: int) -> str:
    """``pid N uid U: argv`` for a failure message."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return f"pid {pid} (gone)"
    text = cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()
    return f"pid {pid} uid {uid}: {text[:200]}"


def alive(pid: int) -> bool:
    """Running, and not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another uid's: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def processes_with(token: str) -> list[str]:
    """``pid: argv`` of every process (but this one) whose argv contains ``token``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        text = cmdline(pid)
        if token.encode() in text and int(pid) != os.getpid():
            found.append(pid + ": " + text.replace(b"\0", b" ").decode(errors="replace"))
    return found
