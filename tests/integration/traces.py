"""What a run may change or leave behind on the host, and how a test finds it.

The rule: nothing of ours survives a test. Checked after every integration test, on a shared
machine (other sessions run sandboxes at the same time), in two ways:

Host state that correct code never changes, so it must simply be identical before and after
(a concurrent session of correct code does not disturb it either):
- the mount table of the test's mount namespace (the host's, or the private copy CI makes
  with shared propagation): every mount point, its source, options and propagation;
- the host network namespace: nft ruleset, routes (all tables, IPv4 and IPv6) and links.

Things our runs create, attributed to this test:
- the test process is a *child subreaper*: any process a run orphans is re-parented to it
  instead of to init, so "no live descendant of the test process" covers bwrap, the egress
  holder, slirp4netns, the janitor, the session holder, kernels and every sandboxed process
  (uid 65532, or the non-root supervisor's uid);
- the test session has a private TMPDIR (see conftest), so the product's temp and run dirs
  (``sandbox-kernel-*``: staging, kernel run dirs, cell sockets, probe scratch) of its runs,
  in process or in scenario subprocesses, are there;
- a cgroup under the product's parent cgroup (``<hierarchy>/sandbox-kernel``, v1 and v2): one
  that appeared during the test and is still there, empty, was leaked by it (a concurrent
  session's live run is not empty, and processes left in one of ours would be our
  descendants). The parent itself is the product's delegation point, made once by the first
  probe and kept (see README, "Host shapes"). Delegated parents directly below it
  (``itest-<pid>``: a test session's, for its non-root supervisor; ``user-<name>``: a user's,
  made by ``sandbox-kernel delegate``) are empty while in use, so one is a leak only if this
  test session made it: tests name their session cgroup and their throwaway users after the
  session's pid. Runs below any of them are checked as before.
"""

from __future__ import annotations

import collections
import ctypes
import glob
import os
import re
import subprocess
import tempfile
import time

from sandbox_kernel.host import CGROUP_PARENT
from sandbox_kernel.launch.etc import CACHE as PREPARED_ETC
from sandbox_kernel.launch.janitor import JANITOR

from .procs import describe, process_table

PRODUCT_TEMP_GLOB = "sandbox-kernel-*"
PR_SET_CHILD_SUBREAPER = 36
SETTLE_SECONDS = 3.0  # how long exiting processes and removals may take before it is a leak


def become_subreaper() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def live_descendants(root: int) -> list[int]:
    """Descendants of ``root`` still running. Zombies re-parented to ``root`` (already dead)
    are reaped on the way."""
    table = process_table()
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


def product_temp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), PRODUCT_TEMP_GLOB)))


def product_cgroups() -> set[str]:
    """Every cgroup below the product's parent cgroups (run-*, probe-*, anything)."""
    found = set()
    for parent in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}") + glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}"):
        for dirpath, dirnames, _ in os.walk(parent):
            found.update(os.path.join(dirpath, d) for d in dirnames)
    return found


DELEGATED_PREFIXES = ("itest-", "user-")


def _attributable(path: str) -> bool:
    """Not another session's delegated parent (see the module docstring)."""
    name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    if parent == CGROUP_PARENT and name.startswith(DELEGATED_PREFIXES):
        return name.endswith(str(os.getpid()))
    return True


def _empty_cgroup(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return not f.read().strip()
    except OSError:
        return False  # removed meanwhile


def mount_table(mountinfo: str | None = None) -> list[str]:
    """The mounts this process sees (or a /proc/PID/mountinfo text lists), one line each:
    where, what, options, propagation (mount ids left out: they say nothing about what is
    mounted)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    entries = []
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        root, point, options, tags = fields[3], fields[4], fields[5], fields[6:]
        fstype, source, super_options = (post.split() + ["", "", ""])[:3]
        entries.append(f"{point} ({fstype} {source}, root {root}, {options} {super_options}, "
                       f"{' '.join(tags) or 'private'})")
    return entries


def _command_lines(argv: list[str]) -> list[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"{argv[0]} unavailable: {e}"]
    if proc.returncode != 0:
        return [f"{' '.join(argv)} failed: {proc.stderr.strip()}"]
    return [line.rstrip() for line in proc.stdout.splitlines() if line.strip()]


def host_network() -> dict[str, list[str]]:
    """The host network namespace as the test process sees it (the product never changes it:
    every ruleset, route and link of ours lives in a namespace of its own)."""
    routes = [re.sub(r" expires \d+sec", "", line) for family in ("-4", "-6")
              for line in _command_lines(["ip", family, "route", "show", "table", "all"])]
    links = [" ".join(line.split()[:2]) for line in _command_lines(["ip", "-o", "link", "show"])]
    return {"host nft ruleset": _command_lines(["nft", "--stateless", "list", "ruleset"]),
            "host routes": routes, "host links": links}


def host_state() -> dict[str, list[str]]:
    return {"mount table": mount_table(), **host_network()}


def changes(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """What differs, per kind, as "<kind> changed: gone ... / new ..." lines."""
    problems = []
    for kind, old in before.items():
        old_count, new_count = collections.Counter(old), collections.Counter(after[kind])
        gone, new = old_count - new_count, new_count - old_count
        problems += [f"{kind} changed: gone {entry}" for entry in sorted(gone.elements())]
        problems += [f"{kind} changed: new {entry}" for entry in sorted(new.elements())]
    return problems


class Traces:
    """Snapshot at creation; :meth:`left` lists what changed or appeared since and is still
    so after a short settle time (exiting processes, removals in flight)."""

    def __init__(self):
        self.host = host_state()
        self.temp_dirs, self.cgroups = product_temp_dirs(), product_cgroups()

    def _now(self) -> list[str]:
        problems = changes(self.host, host_state())
        problems += [f"process left: {describe(p)}" for p in live_descendants(os.getpid())]
        problems += [f"temp dir left: {d}" for d in sorted(product_temp_dirs() - self.temp_dirs)]
        problems += [f"cgroup left: {c}" for c in sorted(product_cgroups() - self.cgroups)
                     if _attributable(c) and _empty_cgroup(c)]
        return problems

    def left(self) -> list[str]:
        # This process supervises runs too (in-process kernels and runs), and a supervisor keeps
        # its prepared /etc dirs while it lives (launch/etc.py). Its runs are over by now: one
        # still held is a leak; the rest goes as it would when the supervisor exits.
        held = PREPARED_ETC.in_use()
        PREPARED_ETC.close()
        # Likewise its janitor (launch/janitor.py): it exits on close(); what it still watches
        # belongs to runs, kernels or guards never closed.
        janitor_holds = JANITOR.watching()
        JANITOR.close()
        deadline = time.monotonic() + SETTLE_SECONDS
        while (problems := self._now()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return (problems + ([f"prepared /etc still held by {held} run(s)"] if held else [])
                + ([f"the janitor still watches {janitor_holds} thing(s) never closed"] if janitor_holds else []))
