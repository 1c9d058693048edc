"""%%sh takes IPython's own %%script options with their meaning (docs/magics.md), through a
real sandboxed kernel; a notebook written for IPython's %%sh runs unchanged under `run`."""

from __future__ import annotations

import nbformat
import pytest

from .kernels import running_kernel
from .test_magics import cell
from .test_run_cli import read_saved, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("jupyter_dirs")]


def test_sh_takes_ipythons_options():
    with running_kernel() as (km, kc):
        uid = km.provisioner.effective_sandbox["layers"]["privilege"]["uid"]
        out, status, report = cell(kc, "%%sh --out v --err e\nid -u\necho x > /usr/evil\necho warn >&2")
        assert status == "ok" and out == "", out  # nothing shown: both streams went to variables
        assert report["scope"] == "cell" and all(report["enforced"].values())
        out, _, _ = cell(kc, "print(repr(v)); print(repr(e))")
        v, e = out.splitlines()
        assert v == repr(f"{uid}\n")  # ran as the kernel's leased uid, in the cell's sandbox
        assert "Read-only file system" in e and e.endswith("warn\\n'")
        # --out alone: stderr still shown; a failing script sets the variable, then raises
        out, status, _ = cell(kc, "%%sh --out only\necho kept\necho shown >&2\nexit 3")
        assert status == "error" and "shown" in out and "exited with status 3" in out
        assert cell(kc, "print(only)")[0].strip() == "kept"
        out, status, _ = cell(kc, "%%sh --no-raise-error\necho before\nexit 3")
        assert status == "ok" and out.strip() == "before"
        for option, words in (("--bg", "--bg cannot be honoured"), ("--proc p", "--proc cannot be honoured")):
            out, status, _ = cell(kc, f"%%sh {option}\necho RAN")
            assert status == "error" and words in out and "RAN" not in out
        out, status, _ = cell(kc, "%%sh --help")
        assert status == "ok" and "--out NAME" in out, out
        assert "--out NAME" in out and "--memory SIZE" in out and "empty" not in out
        out, status, _ = cell(kc, "%%sh --out 1bad\necho RAN")
        assert status == "error" and "not a variable name" in out


def test_a_notebook_using_ipythons_sh_out_runs_unchanged(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%%sh --out listing\nprintf 'a\\nb\\n'"),
        nbformat.v4.new_code_cell("print(listing.split())"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(nb, tmp_path / "ipython_sh.ipynb")
    proc = run_cli("run", tmp_path / "ipython_sh.ipynb", "--output-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = read_saved(tmp_path / "out" / "ipython_sh.ipynb")
    assert done.cells[0].outputs == []
    assert done.cells[1].outputs[0]["text"] == "['a', 'b']\n"
    assert done.cells[0].metadata["sandbox"]["cell_report"]["scope"] == "cell"
