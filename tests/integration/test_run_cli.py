"""`sandbox-kernel run` end to end: real CLI, real sandboxed kernels, notebooks in tests/notebooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from sandbox_kernel.saved_form import expand_notebook

from .kernels import leased_uid

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CLI = [sys.executable, "-m", "sandbox_kernel.cli"]


def run_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def read_saved(path) -> nbformat.NotebookNode:
    """A notebook as ``run`` saved it, its reports expanded to the full form (``saved_form``)."""
    return expand_notebook(nbformat.read(path, as_version=4))


def outputs(path: Path) -> list[str]:
    nb = read_saved(path)
    return ["".join(o.get("text", "") or o.get("ename", "") for o in c.outputs) for c in nb.cells if c.cell_type == "code"]


def summary(path: Path) -> dict:
    return {n["path"]: n for n in json.loads(path.read_text())["notebooks"]}


def test_clean_notebook_exit_0_with_reports_in_every_cell(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", tmp_path, "--summary", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stderr
    # Saved compact, as JupyterLab saves: the kernel report once, each cell a ref to it.
    raw = nbformat.read(tmp_path / "clean.ipynb", as_version=4)
    assert raw.metadata["sandbox"]["form"] == "compact" and list(raw.metadata["sandbox"]["kernels"]) == ["k1"]
    assert all(c.metadata["sandbox"]["kernel"] == "k1" and "layers" not in c.metadata["sandbox"] for c in raw.cells)
    nb = read_saved(tmp_path / "clean.ipynb")
    for cell in nb.cells:
        report = cell.metadata["sandbox"]
        assert report["reported_by"] == "provisioner" and report["scope"] == "kernel"
        assert all(report["enforced"].values()) and report["cell_outcome"]["status"] == "ok"
    assert nb.metadata["sandbox"]["kernel"]["enforced"]["network"] is True
    assert nb.metadata["sandbox"]["summary"]["status"] == "ok"
    assert outputs(tmp_path / "clean.ipynb")[1].strip() == "answer 42"
    assert leased_uid(outputs(tmp_path / "clean.ipynb")[2])
    assert "clean.ipynb" in proc.stdout and "ok" in proc.stdout  # the final table
    s = summary(tmp_path / "s.json")[str(NOTEBOOKS / "clean.ipynb")]
    assert s["status"] == "ok" and s["cells_run"] == 3 and s["cells_errored"] == 0


def test_failing_cell_exit_1_and_allow_errors_exit_0(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "failing.ipynb", "--output-dir", tmp_path / "a")
    assert proc.returncode == 1
    assert outputs(tmp_path / "a" / "failing.ipynb")[2] == ""  # stopped at the error
    proc = run_cli("run", NOTEBOOKS / "failing.ipynb", "--output-dir", tmp_path / "b", "--allow-errors")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outputs(tmp_path / "b" / "failing.ipynb")[2].strip() == "after"


def test_infinite_loop_ends_marked_timed_out(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "infinite_loop.ipynb", "--output-dir", tmp_path, "--cell-timeout", 2,
                   "--summary", tmp_path / "s.json", timeout=120)
    assert proc.returncode == 1
    nb = read_saved(tmp_path / "infinite_loop.ipynb")
    assert nb.cells[1].metadata["sandbox"]["cell_outcome"]["timed_out"] is True
    assert summary(tmp_path / "s.json")[str(NOTEBOOKS / "infinite_loop.ipynb")]["status"] == "timeout"


def test_notebook_timeout_ends_short_cells(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "slow_cells.ipynb", "--output-dir", tmp_path, "--notebook-timeout", 3,
                   "--summary", tmp_path / "s.json", timeout=120)
    assert proc.returncode == 1
    s = summary(tmp_path / "s.json")[str(NOTEBOOKS / "slow_cells.ipynb")]
    assert s["status"] == "timeout" and s["cells_run"] < 10 and "notebook" in s["reason"]


def test_memory_bomb_reports_kernel_death(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "memory_bomb.ipynb", "--output-dir", tmp_path, "--summary", tmp_path / "s.json", timeout=120)
    assert proc.returncode == 1
    s = summary(tmp_path / "s.json")[str(NOTEBOOKS / "memory_bomb.ipynb")]
    assert s["status"] == "dead-kernel" and "memory" in s["reason"]
    nb = read_saved(tmp_path / "memory_bomb.ipynb")
    assert nb.cells[1].metadata["sandbox"]["cell_outcome"]["status"] == "dead-kernel"


def test_bad_policy_file_exit_2_names_field(tmp_path):
    bad = tmp_path / "policy.toml"
    bad.write_text('[resources]\nmemory_bytes = "lots"\n')
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--policy", bad, "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and "resources.memory_bytes" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unenforceable_policy_exit_3_starts_nothing(tmp_path):
    # slirp4netns has no IPv6 here, so an IPv6 allow entry cannot be honoured: fail-closed.
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"network": {"mode": "allowlist", "allow": ["[2001:db8::1]:443"]}}))
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--policy", policy, "--output-dir", tmp_path / "out")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "sandbox unavailable" in proc.stderr and "network" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_jobs_2_matches_jobs_1(tmp_path):
    books = sorted(NOTEBOOKS.glob("batch_*.ipynb"))
    assert len(books) == 6
    for jobs in (1, 2):
        proc = run_cli("run", *books, "--output-dir", tmp_path / str(jobs), "--jobs", jobs)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for book in books:
        assert outputs(tmp_path / "1" / book.name) == outputs(tmp_path / "2" / book.name)
        assert outputs(tmp_path / "1" / book.name)[0].strip()  # really ran


def test_concurrent_notebooks_cannot_see_each_other(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "peer_a.ipynb", NOTEBOOKS / "peer_b.ipynb", "--output-dir", tmp_path, "--jobs", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = outputs(tmp_path / "peer_a.ipynb"), outputs(tmp_path / "peer_b.ipynb")
    assert "secret-of-a.txt" in a[0] and "secret-of-b.txt" not in a[0]
    assert "secret-of-b.txt" in b[0] and "secret-of-a.txt" not in b[0]
    assert a[1].strip() == "other scratch files: []" and b[1].strip() == "other scratch files: []"
    assert not (NOTEBOOKS / "secret-of-a.txt").exists()  # writes never land in the input dir


def test_dask_cluster_runs_notebooks(tmp_path):
    """A real scheduler and two workers (separate processes, loopback only). The results come
    back to the runner, which writes them like any other: not through a planted link."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "batch_2.ipynb").symlink_to(victim)
    bindir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", sched_file],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs += [subprocess.Popen([bindir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                                    "--host", "127.0.0.1", "--no-nanny"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        books = [NOTEBOOKS / "clean.ipynb", NOTEBOOKS / "batch_1.ipynb", NOTEBOOKS / "batch_2.ipynb"]
        proc = run_cli("run", *books, "--output-dir", tmp_path / "out", "--dask-scheduler", address,
                       "--summary", tmp_path / "s.json")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    s = summary(tmp_path / "s.json")
    assert s[str(books[2])]["status"] == "error" and "symbolic link" in s[str(books[2])]["reason"]
    assert victim.read_text() == "keep"
    for book in books[:2]:
        assert s[str(book)]["status"] == "ok"
        nb = read_saved(tmp_path / "out" / book.name)
        assert all(c.metadata["sandbox"]["enforced"]["filesystem"] for c in nb.cells)
        assert nb.metadata["sandbox"]["summary"]["status"] == "ok"
    assert leased_uid(outputs(tmp_path / "out" / "clean.ipynb")[2])


def test_notebook_dir_the_sandbox_cannot_reach_is_reported_not_fatal(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "clean.ipynb").write_bytes((NOTEBOOKS / "clean.ipynb").read_bytes())
    proc = run_cli("run", private / "clean.ipynb", "--output-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_saved(tmp_path / "out" / "clean.ipynb").cells[0].metadata["sandbox"]
    assert any("not reachable" in n["note"] for n in report["notes"])


def test_symlinks_in_the_notebook_dir_do_not_expose_host_files(tmp_path):
    """An untrusted repository can ship ``leak -> /some/host/file``: bwrap resolves bind
    sources on the host, so such entries must not be exposed at all."""
    import tempfile

    repo = Path(tempfile.mkdtemp())  # reachable by the sandbox account (the session TMPDIR is 1777)
    os.chmod(repo, 0o755)
    secret = Path(tempfile.mkdtemp()) / "host-secret.txt"
    os.chmod(secret.parent, 0o755)
    secret.write_text("do not show")
    os.chmod(secret, 0o644)  # world-readable on the host, outside the sandbox's view
    (repo / "leak").symlink_to(secret)
    (repo / "data.txt").write_text("fine")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nprint(sorted(os.listdir('.')))\ntry:\n    print(open('leak').read())\n"
        "except OSError as e:\n    print('blocked', e.strerror)")]
    nbformat.write(nb, repo / "nb.ipynb")
    proc = run_cli("run", repo / "nb.ipynb", "--output-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(tmp_path / "out" / "nb.ipynb")[0]
    assert "data.txt" in out and "leak'" not in out and "do not show" not in out and "blocked" in out


def test_policy_wall_seconds_is_the_cell_timeout(tmp_path):
    """The kernel report says wall_seconds is enforced per cell by the executing client: the
    batch runner must really do it, even without --cell-timeout."""
    policy = tmp_path / "policy.toml"
    policy.write_text("[resources]\nwall_seconds = 2\n")
    proc = run_cli("run", NOTEBOOKS / "infinite_loop.ipynb", "--policy", policy, "--output-dir", tmp_path / "out",
                   "--summary", tmp_path / "s.json", timeout=120)
    assert proc.returncode == 1
    assert summary(tmp_path / "s.json")[str(NOTEBOOKS / "infinite_loop.ipynb")]["status"] == "timeout"


def test_magic_cells_carry_their_own_report_nested_in_the_trusted_one(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "magic_cells.ipynb", "--output-dir", tmp_path, "--full-reports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(tmp_path / "magic_cells.ipynb")
    count, path, uid = out[1].split()
    assert (count, path) == ("2", "/scratch/table.csv")  # the cell sees the kernel's scratch
    assert leased_uid(f"uid {uid}")  # and runs as the kernel's own uid
    assert out[2].strip() == "fresh interpreter __main__"
    saved = nbformat.read(tmp_path / "magic_cells.ipynb", as_version=4)  # --full-reports: the full form as is
    assert "form" not in saved.metadata["sandbox"] and saved.metadata["sandbox"]["kernel"]["scope"] == "kernel"
    cells = saved.cells
    assert "cell_report" not in cells[0].metadata["sandbox"]
    for c in cells[1:]:
        report = c.metadata["sandbox"]
        assert report["reported_by"] == "provisioner" and report["scope"] == "kernel"
        assert report["cell_report"]["reported_by"] == "kernel" and report["cell_report"]["scope"] == "cell"
        assert report["cell_report"]["outcome"]["exit_code"] == 0
    sh = cells[1].metadata["sandbox"]["cell_report"]
    assert sh["requested"]["network"]["mode"] == "deny" and sh["requested"]["resources"]["memory_bytes"] == 128 * 2**20


def test_cell_output_is_capped_with_a_marker(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[resources]\nmax_output_bytes = "64K"\n')
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("for i in range(20000):\n    print('y' * 99)"),
                nbformat.v4.new_code_cell("print('next cell runs')")]
    nbformat.write(nb, tmp_path / "flood.ipynb")
    proc = run_cli("run", tmp_path / "flood.ipynb", "--policy", policy, "--output-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(tmp_path / "out" / "flood.ipynb")
    assert "[sandbox-kernel: output truncated at 65536 bytes for this cell" in out[0]
    assert len(out[0]) < 65536 + 200 and out[1].strip() == "next cell runs"
    cell = read_saved(tmp_path / "out" / "flood.ipynb").cells[0]
    assert cell.metadata["sandbox"]["cell_outcome"]["output_truncated"] is True


def test_runner_cap_inside_a_character_keeps_it_whole(tmp_path):
    """The runner's per-cell budget counts bytes: the text kept ends on a whole character."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[resources]\nmax_output_bytes = "64K"\n')
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys\nsys.stdout.write('a' + '€' * 40000)")]
    nbformat.write(nb, tmp_path / "euro.ipynb")
    proc = run_cli("run", tmp_path / "euro.ipynb", "--policy", policy, "--output-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(tmp_path / "out" / "euro.ipynb")[0]
    kept, _, rest = out.partition("[sandbox-kernel: output truncated at 65536 bytes for this cell")
    assert rest and "\ufffd" not in out
    assert kept.rstrip("\n").lstrip("a") == "€" * len(kept.rstrip("\n").lstrip("a")) and len(kept.encode()) <= 65536
