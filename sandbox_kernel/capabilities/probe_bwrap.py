"""Probe: bwrap exactly as the planner builds it (secure default: deny network,
scratch-plus-ro, seccomp, as a leased uid), run through the launch shell; then this interpreter
inside it."""

from __future__ import annotations

import os
import sys

from ..host import Capability, HostCapabilities, hidden_dirs, missing_tool
from ..launch import run as run_sandboxed
from ..planner import RunSpec
from ..policy import policy_from_dict
from ..runtime import python_runtime_paths

NOT_HERE = Capability(False, error="not probed here")


def probe(tools, euid: int, uid_range: Capability, host_layout, seccomp: Capability) -> tuple[Capability, Capability]:
    """Returns (bwrap, interpreter)."""
    if not tools["bwrap"]:
        return missing_tool("bwrap"), Capability(False, error="not checked: bwrap is unavailable")
    # What the other probes will find is not known yet: assume the layers bwrap needs work,
    # and leave out the ones it does not (egress, cgroups).
    optimistic = HostCapabilities(
        platform=sys.platform, euid=euid, egid=os.getegid(), user_name="probe", tools=tools,
        host_layout=host_layout, bwrap=Capability(True), setpriv=Capability(True), prlimit=Capability(bool(tools["prlimit"])),
        seccomp=seccomp, egress=NOT_HERE, cgroup_memory=NOT_HERE, cgroup_pids=NOT_HERE,
        landlock=Capability(False), uid_range=uid_range, interpreter=Capability(True), hidden_dirs=hidden_dirs(),
    )
    probe_policy: dict = {"on_unavailable": "degrade", "resources": {"memory_bytes": None}}
    if euid == 0 and not uid_range.ok:
        probe_policy["privilege"] = {"uid": 65534}  # bwrap is still worth knowing about; nobody will do
    policy = policy_from_dict(probe_policy)

    def attempt(argv, runtime_paths=()):
        spec = RunSpec(argv=tuple(argv), runtime="other", runtime_paths=runtime_paths)
        return run_sandboxed(policy, spec, caps=optimistic, capture_limit=4096)

    result = attempt(["/bin/sh", "-c", "test \"$(id -u)\" != 0 && grep -q '^CapEff:.0*$' /proc/self/status && echo sandboxed"])
    if result.exit_code != 0 or b"sandboxed" not in result.stdout:
        text = (result.stderr or result.stdout).decode(errors="replace").strip()[-400:]
        hint = ("if this is a container: allow user namespaces (Docker: --security-opt seccomp=unconfined "
                "--security-opt systempaths=unconfined; k8s: procMount Unmasked); on Ubuntu 24.04+: "
                "sysctl kernel.apparmor_restrict_unprivileged_userns=0")
        if "ermission denied" in text and "execvp" in text:
            hint = "a uid that owns nothing cannot execute the probe command"
        return (Capability(False, error=f"bwrap failed with the planner's flags: {text or result.exit_code}", hint=hint),
                Capability(False, error="not checked: bwrap failed"))
    who = "a leased uid" if euid == 0 else f"uid {euid}"
    bwrap = Capability(True, f"bwrap ran as {who} with user/pid/net/ipc/uts namespaces, fresh /proc, sized tmpfs, "
                             "seccomp, caps dropped", detail={"path": tools["bwrap"]})
    interp = attempt([sys.executable, "-c", "import sys, ipaddress; print('ok')"], runtime_paths=python_runtime_paths())
    if interp.exit_code != 0 or b"ok" not in interp.stdout:
        text = (interp.stderr or interp.stdout).decode(errors="replace").strip()[-400:]
        return bwrap, Capability(False, error=f"{sys.executable} does not run in the sandbox: {text}",
                                 hint="every kernel's uid must be able to read and execute the interpreter: build the "
                                      "venv from /usr/bin/python3 in a world-traversable directory and chmod -R a+rX it",
                                 detail={"path": sys.executable})
    return bwrap, Capability(True, f"{sys.executable} runs inside the sandbox",
                             detail={"path": sys.executable, "runtime_paths": list(python_runtime_paths())})
