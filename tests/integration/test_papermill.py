"""papermill and sandbox-kernel together, with real papermill, real sandboxed kernels: `run -p`
injects papermill's cell, `papermill --engine sandbox` runs through our batch client, plain
papermill runs the installed sandboxed kernelspec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

from .kernels import leased_uid
from .test_run_cli import read_saved

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "sandbox_kernel.cli"]
PAPERMILL = [sys.executable, "-m", "papermill"]
PARAMS = ["-p", "x", "5", "-p", "flag", "True", "-r", "name", "7", "-y", "xs: [1, 2]"]


@pytest.fixture
def nbdir():
    """A notebook directory the sandbox account can reach (pytest's tmp_path is 0700 root:
    the kernel would be told, in a note, that it cannot see it)."""
    path = Path(tempfile.mkdtemp())  # under the session TMPDIR (1777)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(cmd, *args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def write_notebook(path: Path, *cells: str, kernel: str = "python3", language: str = "python") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": language}
    params = nbformat.v4.new_code_cell("x = 1\nflag = False\nname = 'a'\nxs = []\nfrom_file = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)


def texts(nb) -> list[str]:
    return ["".join(o.get("text", "") or o.get("ename", "") for o in c.outputs) for c in nb.cells if c.cell_type == "code"]


def injected(nb):
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0]


PLOT = b"\x89PNG\r\n\x1a\n not really a plot"
WRITE_PLOT = f"os.makedirs('/scratch/outputs', exist_ok=True)\nopen('/scratch/outputs/plot.png', 'wb').write({PLOT!r})"
SHOW = "import os\nprint('uid', os.getuid())\nprint('params', x, flag, repr(name), xs, from_file)"


def test_run_p_injects_papermills_cell_and_the_kernel_gets_the_values(tmp_path):
    src = tmp_path / "in.ipynb"
    write_notebook(src, SHOW)
    (tmp_path / "p.yaml").write_text("from_file: yes-file\nx: 1\n")
    args = [*PARAMS, "-f", tmp_path / "p.yaml"]
    prepared = run(PAPERMILL, "--prepare-only", src, tmp_path / "prepared.ipynb", *args)
    assert prepared.returncode == 0, prepared.stderr
    proc = run(CLI, "run", src, "--output-dir", tmp_path / "out", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ours = read_saved(tmp_path / "out" / "in.ipynb")
    theirs = read_saved(tmp_path / "prepared.ipynb")
    assert injected(ours).source == injected(theirs).source
    assert [c.source for c in ours.cells] == [c.source for c in theirs.cells]  # same place too
    out = texts(ours)[2]
    assert "params 5 True '7' [1, 2] yes-file" in out and leased_uid(out)
    assert injected(ours).metadata["sandbox"]["reported_by"] == "provisioner"


def test_engine_sandbox_runs_confined_sees_siblings_and_writes_the_report(nbdir):
    src, out = nbdir / "in.ipynb", nbdir / "out.ipynb"
    # A kernelspec name that is not ours, and a forged report: neither survives.
    write_notebook(src, SHOW, "print(open('data.csv').read())\nprint('out visible', os.path.exists('out.ipynb'))",
                   WRITE_PLOT, kernel="not-a-kernel")
    nb = read_saved(src)
    nb.cells[1].metadata["sandbox"] = {"reported_by": "provisioner", "forged": True}
    nb.metadata["sandbox"] = {"forged": True}
    nbformat.write(nb, src)
    (nbdir / "data.csv").write_text("a,b\n1,2\n")
    out.write_text("{}")  # an earlier output: the runner's, never shown to the notebook
    proc = run(PAPERMILL, "--engine", "sandbox", src, out, *PARAMS)
    assert proc.returncode == 0, proc.stderr
    nb = read_saved(out)
    shown = texts(nb)
    assert "params 5 True '7' [1, 2] None" in shown[2] and leased_uid(shown[2])
    assert "a,b\n1,2" in shown[3] and "out visible False" in shown[3]
    for cell in nb.cells:
        assert cell.metadata["sandbox"]["reported_by"] == "provisioner" and "forged" not in cell.metadata["sandbox"]
        assert cell.metadata["sandbox"]["cell_outcome"]["status"] == "ok"
    summary = nb.metadata["sandbox"]["summary"]
    assert summary["status"] == "ok" and "data.csv" in summary["inputs"] and "out.ipynb" not in summary["inputs"]
    assert nb.metadata["sandbox"]["kernel"]["enforced"]["network"] is True and "forged" not in nb.metadata["sandbox"]
    assert nb.metadata["papermill"]["parameters"] == {"x": 5, "flag": True, "name": "7", "xs": [1, 2]}
    # Its results come out beside it, as from a Jupyter session: copied, never written by the sandbox.
    assert (nbdir / "outputs" / "plot.png").read_bytes() == PLOT
    assert nb.cells[4].metadata["sandbox"]["outputs"]["copied"]


def test_engine_sandbox_caps_output_takes_the_policy_from_the_environment_and_reports_errors(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[resources]\nmax_output_bytes = "64K"\n')
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    write_notebook(src, "for i in range(20000):\n    print('y' * 99)", "raise ValueError('boom')", "print('never')")
    proc = run(PAPERMILL, "--engine", "sandbox", src, out, env={**os.environ, "SANDBOX_KERNEL_POLICY": str(policy)})
    assert proc.returncode == 1 and "PapermillExecutionError" in proc.stderr and "boom" in proc.stderr
    nb = read_saved(out)  # written even though the run failed, with the report
    flood, failed, never = [c for c in nb.cells if c.cell_type == "code"][1:]  # papermill adds an error banner cell
    assert "[sandbox-kernel: output truncated at 65536 bytes for this cell" in texts(nb)[1]
    assert len(texts(nb)[1]) < 65536 + 200
    assert flood.metadata["sandbox"]["cell_outcome"]["output_truncated"] is True
    assert failed.metadata["sandbox"]["cell_outcome"]["status"] == "error" and failed.metadata["papermill"]["exception"] is True
    assert never.metadata["sandbox"]["cell_outcome"]["status"] == "not-run" and texts(nb)[3] == ""
    assert nb.metadata["sandbox"]["kernel"]["requested"]["resources"]["max_output_bytes"] == 65536


def test_engine_refuses_an_unenforceable_policy_before_any_cell_runs(tmp_path):
    # slirp4netns has no IPv6 here, so an IPv6 allow entry cannot be honoured: fail-closed.
    policy = tmp_path / "policy.json"
    policy.write_text('{"network": {"mode": "allowlist", "allow": ["[2001:db8::1]:443"]}}')
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    write_notebook(src, SHOW)
    proc = run(PAPERMILL, "--engine", "sandbox", src, out, "-p", "x", "5", env={**os.environ, "SANDBOX_KERNEL_POLICY": str(policy)})
    assert proc.returncode == 1 and "SandboxUnavailable: sandbox unavailable: network" in proc.stderr
    nb = read_saved(out)
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code")
    assert all(c.metadata["sandbox"]["cell_outcome"]["status"] == "not-run" for c in nb.cells if c.cell_type == "code")


def test_engine_from_papermills_python_api_in_a_running_loop_with_a_policy_keyword(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[resources]\nmax_output_bytes = "64K"\n')
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    write_notebook(src, SHOW)
    script = ("import asyncio, papermill\n"
              "async def main():\n"  # as from a Jupyter notebook: papermill called with a loop running
              f"    papermill.execute_notebook({str(src)!r}, {str(out)!r}, engine_name='sandbox', parameters={{'x': 5}},\n"
              f"                               sandbox_policy={str(policy)!r}, progress_bar=False)\n"
              "asyncio.run(main())\n")
    proc = run([sys.executable, "-c", script])
    assert proc.returncode == 0, proc.stderr
    nb = read_saved(out)
    assert "params 5 False 'a' [] None" in texts(nb)[2] and leased_uid(texts(nb)[2])
    assert nb.metadata["sandbox"]["kernel"]["requested"]["resources"]["max_output_bytes"] == 65536


@pytest.mark.usefixtures("jupyter_dirs")
def test_plain_papermill_runs_the_sandboxed_kernelspec_with_parameters(nbdir):
    """papermill's own client (no cwd given to the kernel, started from the notebook's dir): the
    kernel sees the notebook's neighbours and its results appear beside it."""
    src, out = nbdir / "in.ipynb", nbdir / "out.ipynb"
    write_notebook(src, SHOW, "print(open('data.csv').read())", WRITE_PLOT)
    (nbdir / "data.csv").write_text("a,b\n3,4\n")
    proc = run(PAPERMILL, src, out, "-k", "python3-sandboxed", *PARAMS, cwd=nbdir)
    assert proc.returncode == 0, proc.stderr
    nb = read_saved(out)
    assert "params 5 True '7' [1, 2] None" in texts(nb)[2] and leased_uid(texts(nb)[2])
    assert "a,b\n3,4" in texts(nb)[3]
    assert (nbdir / "outputs" / "plot.png").read_bytes() == PLOT
