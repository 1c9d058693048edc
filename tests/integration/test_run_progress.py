"""`run`'s progress and tables: per-cell lines off a terminal, tqdm bars on one (a real pty),
`--log-output` copying what notebooks print (as plain text), `--table-format markdown|csv`."""

from __future__ import annotations

import csv
import io
import os
import subprocess


import nbformat
import pytest

from .test_run_cli import CLI, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def nb(tmp_path):
    path = tmp_path / "p.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('hello \\x1b]0;pwned\\x07\\x1b[31mred')"),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("import sys; print('to err', file=sys.stderr)"),
    ]), path)
    return path


def test_plain_lines_per_cell_and_log_output(tmp_path, nb):
    proc = run_cli("run", nb, "--output-dir", tmp_path / "out", "--log-output")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"{nb}: cell 1/2 ok" in lines and f"{nb}: cell 2/2 ok" in lines
    assert "[p.ipynb] hello red" in lines and "[p.ipynb] to err" in lines
    assert lines.index("[p.ipynb] hello red") < lines.index(f"{nb}: cell 1/2 ok")
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert lines[-1].startswith(f"[1/1] {nb}: ok")
    quiet = run_cli("run", nb, "--output-dir", tmp_path / "out2")
    assert "hello" not in quiet.stderr and f"{nb}: cell 2/2 ok" in quiet.stderr


def test_tqdm_bars_on_a_terminal(tmp_path, nb):
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run([*CLI, "run", str(nb), "--output-dir", str(tmp_path / "out")], stdout=subprocess.PIPE,
                              stderr=secondary, text=True, timeout=300)
        os.close(secondary)
        secondary = -1
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every writer has closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if secondary >= 0:
            os.close(secondary)
        os.close(primary)
    assert proc.returncode == 0
    text = seen.decode(errors="replace")
    assert "cell/s" in text or "s/cell" in text  # the per-notebook cell bar
    assert "1/1" in text and "notebook" in text  # the batch bar
    assert f"{nb}: cell" not in text  # no plain lines on a terminal


def test_table_formats(tmp_path, nb):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{")
    proc = run_cli("run", nb, bad, "--output-dir", tmp_path / "out", "--table-format", "csv")
    assert proc.returncode == 1
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["notebook"], r["status"]) for r in rows] == [(str(nb), "ok"), (str(bad), "invalid")]
    assert "not valid JSON" in rows[1]["reason"] and rows[0]["reason"] == ""
    proc = run_cli("run", nb, bad, "--output-dir", tmp_path / "out", "--table-format", "markdown")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| notebook") and set(lines[1]) <= {"|", "-", ":"}
    assert len(lines) == 4 and "| invalid " in lines[3]
    assert run_cli("run", nb, "--table-format", "html").returncode == 2


def test_python_api_reports_progress(tmp_path, nb):
    from sandbox_kernel.executor import execute_notebook

    events = []
    _, result = execute_notebook(str(nb), on_progress=events.append)
    assert result.status == "ok"
    cells = [(e["index"], e["of"], e["status"]) for e in events if e["event"] == "cell"]
    assert cells == [(1, 2, "ok"), (2, 2, "ok")] and all(e["path"] == str(nb) for e in events)
    assert any(e["event"] == "output" and "hello" in e["text"] for e in events)


