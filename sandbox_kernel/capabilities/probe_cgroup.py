"""Probe: can this supervisor create a cgroup below the product's parent, limit it, remove it?"""

from __future__ import annotations

import os
import threading

from ..host import CGROUP_PARENT, Capability


def v2_root() -> str | None:
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.isfile(os.path.join(root, "cgroup.controllers")):
            return root
    return None


def probe(controller: str, euid: int) -> Capability:
    """Create a cgroup, set a limit, read it back, remove it. v1 (a per-controller hierarchy)
    first, then a v2 subtree with the controller enabled."""
    v1 = f"/sys/fs/cgroup/{controller}"
    limit_file, value = {"memory": ("memory.limit_in_bytes", "67108864"), "pids": ("pids.max", "64")}[controller]
    if os.path.isfile(os.path.join(v1, "cgroup.procs")) and os.path.isfile(os.path.join(v1, "tasks")):
        root, version = os.path.join(v1, CGROUP_PARENT), 1
    else:
        base = v2_root()
        if base is None:
            return Capability(False, error="no cgroup filesystem mounted", hint="mount cgroup2 at /sys/fs/cgroup")
        with open(os.path.join(base, "cgroup.controllers")) as f:
            if controller not in f.read().split():
                return Capability(False, error=f"cgroup v2 at {base} does not offer the {controller} controller",
                                  hint="in a container: give it a delegated cgroup (Docker --cgroupns=private, systemd Delegate=yes)")
        root, version = os.path.join(base, CGROUP_PARENT), 2
        limit_file, value = {"memory": ("memory.max", "67108864"), "pids": ("pids.max", "64")}[controller]
    probe_dir = os.path.join(root, f"probe-{os.getpid()}-{threading.get_ident()}")
    try:
        os.makedirs(root, exist_ok=True)
        if version == 2:
            with open(os.path.join(os.path.dirname(root), "cgroup.subtree_control"), "w") as f:
                f.write(f"+{controller}")
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{controller}")
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
        hint = ("run the supervisor as root, or delegate a cgroup subtree to its user" if euid != 0
                else "check that the cgroup filesystem is writable (Docker: --cgroupns=private or --privileged)")
        return Capability(False, error=f"cannot create a {controller} cgroup under {root}: {e.strerror}", hint=hint)
    return Capability(True, f"created {probe_dir}, set {limit_file}={value}, removed it",
                      detail={"version": version, "root": root})
