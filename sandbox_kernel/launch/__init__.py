"""The launch shell: everything that touches the OS to carry out a Plan."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

from ..capabilities import HostCapabilities, detect, host_addresses
from ..planner import Plan, RunSpec, plan as make_plan
from ..policy import SandboxPolicy
from .process import RunResult, SandboxProcess, communicate, make_staging_dir, start, truncation_marker

__all__ = ["prepare", "run", "start", "communicate", "RunResult", "SandboxProcess", "truncation_marker"]


def prepare(policy: SandboxPolicy, spec: RunSpec, caps: HostCapabilities | None = None) -> Plan:
    """Plan a run with a fresh private staging dir. If planning refuses (SandboxUnavailable),
    the staging dir is removed before the error propagates."""
    # The host's addresses as they are now (DHCP, VPNs): the egress ruleset refuses them.
    caps = replace(caps or detect(), host_addresses=host_addresses())
    staging = make_staging_dir()
    try:
        spec = replace(spec, staging_dir=staging, host_env=spec.host_env or dict(os.environ))
        return make_plan(policy, caps, spec)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run(policy: SandboxPolicy, spec: RunSpec, *, caps: HostCapabilities | None = None,
        timeout: float | None = None, on_output=None, capture_limit: int | None = None,
        stdin_data: bytes | None = None, interrupted=None) -> RunResult:
    """Plan, launch and wait for one sandboxed run; output is streamed to ``on_output`` and
    at most ``capture_limit`` bytes are kept in the result."""
    import subprocess

    plan = prepare(policy, spec, caps)
    proc = start(plan, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL)
    return communicate(proc, timeout=timeout, on_output=on_output, retain=capture_limit,
                       stdin_data=stdin_data, interrupted=interrupted)
