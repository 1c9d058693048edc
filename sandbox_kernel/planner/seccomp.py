"""Seccomp layer: syscalls untrusted notebook code has no business making fail with EPERM.

The list and why each is on it:
- ptrace, process_vm_readv/writev, kcmp, pidfd_getfd: reading or steering other processes.
- keyctl, add_key, request_key: the kernel keyring is shared per uid and is a long-lived
  exploit surface.
- bpf, perf_event_open, userfaultfd: the classic kernel-exploit primitives.
- kexec_load, kexec_file_load, init_module, finit_module, delete_module, reboot, swapon,
  swapoff, acct, quotactl, syslog, lookup_dcookie, iopl, ioperm, settimeofday, clock_settime,
  clock_adjtime, adjtimex, vhangup, nfsservctl, uselib, personality: host administration.
- mount, umount2, pivot_root, chroot, move_mount, open_tree, fsopen, fsmount, fsconfig, fspick,
  mount_setattr, unshare, setns: the mount family and namespace changes; the sandbox's own
  layout is final (cell sandboxes are started from outside, never nested).
- name_to_handle_at, open_by_handle_at: bypass path-based confinement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..capabilities import HostCapabilities
from ..report import Downgrade, LayerState

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "syslog", "lookup_dcookie", "iopl", "ioperm",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "uselib", "personality",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "unshare", "setns",
    "name_to_handle_at", "open_by_handle_at",
)
FD_PLACEHOLDER = "{seccomp_fd}"


@dataclass(frozen=True)
class SeccompPlan:
    denied: tuple[str, ...] = DENIED_SYSCALLS


@dataclass
class SeccompDecision:
    plan: SeccompPlan | None
    layer: LayerState
    downgrades: list[Downgrade] = field(default_factory=list)


def plan_seccomp(caps: HostCapabilities) -> SeccompDecision:
    if not caps.bwrap.ok:
        return SeccompDecision(None, LayerState("degraded", None), [Downgrade("seccomp", f"the filter is loaded by bwrap, which is unavailable: {caps.bwrap.error}")])
    if not caps.seccomp.ok:
        return SeccompDecision(None, LayerState("degraded", None), [Downgrade("seccomp", f"no seccomp filter can be built here: {caps.seccomp.error}")])
    return SeccompDecision(
        SeccompPlan(), LayerState("enforced", "seccomp-bpf", {"action": "EPERM", "denied": list(DENIED_SYSCALLS)})
    )
