"""The launch shell: everything that touches the OS to carry out a Plan.

It never probes the host: whoever starts a run passes the host's capabilities (from
``capabilities.detect()``), so the launch shell sits between the planner below it and the
probes and entry points above it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import replace

from ..errors import SandboxUnavailable, UidLeaseError
from ..host import HostCapabilities, host_addresses
from ..planner import Plan, RunSpec
from ..planner import plan as make_plan
from ..planner.privilege import leases_uid
from ..policy import SandboxPolicy
from ..report import Downgrade
from .process import RunResult, SandboxProcess, communicate, start, truncation_marker
from .uids import UidLease, lease_uid

__all__ = ["prepare", "lease_for", "run", "start", "communicate", "RunResult", "SandboxProcess", "truncation_marker"]

log = logging.getLogger(__name__)


def lease_for(policy: SandboxPolicy, caps: HostCapabilities) -> UidLease | None:
    """A uid of its own for a kernel or run under ``policy``, if it needs one (root supervisor,
    no fixed uid). Raises SandboxUnavailable when none can be leased: never a shared fallback."""
    if not (policy.enabled and leases_uid(policy.privilege, caps)):
        return None
    try:
        return lease_uid(*policy.privilege.uid_range)
    except (UidLeaseError, OSError) as e:
        log.warning("no uid could be leased from %s: %s", policy.privilege.uid_range, e)
        raise SandboxUnavailable([Downgrade("privilege", f"no uid of its own for the sandbox: {e}")]) from None


def prepare(policy: SandboxPolicy, spec: RunSpec, caps: HostCapabilities) -> Plan:
    """Plan a run with, unless ``spec.identity`` names one, a leased uid of its own (released
    when the run closes). If planning refuses (SandboxUnavailable), the uid is given back
    before the error propagates."""
    # The host's addresses as they are now (DHCP, VPNs): the egress ruleset refuses them. A
    # denied network has no egress: no need to read them (~0.5 ms of a cold cell).
    if policy.network.mode != "deny":
        caps = replace(caps, host_addresses=host_addresses())
    lease = lease_for(policy, caps) if spec.identity is None else None
    try:
        identity = spec.identity if lease is None else (lease.uid, lease.gid)
        spec = replace(spec, host_env=spec.host_env or dict(os.environ), identity=identity)
        return replace(make_plan(policy, caps, spec), uid_lease=lease)
    except BaseException:
        if lease is not None:
            lease.release()
        raise


def run(policy: SandboxPolicy, spec: RunSpec, *, caps: HostCapabilities,
        timeout: float | None = None, on_output=None, capture_limit: int | None = None,
        stdin_data: bytes | None = None, interrupted=None, session=None) -> RunResult:
    """Plan, launch and wait for one sandboxed run (inside ``session``, a kernel session, if
    given); output is streamed to ``on_output`` and at most ``capture_limit`` bytes are kept."""
    plan = prepare(policy, spec, caps)
    proc = start(plan, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL, session=session)
    return communicate(proc, timeout=timeout, on_output=on_output, retain=capture_limit,
                       stdin_data=stdin_data, interrupted=interrupted)
