"""Privilege layer: the sandboxed process is never root, and under a root supervisor every
kernel (every run) has a uid of its own.

Under a root supervisor the switch to a real unprivileged uid happens *before* bwrap
(``setpriv``, or the ``nsenter`` that joins a kernel session or egress namespace): ``bwrap
--uid`` run as root maps the sandbox's "nobody" to host uid 0, so files
it writes through binds are root-owned and RLIMIT_NPROC is not enforced. Which uid: the one
the launch shell leased for this kernel from ``privilege.uid_range`` (``RunSpec.identity``;
a kernel's cells get the kernel's), so two kernels can never signal, ptrace or open each
other's files; or ``privilege.uid`` when the operator fixed one (shared by every sandbox).

Under a non-root supervisor the child inherits the supervisor's uid: every sandbox of that
supervisor shares it and they are kept apart by namespaces only. That cannot be helped without
root, and the report says so in a note (not a downgrade: the layer's promise, never root and
no capabilities, is kept; tenants get their own uid by getting their own supervisor). Either
way capabilities are dropped and no_new_privs is set (setpriv and bwrap ``--cap-drop ALL``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..host import HostCapabilities
from ..policy import PrivilegePolicy
from ..report import Downgrade, LayerState, Note

# The uid of a plan made without a lease (a dry run such as ``doctor``): start() refuses it.
UNLEASED = -1


@dataclass
class PrivilegeDecision:
    prefix: list[str]  # argv before bwrap (setpriv ...), empty when nothing to switch
    run_as: tuple[str, int, int]  # (user name, uid, gid) the sandboxed code runs as
    layer: LayerState
    downgrades: list[Downgrade] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    # (uid, gid) the launch shell's nsenter switches to, instead of a setpriv prefix
    nsenter_switch: tuple[int, int] | None = None


def leases_uid(priv: PrivilegePolicy, caps: HostCapabilities) -> bool:
    """Does a run under this policy need a uid leased from ``priv.uid_range``?"""
    return caps.euid == 0 and priv.mode == "drop-to-uid" and priv.uid is None and caps.uid_range.ok


def plan_privilege(priv: PrivilegePolicy, caps: HostCapabilities,
                   identity: tuple[int, int] | None = None, joins_namespaces: bool = False) -> PrivilegeDecision:
    """``joins_namespaces``: the launch shell puts ``nsenter`` in front of this run (a kernel
    session's or the egress namespace): under a root supervisor that nsenter switches the uid
    (``--setuid/--setgid``, dropping supplementary groups) and setpriv is not needed, one
    program fewer per launch. What setpriv adds beyond that is moot there: bwrap sets
    no_new_privs first thing, and the sandbox's user namespace starts with a bounding set of
    its own, which ``--cap-drop ALL`` empties."""
    if caps.euid != 0:
        notes = [Note("privilege", f"a non-root supervisor cannot give each kernel its own uid: every sandbox it "
                                   f"starts runs as uid {caps.euid} and is kept from the others by namespaces only "
                                   "(with filesystem 'off' they can read each other's files); one supervisor per "
                                   "tenant, or a root supervisor, separates tenants by uid")]
        if priv.mode == "drop-to-uid" and priv.uid not in (None, caps.euid):
            notes.append(Note("privilege", f"privilege.uid {priv.uid} ignored: a non-root supervisor cannot switch uid; "
                                           f"the sandbox runs as uid {caps.euid}"))
        return PrivilegeDecision(
            [], (caps.user_name, caps.euid, caps.egid),
            LayerState("enforced", "non-root supervisor", {"uid": caps.euid, "gid": caps.egid, "uid_per_kernel": False,
                                                           "capabilities": "none", "no_new_privs": True}),
            notes=notes,
        )
    # Root supervisor.
    if priv.mode == "inherit":
        return PrivilegeDecision(
            [], ("root", 0, 0), LayerState("degraded", None),
            downgrades=[Downgrade("privilege", "privilege.mode 'inherit' under a root supervisor leaves the sandbox running as host "
                                               "root; use 'drop-to-uid' or run the supervisor as a non-root user")],
        )
    notes: list[Note] = []
    first, last = priv.uid_range
    if priv.uid is not None:
        uid, gid = priv.uid, priv.gid if priv.gid is not None else priv.uid
        per_kernel = False
        notes.append(Note("privilege", f"privilege.uid {uid} is fixed: every sandbox of this policy runs as it, so "
                                       "kernels can signal each other's processes and open each other's files where "
                                       "they see them; leave it unset for one uid per kernel"))
    elif caps.uid_range.ok:
        uid, gid = identity if identity is not None else (UNLEASED, UNLEASED)
        per_kernel = True
    else:
        return PrivilegeDecision(
            [], ("root", 0, 0), LayerState("degraded", None),
            downgrades=[Downgrade("privilege", f"one uid per kernel needs uid leases, which are unavailable: {caps.uid_range.error}; "
                                               "the sandbox would run as host root")],
        )
    detail = {"uid": uid if uid != UNLEASED else None, "gid": gid if gid != UNLEASED else None,
              "uid_per_kernel": per_kernel, "capabilities": "none", "no_new_privs": True}
    if per_kernel:
        detail["uid_range"] = [first, last]
    if joins_namespaces:
        return PrivilegeDecision([], ("sandbox", uid, gid), LayerState("enforced", "nsenter", detail), notes=notes,
                                 nsenter_switch=(uid, gid))
    if not caps.setpriv.ok:
        return PrivilegeDecision(
            [], ("root", 0, 0), LayerState("degraded", None),
            downgrades=[Downgrade("privilege", "switching to an unprivileged uid needs setpriv, which is unavailable: "
                                               f"{caps.setpriv.error}; the sandbox would run as host root")],
        )
    prefix = [caps.tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
              "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return PrivilegeDecision(prefix, ("sandbox", uid, gid), LayerState("enforced", "setpriv", detail), notes=notes)
