"""Where a cold cell sandbox's start-up goes: the launch chain piece by piece, and the
alternatives tried for each piece, against bare bwrap running `true` with the same mounts,
interleaved, medians.

    .venv/bin/python bench/launch_chain.py [-n N]

All chains run `true` and are built from one real plan of an `%%sh --memory 256M` cell. The
baseline is bare bwrap with that plan's namespaces, seccomp filter and mounts, /etc bound as
it was before the prepared /etc (a bind per curated host entry, plus the staged files): the
same files seen as in every row. Rows that join cgroups get fresh ones each time (made and
removed outside the timing), as a real run does: a cgroup v1 attach costs what it costs
depending on how recently someone else attached, so reusing one cgroup would flatter it.

Pieces of the chain the launch shell uses now (marked *), and the alternatives measured:
- bwrap with the prepared /etc shared by all runs plus the staged files' dir (kept per run
  identity) on /etc/sandbox-kernel (2 binds)*, or one /etc per run identity with the staged
  files in it (1 bind, but a copy of the host entries per uid: see "first making");
- + setpriv (uid switch, no_new_privs)*; + prlimit (rlimits, inside the user namespace)*;
- + a shell that only execs (its own cost), + the shell that joins the cgroups writing
  cgroup.procs (before), or tasks (what it still does where a thread cannot step in): the
  difference is the attach itself;
- the shell applying cpu/nofile/fsize with ulimit so that prlimit goes (rejected: RLIMIT_NPROC
  set before bwrap's user namespace caps every process of the uid, see planner/resources.py);
- joining the cgroups from a preexec_fn instead of a shell (forks this small bench process;
  a real supervisor is larger and threaded);
- a janitor shell started per run (before) or the supervisor's one janitor told about the
  run and then told to forget it* (the whole-launch rows include it),
  the prepared /etc lookup (a hit) and its first making, the per-run staging dir it replaces;
- the spawning thread stepping into the run's v1 cgroups to spawn (ThreadHop)* instead of the
  shell: the whole launch measured both ways;
- inside a kernel session (what a `%%sh` cell does): nsenter + setpriv (before) or nsenter
  switching the uid itself (--setuid/--setgid)*;
- the whole launch as a cell does it (`launch.run` with `RunSpec.identity` set: the kernel's
  uid, no lease), as a session cell does it (joins a kernel session), and with a uid lease of
  its own (a batch run, a kernel); each right after the previous row and after 150 ms of idle
  (not timed): cells spaced out meet a cold cgroup attach (an RCU grace period when a process
  moves another into a cgroup) that back-to-back ones do not.

The prepared /etc's first making is measured once per supervisor, so it is timed after the
interleaved rows (its file writes would slow whatever row followed it).
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
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def split_chain(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(setpriv ..., bwrap ... --, prlimit ... --) of a planned argv ending in the program."""
    at = next(i for i, a in enumerate(argv) if os.path.basename(a) == "bwrap")
    end = argv.index("--", at)
    after = argv[end + 1:]
    prlimit = after[:after.index("--") + 1] if os.path.basename(after[0]) == "prlimit" else []
    return argv[:at], argv[at:end + 1], prlimit


def per_entry_etc(bwrap: list[str], etc_dir: str, entries: tuple[str, ...], staged: dict[str, str],
                  staging: str) -> list[str]:
    """bwrap's mounts with the prepared /etc and the staged files' dir on it replaced by what
    the planner used to emit: a bind per curated host entry and per staged file."""
    at = bwrap.index(etc_dir)
    assert bwrap[at - 1] == "--ro-bind" and bwrap[at + 1] == "/etc" and bwrap[at + 3] == staging
    binds = [a for name in entries for a in ("--ro-bind-try", f"/etc/{name}", f"/etc/{name}")]
    binds += [a for name in staged for a in ("--ro-bind", f"{staging}/{name}", f"/etc/{name}")]
    return bwrap[:at - 1] + binds + bwrap[at + 5:]


def own_etc(bwrap: list[str], etc_dir: str, staged: dict[str, str], where: str) -> list[str]:
    """The alternative of one /etc per run identity: a copy of the prepared /etc with the staged
    files in it instead of links, bound once, no second bind."""
    shutil.copytree(etc_dir, where, symlinks=True)
    for name, content in staged.items():
        os.unlink(os.path.join(where, name))
        with open(os.path.join(where, name), "w") as f:
            f.write(content)
    at = bwrap.index(etc_dir)
    return bwrap[:at] + [where, "/etc"] + bwrap[at + 5:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--iterations", type=int, default=30)
    n = parser.parse_args().iterations

    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import cgroup as cgroups_mod
    from sandbox_kernel.launch import lease_for, prepare, run
    from sandbox_kernel.launch.session import open_session
    from sandbox_kernel.launch.etc import CACHE, EtcCache
    from sandbox_kernel.launch.janitor import JANITOR
    from sandbox_kernel.launch.process import JOIN_CGROUPS
    from sandbox_kernel.launch.seccomp_bpf import filter_fd
    from sandbox_kernel.planner import ETC_PLACEHOLDER, FD_PLACEHOLDER, STAGED_PLACEHOLDER, RunSpec
    from sandbox_kernel.policy import secure_default, tighten

    caps = detect()
    policy = tighten(secure_default(), {"resources": {"memory_bytes": 256 * 2**20}})
    true = shutil.which("true")
    spec = RunSpec(argv=(true,), runtime="shell", scope="cell")
    plan = prepare(policy, spec, caps)
    etc = CACHE.acquire(plan.etc_entries, tuple(plan.staged_files))
    staged = CACHE.acquire_staged(plan.staged_files, plan.run_as[2])
    fd = filter_fd(plan.seccomp)
    fill = {FD_PLACEHOLDER: str(fd), ETC_PLACEHOLDER: etc.path, STAGED_PLACEHOLDER: staged.path}
    argv = [fill.get(a, a) for a in plan.argv]
    setpriv, bwrap, prlimit = split_chain(argv)
    staging = tempfile.mkdtemp(prefix="sandbox-kernel-bench-")
    os.chmod(staging, 0o755)
    bwrap_old_etc = per_entry_etc(bwrap, etc.path, plan.etc_entries, plan.staged_files, staged.path)
    bwrap_own_etc = own_etc(bwrap, etc.path, plan.staged_files, os.path.join(staging, "etc"))
    # A kernel's identity, leased once, as a cell reuses it.
    kernel_lease = lease_for(policy, caps)
    cell_spec = replace(spec, identity=(kernel_lease.uid, kernel_lease.gid)) if kernel_lease else spec

    # A kernel session as a kernel's cells join it (the kernel's uid owns its scratch).
    session_dir = tempfile.mkdtemp(prefix="sandbox-kernel-bench-session-")
    identity = cell_spec.identity or (os.geteuid(), os.getegid())
    session = open_session(session_dir, 64 << 20, identity, unshare=caps.tool("unshare"), nsenter=caps.tool("nsenter"))
    session_spec = replace(cell_spec, scratch_source=session_dir, inputs_in_scratch=True)
    enter = session.join_prefix()
    enter_switch = enter[:-1] + [f"--setuid={identity[0]}", f"--setgid={identity[1]}", "--"]

    G = "{cgroups}"  # stands for the cgroup files of fresh cgroups, made for each run
    join = ["/bin/sh", "-c", JOIN_CGROUPS, "sandbox-join", G, "--"]

    ulimits = {"--cpu": "-t", "--nofile": "-n", "--fsize": "-f"}
    ulimit_cmds = []
    for flag in prlimit[1:-1]:
        name, _, value = flag.partition("=")
        if name in ulimits:
            ulimit_cmds.append(f"ulimit -{ulimits[name][1]} {int(value) // 512 if name == '--fsize' else value}")
    join_ulimit = ('for p; do [ "$p" = -- ] && break; echo 0 > "$p" || exit 125; shift; done; shift; '
                   + "; ".join(ulimit_cmds) + '; exec "$@"')

    def chain(cmd: list[str], cgroup: str | None = None, idle: float = 0.0):
        def once() -> float:
            time.sleep(idle)
            cg = cgroups_mod.create(plan.cgroup) if cgroup else None
            full = cmd
            if cg is not None:
                files = [os.path.join(p, cgroup) for p in cg.paths]
                full = [c for part in cmd for c in (files if part == G else [part])]
            os.lseek(fd, 0, os.SEEK_SET)  # bwrap reads the filter from the shared offset
            t0 = time.perf_counter()
            subprocess.run(full, pass_fds=(fd,), env=plan.env, cwd="/", check=True)
            took = time.perf_counter() - t0
            if cg is not None:
                cg.kill_all()
                cg.remove()
            return took
        return once

    def preexec_join() -> float:
        cg = cgroups_mod.create(plan.cgroup)

        def enter() -> None:
            for p in cg.paths:
                with open(os.path.join(p, "tasks"), "w") as f:
                    f.write("0")
        os.lseek(fd, 0, os.SEEK_SET)
        t0 = time.perf_counter()
        subprocess.run([*setpriv, *bwrap, *prlimit, true], pass_fds=(fd,), env=plan.env, cwd="/", check=True,
                       preexec_fn=enter)
        took = time.perf_counter() - t0
        cg.kill_all()
        cg.remove()
        return took

    def timed(fn):
        def once() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return once

    def janitor_per_run() -> None:  # what each run did before: a shell that waits for "done"
        j = subprocess.Popen(["/bin/sh", "-c", 'read -r word; [ "$word" = done ] && exit 0; rm -rf -- "$1"', "janitor", staging],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                             start_new_session=True)
        j.stdin.write(b"done\n")
        j.stdin.close()
        reap.append(j)  # not waited for, as the launch shell did not

    def janitor_shared() -> None:
        JANITOR.forget(JANITOR.watch(cgroups=[os.path.join(staging, "no-such-cgroup")]))

    def etc_first() -> float:
        cache = EtcCache()
        t0 = time.perf_counter()
        made = cache.acquire(plan.etc_entries, tuple(plan.staged_files))
        took = time.perf_counter() - t0
        cache.release(made)
        cache.close()
        return took

    def etc_hit() -> None:
        CACHE.release(CACHE.acquire(plan.etc_entries, tuple(plan.staged_files)))
        CACHE.release(CACHE.acquire_staged(plan.staged_files, plan.run_as[2]))

    def staging_per_run() -> None:  # what each run did before: a staging dir with its files
        d = tempfile.mkdtemp(prefix="sandbox-kernel-run-")
        for name, content in plan.staged_files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(content)
            os.chmod(os.path.join(d, name), 0o444)
        os.chmod(d, 0o710)
        shutil.rmtree(d)

    def whole(which: RunSpec, idle: float = 0.0, hop: bool = True, in_session: bool = False):
        def once() -> float:
            time.sleep(idle)
            saved = cgroups_mod.RunCgroups.thread_hop
            if not hop:
                cgroups_mod.RunCgroups.thread_hop = lambda self: None
            try:
                t0 = time.perf_counter()
                assert run(policy, which, caps=caps, session=session if in_session else None).exit_code == 0
                return time.perf_counter() - t0
            finally:
                cgroups_mod.RunCgroups.thread_hop = saved
        return once

    rows = {
        "plain true": chain([true]),
        "bare bwrap, per-entry /etc binds (baseline)": chain([*bwrap_old_etc, true]),
        "alt: bare bwrap, one /etc per identity (1 bind)": chain([*bwrap_own_etc, true]),
        "bare bwrap, shared /etc + staged dir (2 binds) *": chain([*bwrap, true]),
        "  same, after 150 ms idle": chain([*bwrap, true], idle=0.15),
        "+ setpriv *": chain([*setpriv, *bwrap, true]),
        "+ setpriv + prlimit *": chain([*setpriv, *bwrap, *prlimit, true]),
        "+ shell exec only (joins nothing)": chain(["/bin/sh", "-c", 'exec "$@"', "sh", *setpriv, *bwrap, *prlimit, true]),
        "+ cgroup shell writing cgroup.procs (before)": chain([*join, *setpriv, *bwrap, *prlimit, true], "cgroup.procs"),
        "+ cgroup shell writing tasks (v1; v2: procs)": chain([*join, *setpriv, *bwrap, *prlimit, true], "tasks"),
        "alt: shell joins tasks + ulimit, no prlimit": chain(["/bin/sh", "-c", join_ulimit, "j", G, "--", *setpriv, *bwrap, true], "tasks"),
        "alt: preexec_fn joins tasks, no shell": preexec_join,
        "old chain, per-entry /etc + cgroup.procs": chain([*join, *setpriv, *bwrap_old_etc, *prlimit, true], "cgroup.procs"),
        "in a session: nsenter + setpriv (before)": chain([*enter, *setpriv, *bwrap, *prlimit, true]) if setpriv else None,
        "in a session: nsenter switching the uid *": chain([*(enter_switch if setpriv else enter), *bwrap, *prlimit, true]),
        "a janitor started per run (before)": timed(janitor_per_run),
        "the supervisor's janitor told, then told to forget *": timed(janitor_shared),
        "prepared /etc + staged files, lookup (hit) *": timed(etc_hit),
        "per-run staging dir + 6 files (before)": timed(staging_per_run),
        "whole launch as a cell, shell joins cgroups (before)": whole(cell_spec, hop=False),
        "whole launch as a cell does it (identity, no lease) *": whole(cell_spec),
        "  same, after 150 ms idle, shell joins (before)": whole(cell_spec, idle=0.15, hop=False),
        "  same, after 150 ms idle *": whole(cell_spec, idle=0.15),
        "whole launch as a session cell (%%sh in a kernel) *": whole(session_spec, in_session=True),
        "  same (session cell), after 150 ms idle *": whole(session_spec, idle=0.15, in_session=True),
        "whole launch with a uid lease": whole(spec),
    }
    rows = {name: fn for name, fn in rows.items() if fn is not None}  # setpriv rows: root only
    reap: list[subprocess.Popen] = []
    times: dict[str, list[float]] = {name: [] for name in rows}
    load = os.getloadavg()[0]
    try:
        for fn in rows.values():
            fn()
        for _ in range(n):
            for name, fn in rows.items():
                times[name].append(fn())
        first_making = [etc_first() for _ in range(max(3, n // 5))]
    finally:
        for j in reap:
            j.wait()
        session.close()
        CACHE.release(etc)
        CACHE.release(staged)
        CACHE.close()
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        for lease in (plan.uid_lease, kernel_lease):
            if lease is not None:
                lease.release()
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    base = med["bare bwrap, per-entry /etc binds (baseline)"]
    one = med["bare bwrap, shared /etc + staged dir (2 binds) *"]
    print(f"launch chain of a cold %%sh --memory 256M cell, medians of {n} (interleaved); "
          f"load average at start {load:.2f} on {os.cpu_count()} CPUs; cgroup v{plan.cgroup.version if plan.cgroup else '-'}; "
          f"/etc: {len(plan.etc_entries)} host entries + {len(plan.staged_files)} staged files; * = what the launch shell does now")
    print(f"{'':52} {'median ms':>10} {'x baseline':>11} {'x 2-bind bwrap':>15}")
    for name, ms in med.items():
        print(f"{name:52} {ms:>10.2f} {ms / base:>10.2f}x {ms / one:>14.2f}x")
    ms = statistics.median(first_making) * 1000
    print(f"{'prepared /etc, first making (once per supervisor)':52} {ms:>10.2f} {ms / base:>10.2f}x {ms / one:>14.2f}x")
    print("goal: a cold %%sh --memory 256M cell <= 2x bare bwrap with the same mounts (the 2-bind column)")


if __name__ == "__main__":
    main()
