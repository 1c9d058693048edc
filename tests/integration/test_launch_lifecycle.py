"""The run's lifecycle: output flood, timeouts with a TERM-ignoring grandchild, refusal when a
tool is missing. What is left afterwards is checked by the autouse fixture in conftest."""

from __future__ import annotations

import glob
import os
import signal
import tempfile
import uuid

import pytest

from sandbox_kernel.launch import truncation_marker

from .kernels import path_without
from .supervisors import start_scenario

pytestmark = pytest.mark.integration

MiB = 1 << 20


def test_output_flood_is_cut_at_the_cap_and_the_supervisor_stays_small(scenario):
    cap = 16 * MiB
    res = scenario("output_flood", max_output_bytes=cap)  # the sandbox tries to write 1 GiB
    marker = truncation_marker(cap).decode()
    assert res["output_truncated"] and res["killed_reason"] == "output-cap"
    assert res["stdout_tail"].endswith(marker) and res["stdout_len"] == cap + len(marker)
    assert "flood finished" not in res["stdout_tail"] and res["signal"] == signal.SIGKILL
    # The supervisor streamed 16 MiB and kept it; it never held anything near the 1 GiB flood.
    assert res["supervisor_peak_rss_kib"] < 200 * 1024, res["supervisor_peak_rss_kib"]
    assert res["hwm_after_kib"] - res["hwm_before_kib"] < 6 * cap // 1024


@pytest.mark.parametrize("via", ["policy", "kwarg"])
def test_timeout_kills_a_term_ignoring_grandchild(scenario, via):
    token = f"sbx-grandchild-{uuid.uuid4().hex[:12]}"
    res = scenario("timeout", via=via, token=token)
    assert "grandchild started" in res["stdout_tail"]
    assert res["timed_out"] and res["killed_reason"] == "timeout"
    assert res["left"] == []


def test_timeout_holds_when_the_run_never_reads_its_input(scenario):
    token = f"sbx-unread-{uuid.uuid4().hex[:12]}"
    res = scenario("unread_input", token=token)
    assert res["timed_out"] and res["killed_reason"] == "timeout", res
    assert res["durations"]["run"] < 1 + 5  # the 1 s deadline, plus kill grace and generous slack
    assert res["left"] == []


def test_missing_tool_refuses_before_anything_runs(scenario, workdir, nothing_left_behind):
    # The command would write the marker; with bwrap hidden from PATH the live probe fails.
    marker = workdir / "marker"
    res = scenario("fail_closed", marker=str(marker), env={"PATH": path_without(workdir / "bin", "bwrap")})
    assert res["refused"], res
    assert "bwrap" in res["error"] and {"filesystem", "network", "seccomp"} <= set(res["layers"])
    assert not marker.exists()
    assert nothing_left_behind.left() == []  # no staging dir either


def test_killed_supervisor_leaves_nothing(supervisor, nothing_left_behind):
    # SIGKILL: no close(), no finally. The sandbox dies with its parent (bwrap
    # --die-with-parent), egress with its pipes, staging dir and cgroups with the janitor.
    proc = start_scenario(supervisor, "killed_supervisor", outer_netns=True)
    try:
        assert proc.stdout.readline() == b"running\n"
        # Its prepared /etc is there (gone after the kill: nothing_left_behind checks temp dirs).
        assert glob.glob(os.path.join(tempfile.gettempdir(), "sandbox-kernel-etc-*"))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert nothing_left_behind.left() == []


@pytest.mark.parametrize("lease", ["own lease", "kernel's uid"])
def test_a_cgroup_still_busy_after_the_run_is_removed_by_the_janitor(lease, monkeypatch, nothing_left_behind):
    """close() waits REMOVE_WAIT for the run's cgroups to empty; one still busy then (a process
    slow to die: here frozen, so its SIGKILL waits) is handed to the supervisor's janitor, which
    removes the cgroups once the process is gone and then a run's own uid lease (its file,
    while it still holds the lock). Nothing is forgotten."""
    import time

    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import janitor, lease_for, prepare, process, start
    from sandbox_kernel.planner import RunSpec
    from sandbox_kernel.policy import secure_default

    if not os.path.isdir("/sys/fs/cgroup/freezer") or os.geteuid() != 0:
        pytest.fail("needs root and the v1 freezer to make a process slow to die (see env-probe): run the suite as root")
    monkeypatch.setattr(process, "REMOVE_WAIT", 0.3)
    spec = RunSpec(argv=("/bin/sh", "-c", "echo up; exec sleep 600"), runtime="shell")
    kernel_lease = None
    if lease == "kernel's uid":
        kernel_lease = lease_for(secure_default(), detect())
        spec = RunSpec(argv=spec.argv, runtime="shell", identity=(kernel_lease.uid, kernel_lease.gid))
    plan = prepare(secure_default(), spec, detect())
    assert (plan.uid_lease is not None) is (lease == "own lease") and plan.cgroup is not None
    proc = start(plan)
    freezer = f"/sys/fs/cgroup/freezer/sk-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(freezer)
    try:
        assert proc.popen.stdout.readline() == b"up\n"
        inner = proc.cgroups.pids() - {proc.popen.pid}  # the outer bwrap may die; what it runs may not
        for pid in inner:
            with open(f"{freezer}/cgroup.procs", "w") as f:
                f.write(str(pid))
        with open(f"{freezer}/freezer.state", "w") as f:
            f.write("FROZEN")
        while open(f"{freezer}/freezer.state").read().strip() != "FROZEN":
            time.sleep(0.01)
        paths = list(proc.cgroups.paths)
        lease_path = plan.uid_lease.path if plan.uid_lease else None
        watched_before = janitor.JANITOR.watching()
        proc.close()
        assert all(os.path.isdir(p) for p in paths) and (lease_path is None or os.path.exists(lease_path))
        assert janitor.JANITOR.watching() == watched_before - 1  # handed over: its to remove now
    finally:
        with open(f"{freezer}/freezer.state", "w") as f:
            f.write("THAWED")
    deadline = time.monotonic() + 60
    while any(os.path.exists(p) for p in [*paths, *([lease_path] if lease_path else [])]):
        assert time.monotonic() < deadline, f"the janitor did not remove {paths} {lease_path}"
        time.sleep(0.05)
    if kernel_lease is not None:
        kernel_lease.release()
    deadline = time.monotonic() + 10
    while True:
        try:
            os.rmdir(freezer)
            break
        except OSError:  # its processes leave it as they die
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert nothing_left_behind.left() == []


def test_the_janitor_knows_a_runs_cgroups_before_they_exist():
    """start() tells the janitor the cgroups it is about to make: paths_for() names exactly
    what create() makes, so a supervisor killed between the two leaves nothing."""
    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import cgroup, prepare
    from sandbox_kernel.planner import RunSpec
    from sandbox_kernel.policy import secure_default

    plan = prepare(secure_default(), RunSpec(argv=("/bin/true",), identity=(70002, 70002)), detect())
    assert plan.cgroup is not None and plan.cgroup.memory_bytes and plan.cgroup.pids_max
    name = cgroup.new_name()
    expected = cgroup.paths_for(plan.cgroup, name)
    assert expected and not any(os.path.exists(p) for p in expected)
    made = cgroup.create(plan.cgroup, name)
    try:
        assert made.paths == expected and all(os.path.isdir(p) for p in expected)
    finally:
        assert made.remove() == []


def test_a_janitor_that_died_is_replaced_and_told_everything_still_watched(tmp_path, nothing_left_behind):
    """If the supervisor's janitor is killed, the next watch() starts another and tells it all
    that is still watched (lease locks included): a supervisor dying after that still leaves
    nothing. Here the "supervisor's death" is close() (EOF), which is what the janitor sees."""
    from sandbox_kernel.launch.janitor import JANITOR

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    key = JANITOR.watch(paths=[str(first)])
    old = JANITOR._proc
    old.kill()
    old.wait()
    other = JANITOR.watch(paths=[str(second)])
    assert JANITOR._proc is not old and JANITOR._proc.poll() is None
    assert JANITOR.watching() == 2
    JANITOR.forget(key)  # the supervisor cleaned this one up itself...
    first.rmdir()
    JANITOR.close()  # ...and "dies" with the other one still watched
    assert not second.exists() and JANITOR.watching() == 1
    JANITOR.forget(other)  # (the janitor is gone: nothing to tell it)
    assert nothing_left_behind.left() == []
