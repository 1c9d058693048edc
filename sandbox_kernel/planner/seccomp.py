"""Seccomp layer: an allowlist of the syscalls this host's libseccomp knows, minus the ones
untrusted notebook code has no business making.

Three answers:
- **EPERM** for the denied syscalls below;
- **EAFNOSUPPORT** for ``socket``/``socketpair`` in any address family but AF_UNIX, AF_INET,
  AF_INET6 and AF_NETLINK (NETLINK_ROUTE only; another netlink protocol gets
  EPROTONOSUPPORT): a network namespace covers only the IP families, so AF_VSOCK (the
  hypervisor and VM-wide ports), AF_PACKET, AF_BLUETOOTH, AF_ALG, AF_CAN, AF_TIPC... are shut;
- **ENOSYS** for every syscall libseccomp does not know (newer than its table): a syscall added
  to the kernel later is denied until reviewed, like io_uring once was. Programs treat ENOSYS as
  "older kernel" and fall back.

NETLINK_ROUTE stays because getifaddrs needs it (node's ``os.networkInterfaces()``, Python's
``socket.if_nameindex()``, ``ip addr``); it only reads the sandbox's own namespace, whose links
it cannot change without CAP_NET_ADMIN. getaddrinfo, ipykernel/ZMQ and pip need no netlink.

The denied syscalls and why:
- ptrace, process_vm_readv/writev, kcmp, pidfd_getfd: reading or steering other processes.
- keyctl, add_key, request_key: the kernel keyring is shared per uid and is a long-lived
  exploit surface.
- bpf, perf_event_open, userfaultfd, io_uring_setup/enter/register: the classic
  kernel-exploit primitives (io_uring also bypasses syscall filtering for what it submits).
- modify_ldt: 16-bit segments, an old exploit aid with no use in notebooks.
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

from ..host import HostCapabilities
from ..report import Downgrade, LayerState

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "modify_ldt",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "syslog", "lookup_dcookie", "iopl", "ioperm",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "vhangup", "uselib", "personality",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "unshare", "setns",
    "name_to_handle_at", "open_by_handle_at",
)
# Address families a sandbox may create sockets in (Linux numbering, the same on every arch).
SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
AF_NETLINK, NETLINK_ROUTE = 16, 0
FD_PLACEHOLDER = "{seccomp_fd}"


@dataclass(frozen=True)
class SeccompPlan:
    denied: tuple[str, ...] = DENIED_SYSCALLS  # EPERM
    socket_families: tuple[int, ...] = tuple(SOCKET_FAMILIES.values())  # others: EAFNOSUPPORT
    netlink_protocols: tuple[int, ...] = (NETLINK_ROUTE,)  # AF_NETLINK, these protocols only


@dataclass
class SeccompDecision:
    plan: SeccompPlan | None
    layer: LayerState
    downgrades: list[Downgrade] = field(default_factory=list)


def plan_seccomp(caps: HostCapabilities) -> SeccompDecision:
    if not caps.bwrap.ok:
        reason = f"the filter is loaded by bwrap, which is unavailable: {caps.bwrap.error}"
        return SeccompDecision(None, LayerState("degraded", None), [Downgrade("seccomp", reason)])
    if not caps.seccomp.ok:
        reason = f"no seccomp filter can be built here: {caps.seccomp.error}"
        return SeccompDecision(None, LayerState("degraded", None), [Downgrade("seccomp", reason)])
    known = caps.seccomp.detail.get("known_syscalls")
    detail = {
        "action": "EPERM",
        "denied": list(DENIED_SYSCALLS),
        "socket_families": sorted(SOCKET_FAMILIES) + ["AF_NETLINK (NETLINK_ROUTE only)"],
        "other_socket_families": "EAFNOSUPPORT",
        "unknown_syscalls": "ENOSYS" + (f" (libseccomp knows {known} syscalls here)" if known else ""),
        "ioctl": "TIOCSTI and TIOCLINUX refused (EPERM)",
    }
    return SeccompDecision(SeccompPlan(), LayerState("enforced", "seccomp-bpf", detail))
