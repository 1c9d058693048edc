"""Spawn overhead of the sandbox: a sandboxed ``true`` against a plain ``true``, measured in the
same process, plus the bring-up cost of allowlisted egress.

    .venv/bin/python bench/spawn.py [-n ITERATIONS]

Medians over N runs after one warm-up each; the capability probe is done (and cached) before
timing starts. The egress rows plumb a real namespace + nft + slirp4netns, so the whole bench
re-executes itself inside an outer network namespace with no route out (nothing is sent, but
a test-like guarantee costs nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

OUTER_NETNS_FLAG = "SANDBOX_KERNEL_BENCH_IN_NETNS"


def reexec_in_outer_netns() -> None:
    if os.environ.get(OUTER_NETNS_FLAG):
        return
    # Root: a plain network namespace. Non-root: a user namespace mapping our own uid, so the
    # supervisor stays non-root inside it.
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-current-user", "--net"]
    os.environ[OUTER_NETNS_FLAG] = "1"
    argv = [*unshare, "--", sys.executable, *sys.argv]
    os.execvp(argv[0], argv)


def median_ms(fn, n: int) -> float:
    fn()  # warm-up: page cache, imports, first-use allocations
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def egress_medians_ms(bring_up, egress_plan, n: int) -> tuple[float, float]:
    """(bring-up, close) medians: namespace + ruleset + slirp4netns ready, then teardown."""
    bring_up(egress_plan).close()
    up, down = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        handle = bring_up(egress_plan)
        t1 = time.perf_counter()
        handle.close()
        up.append(t1 - t0)
        down.append(time.perf_counter() - t1)
    return statistics.median(up) * 1000, statistics.median(down) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--iterations", type=int, default=50)
    n = parser.parse_args().iterations
    reexec_in_outer_netns()

    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import run
    from sandbox_kernel.launch.egress import bring_up
    from sandbox_kernel.planner import RunSpec, plan
    from sandbox_kernel.policy import policy_from_dict

    caps = detect()
    true = shutil.which("true")
    spec = RunSpec(argv=(true,), runtime="shell")
    deny = policy_from_dict({})
    allowlist = policy_from_dict({"network": {"mode": "allowlist", "allow": ["10.0.2.2:9"]}})

    def sandboxed(policy):
        def once():
            result = run(policy, spec, caps=caps)
            assert result.exit_code == 0, result.stderr
        return once

    egress_plan = plan(allowlist, caps, spec)  # only its egress part is used: no lease, no staging

    up, down = egress_medians_ms(bring_up, egress_plan.egress, n)
    rows = [
        ("plain true (subprocess.run)", median_ms(lambda: subprocess.run([true], check=True), n), True),
        ("sandboxed true, network deny", median_ms(sandboxed(deny), n), True),
        ("sandboxed true, network allowlist", median_ms(sandboxed(allowlist), n), True),
        ("  of which egress bring-up (ns+nft+slirp)", up, False),
        ("  of which egress close", down, False),
    ]
    plain = rows[0][1]
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    print(f"sandbox spawn overhead: median of {n} runs, supervisor {who}, probe {caps.probe_seconds * 1000:.0f} ms (once)")
    print(f"{'':44} {'median ms':>10} {'- plain ms':>11} {'x plain':>8}")
    for name, ms, compare in rows:
        extra = f"{ms - plain:>11.2f} {ms / plain:>7.1f}x" if compare else ""
        print(f"{name:44} {ms:>10.2f} {extra}")


if __name__ == "__main__":
    main()
