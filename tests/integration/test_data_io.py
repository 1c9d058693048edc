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
    notebook_dir(reachable / "proj", READ_DATA)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                    "--ExecutePreprocessor.kernel_name=python3-sandboxed", "--output", "out", "nb.ipynb"],
                   check=True, capture_output=True, timeout=180, cwd=reachable / "proj")
    assert_read_data(outputs_text(nbformat.read(reachable / "proj" / "out.ipynb", as_version=4)))


def test_nbclient_without_cwd_sees_the_supervisors_working_dir(reachable, jupyter_dirs, monkeypatch):
    path = notebook_dir(reachable / "proj", READ_DATA)
    monkeypatch.chdir(path.parent)  # what a plain kernel would inherit
    nb = nbformat.read(path, as_version=4)
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
