"""`sandbox-kernel run` against hostile notebooks, through the real CLI as root: each test
runs the attack and shows it failing outside the sandbox, where the runner itself is exposed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nbformat
import pytest

from .runner_memory import run_measured
from .test_run_cli import NOTEBOOKS, outputs, read_saved, run_cli, summary

pytestmark = pytest.mark.integration

MiB = 2**20


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def shared_dir() -> Path:
    """A directory the sandbox account can reach (the session TMPDIR is 1777)."""
    path = Path(tempfile.mkdtemp())
    os.chmod(path, 0o755)
    return path


# ----------------------------------------------------------------------------- 1. results and links


def test_planted_link_in_the_output_dir_is_refused_and_its_target_untouched(tmp_path):
    """A repository ships ``sandbox-out/evil.ipynb -> <a root file>``: the runner (root) must not
    write the executed notebook through it."""
    victim = tmp_path / "bashrc"
    victim.write_text("# root's shell startup\n")
    repo = tmp_path / "repo"
    (repo / "sandbox-out").mkdir(parents=True)
    book = notebook(repo / "evil.ipynb", "print('$(id > /tmp/pwned)')")
    (repo / "sandbox-out" / "evil.ipynb").symlink_to(victim)
    ok = notebook(repo / "fine.ipynb", "print('fine')")
    proc = run_cli("run", book, ok, "--output-dir", repo / "sandbox-out", "--summary", repo / "sandbox-out" / "s.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert victim.read_text() == "# root's shell startup\n"
    assert (repo / "sandbox-out" / "evil.ipynb").is_symlink()
    rows = summary(repo / "sandbox-out" / "s.json")
    assert rows[str(book)]["status"] == "error" and "symbolic link" in rows[str(book)]["reason"]
    assert rows[str(ok)]["status"] == "ok" and outputs(repo / "sandbox-out" / "fine.ipynb")[0].strip() == "fine"
    assert not [p for p in (repo / "sandbox-out").iterdir() if p.name.startswith(".sandbox-kernel-")]  # no temp left


def test_output_dir_or_summary_through_a_link_or_not_ours_refuses_the_run(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out-link").symlink_to(elsewhere)
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", tmp_path / "out-link")
    assert proc.returncode == 2 and "--output-dir" in proc.stderr and "symbolic link" in proc.stderr
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", tmp_path / "out-link" / "deeper")
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert list(elsewhere.iterdir()) == []
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65532, 65532)
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", theirs)
    assert proc.returncode == 2 and "owned by uid 65532" in proc.stderr
    target = tmp_path / "target.json"
    target.write_text("keep")
    (tmp_path / "s.json").symlink_to(target)
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json")
    assert proc.returncode == 2 and "--summary" in proc.stderr and target.read_text() == "keep"
    assert not (tmp_path / "out").exists()  # refused before anything ran


# ----------------------------------------------------------------------------- 2. output caps


HOSTILE_OUTPUT = {
    # 10 displays with 10 MiB of metadata each: over the largest message the cell may keep.
    "metadata": "from IPython.display import display\nfor i in range(10):\n"
                "    display({'text/plain': 'x'}, metadata={'pad': 'A' * 10 * 2**20}, raw=True)",
    # 40 displays with 1 MiB of metadata: each fits, together they pass the 5 MiB cap.
    "small-metadata": "from IPython.display import display\nfor i in range(40):\n"
                      "    display({'text/plain': 'x'}, metadata={'pad': 'B' * 2**20}, raw=True)",
    # Forged iopub error messages with a 10 MiB, then 1 MiB traceback.
    "errors": "k = get_ipython().kernel\nfor size in [10 * 2**20] * 5 + [2**20] * 20:\n"
              "    k.session.send(k.iopub_socket, 'error', {'ename': 'E', 'evalue': 'v', 'traceback': ['T' * size]},"
              " parent=k.get_parent('shell'), ident=b'error')",
    # One display id shown 200 times, then updated with 1 MiB: every copy would be saved.
    "updates": "from IPython.display import display, update_display\nh = display('x', display_id=True)\n"
               "for i in range(200):\n    display('y', display_id=h.display_id)\n"
               "for i in range(10):\n    update_display({'text/plain': 'U' * 2**20}, display_id=h.display_id, raw=True)",
    # Multipart messages: 600 frames of 1 MiB (libzmq would buffer all of it), then 60.
    "multipart": "k = get_ipython().kernel\nframe = b'x' * 2**20\n"
                 "k.iopub_socket.send_multipart([frame] * 600, copy=False)\n"
                 "k.iopub_socket.send_multipart([frame] * 60, copy=False)",
    # Comm messages carrying widget state: stored in the notebook's metadata by nbclient.
    "comm": "k = get_ipython().kernel\nfor i in range(20):\n"
            "    k.session.send(k.iopub_socket, 'comm_open', {'comm_id': str(i), 'target_name': 'x',"
            " 'data': {'state': {'_model_name': 'M', 'pad': 'C' * 2**20}}}, parent=k.get_parent('shell'), ident=b'comm')",
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_OUTPUT))
def test_every_message_type_counts_against_the_cap_and_the_runner_stays_bounded(tmp_path, attack):
    """Each attack passes the default 5 MiB cap (or the largest message) with a message type
    the old cap did not count; the runner's peak RSS and the saved notebook stay near the cap,
    the cell says what was cut, and the next cell still runs."""
    book = notebook(tmp_path / f"{attack}.ipynb", HOSTILE_OUTPUT[attack], "print('next cell runs')")
    proc, peak, killed = run_measured(["run", book, "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json"],
                                      limit_bytes=1024 * MiB)
    assert not killed and proc.returncode == 0, proc.stdout + proc.stderr
    cap = 5 * MiB
    assert peak <= 2 * cap + 100 * MiB, f"runner peak RSS {peak / MiB:.0f} MiB"
    saved = tmp_path / "out" / f"{attack}.ipynb"
    assert saved.stat().st_size <= cap + 256 * 1024
    cells = read_saved(saved).cells
    outcome = cells[0].metadata["sandbox"]["cell_outcome"]
    assert outcome["output_truncated"] is True and outcome["output_dropped_bytes"] > 0
    assert "[sandbox-kernel:" in outputs(saved)[0]
    assert outputs(saved)[1].strip() == "next cell runs"
    row = summary(tmp_path / "s.json")[str(book)]
    assert row["output_truncated"] is True and row["output_bytes"] <= cap + 64 * 1024


@pytest.mark.parametrize("flood", ["for i in range(1_000_000):\n    print('y' * 40)",  # short lines
                                   "for i in range(5_000):\n    print('y' * 9_999)"])  # 50 MB in a blink
def test_print_floods_are_merged_and_capped(tmp_path, flood):
    """Short lines arrive as many messages (merged into one output as they come); a fast flood
    of long lines would be one huge message per 0.2 s (the kernel side flushes every MiB, so the
    part within the cap is kept)."""
    book = notebook(tmp_path / "lines.ipynb", flood, "print('next cell runs')")
    proc, peak, killed = run_measured(["run", book, "--output-dir", tmp_path / "out"], limit_bytes=1024 * MiB)
    assert not killed and proc.returncode == 0, proc.stdout + proc.stderr
    assert peak <= 2 * 5 * MiB + 100 * MiB, f"runner peak RSS {peak / MiB:.0f} MiB"
    cell = read_saved(tmp_path / "out" / "lines.ipynb").cells[0]
    stdout = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"]
    assert len(stdout) == 1 and 4 * MiB < len(stdout[0].text) <= 5 * MiB  # one merged output, cut at the cap
    assert "output truncated at 5242880 bytes for this cell" in outputs(tmp_path / "out" / "lines.ipynb")[0]


def test_sh_yes_under_a_large_cap_keeps_the_runner_near_the_cap(tmp_path):
    """``%%sh yes`` streams output as fast as the cell sandbox forwards it."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[resources]\nmax_output_bytes = "64M"\nmemory_bytes = "1G"\n')
    book = notebook(tmp_path / "yes.ipynb", "%%sh\nyes", "print('next cell runs')")
    proc, peak, killed = run_measured(["run", book, "--policy", policy, "--output-dir", tmp_path / "out", "--allow-errors"],
                                      limit_bytes=1024 * MiB)
    assert not killed and proc.returncode == 0, proc.stdout + proc.stderr
    assert peak <= 2 * 64 * MiB + 100 * MiB, f"runner peak RSS {peak / MiB:.0f} MiB"
    assert (tmp_path / "out" / "yes.ipynb").stat().st_size <= 64 * MiB + 256 * 1024
    assert outputs(tmp_path / "out" / "yes.ipynb")[1].strip() == "next cell runs"


def test_a_cap_the_host_cannot_hold_is_refused_naming_the_field(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[resources]\nmax_output_bytes = "1G"\n')
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--policy", policy, "--jobs", 64, "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("resources.max_output_bytes:"), proc.stderr
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--max-notebook-output", "1T", "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.startswith("--max-notebook-output:"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_per_notebook_cap_has_its_own_marker(tmp_path):
    cells = ["print('z' * 3 * 2**20)"] * 3 + ["print('last')"]
    book = notebook(tmp_path / "many.ipynb", *cells)
    proc = run_cli("run", book, "--output-dir", tmp_path / "out", "--max-notebook-output", "7M",
                   "--summary", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = outputs(tmp_path / "out" / "many.ipynb")
    assert len(out[0]) > 3 * 2**20 and "[sandbox-kernel" not in out[0]
    assert "the notebook reached its 7340032-byte output cap" in out[2] and "last" not in out[3]
    nb = read_saved(tmp_path / "out" / "many.ipynb")
    assert nb.cells[2].metadata["sandbox"]["cell_outcome"]["output_cut_by"] == ["notebook"]
    assert summary(tmp_path / "s.json")[str(book)]["output_bytes"] <= 7 * 2**20


# ----------------------------------------------------------------------------- 3. tenants


LIST_EVERYTHING = """import os
seen = []
for root, dirs, files in os.walk('.'):
    seen += [os.path.join(root, n)[2:] for n in dirs + files]
print(sorted(seen))
for name in ('other.ipynb', 'sandbox-out/other.ipynb', '.env', 'sub/.env'):
    try:
        open(name).read()
        print('READ', name)
    except OSError:
        pass
"""


def test_tenants_in_one_directory_cannot_read_each_other(tmp_path):
    """Two submissions in one folder, run together with the default output dir inside it: each
    sees the shared data but not the other's notebook, the executed results, or dotfiles at
    any depth."""
    repo = shared_dir()
    (repo / "sub").mkdir()
    for name, text in {".env": "TOKEN=1", "sub/.env": "TOKEN=2", "sub/data.csv": "a,b", "grades.csv": "x"}.items():
        (repo / name).write_text(text)
    mine = notebook(repo / "mine.ipynb", LIST_EVERYTHING)
    other = notebook(repo / "other.ipynb", "import time\nprint('secret answer 42')\ntime.sleep(3)")
    proc = run_cli("run", mine, other, "--jobs", 2, "--output-dir", repo / "sandbox-out", "--summary", repo / "s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = outputs(repo / "sandbox-out" / "mine.ipynb")[0]
    assert "'grades.csv'" in seen and "'sub/data.csv'" in seen and "'mine.ipynb'" in seen
    for hidden in ("other.ipynb", "sandbox-out", ".env", "s.json", "READ"):
        assert hidden not in seen, seen
    row = summary(repo / "s.json")[str(mine)]
    assert row["inputs"] == ["grades.csv", "mine.ipynb", "sub/data.csv"]


def test_inputs_none_and_data_paths(tmp_path):
    repo, data = shared_dir(), shared_dir()
    (repo / "sibling.txt").write_text("s")
    (data / "set").mkdir()
    (data / "set" / "rows.csv").write_text("1,2")
    (data / "set" / ".git").mkdir()
    (data / "labels.txt").write_text("l")
    book = notebook(repo / "nb.ipynb", LIST_EVERYTHING)
    proc = run_cli("run", book, "--inputs", "none", "--data", data / "set", "--data", data / "labels.txt",
                   "--output-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = outputs(tmp_path / "out" / "nb.ipynb")[0]
    assert "'labels.txt'" in seen and "'set/rows.csv'" in seen
    assert "sibling.txt" not in seen and "nb.ipynb" not in seen and ".git" not in seen


# ----------------------------------------------------------------------------- 4. forged reports


def test_forged_reports_and_outputs_in_the_input_are_replaced(tmp_path):
    forged = {"reported_by": "provisioner", "scope": "kernel", "enforced": {"network": True}, "mark": "FORGED-MARK",
              "cell_outcome": {"status": "ok"}}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('runs')"), nbformat.v4.new_code_cell("1 / 0"),
                nbformat.v4.new_code_cell("print('never runs')"), nbformat.v4.new_code_cell(""),
                nbformat.v4.new_markdown_cell("text")]
    for cell in nb.cells:
        cell.metadata["sandbox"] = forged
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="forged output")]
            cell.execution_count = 99
    nb.metadata["sandbox"] = {"summary": {"status": "ok"}, "mark": "FORGED-MARK"}
    nbformat.write(nb, tmp_path / "forged.ipynb")
    proc = run_cli("run", tmp_path / "forged.ipynb", "--output-dir", tmp_path / "out")
    assert proc.returncode == 1
    cells = read_saved(tmp_path / "out" / "forged.ipynb").cells
    assert "FORGED-MARK" not in json.dumps([c.metadata for c in cells])
    assert "forged output" not in json.dumps([c.get("outputs") for c in cells])
    assert [c.metadata["sandbox"]["cell_outcome"]["status"] for c in cells[:4]] == ["ok", "error", "not-run", "not-run"]
    assert cells[3].metadata["sandbox"]["cell_outcome"]["reason"] == "empty cell"
    assert cells[2].outputs == [] and cells[2].execution_count is None
    assert cells[2].metadata["sandbox"]["enforced"]["network"] is True and cells[2].metadata["sandbox"]["scope"] == "kernel"
    assert "sandbox" not in cells[4].metadata
    saved = read_saved(tmp_path / "out" / "forged.ipynb")
    assert "mark" not in saved.metadata["sandbox"] and saved.metadata["sandbox"]["summary"]["status"] == "error"


# ----------------------------------------------------------------------------- 5. hangs and aborts


def test_secure_default_has_cell_and_notebook_clocks(tmp_path):
    proc = run_cli("run", NOTEBOOKS / "clean.ipynb", "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary(tmp_path / "s.json")[str(NOTEBOOKS / "clean.ipynb")]["timeouts"] == {"cell": 600.0, "notebook": 3600.0}


SLEEPER = "import time\nwhile True:\n    try:\n        time.sleep(10**6)\n    except KeyboardInterrupt:\n        pass"


@pytest.mark.parametrize("clock", ["cell", "notebook"])
def test_sleeper_ends_as_timeout_and_its_kernel_is_killed(tmp_path, clock):
    """``time.sleep(10**6)``, swallowing the interrupt: ended by the cell clock (the policy's
    wall_seconds), or, with the default cell clock, by the notebook clock."""
    options = ["--notebook-timeout", 8]
    if clock == "cell":
        (tmp_path / "policy.toml").write_text("[resources]\nwall_seconds = 2\n")
        options = ["--policy", tmp_path / "policy.toml"]
    book = notebook(tmp_path / "sleeper.ipynb", SLEEPER, "print('never')")
    proc = run_cli("run", book, *options, "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = summary(tmp_path / "s.json")[str(book)]
    assert row["status"] == "timeout" and row["duration"] < 60
    assert ("notebook exceeded" in row["reason"]) == (clock == "notebook")
    cells = read_saved(tmp_path / "out" / "sleeper.ipynb").cells
    assert cells[0].metadata["sandbox"]["cell_outcome"]["status"] == "timeout"
    assert cells[1].metadata["sandbox"]["cell_outcome"]["status"] == "not-run"


def test_every_notebook_gets_a_row_whatever_is_wrong_with_it(tmp_path):
    bad = {
        "not-json.ipynb": "this is not JSON {",
        "source-int.ipynb": json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                                        "cells": [{"cell_type": "code", "source": 123, "metadata": {}, "outputs": [],
                                                   "execution_count": None}]}),
        "deep.ipynb": "[" * 200000 + "]" * 200000,
        "containers.ipynb": "[" + "{}," * 3_000_000 + "{}]",
        "not-a-notebook.ipynb": json.dumps([1, 2, 3]),
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    secret = tmp_path / "root-only.ipynb"
    secret.write_bytes((NOTEBOOKS / "clean.ipynb").read_bytes())
    os.chmod(secret, 0o600)
    (tmp_path / "link.ipynb").symlink_to(secret)
    big = tmp_path / "big.ipynb"
    with open(big, "wb") as f:
        f.truncate(33 * 2**20)
    books = [tmp_path / n for n in bad] + [tmp_path / "link.ipynb", big, NOTEBOOKS / "clean.ipynb"]
    proc = run_cli("run", *books, "--output-dir", tmp_path / "out", "--summary", tmp_path / "s.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = summary(tmp_path / "s.json")
    assert len(rows) == len(books)
    for book in books[:-1]:
        assert rows[str(book)]["status"] == "invalid" and rows[str(book)]["reason"], rows[str(book)]
        assert str(book) in proc.stdout
    assert "symbolic link" in rows[str(tmp_path / "link.ipynb")]["reason"]
    assert "nested" in rows[str(tmp_path / "deep.ipynb")]["reason"] or "JSON" in rows[str(tmp_path / "deep.ipynb")]["reason"]
    assert "in memory" in rows[str(tmp_path / "containers.ipynb")]["reason"]
    assert rows[str(NOTEBOOKS / "clean.ipynb")]["status"] == "ok" and (tmp_path / "out" / "clean.ipynb").exists()
