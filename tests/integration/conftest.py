"""Integration fixtures: scenarios under a root or a non-root supervisor, and, after every
test, the check that its runs left nothing behind (processes, staging dirs, cgroups; see
``traces``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .kernels import write_kernelspec
from . import supervisors
from .supervisors import run_scenario, supervisor_uid
from .traces import Traces, become_subreaper


@pytest.fixture(scope="session", autouse=True)
def private_tmpdir():
    """A TMPDIR for this session only, so its runs' staging dirs are told apart from other
    sessions'. Mode 1777 like /tmp: the sandbox account must traverse it to reach staged
    files, the non-root supervisor must create staging dirs in it. Also makes this process
    the subreaper of everything its runs orphan."""
    path = tempfile.mkdtemp(prefix="sk-itest-")
    os.chmod(path, 0o1777)
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = path
    become_subreaper()
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def delegated_supervisor_cgroups():
    """Cgroups of this session's own (``sandbox-kernel/itest-<pid>``), owned by the non-root
    supervisor account; ``supervisors.as_supervisor_account`` starts it inside them. Made
    before any test's snapshot, removed at the end (once every run in them is gone)."""
    from sandbox_kernel.launch.cgroup import RunCgroups, hierarchy
    from sandbox_kernel.host import CGROUP_PARENT

    uid = supervisor_uid()
    made: list[str] = []
    for controller in ("memory", "pids"):
        base, _ = hierarchy(controller)
        path = os.path.join(base, CGROUP_PARENT, f"itest-{os.getpid()}")
        if path not in made:
            os.makedirs(path)
            for name in ("", "cgroup.procs", "tasks"):
                if os.path.exists(os.path.join(path, name)):
                    os.chown(os.path.join(path, name), uid, uid)
            made.append(path)
    supervisors.DELEGATED_CGROUPS[:] = made
    try:
        yield made
    finally:
        supervisors.DELEGATED_CGROUPS.clear()
        for path in made:
            RunCgroups([path]).remove()


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After every test: the host (mounts, host netns nft ruleset, routes and links) is unchanged
    and no process, temp dir or cgroup of its runs remains."""
    traces = Traces()
    yield traces
    problems = traces.left()
    assert not problems, "the run left traces behind:\n" + "\n".join(problems)


@pytest.fixture(params=["root", "non-root"])
def supervisor(request) -> str:
    """Who supervises the runs: root (cgroups, setpriv to the sandbox account) or the non-root
    ``sandbox-supervisor`` account (user namespaces and rlimits only)."""
    return request.param


@pytest.fixture
def workdir(supervisor, private_tmpdir):
    """A host dir the scenario's supervisor may write (markers, a PATH of symlinks)."""
    path = tempfile.mkdtemp(prefix="work-", dir=private_tmpdir)
    os.chmod(path, 0o755)
    if supervisor.startswith("non-root"):
        os.chown(path, supervisor_uid(), supervisor_uid())
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scenario(supervisor):
    """``scenario(name, **args)``: run ``scenarios.NAME`` under this test's supervisor."""
    return lambda name, **kw: run_scenario(supervisor, name, **kw)


@pytest.fixture
def jupyter_dirs(tmp_path, monkeypatch):
    """A private Jupyter data dir holding the python3-sandboxed kernelspec, and an empty
    config dir (the operator policy is the secure default unless a test writes one).
    Returns (data dir, config dir)."""
    data, config = tmp_path / "data", tmp_path / "config"
    write_kernelspec(data)
    config.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    # A kernel started without a cwd sees its supervisor's working dir, as a plain kernel
    # would: make that a private, empty one rather than the repository (hundreds of binds).
    monkeypatch.chdir(tmp_path)
    return data, config
