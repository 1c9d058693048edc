"""Privilege layer: the sandboxed process is never root.

Under a root supervisor the switch to a real unprivileged uid happens *before* bwrap
(``setpriv``): ``bwrap --uid`` run as root maps the sandbox's "nobody" to host uid 0, so files
it writes through binds are root-owned and RLIMIT_NPROC is not enforced. Under a non-root
supervisor the child simply inherits a non-root uid. Either way capabilities are dropped and
no_new_privs is set (setpriv and bwrap ``--cap-drop ALL``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..capabilities import HostCapabilities
from ..policy import PrivilegePolicy
from ..report import Downgrade, LayerState, Note


@dataclass
class PrivilegeDecision:
    prefix: list[str]  # argv before bwrap (setpriv ...), empty when nothing to switch
    run_as: tuple[str, int, int]  # (user name, uid, gid) the sandboxed code runs as
    layer: LayerState
    downgrades: list[Downgrade] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def plan_privilege(priv: PrivilegePolicy, caps: HostCapabilities) -> PrivilegeDecision:
    account = caps.sandbox_account
    if caps.euid != 0:
        notes = []
        if priv.mode == "drop-to-uid" and priv.uid not in (None, caps.euid):
            notes.append(Note("privilege", f"privilege.uid {priv.uid} ignored: a non-root supervisor cannot switch uid; the sandbox runs as uid {caps.euid}"))
        return PrivilegeDecision(
            [], (caps.user_name, caps.euid, caps.egid),
            LayerState("enforced", "non-root supervisor", {"uid": caps.euid, "gid": caps.egid, "capabilities": "none", "no_new_privs": True}),
            notes=notes,
        )
    # Root supervisor.
    if priv.mode == "inherit":
        return PrivilegeDecision(
            [], ("root", 0, 0), LayerState("degraded", None),
            downgrades=[Downgrade("privilege", "privilege.mode 'inherit' under a root supervisor leaves the sandbox running as host root; use 'drop-to-uid' or run the supervisor as a non-root user")],
        )
    if priv.uid is not None:
        uid, gid, name = priv.uid, priv.gid if priv.gid is not None else priv.uid, "sandbox"
    elif account.ok:
        uid, gid, name = account.detail["uid"], account.detail["gid"], account.detail["name"]
    else:
        return PrivilegeDecision(
            [], ("root", 0, 0), LayerState("degraded", None),
            downgrades=[Downgrade("privilege", f"drop-to-uid needs a target uid: privilege.uid is not set and {account.error}; the sandbox would run as host root")],
        )
    if not caps.setpriv.ok:
        return PrivilegeDecision(
            [], ("root", 0, 0), LayerState("degraded", None),
            downgrades=[Downgrade("privilege", f"switching to uid {uid} needs setpriv, which is unavailable: {caps.setpriv.error}; the sandbox would run as host root")],
        )
    prefix = [caps.tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
              "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return PrivilegeDecision(
        prefix, (name, uid, gid),
        LayerState("enforced", "setpriv", {"uid": uid, "gid": gid, "capabilities": "none", "no_new_privs": True}),
    )
