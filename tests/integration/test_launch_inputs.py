"""What a sandbox sees of its inputs (``launch.inputs.list_inputs``), on real directory trees."""

from __future__ import annotations

import os

import pytest

from sandbox_kernel.launch import inputs
from sandbox_kernel.launch.inputs import list_inputs

pytestmark = pytest.mark.integration


def tree(root, *files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def listing(root, **kw):
    found = list_inputs(str(root), uid=0, gid=0, **kw)
    return [(os.path.relpath(src, root), dest) for src, dest in found.binds], found


def test_dotfiles_links_and_special_files_are_hidden_at_any_depth(tmp_path):
    tree(tmp_path, "nb.ipynb", "data.csv", ".env", ".git/config", "sub/x.txt", "sub/.env", "sub/deep/.ssh/id",
         "sub/deep/y.txt", "clean/a.txt", "clean/b/c.txt")
    (tmp_path / "link").symlink_to("/etc/passwd")
    (tmp_path / "clean2").mkdir()
    (tmp_path / "clean2" / "inner").symlink_to("/etc")
    os.mkfifo(tmp_path / "fifo")
    binds, found = listing(tmp_path)
    assert binds == [("clean", "clean/"), ("data.csv", "data.csv"), ("nb.ipynb", "nb.ipynb"),
                     ("sub/deep/y.txt", "sub/deep/y.txt"), ("sub/x.txt", "sub/x.txt")]
    assert found.hidden == 7 and "7 entries not exposed" in found.notes[0][1]


def test_excluded_paths_and_their_parents_are_never_bound_whole(tmp_path):
    tree(tmp_path, "mine.ipynb", "other.ipynb", "results/keep.txt", "results/out/other.ipynb", "data/a.csv")
    excluded = [tmp_path / "other.ipynb", tmp_path / "results" / "out", tmp_path / "data" / "summary.json"]  # not written yet
    binds, _ = listing(tmp_path, exclude=excluded)
    assert [dest for _, dest in binds] == ["data/a.csv", "mine.ipynb", "results/keep.txt"]


def test_data_paths_appear_under_their_names_and_win_over_the_directory(tmp_path):
    tree(tmp_path, "dir/labels.txt", "dir/nb.ipynb", "extra/labels.txt", "extra/set/rows.csv", "extra/set/.hidden")
    found = list_inputs(str(tmp_path / "dir"), data=[str(tmp_path / "extra" / "set"), str(tmp_path / "extra" / "labels.txt")],
                        uid=0, gid=0)
    assert found.binds == ((str(tmp_path / "extra" / "labels.txt"), "labels.txt"), (str(tmp_path / "dir" / "nb.ipynb"), "nb.ipynb"),
                           (str(tmp_path / "extra" / "set" / "rows.csv"), "set/rows.csv"))
    assert list_inputs(None, uid=0, gid=0).binds == ()
    out = tmp_path / "dir" / "sandbox-out"
    tree(out, "other.ipynb")
    found = list_inputs(None, data=[str(out), str(out / "other.ipynb")], exclude=[str(out)], uid=0, gid=0)
    assert found.binds == () and all("excluded" in n for _, n in found.notes)


def test_unreachable_roots_are_a_note_not_an_error(tmp_path):
    private = tmp_path / "private"
    tree(private, "a.txt")
    os.chmod(private, 0o700)
    found = list_inputs(str(private), uid=65532, gid=65532)
    assert found.binds == () and "not reachable by uid 65532" in found.notes[0][1]


def test_the_work_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_SCANNED_ENTRIES", 50)
    tree(tmp_path, *[f"f{i:03d}.txt" for i in range(120)])
    found = list_inputs(str(tmp_path), uid=0, gid=0)
    assert len(found.binds) == 50 and any("stopped at its bounds" in n for _, n in found.notes)
    found = list_inputs(str(tmp_path), uid=0, gid=0, max_binds=10)
    assert len(found.binds) == 10
    deep = tmp_path / "deep"
    tree(deep, "/".join(["d"] * 40) + "/x.txt", ".h")
    monkeypatch.setattr(inputs, "MAX_SCANNED_ENTRIES", 10000)
    found = list_inputs(str(deep), uid=0, gid=0)
    assert found.binds == () and any("stopped at its bounds" in n for _, n in found.notes)
