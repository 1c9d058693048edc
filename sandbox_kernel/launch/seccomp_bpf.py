"""Compile the planner's seccomp plan into the BPF program bwrap loads (``--seccomp FD``)."""

from __future__ import annotations

import errno
import os
from functools import lru_cache

from ..planner.seccomp import AF_NETLINK, SeccompPlan

TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # push keystrokes into a terminal's input queue
MAX_SYSCALL_NR = 1024  # above every syscall number of every Linux arch libseccomp handles
MAX_FAMILY = 63  # AF_MAX is 46 in Linux 6.x: room for families added later
MAX_NETLINK = 31  # netlink protocols are 0..MAX_LINKS-1 (32)
SOCKET_CALLS = ("socket", "socketpair")


@lru_cache(maxsize=1)
def known_syscalls() -> tuple[str, ...]:
    """Every syscall of the native arch that this host's libseccomp has a name for."""
    import pyseccomp as sc

    arch, names = sc.system_arch(), []
    for nr in range(MAX_SYSCALL_NR):
        try:
            names.append(sc.resolve_syscall(arch, nr).decode())
        except ValueError:
            continue
    return tuple(names)


def _build(plan: SeccompPlan):
    import pyseccomp as sc  # ctypes binding onto the system libseccomp.so.2

    # Default: ENOSYS, so a syscall newer than libseccomp's table is denied until reviewed.
    # A foreign-arch syscall (int 0x80, x32) hits libseccomp's bad-arch action: kill.
    flt = sc.SyscallFilter(defaction=sc.ERRNO(errno.ENOSYS))
    flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary tree: ~360 rules, a few compares per call
    denied = set(plan.denied)
    for name in known_syscalls():
        if name in denied:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        elif name not in SOCKET_CALLS:
            flt.add_rule(sc.ALLOW, name)
    # socket(family, type, protocol). libseccomp compares all 64 bits of an argument, while the
    # kernel reads an int: any value with high bits set is refused too (GT), so a family cannot
    # be smuggled past in the upper half.
    for call in SOCKET_CALLS:
        for family in range(MAX_FAMILY + 1):
            if family in plan.socket_families:
                flt.add_rule(sc.ALLOW, call, sc.Arg(0, sc.EQ, family))
            elif family != AF_NETLINK or not plan.netlink_protocols:
                flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.EQ, family))
        flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.GT, MAX_FAMILY))
        if plan.netlink_protocols:
            for protocol in range(MAX_NETLINK + 1):
                action = sc.ALLOW if protocol in plan.netlink_protocols else sc.ERRNO(errno.EPROTONOSUPPORT)
                flt.add_rule(action, call, sc.Arg(0, sc.EQ, AF_NETLINK), sc.Arg(2, sc.EQ, protocol))
            flt.add_rule(sc.ERRNO(errno.EPROTONOSUPPORT), call, sc.Arg(0, sc.EQ, AF_NETLINK), sc.Arg(2, sc.GT, MAX_NETLINK))
    for request in (TIOCSTI, TIOCLINUX):
        flt.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    return flt


@lru_cache(maxsize=4)
def compile_filter(plan: SeccompPlan) -> bytes:
    """The BPF program (built once per plan and process: building takes ~10 ms)."""
    r, w = os.pipe()
    try:
        with os.fdopen(os.dup(w), "wb") as f:
            # A pipe holds 64 KiB; a BPF program is at most 4096 instructions of 8 bytes.
            _build(plan).export_bpf(f)
        os.close(w)
        w = -1
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def filter_fd(plan: SeccompPlan) -> int:
    """A readable fd (memfd, at offset 0) holding the BPF program. The caller closes it."""
    fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, compile_filter(plan))
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    except BaseException:
        os.close(fd)
        raise
