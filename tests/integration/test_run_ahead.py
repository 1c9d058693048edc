"""`sandbox-kernel run` starting kernels ahead of their notebook's turn: each notebook still gets
a kernel of its own, started for it (its own dir, its own inputs), and a kernel started ahead
that is never used is shut down when the runner stops (the autouse check: nothing is left)."""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from sandbox_kernel.kernel_sandbox import RUN_DIR_PREFIX
from sandbox_kernel.policy import DEFAULT_UID_RANGE

from .test_run_cli import CLI, outputs, run_cli, summary

pytestmark = pytest.mark.integration

WHO_AM_I = ("import os\nprint(open('data.txt').read().strip(), "
            "sorted(n for n in os.listdir('.') if n.endswith('.ipynb')))")
FRESH = "print('fresh kernel:', 'seen' not in globals())\nseen = True"


def write_notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def tenant_dirs():
    """Dirs the sandbox account can reach (the session TMPDIR is 1777), removed afterwards."""
    made = []

    def make(token: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix="tenant-"))
        os.chmod(d, 0o755)
        (d / "data.txt").write_text(token)
        os.chmod(d / "data.txt", 0o644)
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def test_each_notebook_of_a_jobs_2_batch_runs_in_a_kernel_started_for_it(tmp_path, tenant_dirs):
    """Seven notebooks in three dirs and one in a fourth that fails in its first cell, two
    slots: most kernels start ahead, yet every notebook reads its own dir's data, sees no other
    notebook of the run (its kernel's plan bound its own inputs), starts with fresh state; the
    failing one costs its own row only."""
    books = []
    for t, names in enumerate((["a1", "a2", "a3"], ["b1", "b2"], ["c1", "c2"])):
        d = tenant_dirs(f"token-of-dir-{t}")
        for name in names:
            books.append(write_notebook(d / f"{name}.ipynb", WHO_AM_I, FRESH))
    failing = write_notebook(tenant_dirs("token-of-failing") / "fails.ipynb", "raise SystemError('early')", FRESH)
    books.insert(4, failing)
    proc = run_cli("run", *books, "--output-dir", tmp_path / "out", "--jobs", 2, "--summary", tmp_path / "s.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = summary(tmp_path / "s.json")
    assert rows[str(failing)]["status"] == "error" and "early" in rows[str(failing)]["reason"]
    assert outputs(tmp_path / "out" / "fails.ipynb")[1] == ""  # stopped at the error
    for book in books:
        if book == failing:
            continue
        assert rows[str(book)]["status"] == "ok", rows[str(book)]
        data, fresh = outputs(tmp_path / "out" / book.name)
        token = (book.parent / "data.txt").read_text()
        assert data.strip() == f"{token} {[book.name]!r}"
        assert fresh.strip() == "fresh kernel: True"
        assert rows[str(book)]["inputs"] == sorted([book.name, "data.txt"])  # what its kernel's plan bound


def _kernel_run_dirs() -> list[str]:
    """The run dirs of the kernels alive (each holds its connection file)."""
    return glob.glob(os.path.join(tempfile.gettempdir(), RUN_DIR_PREFIX + "*", "connection.json"))


def _wait_for(condition, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_runner_stopped_while_a_kernel_waits_ahead_leaves_nothing(tmp_path, tenant_dirs, sig):
    """The first notebook never ends; the second's kernel is started ahead (and may still be
    starting). Ctrl-C or SIGTERM stops the runner, which shuts both kernels down."""
    d = tenant_dirs("token")
    books = [write_notebook(d / "endless.ipynb", "import time\nwhile True:\n    time.sleep(1)"),
             write_notebook(d / "next.ipynb", WHO_AM_I),
             write_notebook(d / "last.ipynb", WHO_AM_I)]
    with open(tmp_path / "stderr", "w") as err_file:
        proc = subprocess.Popen([*CLI, "run", *map(str, books), "--output-dir", str(tmp_path / "out"), "--jobs", "1"],
                                stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        # The next notebook's kernel starts once the first one's is ready: two kernels then.
        _wait_for(lambda: len(_kernel_run_dirs()) == 2 or proc.poll() is not None, "the kernel started ahead")
        assert proc.poll() is None, (tmp_path / "stderr").read_text()
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    assert ("interrupted" if sig == signal.SIGINT else "terminated") in err
    assert not (tmp_path / "out" / "next.ipynb").exists() and not (tmp_path / "out" / "last.ipynb").exists()
    _wait_for(lambda: not _kernel_run_dirs(), "the kernels' run dirs to go", seconds=30)


def test_a_start_ahead_refused_for_want_of_a_uid_is_done_again_in_its_turn(tmp_path, tenant_dirs):
    """A uid range of one uid: the kernel started ahead finds none free while the current
    notebook's kernel holds it, and is refused; in its turn, the uid given back, it starts.
    Without the retry these notebooks would be refused rows (exit 3)."""
    uid = DEFAULT_UID_RANGE[0] + random.randrange(1000, 60000)  # not one another run on this host leases
    policy = tmp_path / "policy.toml"
    policy.write_text(f"[privilege]\nuid_range = [{uid}, {uid}]\n")
    d = tenant_dirs("token-one-uid")
    books = [write_notebook(d / f"n{i}.ipynb", WHO_AM_I, "import os\nprint(os.getuid())") for i in range(3)]
    proc = run_cli("run", *books, "--policy", policy, "--output-dir", tmp_path / "out", "--jobs", 1,
                   "--summary", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = summary(tmp_path / "s.json")
    for book in books:
        assert rows[str(book)]["status"] == "ok", rows[str(book)]
        data, who = outputs(tmp_path / "out" / book.name)
        assert data.strip() == f"token-one-uid {[book.name]!r}" and who.strip() == str(uid)


def test_a_batch_kernel_starts_cell_sandboxes_only_once_its_notebook_uses_them():
    """Most batch notebooks run no magic: their kernels start no cell sandbox ahead. The first
    %%sh cell runs cold, and from then on sandboxes wait ready for the next ones."""
    import asyncio

    from sandbox_kernel import cells
    from sandbox_kernel.executor import discard_kernel, notebook_client, start_kernel

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%%sh\necho one")]
    seen = {}

    async def main() -> None:
        client = notebook_client(nb)
        await start_kernel(client)
        try:
            service = client.km.provisioner.sandbox.cells
            seen["at start"] = (set(service._warming), service.warm_count("sh"))
            await client.async_execute_cell(nb.cells[0], 0)
            deadline = time.monotonic() + 60
            while service.warm_count("sh") < cells.WARM_POOL["sh"]:
                assert time.monotonic() < deadline, "no sh sandbox started ahead after the first %%sh cell"
                await asyncio.sleep(0.05)
        finally:
            await discard_kernel(client)

    asyncio.run(main())
    assert seen["at start"] == (set(), 0)
    assert nb.cells[0].outputs[0]["text"] == "one\n"
