"""Resource limits trip inside the sandbox, by the mechanism the report names."""

from __future__ import annotations

import re
import signal

import pytest

from .supervisors import run_scenario

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.mark.parametrize("supervisor", ["root", "non-root", "non-root-undelegated"], indirect=True)
def test_fork_bomb_is_contained_and_a_sibling_run_still_forks(scenario, supervisor):
    limit, sibling_children = 16, 40
    # Without a cgroup, memory would only be capped per process (refused under fail).
    memory = "unlimited" if supervisor == "non-root-undelegated" else "512M"
    res = scenario("fork_bomb", max_processes=limit, sibling_children=sibling_children, memory_bytes=memory)
    assert res["holding"], res["bomb"]
    mechanism = res["bomb"]["resources"]["max_processes"]["mechanism"]
    if supervisor == "non-root-undelegated":
        assert mechanism == "rlimit-nproc-in-userns"
    else:  # root, or the non-root supervisor in its delegated cgroup
        assert re.fullmatch(r"cgroup-v[12]-pids\+rlimit-nproc-in-userns", mechanism), mechanism
    # The bomb really exploded (it reached its cap) and stayed under it; bwrap's own init
    # is the one extra process in the run's pid namespace.
    assert limit // 2 <= res["peak"] <= limit + 1, res["peak"]
    # The sibling ran as the same uid during the bomb and forked more than the bomb's cap.
    sibling = res["sibling"]
    assert sibling["exit_code"] == 0, sibling["stderr_tail"]
    assert sibling["inside"] == {"forked": sibling_children, "exits": [0] * sibling_children}


def test_memory_bomb_is_stopped_by_the_named_mechanism(scenario, supervisor):
    res = scenario("memory_bomb", memory_bytes=128 * MiB)
    assert "survived" not in res["stdout_tail"]
    memory = res["resources"]["memory_bytes"]
    # root, or the non-root supervisor in its delegated cgroup: the sandbox's own cgroup
    assert re.fullmatch(r"cgroup-v[12]-memory", memory["mechanism"]) and memory["state"] == "enforced", memory
    assert res["oom_killed"] or res["killed_reason"] == "oom" or res["signal"] == signal.SIGKILL, res
    allocated = [int(line.split()[1]) for line in res["stdout_tail"].splitlines() if line.startswith("allocated")]
    assert max(allocated, default=0) <= 128


def test_rootless_without_a_cgroup_refuses_memory_per_process_only():
    """No delegated cgroup: RLIMIT_AS is all there is, per process; fail refuses the run."""
    res = run_scenario("non-root-undelegated", "memory_bomb", memory_bytes=128 * MiB)
    assert res["refused"] and "memory_bytes: per process via RLIMIT_AS, not per sandbox" in res["refused"], res


def test_rootless_without_a_cgroup_degrades_to_rlimit_as_and_says_so():
    res = run_scenario("non-root-undelegated", "memory_bomb", memory_bytes=128 * MiB, on_unavailable="degrade")
    assert res["resources"]["memory_bytes"] == {"limit": 128 * MiB, "mechanism": "rlimit-as", "state": "degraded",
                                                "scope": "per-process"}
    assert "MemoryError" in res["stdout_tail"] and res["exit_code"] == 3, res


def test_cpu_limit_kills_a_busy_loop(scenario):
    res = scenario("rlimit", kind="cpu", limit=1)
    assert res["resources"]["cpu_seconds"]["mechanism"] == "rlimit"
    assert not res["timed_out"]
    assert res["signal"] in (signal.SIGXCPU, signal.SIGKILL), res


def test_open_files_limit_trips_with_emfile(scenario):
    res = scenario("rlimit", kind="nofile", limit=32)
    assert res["exit_code"] == 0, res["stderr_tail"]
    assert res["inside"]["error"] == "EMFILE" and res["inside"]["opened"] < 32


def test_file_size_limit_trips_with_efbig(scenario):
    res = scenario("rlimit", kind="fsize", limit=MiB)
    assert res["exit_code"] == 0, res["stderr_tail"]
    assert res["inside"] == {"written": MiB, "error": "EFBIG"}
