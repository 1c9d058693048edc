"""Per-run cgroups: create, limit, join (the spawning thread steps in, or the child joins before exec), kill, remove.

v1 (a hierarchy per controller, as on hosts without systemd) and v2 (one hierarchy) are both
handled. Cgroups are created as siblings under ``<root>/``, the parent the probe chose: for a
root supervisor ``<hierarchy>/sandbox-kernel`` (never its own cgroup, so a run's memory cap does
not share the supervisor's); for a rootless one, a cgroup delegated to its user (``delegate``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field

from ..errors import CgroupError
from ..host import CGROUP_PARENT
from ..planner.resources import CgroupPlan

__all__ = ["CgroupError", "RunCgroups", "create", "delegate", "undelegate", "hierarchy"]

DELEGATED_PREFIX = "user-"  # <root>/sandbox-kernel/user-<name>: one user's delegated parent


def v2_root() -> str | None:
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.isfile(os.path.join(root, "cgroup.controllers")):
            return root
    return None


def hierarchy(controller: str) -> tuple[str, int] | None:
    """The mount of the hierarchy that carries ``controller`` and its version, v1 first."""
    v1 = f"/sys/fs/cgroup/{controller}"
    if os.path.isfile(os.path.join(v1, "cgroup.procs")) and os.path.isfile(os.path.join(v1, "tasks")):
        return v1, 1
    base = v2_root()
    return (base, 2) if base else None


def enable_v2(base: str, root: str, controller: str) -> None:
    """Enable the controller for children at every level from the hierarchy's root down to
    ``root`` where it is not yet (a delegated user cannot write the levels above its own)."""
    rel = os.path.relpath(root, base)
    levels = [base] + [os.path.join(base, *rel.split("/")[:i]) for i in range(1, len(rel.split("/")) + 1)]
    for level in levels:
        os.makedirs(level, exist_ok=True)
        path = os.path.join(level, "cgroup.subtree_control")
        with open(path) as f:
            if controller in f.read().split():
                continue
        with open(path, "w") as f:
            f.write(f"+{controller}")


@dataclass
class RunCgroups:
    paths: list[str] = field(default_factory=list)  # one per controller (v1) or one (v2)
    memory_path: str | None = None
    version: int = 1

    def pids(self) -> set[int]:
        found: set[int] = set()
        for p in self.paths:
            try:
                with open(os.path.join(p, "cgroup.procs")) as f:
                    found.update(int(x) for x in f.read().split())
            except OSError:
                continue
        found.discard(os.getpid())  # a supervisor thread spawning into them (ThreadHop) is never a target
        return found

    def thread_hop(self) -> ThreadHop | None:
        """v1: a way for the calling thread to step into these cgroups and back (see ThreadHop),
        or None where it cannot (v2 keeps whole processes together; a cgroup it could not move
        itself back to)."""
        if self.version != 1:
            return None
        moves = []
        for path in self.paths:
            controller = "memory" if path == self.memory_path else "pids"
            home = _thread_cgroup(controller)
            mount = hierarchy(controller)
            if home is None or mount is None:
                return None
            back = os.path.join(mount[0] + home, "tasks")
            if not os.access(back, os.W_OK):
                return None
            moves.append((os.path.join(path, "tasks"), back))
        return ThreadHop(tuple(moves))

    def oom_killed(self) -> bool:
        if self.memory_path is None:
            return False
        for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
            try:
                with open(os.path.join(self.memory_path, name)) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == key and int(v) > 0:
                            return True
            except OSError:
                continue
        return False

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            _kill(pid, sig)

    def kill_all(self, settle: float = 2.0) -> None:
        """SIGKILL every process in the run's cgroups until none is left (v1 has no cgroup.kill,
        and a fork bomb may add processes while we kill)."""
        kill_files = [os.path.join(p, "cgroup.kill") for p in self.paths]
        deadline = time.monotonic() + settle
        while True:
            for k in kill_files:
                if os.path.exists(k):
                    with open(k, "w") as f:
                        f.write("1")
            pids = self.pids()
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def remove(self, timeout: float = 5.0) -> list[str]:
        """Remove the run's cgroups, killing what is left in them; the ones still busy after
        ``timeout`` seconds (returned) are for the caller to hand on, never to forget."""
        deadline = time.monotonic() + timeout
        left = []
        for p in self.paths:
            while True:
                try:
                    os.rmdir(p)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Exiting processes linger for a moment (often well under a millisecond)
                    # in cgroup.procs: poll briefly rather than sleep a fixed slice.
                    if time.monotonic() > deadline:
                        left.append(p)
                        break
                    self.kill_all(settle=0.05)
                    time.sleep(0.001)
        return left


@dataclass(frozen=True)
class ThreadHop:
    """Spawn a run's first process inside its v1 cgroups without a helper program.

    A child starts in the cgroups of the *thread* that forks it, and on v1 each thread has its
    own. So the spawning thread writes "0" to each run cgroup's ``tasks`` (moving itself,
    nothing else), spawns, and writes "0" back to the ``tasks`` it came from. Moving oneself
    is what the kernel does without taking the global lock that moving another process takes
    (that waits for an RCU grace period: 15-20 ms after an idle spell, measured here), and it
    needs no shell exec'd in front of the sandbox to do it from inside."""
    moves: tuple[tuple[str, str], ...]  # (run cgroup's tasks, this thread's own tasks to return to)

    @contextlib.contextmanager
    def inside(self):
        entered: list[str] = []
        try:
            for run_tasks, back in self.moves:
                _write_self(run_tasks)
                entered.append(back)
            yield
        finally:
            for back in entered:
                _write_self(back)


def _write_self(tasks: str) -> None:
    with open(tasks, "w") as f:
        f.write("0")


def _thread_cgroup(controller: str) -> str | None:
    """The calling thread's cgroup in the v1 hierarchy of ``controller``, relative to its mount."""
    with open("/proc/thread-self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def new_name() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def paths_for(plan: CgroupPlan, name: str) -> list[str]:
    """Where :func:`create` makes a run's cgroups named ``name`` (before it does: a janitor
    is told them first, so a supervisor killed in between leaves nothing)."""
    if plan.version == 1:
        return ([os.path.join(plan.memory_root, name)] if plan.memory_bytes is not None else []) + \
               ([os.path.join(plan.pids_root, name)] if plan.pids_max is not None else [])
    return [os.path.join(plan.memory_root or plan.pids_root, name)]


def create(plan: CgroupPlan, name: str | None = None) -> RunCgroups:
    name = name or new_name()
    cg = RunCgroups(version=plan.version)
    try:
        if plan.version == 1:
            if plan.memory_bytes is not None:
                path = os.path.join(plan.memory_root, name)
                os.mkdir(path)
                cg.paths.append(path)
                cg.memory_path = path
                _write(path, "memory.limit_in_bytes", plan.memory_bytes)
                if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                    _write(path, "memory.memsw.limit_in_bytes", plan.memory_bytes)  # no escape into swap
            if plan.pids_max is not None:
                path = os.path.join(plan.pids_root, name)
                os.mkdir(path)
                cg.paths.append(path)
                _write(path, "pids.max", plan.pids_max)
        else:
            root = plan.memory_root or plan.pids_root
            path = os.path.join(root, name)
            os.mkdir(path)
            cg.paths.append(path)
            if plan.memory_bytes is not None:
                cg.memory_path = path
                _write(path, "memory.max", plan.memory_bytes)
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(path, "memory.swap.max", 0)
            if plan.pids_max is not None:
                _write(path, "pids.max", plan.pids_max)
    except OSError as e:
        cg.remove()
        raise CgroupError(f"could not set up the run's cgroup: {e}") from None
    return cg


def _write(path: str, name: str, value) -> None:
    with open(os.path.join(path, name), "w") as f:
        f.write(str(value))


def delegate(user: str) -> list[str]:
    """Root only: make ``<root>/sandbox-kernel/user-<user>`` in each hierarchy that carries
    memory or pids, owned by ``user``, so that user's (rootless) supervisor finds it and
    creates its runs' cgroups there (``capabilities.probe_cgroup``). Idempotent. Returns the
    directories. Caps set on it (by the operator) bound all of that user's sandboxes together."""
    import pwd

    entry = pwd.getpwnam(user)  # KeyError: no such user
    made = []
    for controller in ("memory", "pids"):
        found = hierarchy(controller)
        if found is None:
            continue
        base, version = found
        path = os.path.join(base, CGROUP_PARENT, DELEGATED_PREFIX + user)
        if path in made:
            continue  # v2: one directory for both
        try:
            os.makedirs(path, exist_ok=True)
            if version == 2:
                enable_v2(base, path, controller)
            # The directory and the files a delegatee writes (cgroup-v2 "Delegation").
            for name in ("", "cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads"):
                target = os.path.join(path, name)
                if os.path.exists(target):
                    os.chown(target, entry.pw_uid, entry.pw_gid)
        except OSError as e:
            raise CgroupError(f"could not delegate {path} to {user}: {e.strerror}") from None
        made.append(path)
    return made


def undelegate(user: str) -> list[str]:
    """Remove what :func:`delegate` made for ``user`` (only once no run of theirs is left in it)."""
    removed = []
    for controller in ("memory", "pids"):
        found = hierarchy(controller)
        path = found and os.path.join(found[0], CGROUP_PARENT, DELEGATED_PREFIX + user)
        if path and path not in removed and os.path.isdir(path):
            for child in sorted(os.listdir(path)):
                if os.path.isdir(os.path.join(path, child)):
                    RunCgroups([os.path.join(path, child)]).remove()  # runs the user's server left behind
            RunCgroups([path]).remove()
            removed.append(path)
    return removed
