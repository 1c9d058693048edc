"""Cost of the seccomp filter on a syscall-heavy workload, and why the filter is an allowlist.

    .venv/bin/python bench/seccomp.py [-n ROUNDS] [--count SYSCALL_PAIRS]

The same bwrap sandbox runs ``dd bs=1`` (one read and one write syscall per byte) with
(a) no filter, (b) a denylist filter (default allow, the denied syscalls and socket families
only), (c) the sandbox's filter (an allowlist of every syscall libseccomp knows, default
ENOSYS). Rounds are interleaved, medians are printed with their ratio to (a). Also prints the
size of each BPF program and the time to build the sandbox's (once per process; cached).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import statistics
import subprocess
import time


def denylist_bpf(plan) -> bytes:
    """What the filter was before the allowlist: default allow, the same refusals."""
    import pyseccomp as sc

    from sandbox_kernel.launch.seccomp_bpf import MAX_FAMILY, SOCKET_CALLS

    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in plan.denied:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, OSError):
            continue
    for call in SOCKET_CALLS:
        for family in range(MAX_FAMILY + 1):
            if family not in plan.socket_families and family != 16:
                flt.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.EQ, family))
    r, w = os.pipe()
    with os.fdopen(w, "wb") as f:
        flt.export_bpf(f)
    with os.fdopen(r, "rb") as f:
        return f.read()


def timed(bwrap: str, bpf: bytes | None, count: int) -> float:
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--die-with-parent"]
    fds: tuple[int, ...] = ()
    if bpf is not None:
        fd = os.memfd_create("bench-seccomp")
        os.write(fd, bpf)
        os.lseek(fd, 0, os.SEEK_SET)
        argv += ["--seccomp", str(fd)]
        fds = (fd,)
    argv += ["--", "dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}"]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, pass_fds=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    for fd in fds:
        os.close(fd)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--count", type=int, default=1_000_000, help="bytes dd copies one at a time")
    args = parser.parse_args()
    from sandbox_kernel.launch import seccomp_bpf
    from sandbox_kernel.planner.seccomp import SeccompPlan

    plan = SeccompPlan()
    t0 = time.perf_counter()
    allow = seccomp_bpf.compile_filter(plan)
    build_ms = (time.perf_counter() - t0) * 1000
    variants = {"no filter": None, "denylist": denylist_bpf(plan), "allowlist (ours)": allow}
    bwrap = shutil.which("bwrap")
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for name, bpf in variants.items():
        timed(bwrap, bpf, args.count // 10)  # warm-up
    for _ in range(args.n):
        for name, bpf in variants.items():
            samples[name].append(timed(bwrap, bpf, args.count))
    base = statistics.median(samples["no filter"])
    syscalls = 2 * args.count
    print(f"dd bs=1 count={args.count} ({syscalls} syscalls), median of {args.n} interleaved rounds")
    for name, bpf in variants.items():
        med = statistics.median(samples[name])
        size = "-" if bpf is None else f"{len(bpf) // 8} BPF instructions"
        extra_ns = (med - base) / syscalls * 1e9
        print(f"  {name:18} {med * 1000:8.1f} ms  ratio {med / base:5.2f}  {extra_ns:+6.0f} ns/syscall  ({size})")
    print(f"  building our filter: {build_ms:.1f} ms once per process "
          f"({len(seccomp_bpf.known_syscalls())} syscalls known to libseccomp here)")


if __name__ == "__main__":
    main()
