"""What a run may leave behind on the host, and how a test finds it.

Made exact on a shared machine (other sessions run sandboxes at the same time):
- the test process is a *child subreaper*: any process a run orphans is re-parented to it
  instead of to init, so "no live descendant of the test process" covers bwrap, the egress
  holder, slirp4netns, the janitor and every sandboxed process (uid 65532, or the non-root
  supervisor's uid);
- the test session has a private TMPDIR (see conftest), so the staging dirs
  (``sandbox-kernel-run-*``) of its runs, in process or in scenario subprocesses, are there;
- a run cgroup is a ``run-*`` dir under ``<hierarchy>/sandbox-kernel``: one that appeared
  during the test and is still there, empty, was leaked by it (a concurrent session's live
  run is not empty, and processes left in one of ours would be our descendants).
"""

from __future__ import annotations

import ctypes
import glob
import os
import tempfile
import time

from sandbox_kernel.capabilities import CGROUP_PARENT

STAGING_GLOB = "sandbox-kernel-run-*"
PR_SET_CHILD_SUBREAPER = 36
SETTLE_SECONDS = 3.0  # how long exiting processes and removals may take before it is a leak


def become_subreaper() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _process_table() -> dict[int, tuple[int, str]]:
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


def _describe(pid: int) -> str:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid} (gone)"
    return f"pid {pid} uid {uid}: {cmdline[:200]}"


def live_descendants(root: int) -> list[int]:
    """Descendants of ``root`` still running. Zombies re-parented to ``root`` (already dead)
    are reaped on the way."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        ppid, state = table[pid]
        if state != "Z":
            found.append(pid)
        elif ppid == root:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return found


def staging_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), STAGING_GLOB)))


def run_cgroups() -> set[str]:
    patterns = [f"/sys/fs/cgroup/*/{CGROUP_PARENT}/run-*", f"/sys/fs/cgroup/{CGROUP_PARENT}/run-*"]
    return {p for pattern in patterns for p in glob.glob(pattern)}


def _empty_cgroup(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return not f.read().strip()
    except OSError:
        return False  # removed meanwhile


class Traces:
    """Snapshot at creation; :meth:`left` lists what appeared since and is still there
    after a short settle time (exiting processes, removals in flight)."""

    def __init__(self):
        self.staging, self.cgroups = staging_dirs(), run_cgroups()

    def _now(self) -> list[str]:
        problems = [f"process left: {_describe(p)}" for p in live_descendants(os.getpid())]
        problems += [f"staging dir left: {d}" for d in sorted(staging_dirs() - self.staging)]
        problems += [f"cgroup left: {c}" for c in sorted(run_cgroups() - self.cgroups) if _empty_cgroup(c)]
        return problems

    def left(self) -> list[str]:
        deadline = time.monotonic() + SETTLE_SECONDS
        while (problems := self._now()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return problems
