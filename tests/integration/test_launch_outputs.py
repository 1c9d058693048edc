"""Copying results out (``launch.outputs``) on the real filesystem: what the kernel left in its
results dir is hostile, and so is the destination's neighbourhood."""

from __future__ import annotations

import os

import pytest

from sandbox_kernel.launch.outputs import OutputCollector
from sandbox_kernel.policy import OutputsPolicy

pytestmark = pytest.mark.integration


def collector(tmp_path, **caps) -> OutputCollector:
    (tmp_path / "scratch" / "outputs").mkdir(parents=True, exist_ok=True)
    return OutputCollector(str(tmp_path / "scratch"), str(tmp_path / "dest"), OutputsPolicy(**caps))


def test_regular_files_are_copied_once_and_again_when_changed(tmp_path):
    c = collector(tmp_path)
    src = tmp_path / "scratch" / "outputs"
    (src / "a.csv").write_text("1")
    (src / "sub").mkdir()
    (src / "sub" / "b.bin").write_bytes(b"\0\1")
    first = c.collect()
    assert sorted(first["copied"]) == ["a.csv", "sub/b.bin"] and first["refused"] == []
    assert (tmp_path / "dest" / "a.csv").read_text() == "1" and (tmp_path / "dest" / "sub" / "b.bin").read_bytes() == b"\0\1"
    assert c.collect()["copied"] == []  # unchanged: not copied again
    (src / "a.csv").write_text("22")
    assert c.collect()["copied"] == ["a.csv"] and (tmp_path / "dest" / "a.csv").read_text() == "22"


def test_count_and_total_caps_hold_across_collections(tmp_path):
    c = collector(tmp_path, max_files=2, max_total_bytes=10)
    src = tmp_path / "scratch" / "outputs"
    for name in ("a", "b"):
        (src / name).write_bytes(b"x" * 4)
    assert sorted(c.collect()["copied"]) == ["a", "b"]
    (src / "c").write_bytes(b"x")
    refused = c.collect()["refused"]
    assert refused[0]["path"] == "c" and "max_files" in refused[0]["reason"]
    c2 = collector(tmp_path / "two", max_total_bytes=10)
    (tmp_path / "two" / "scratch" / "outputs" / "big").write_bytes(b"x" * 11)
    assert "max_total_bytes" in c2.collect()["refused"][0]["reason"]
    assert not (tmp_path / "two" / "dest" / "big").exists()


def test_a_refusal_is_reported_once(tmp_path):
    c = collector(tmp_path)
    os.symlink("/etc/shadow", tmp_path / "scratch" / "outputs" / "shadow")
    assert [r["path"] for r in c.collect()["refused"]] == ["shadow"]
    assert c.collect()["refused"] == []
    assert not (tmp_path / "dest").exists()  # nothing to copy: nothing made


def test_a_destination_file_that_is_a_link_or_not_ours_is_left_alone(tmp_path):
    c = collector(tmp_path)
    (tmp_path / "scratch" / "outputs" / "x.txt").write_text("new")
    (tmp_path / "scratch" / "outputs" / "y.txt").write_text("new")
    (tmp_path / "dest").mkdir()
    (tmp_path / "victim").write_text("keep")
    os.symlink(tmp_path / "victim", tmp_path / "dest" / "x.txt")
    (tmp_path / "dest" / "y.txt").write_text("theirs")
    os.chown(tmp_path / "dest" / "y.txt", 65532, 65532)
    summary = c.collect()
    assert summary["copied"] == [] and {r["path"] for r in summary["refused"]} == {"x.txt", "y.txt"}
    assert (tmp_path / "victim").read_text() == "keep" and (tmp_path / "dest" / "y.txt").read_text() == "theirs"
    assert sorted(os.listdir(tmp_path / "dest")) == ["x.txt", "y.txt"]  # no temp file left behind


def test_a_missing_results_dir_or_scratch_is_not_an_error(tmp_path):
    c = OutputCollector(str(tmp_path / "scratch"), str(tmp_path / "dest"), OutputsPolicy())
    assert "gone" in c.collect()["note"]
    (tmp_path / "scratch").mkdir()
    assert c.collect()["copied"] == []
