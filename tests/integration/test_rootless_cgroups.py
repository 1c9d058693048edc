"""A rootless supervisor's cgroups: doctor's verdict in every shape this host can take (root,
rootless without a cgroup, rootless in a delegated one), and ``sandbox-kernel delegate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from sandbox_kernel.cli import EXIT_OK, EXIT_UNENFORCEABLE, EXIT_USAGE
from sandbox_kernel.launch.cgroup import hierarchy

from .supervisors import SYSTEM_PATH, as_supervisor_account
from .users import system_user

pytestmark = pytest.mark.integration

DOCTOR = [sys.executable, "-m", "sandbox_kernel.cli", "doctor"]


def doctor(cmd: list[str], tmp_path, policy: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": SYSTEM_PATH, "TMPDIR": os.environ["TMPDIR"], "LANG": "C.UTF-8"}
    if policy is not None:  # where the supervisor account can read it (pytest's tmp is root's alone)
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, policy.encode())
        os.close(fd)
        os.chmod(path, 0o644)
        cmd = [*cmd, "--policy", path]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=120)
        finally:
            os.unlink(path)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=120)


def verdict(proc) -> str:
    return proc.stdout.strip().splitlines()[-1]


def test_doctor_rootless_without_a_cgroup_is_not_fully_enforceable(tmp_path):
    proc = doctor(as_supervisor_account(DOCTOR, delegated=False), tmp_path)
    assert proc.returncode == EXIT_UNENFORCEABLE, proc.stdout + proc.stderr
    assert "FAIL cgroup_memory" in proc.stdout
    assert "downgrade: memory_bytes: per process via RLIMIT_AS, not per sandbox" in proc.stdout
    assert "hint: delegate a cgroup to this user: as root, `sandbox-kernel delegate --user sandbox-supervisor`" in proc.stdout
    assert verdict(proc).startswith("NOT fully enforceable")


def test_doctor_never_says_fully_enforceable_after_a_failed_probe(tmp_path):
    # Without a memory cap the policy needs no cgroup, but the probes still failed.
    proc = doctor(as_supervisor_account(DOCTOR, delegated=False), tmp_path, '[resources]\nmemory_bytes = "unlimited"\n')
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    assert "FAIL cgroup_pids" in proc.stdout
    assert verdict(proc) == ("the policy is enforceable on this host, but 2 probe(s) failed (cgroup_memory, cgroup_pids): "
                             "a policy that needs them is refused here")


@pytest.mark.parametrize("who", ["root", "rootless in a delegated cgroup"])
def test_doctor_fully_enforceable_with_cgroups(tmp_path, who):
    proc = doctor(DOCTOR + ["--json"] if who == "root" else as_supervisor_account(DOCTOR + ["--json"]), tmp_path)
    out = json.loads(proc.stdout)
    assert proc.returncode == EXIT_OK and out["enforceable"], out["report"]["downgrades"]
    memory = out["report"]["layers"]["resources"]["controls"]["memory_bytes"]
    assert memory["mechanism"].startswith("cgroup-") and memory["state"] == "enforced"
    assert out["capabilities"]["cgroup_memory"]["parent"] == ("default" if who == "root" else "own cgroup, delegated")
    text = doctor(DOCTOR if who == "root" else as_supervisor_account(DOCTOR), tmp_path)
    assert verdict(text) == "the policy is fully enforceable on this host"


def test_delegate_gives_a_user_cgroups_that_its_rootless_doctor_finds(tmp_path):
    cli = [sys.executable, "-m", "sandbox_kernel.cli", "delegate"]
    with system_user("skdeleg") as user:
        made = subprocess.run([*cli, "--user", user.pw_name], capture_output=True, text=True, check=True).stdout
        paths = [line.split(": ", 1)[1] for line in made.splitlines()]
        try:
            assert paths == [os.path.join(hierarchy(c)[0], "sandbox-kernel", f"user-{user.pw_name}") for c in ("memory", "pids")]
            assert all(os.stat(p).st_uid == user.pw_uid for p in paths)
            as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *DOCTOR, "--json"]
            out = json.loads(doctor(as_user, tmp_path).stdout)
            assert out["enforceable"], out["report"]["downgrades"]
            assert out["capabilities"]["cgroup_memory"]["parent"] == "delegated per user"
            assert out["capabilities"]["cgroup_memory"]["root"] == paths[0]
        finally:
            removed = subprocess.run([*cli, "--user", user.pw_name, "--remove"], capture_output=True, text=True)
        assert removed.returncode == 0 and not any(os.path.exists(p) for p in paths), removed.stderr
    unknown = subprocess.run([*cli, "--user", "no-such-user-here"], capture_output=True, text=True)
    assert unknown.returncode == EXIT_USAGE and "no such user" in unknown.stderr


def test_leak_check_attributes_delegated_parents_to_the_session_that_made_them():
    from .traces import _attributable

    root = os.path.join(hierarchy("memory")[0], "sandbox-kernel")
    me = os.getpid()
    assert _attributable(f"{root}/itest-{me}") and _attributable(f"{root}/user-alice{me}")
    # Another session's, empty between its runs: not ours to report.
    assert not _attributable(f"{root}/itest-{me + 1}") and not _attributable(f"{root}/user-bob{me + 1}")
    # Runs are checked wherever they are.
    assert _attributable(f"{root}/run-0123456789ab") and _attributable(f"{root}/user-bob{me + 1}/run-0123456789ab")
