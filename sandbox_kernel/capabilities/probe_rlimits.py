"""Probes: prlimit applies rlimits; setpriv switches a root supervisor's child to another uid."""

from __future__ import annotations

from ..host import Capability, missing_tool
from ..launch.uids import UidLease
from .common import describe_failure, run


def probe_prlimit(tools) -> Capability:
    if not tools["prlimit"]:
        return missing_tool("prlimit")
    proc = run([tools["prlimit"], "--cpu=60", "--nofile=64", "--fsize=1048576", "--as=1073741824", "--",
                "/bin/sh", "-c", "ulimit -n"])
    if proc.returncode != 0 or proc.stdout.strip() != b"64":
        return Capability(False, error=f"prlimit did not apply limits: {describe_failure(proc)}", hint="apt-get install util-linux")
    return Capability(True, "prlimit --nofile=64 took effect (ulimit -n = 64)", detail={"path": tools["prlimit"]})


def probe_setpriv(tools, euid: int, lease: UidLease | None) -> Capability:
    if euid != 0:
        return Capability(True, "not needed: the supervisor is not root")
    if not tools["setpriv"]:
        return missing_tool("setpriv")
    uid = lease.uid if lease is not None else 1  # switching to uid 1 is as good a test
    proc = run([tools["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "/usr/bin/id", "-u"])
    if proc.returncode != 0 or proc.stdout.strip() != str(uid).encode():
        return Capability(False, error=f"setpriv could not switch to uid {uid}: {describe_failure(proc)}")
    return Capability(True, f"setpriv switched to uid {uid}", detail={"path": tools["setpriv"]})
