"""Host shapes: shared mount propagation (systemd's default) and the cgroup v2 hierarchy.

The whole integration suite also runs on a shared copy of the mount table in CI (`make test`);
the doctor test here makes that shape itself, so a plain pytest run covers it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace

import pytest

from sandbox_kernel.capabilities import detect
from sandbox_kernel.host import CGROUP_PARENT
from sandbox_kernel.host_shape import parse_mountinfo
from sandbox_kernel.launch import prepare, start
from sandbox_kernel.launch.cgroup import CgroupError, create
from sandbox_kernel.planner import CgroupPlan, RunSpec
from sandbox_kernel.policy import secure_default, tighten

from . import supervisors
from .supervisors import SYSTEM_PATH
from .traces import changes, mount_table

pytestmark = pytest.mark.integration

MiB = 1 << 20
# Runs "$@" in a private copy of this mount table whose mounts were all made shared, and saves
# the copy's mount table before and after: nothing of it can reach the real host.
IN_SHARED_COPY = r"""
mount --make-rshared / || exit 99
out=$1; shift
cat /proc/self/mountinfo > "$out/before"
"$@" > "$out/stdout"; echo $? > "$out/rc"
cat /proc/self/mountinfo > "$out/after"
"""


def doctor_json(*, as_supervisor_account: bool = False, shared_copy_dir=None) -> tuple[int, dict]:
    cmd = [sys.executable, "-m", "sandbox_kernel.cli", "doctor", "--json"]
    if as_supervisor_account:
        cmd = supervisors.as_supervisor_account(cmd)
    env = {"PATH": SYSTEM_PATH, "TMPDIR": tempfile.gettempdir(), "LANG": "C.UTF-8"}
    if shared_copy_dir is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=120)
        return proc.returncode, json.loads(proc.stdout)
    wrapped = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", IN_SHARED_COPY, "sh",
               str(shared_copy_dir), *cmd]
    proc = subprocess.run(wrapped, capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc = int((shared_copy_dir / "rc").read_text())
    return rc, json.loads((shared_copy_dir / "stdout").read_text())


def finding(out: dict, name: str) -> dict:
    return next(f for f in out["host_shape"] if f["name"] == name)


def test_doctor_on_shared_propagation_leaves_every_mount(supervisor, tmp_path):
    rc, out = doctor_json(as_supervisor_account=supervisor == "non-root", shared_copy_dir=tmp_path)
    assert rc == 0, out["report"]["downgrades"]
    # The probes really ran slirp4netns with its own sandbox, and the session holder.
    assert out["capabilities"]["egress"]["ok"] and out["capabilities"]["session"]["ok"]
    assert "/ is shared" in finding(out, "mount propagation")["detected"]
    before, after = (mount_table((tmp_path / name).read_text()) for name in ("before", "after"))
    assert len(before) > 5
    assert changes({"mount table": before}, {"mount table": after}) == []


def v2_hierarchy() -> str:
    with open("/proc/self/mountinfo") as f:
        points = [m.point for m in parse_mountinfo(f.read()) if m.fstype == "cgroup2"]
    assert points, "this host kind mounts a cgroup v2 hierarchy (Debian 12 without systemd: /sys/fs/cgroup/unified)"
    return points[0]


def v2_controllers(base: str) -> set[str]:
    with open(os.path.join(base, "cgroup.controllers")) as f:
        return set(f.read().split())


def test_doctor_says_memory_and_pids_are_not_delegated_to_cgroup_v2():
    base = v2_hierarchy()
    assert not {"memory", "pids"} & v2_controllers(base)  # the shape this test is about
    rc, out = doctor_json()
    assert rc == 0
    cgroups = finding(out, "cgroups")
    assert f"cgroup v2 at {base} offering" in cgroups["detected"]
    assert f"memory and pids are not delegated to the v2 hierarchy at {base}" in cgroups["meaning"]
    assert "delegated" in cgroups["hint"]
    # What is claimed is the v1 hierarchies the probes really used.
    for controller in ("memory", "pids"):
        cap = out["capabilities"][f"cgroup_{controller}"]
        assert cap["ok"] and cap["version"] == 1 and cap["root"] == f"/sys/fs/cgroup/{controller}/{CGROUP_PARENT}"
        assert f"{controller}: v1 cgroups below {cap['root']}" in cgroups["meaning"]


def test_cgroup_v2_run_cgroup_is_created_joined_killed_and_removed():
    """The launch shell's v2 path, for real, on this host's v2 hierarchy (it has no memory or
    pids controller, so the run cgroup carries no limit: it holds and kills the tree)."""
    base = v2_hierarchy()
    parent = os.path.join(base, CGROUP_PARENT)
    os.makedirs(parent, exist_ok=True)  # the product's parent, kept like the probes' v1 ones
    spec = RunSpec(argv=("/bin/sh", "-c", "sleep 60 & sleep 60 & echo started; wait"), runtime="shell")
    plan = prepare(secure_default(), spec, detect())
    plan = replace(plan, cgroup=CgroupPlan(version=2, memory_bytes=None, pids_max=None, memory_root=None, pids_root=parent))
    proc = start(plan)
    try:
        assert proc.popen.stdout.readline() == b"started\n"
        [path] = proc.cgroups.paths
        assert os.path.dirname(path) == parent
        members = proc.cgroups.pids()
        # bwrap (the joining shell exec'd into it), its pid 1, the shell and both sleeps
        assert proc.pid in members and len(members) >= 4, members
        for pid in members:
            with open(f"/proc/{pid}/cgroup") as f:
                assert f"0::/{CGROUP_PARENT}/{os.path.basename(path)}\n" in f.read()
        proc.cgroups.kill_all()  # cgroup.kill: the whole tree, pid namespace and all
        assert proc.cgroups.pids() == set()
        assert proc.popen.wait(timeout=10) != 0
    finally:
        proc.close()
    assert not os.path.exists(path)


def _own_cgroups() -> str:
    with open("/proc/thread-self/cgroup") as f:
        return f.read()


@pytest.mark.parametrize("join", ["thread steps in", "shell joins"])
def test_cgroup_v1_run_starts_inside_its_cgroups_and_the_supervisor_stays_out(join, monkeypatch):
    """v1: the spawning thread steps into the run's cgroups to spawn it and back out
    (ThreadHop), or, where it could not come back, a shell joins them: either way every
    process of the run, bwrap's outer one included, is inside, and no thread of ours is."""
    caps = detect()
    if not (caps.cgroup_memory.ok and caps.cgroup_memory.detail["version"] == 1):
        pytest.fail("this host's memory controller is not on a v1 hierarchy (see env-probe): nothing to test")
    if join == "shell joins":
        monkeypatch.setattr("sandbox_kernel.launch.cgroup.RunCgroups.thread_hop", lambda self: None)
    before = _own_cgroups()
    spec = RunSpec(argv=("/bin/sh", "-c", "sleep 60 & echo started; wait"), runtime="shell")
    plan = prepare(tighten(secure_default(), {"resources": {"memory_bytes": 128 * MiB}}), spec, caps)
    proc = start(plan)
    try:
        assert proc.popen.stdout.readline() == b"started\n"
        assert _own_cgroups() == before
        members = proc.cgroups.pids()
        # bwrap's outer process, its pid 1 in the sandbox, the shell and the sleep
        assert proc.pid in members and len(members) >= 4 and os.getpid() not in members, members
        for pid in members:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
            for path in proc.cgroups.paths:
                controller = "memory" if path == proc.cgroups.memory_path else "pids"
                assert any(line.split(":")[1] == controller and line.endswith("/" + os.path.basename(path))
                           for line in lines), (pid, lines)
        for task in os.listdir(f"/proc/{os.getpid()}/task"):  # no thread of the supervisor is in them
            for path in proc.cgroups.paths:
                with open(os.path.join(path, "tasks")) as f:
                    assert task not in f.read().split()
    finally:
        proc.close()
    assert not any(os.path.exists(p) for p in proc.cgroups.paths)


@pytest.mark.parametrize("limit", ["memory", "pids"])
def test_cgroup_v2_limit_without_the_controller_is_an_error_and_leaves_nothing(limit):
    """(The autouse fixture checks that no cgroup is left below the parent.)"""
    base = v2_hierarchy()
    parent = os.path.join(base, CGROUP_PARENT)
    os.makedirs(parent, exist_ok=True)
    plan = CgroupPlan(version=2, memory_bytes=64 * MiB if limit == "memory" else None,
                      pids_max=16 if limit == "pids" else None, memory_root=parent, pids_root=parent)
    with pytest.raises(CgroupError, match=rf"{limit}\.max"):
        create(plan)
