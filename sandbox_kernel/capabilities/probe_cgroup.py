"""Probe: can this supervisor create a cgroup below its cgroup parent, limit it, remove it?

The parent (where runs' cgroups are made, per hierarchy) is, in this order:
1. ``resources.cgroup_parent`` when the operator set it (relative to the hierarchy's root);
2. for a non-root supervisor, its own cgroup when that was delegated to it (the directory is
   owned by its uid: systemd ``Delegate=yes``, a v1 directory chowned to it);
3. for a non-root supervisor, ``<root>/sandbox-kernel/user-<name>`` when it is owned by its uid
   (``sandbox-kernel delegate --user NAME`` makes it, as does the Hub hook in ``hub``);
4. ``<root>/sandbox-kernel``, which a root supervisor creates.
"""

from __future__ import annotations

import os
import pwd
import threading

from ..host import CGROUP_PARENT, Capability
from ..launch.cgroup import DELEGATED_PREFIX, enable_v2, hierarchy

def own_cgroup(controller: str, version: int) -> str | None:
    """This process's cgroup in that hierarchy, relative to its root."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if (version == 2 and controllers == "") or (version == 1 and controller in controllers.split(",")):
                    return path.strip("/")
    except OSError:
        pass
    return None


def delegated_parent(base: str, controller: str, version: int, euid: int, user: str | None) -> tuple[str, str] | None:
    """(directory, how) of a cgroup delegated to ``euid``, or None."""
    candidates = []
    own = own_cgroup(controller, version)
    if own:
        candidates.append((os.path.join(base, own), "own cgroup, delegated"))
    if user:
        candidates.append((os.path.join(base, CGROUP_PARENT, DELEGATED_PREFIX + user), "delegated per user"))
    for path, how in candidates:
        try:
            if os.stat(path).st_uid == euid:
                return path, how
        except OSError:
            continue
    return None


def probe(controller: str, euid: int, cgroup_parent: str | None = None) -> Capability:
    """Create a cgroup, set a limit, read it back, remove it, below the parent chosen as the
    module docstring says."""
    found = hierarchy(controller)
    if found is None:
        return Capability(False, error="no cgroup filesystem mounted", hint="mount cgroup2 at /sys/fs/cgroup")
    base, version = found
    if version == 2:
        with open(os.path.join(base, "cgroup.controllers")) as f:
            if controller not in f.read().split():
                return Capability(False, error=f"cgroup v2 at {base} does not offer the {controller} controller",
                                  hint="in a container: give it a delegated cgroup (Docker --cgroupns=private, systemd Delegate=yes)")
    limit_file = {(1, "memory"): "memory.limit_in_bytes", (2, "memory"): "memory.max"}.get((version, controller), "pids.max")
    value = {"memory": "67108864", "pids": "64"}[controller]
    user = _user_name(euid)
    how = "default"
    if cgroup_parent:
        root, how = os.path.join(base, cgroup_parent), "configured"
    elif euid != 0 and (delegated := delegated_parent(base, controller, version, euid, user)):
        root, how = delegated
    else:
        root = os.path.join(base, CGROUP_PARENT)
    probe_dir = os.path.join(root, f"probe-{os.getpid()}-{threading.get_ident()}")
    try:
        if euid == 0:
            os.makedirs(root, exist_ok=True)
        if version == 2:
            enable_v2(base, root, controller)
        os.mkdir(probe_dir)
        try:
            with open(os.path.join(probe_dir, limit_file), "w") as f:
                f.write(value)
            with open(os.path.join(probe_dir, limit_file)) as f:
                got = f.read().strip()
        finally:
            os.rmdir(probe_dir)
        if got != value:
            return Capability(False, error=f"{limit_file} reads back {got!r}, wrote {value}")
    except OSError as e:
        if euid != 0:
            hint = (f"delegate a cgroup to this user: as root, `sandbox-kernel delegate --user {user or euid}` "
                    "(or set resources.cgroup_parent to a cgroup it owns; or run the supervisor as root)")
        else:
            hint = "check that the cgroup filesystem is writable (Docker: --cgroupns=private or --privileged)"
        return Capability(False, error=f"cannot create a {controller} cgroup under {root} ({how}): {e.strerror}", hint=hint)
    return Capability(True, f"created {probe_dir} ({how}), set {limit_file}={value}, removed it",
                      detail={"version": version, "root": root, "parent": how})


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
