"""Data in and out with the clients people use: a notebook reads ``data.csv`` beside it
whether or not its client passes a working directory (nbconvert with a relative path, plain
nbclient, ``jupyter server``), and learns its own path (``__session__``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.servers import running_server

from .kernels import leased_uid
from .test_run_cli import read_saved

pytestmark = pytest.mark.integration

READ_DATA = ("import os\nprint('uid', os.getuid())\nprint('data', open('data.csv').read().strip())\n"
             "print('secret', os.path.exists('.env'))")


@pytest.fixture
def reachable(private_tmpdir):
    """A dir the kernel's uid can traverse (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="data-io-", dir=private_tmpdir)
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def notebook_dir(path: Path, *cells: str) -> Path:
    """``path`` holding ``nb.ipynb`` (the cells), ``data.csv`` and a ``.env`` it must not see."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "data.csv").write_text("a,b\n1,2\n")
    (path / ".env").write_text("TOKEN=hunter2\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3-sandboxed", "display_name": "sandboxed", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path / "nb.ipynb")
    return path / "nb.ipynb"


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def assert_read_data(text: str) -> None:
    assert leased_uid(text), text  # really the sandboxed kernel
    assert "data a,b\n1,2" in text and "secret False" in text, text


def test_nbconvert_with_a_relative_path_sees_the_notebooks_neighbours(reachable, jupyter_dirs):
    notebook_dir(reachable / "proj", READ_DATA, WRITE_PLOT)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                    "--ExecutePreprocessor.kernel_name=python3-sandboxed", "--output", "out", "nb.ipynb"],
                   check=True, capture_output=True, timeout=180, cwd=reachable / "proj")
    assert_read_data(outputs_text(read_saved(reachable / "proj" / "out.ipynb")))
    # and what it wrote under /scratch/outputs appears beside it
    assert (reachable / "proj" / "outputs" / "plot.png").read_bytes() == PNG


def test_nbclient_without_cwd_sees_the_supervisors_working_dir(reachable, jupyter_dirs, monkeypatch):
    path = notebook_dir(reachable / "proj", READ_DATA)
    monkeypatch.chdir(path.parent)  # what a plain kernel would inherit
    nb = read_saved(path)
    NotebookClient(nb, kernel_name="python3-sandboxed", timeout=120, startup_timeout=120).execute()
    assert_read_data(outputs_text(nb))


def test_jupyter_server_session_sees_its_dir_and_its_own_path(reachable):
    from .test_server_extension import execute

    with running_server(reachable) as server:
        notebook_dir(server.root / "proj", READ_DATA)
        code, session = server.request("POST", "/api/sessions", {
            "path": "proj/nb.ipynb", "name": "nb.ipynb", "type": "notebook", "kernel": {"name": "python3-sandboxed"}})
        assert code == 201, session
        kernel_id = session["kernel"]["id"]
        text, reply = execute(server, kernel_id, READ_DATA + "\nprint('session', __session__, os.environ['JPY_SESSION_NAME'])",
                              f"t-{uuid.uuid4()}")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert_read_data(text)
        expected = str(server.root / "proj" / "nb.ipynb")
        assert f"session {expected} {expected}" in text, text


# ----------------------------------------------------------------------------- results out

CLI = [sys.executable, "-m", "sandbox_kernel.cli"]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # any bytes: the copy must be exact
WRITE_PLOT = ("import os\nos.makedirs('outputs/tables', exist_ok=True)\n"
              f"open('outputs/plot.png', 'wb').write({PNG!r})\n"
              "open('outputs/tables/t.csv', 'w').write(open('data.csv').read())\nprint('wrote')")
WRITE_HOSTILE = ("import os\nos.makedirs('outputs', exist_ok=True)\n"
                 "os.symlink('/etc/passwd', 'outputs/passwd')\n"
                 "open('outputs/big.bin', 'wb').write(b'x' * 4096)\n"
                 "os.mkfifo('outputs/pipe')\n"
                 "open('outputs/.hidden', 'w').write('h')\n"
                 "open('outputs/ok.txt', 'w').write('fine')\nprint('wrote')")


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_run_inputs_none_never_falls_back_to_the_runners_working_dir(reachable):
    path = notebook_dir(reachable / "proj", "import os\nprint('listing', sorted(os.listdir('.')))")
    out = reachable / "out"
    proc = run_cli("run", path, "--inputs", "none", "--output-dir", out, cwd=path.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = outputs_text(read_saved(out / "nb.ipynb"))
    assert "data.csv" not in text and "listing" in text, text


def cell_outputs_report(nb, index: int) -> dict:
    return nb.cells[index].metadata["sandbox"].get("outputs") or {}


def test_run_copies_results_beside_the_executed_notebook(reachable):
    path = notebook_dir(reachable / "proj", READ_DATA, WRITE_PLOT)
    out = reachable / "out"
    proc = run_cli("run", path, "--output-dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = out / "nb_files"
    assert (files / "plot.png").read_bytes() == PNG
    assert (files / "tables" / "t.csv").read_text() == "a,b\n1,2\n"  # an input, processed, comes back out
    nb = read_saved(out / "nb.ipynb")
    report = cell_outputs_report(nb, 1)
    assert report["dest"] == str(files) and sorted(report["copied"]) == ["plot.png", "tables/t.csv"]
    assert report["refused_count"] == 0 and report["copied_count"] == 2
    assert not (reachable / "proj" / "outputs").exists()  # run leaves the notebook's dir alone


def test_links_devices_dotfiles_and_over_cap_files_are_refused_with_a_note(reachable):
    path = notebook_dir(reachable / "proj", WRITE_HOSTILE)
    policy = reachable / "policy.toml"
    policy.write_text('[filesystem.outputs]\nmax_file_bytes = "1K"\n')
    out = reachable / "out"
    proc = run_cli("run", path, "--policy", policy, "--output-dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(out / "nb_files")) == ["ok.txt"]
    report = cell_outputs_report(read_saved(out / "nb.ipynb"), 0)
    assert report["copied"] == ["ok.txt"]
    reasons = {r["path"]: r["reason"] for r in report["refused"]}
    assert set(reasons) == {"passwd", "big.bin", "pipe", ".hidden"}, reasons
    assert "symbolic link" in reasons["passwd"] and "FIFO" in reasons["pipe"] and "dotfile" in reasons[".hidden"]
    assert "4096 bytes" in reasons["big.bin"] and "max_file_bytes" in reasons["big.bin"]


def test_a_results_dir_that_is_a_link_inside_the_sandbox_copies_nothing(reachable):
    path = notebook_dir(reachable / "proj", "import os\nos.symlink('/etc', 'outputs')\nprint('linked')")
    out = reachable / "out"
    proc = run_cli("run", path, "--output-dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / "nb_files").exists()
    report = cell_outputs_report(read_saved(out / "nb.ipynb"), 0)
    assert report["copied"] == [] and "symbolic link" in report["refused"][0]["reason"]


def test_jupyter_server_results_appear_in_the_notebooks_dir_after_the_cell(reachable):
    from .test_server_extension import execute

    with running_server(reachable) as server:
        notebook_dir(server.root / "proj", READ_DATA)
        code, session = server.request("POST", "/api/sessions", {
            "path": "proj/nb.ipynb", "name": "nb.ipynb", "type": "notebook", "kernel": {"name": "python3-sandboxed"}})
        assert code == 201, session
        text, reply = execute(server, session["kernel"]["id"], WRITE_PLOT, f"t-{uuid.uuid4()}")
        assert reply["content"]["status"] == "ok" and "wrote" in text, reply["content"]
        # Already there when the reply arrives: what the file browser lists.
        assert (server.root / "proj" / "outputs" / "plot.png").read_bytes() == PNG
        code, listing = server.get("/api/contents/proj/outputs")
        assert code == 200 and {e["name"] for e in listing["content"]} == {"plot.png", "tables"}
        said = reply["metadata"]["sandbox"]["outputs"]
        assert sorted(said["copied"]) == ["plot.png", "tables/t.csv"]


def test_a_planted_outputs_link_in_the_notebooks_dir_never_makes_root_write_through_it(reachable):
    from .test_server_extension import execute

    name = f"sbx-planted-{uuid.uuid4().hex}.png"
    with running_server(reachable) as server:
        notebook_dir(server.root / "proj", READ_DATA)
        (server.root / "proj" / "outputs").symlink_to("/etc")
        code, session = server.request("POST", "/api/sessions", {
            "path": "proj/nb.ipynb", "name": "nb.ipynb", "type": "notebook", "kernel": {"name": "python3-sandboxed"}})
        assert code == 201, session
        try:
            text, reply = execute(server, session["kernel"]["id"],
                                  f"import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/{name}', 'wb').write(b'x')",
                                  f"t-{uuid.uuid4()}")
            assert reply["content"]["status"] == "ok", reply["content"]
            assert not os.path.lexists(f"/etc/{name}")
            refused = reply["metadata"]["sandbox"]["outputs"]["refused"]
            assert refused[0]["path"] == name and "symbolic link" in refused[0]["reason"], refused
        finally:
            if os.path.lexists(f"/etc/{name}"):
                os.unlink(f"/etc/{name}")
