"""`sandbox-kernel run`'s answers to user mistakes (docs/cli.md, "Errors"): one line on stderr
naming the thing and the fix, exit 2, nothing started; per-notebook problems in a batch are that
notebook's row (status ``invalid``, a plain-text reason) and the others run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from sandbox_kernel.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE

from .test_run_cli import NOTEBOOKS, run_cli

pytestmark = pytest.mark.integration


def one_line(proc, *words: str) -> str:
    """The run refused with exit 2 and exactly one stderr line holding ``words``."""
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def notebook(path: Path, *sources: str, language: str | None = None) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    if language:
        nb.metadata["kernelspec"] = {"name": language.lower(), "language": language, "display_name": language}
    nbformat.write(nb, path)
    return path


def test_a_directory_as_notebook(tmp_path):
    line = one_line(run_cli("run", tmp_path, "--output-dir", tmp_path / "out"), "is a directory", "*.ipynb")
    assert line.startswith("notebook: ")
    assert not (tmp_path / "out").exists()


def test_a_missing_notebook(tmp_path):
    one_line(run_cli("run", tmp_path / "nope.ipynb", "--output-dir", tmp_path / "out"), "nope.ipynb", "does not exist")


def test_output_dir_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    one_line(run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", tmp_path / "out"), "--output-dir: ", "is a file")


def test_output_dir_not_writable(tmp_path):
    # procfs takes no new files, even from root
    one_line(run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", "/proc/sys"), "--output-dir: ", "not writable")


def test_output_dir_holding_the_notebook_itself(tmp_path):
    nb = notebook(tmp_path / "a.ipynb", "print(1)")
    before = nb.read_bytes()
    one_line(run_cli("run", nb, "--output-dir", tmp_path), "--output-dir: ", "would replace", "another directory")
    assert nb.read_bytes() == before


def test_output_dir_occupied_under_a_notebooks_name_is_that_notebooks_row(tmp_path):
    # a submitter may have shaped the dir: the others still run and are written
    (tmp_path / "out" / "clean.ipynb").mkdir(parents=True)
    other = notebook(tmp_path / "other.ipynb", "print(1)")
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", other, "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json")
    assert proc.returncode == EXIT_ERROR and "Traceback" not in proc.stderr
    rows = {Path(n["path"]).name: n for n in json.loads((tmp_path / "s.json").read_text())["notebooks"]}
    assert rows["other.ipynb"]["status"] == "ok" and (tmp_path / "out" / "other.ipynb").is_file()
    assert rows["clean.ipynb"]["status"] == "error" and "not a regular file" in rows["clean.ipynb"]["reason"]


def test_a_non_python_notebook_is_refused_unless_asked(tmp_path):
    nb = notebook(tmp_path / "r.ipynb", "print(1)", language="R")
    one_line(run_cli("run", nb, "--output-dir", tmp_path / "out"), "r.ipynb", "'r'", "Python only", "--any-language")
    proc = run_cli("run", nb, "--any-language", "--output-dir", tmp_path / "out")
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr


def test_malformed_notebook_in_a_batch_is_its_row_and_the_rest_runs(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text('{"cells": [')
    good = notebook(tmp_path / "good.ipynb", "print('fine')")
    proc = run_cli("run", bad, good, "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json")
    assert proc.returncode == EXIT_ERROR
    assert "Traceback" not in proc.stderr + proc.stdout
    rows = {Path(n["path"]).name: n for n in json.loads((tmp_path / "s.json").read_text())["notebooks"]}
    assert rows["good.ipynb"]["status"] == "ok"
    assert rows["bad.ipynb"]["status"] == "invalid" and "not valid JSON" in rows["bad.ipynb"]["reason"]
    assert [line for line in proc.stdout.splitlines() if line.startswith(f"{bad}: ")] == [
        f"{bad}: {rows['bad.ipynb']['reason']}"]


def test_failure_reasons_are_plain_text(tmp_path):
    nb = notebook(tmp_path / "red.ipynb", "raise ValueError('\\x1b[31mred\\x1b[0m alert')")
    proc = run_cli("run", nb, "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json")
    assert proc.returncode == EXIT_ERROR
    reason = json.loads((tmp_path / "s.json").read_text())["notebooks"][0]["reason"]
    assert reason == "ValueError: red alert"
    assert "\x1b" not in proc.stdout and f"{nb}: ValueError: red alert" in proc.stdout
