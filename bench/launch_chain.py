"""Where a cold cell sandbox's start-up goes: the launch chain piece by piece, against bare
bwrap running `true` with the same mounts, interleaved, medians.

    .venv/bin/python bench/launch_chain.py [-n N]

Rows (each runs `true`; all but the first and last are built from one real plan of an
`%%sh --memory 256M` cell, staged for real):
- plain `true`;
- bare bwrap with the plan's mounts, namespaces and seccomp filter (the baseline);
- the same with one prepared /etc directory bound once instead of a bind per curated entry;
- + setpriv (uid switch, no_new_privs); + prlimit (rlimits); + the shell that joins cgroups;
- the whole launch (`launch.run`: plan, uid lease, staging, cgroups, janitor, chain, teardown).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def split_chain(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(setpriv ..., bwrap ... --, prlimit ... --) of a planned argv ending in the program."""
    at = next(i for i, a in enumerate(argv) if os.path.basename(a) == "bwrap")
    end = argv.index("--", at)
    after = argv[end + 1:]
    prlimit = after[:after.index("--") + 1] if os.path.basename(after[0]) == "prlimit" else []
    return argv[:at], argv[at:end + 1], prlimit


def one_etc(bwrap: list[str], staging: str) -> list[str]:
    """bwrap's mounts with the curated /etc entries and the staged files replaced by a single
    bind of one prepared directory holding copies of both."""
    etc = os.path.join(staging, "etc")
    os.makedirs(etc, exist_ok=True)
    out, i = [], 0
    bound = False
    while i < len(bwrap):
        a = bwrap[i]
        if a in ("--ro-bind", "--ro-bind-try") and bwrap[i + 2].startswith("/etc/"):
            source, name = bwrap[i + 1], os.path.basename(bwrap[i + 2])
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(etc, name), symlinks=True, dirs_exist_ok=True)
            elif os.path.lexists(source):
                shutil.copy2(source, os.path.join(etc, name), follow_symlinks=False)
            if not bound:
                out += ["--ro-bind", etc, "/etc"]
                bound = True
            i += 3
            continue
        out.append(a)
        i += 1
    os.chmod(staging, 0o755)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--iterations", type=int, default=30)
    n = parser.parse_args().iterations

    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import prepare, run
    from sandbox_kernel.launch.process import JOIN_CGROUPS, stage
    from sandbox_kernel.launch import cgroup as cgroups_mod
    from sandbox_kernel.launch.seccomp_bpf import filter_fd
    from sandbox_kernel.planner import FD_PLACEHOLDER, RunSpec
    from sandbox_kernel.policy import secure_default, tighten

    caps = detect()
    policy = tighten(secure_default(), {"resources": {"memory_bytes": 256 * 2**20}})
    true = shutil.which("true")
    spec = RunSpec(argv=(true,), runtime="shell", scope="cell")
    plan = prepare(policy, spec, caps)
    stage(plan)
    fd = filter_fd(plan.seccomp)
    argv = [str(fd) if a == FD_PLACEHOLDER else a for a in plan.argv]
    setpriv, bwrap, prlimit = split_chain(argv)
    tmp = tempfile.mkdtemp(prefix="sandbox-kernel-bench-")
    bwrap_one_etc = one_etc(bwrap, tmp)
    cgroups = cgroups_mod.create(plan.cgroup)
    procs = [os.path.join(p, "cgroup.procs") for p in cgroups.paths]
    join = ["/bin/sh", "-c", JOIN_CGROUPS, "sandbox-join", *procs, "--"]
    variants = {
        "plain true": [true],
        "bare bwrap, same mounts (baseline)": [*bwrap, true],
        "bwrap, one prepared /etc": [*bwrap_one_etc, true],
        "setpriv + bwrap": [*setpriv, *bwrap, true],
        "setpriv + bwrap + prlimit": [*setpriv, *bwrap, *prlimit, true],
        "cgroup shell + setpriv + bwrap + prlimit": [*join, *setpriv, *bwrap, *prlimit, true],
    }

    def spawn(cmd: list[str]):
        def once() -> None:
            os.lseek(fd, 0, os.SEEK_SET)  # bwrap reads the filter from the shared offset
            subprocess.run(cmd, pass_fds=(fd,), env=plan.env, cwd="/", check=True)
        return once

    def full_launch() -> None:
        assert run(policy, spec, caps=caps).exit_code == 0

    runs = {name: spawn(cmd) for name, cmd in variants.items()}
    runs["whole launch (launch.run)"] = full_launch
    times: dict[str, list[float]] = {name: [] for name in runs}
    load = os.getloadavg()[0]
    try:
        for fn in runs.values():
            fn()
        for _ in range(n):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        cgroups.kill_all()
        cgroups.remove()
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(plan.staging_dir, ignore_errors=True)
        if plan.uid_lease is not None:
            plan.uid_lease.release()
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    base = med["bare bwrap, same mounts (baseline)"]
    print(f"launch chain of a cold %%sh --memory 256M cell, medians of {n} (interleaved); "
          f"load average at start {load:.2f} on {os.cpu_count()} CPUs; "
          f"{sum(1 for a in bwrap if a.startswith('--ro-bind'))} ro binds, of them "
          f"{sum(1 for i, a in enumerate(bwrap) if a.startswith('--ro-bind') and bwrap[i + 2].startswith('/etc/'))} in /etc")
    print(f"{'':44} {'median ms':>10} {'x bare bwrap':>13}")
    for name, ms in med.items():
        print(f"{name:44} {ms:>10.2f} {ms / base:>12.2f}x")
    print("goal: a cold %%sh --memory 256M cell <= 2x bare bwrap")


if __name__ == "__main__":
    main()
