"""Results are written without following links (``launch.results``), on the real filesystem."""

from __future__ import annotations

import json
import os

import pytest

from sandbox_kernel.launch.results import ResultDir, UnsafeResultPath, dump_json

pytestmark = pytest.mark.integration


def test_a_link_anywhere_in_the_path_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for path in (tmp_path / "link", tmp_path / "link" / "new"):
        with pytest.raises(UnsafeResultPath, match="is a symbolic link"):
            ResultDir.open(path)
    assert list((tmp_path / "real").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeResultPath, match="not a directory"):
        ResultDir.open(tmp_path / "file" / "sub")


def test_missing_components_are_created_and_must_be_ours(tmp_path):
    with ResultDir.open(tmp_path / "a" / "b") as d:
        assert d.path == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()
    os.chown(tmp_path / "a" / "b", 65532, 65532)
    with pytest.raises(UnsafeResultPath, match="owned by uid 65532"):
        ResultDir.open(tmp_path / "a" / "b")
    with pytest.raises(UnsafeResultPath, match="does not exist"):
        ResultDir.open(tmp_path / "nope", create=False)


def test_only_regular_files_of_ours_are_replaced(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    with ResultDir.open(tmp_path / "out") as d:
        (tmp_path / "out" / "link").symlink_to(victim)
        (tmp_path / "out" / "dir").mkdir()
        (tmp_path / "out" / "theirs").write_text("theirs")
        os.chown(tmp_path / "out" / "theirs", 65532, 65532)
        os.mkfifo(tmp_path / "out" / "fifo")
        for name, why in (("link", "a symbolic link"), ("dir", "not a regular file"), ("theirs", "owned by uid 65532"),
                          ("fifo", "not a regular file")):
            with pytest.raises(UnsafeResultPath, match=why):
                d.write_json(name, {"x": 1})
        d.write_json("mine", {"x": 1})
        d.write_json("mine", {"x": 2})
        assert json.loads((tmp_path / "out" / "mine").read_text()) == {"x": 2}
        for bad in ("", ".", "..", "a/b"):
            with pytest.raises(UnsafeResultPath):
                d.write_json(bad, {})
    assert victim.read_text() == "keep" and (tmp_path / "out" / "theirs").read_text() == "theirs"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dir", "fifo", "link", "mine", "theirs"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with ResultDir.open(tmp_path) as d:
        with pytest.raises(RuntimeError):
            with d.create("x.ipynb") as f:
                f.write("partial")
                raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_dump_json_streams_large_strings_as_valid_json():
    obj = {"b": ["é\n\"" * 700_000, {"c": None, "d": 1.5}], "a": [], "e": {}}
    chunks: list[str] = []
    dump_json(obj, chunks.append)
    assert json.loads("".join(chunks)) == obj
    assert max(map(len, chunks)) <= 6 * 2**20  # sliced: never one escaped copy of the whole string
