"""Compile the planner's seccomp plan into the BPF program bwrap loads (``--seccomp FD``)."""

from __future__ import annotations

import errno
import os

from ..planner.seccomp import SeccompPlan

TIOCSTI, TIOCLINUX = 0x5412, 0x541C  # push keystrokes into a terminal's input queue


def _build(plan: SeccompPlan):
    import pyseccomp as sc  # ctypes binding onto the system libseccomp.so.2

    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in plan.denied:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, OSError, RuntimeError):
            continue  # not a syscall on this architecture
    for request in (TIOCSTI, TIOCLINUX):
        flt.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    return flt


def filter_fd(plan: SeccompPlan) -> int:
    """A readable fd (memfd, at offset 0) holding the BPF program. The caller closes it."""
    fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            _build(plan).export_bpf(f)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    except BaseException:
        os.close(fd)
        raise


def compile_filter(plan: SeccompPlan) -> bytes:
    fd = filter_fd(plan)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
