"""Planner features for kernels and notebooks: kernel-scope caps, the input dir inside
scratch, caller notes."""

from __future__ import annotations

import pytest

from .hosts import (policy, run_plan, triples)

INPUT = "/data/project"


def controls(p) -> dict:
    return p.report.layers["resources"].detail["controls"]


def test_kernel_scope_delegates_output_and_wall_caps_to_the_client():
    p = run_plan(pol=policy({"resources": {"wall_seconds": 30}}), scope="kernel")
    for name in ("max_output_bytes", "wall_seconds"):
        assert controls(p)[name]["state"] == "delegated"
        assert "client" in controls(p)[name]["mechanism"]
    assert p.report.layers["resources"].state == "enforced"
    assert "supervisor" not in (p.report.layers["resources"].mechanism or "")
    assert any("per cell" in n.note for n in p.report.notes)


def test_cell_scope_enforces_output_and_wall_caps_in_the_supervisor():
    p = run_plan(pol=policy({"resources": {"wall_seconds": 30}}), scope="cell")
    assert controls(p)["max_output_bytes"] == {"limit": 5 * 2**20, "mechanism": "supervisor-stream-cap", "state": "enforced"}
    assert controls(p)["wall_seconds"]["mechanism"] == "supervisor-timer"
    assert p.wall_seconds == 30 and p.max_output_bytes == 5 * 2**20


def _input_binds(p):
    return [(src, dst) for src, dst in triples(list(p.argv), "--ro-bind-try") if src.startswith(INPUT)]


def test_inputs_appear_read_only_inside_scratch_after_the_scratch_tmpfs():
    p = run_plan(inputs=((f"{INPUT}/sub/x.csv", "sub/x.csv"), (f"{INPUT}/data.csv", "data.csv"), (f"{INPUT}/dir", "dir/")))
    assert _input_binds(p) == [(f"{INPUT}/data.csv", "/scratch/data.csv"), (f"{INPUT}/dir", "/scratch/dir"),
                               (f"{INPUT}/sub/x.csv", "/scratch/sub/x.csv")]
    argv = list(p.argv)
    scratch_tmpfs = max(i for i, a in enumerate(argv) if a == "--tmpfs" and argv[i + 1] == "/scratch")
    assert all(argv.index(src) > scratch_tmpfs for src, _ in _input_binds(p))
    inputs = p.report.layers["filesystem"].detail["inputs"]
    assert inputs["entries"] == 3 and inputs["exposed"] == ["data.csv", "dir/", "sub/x.csv"]


def test_inputs_already_in_a_session_scratch_cost_no_bind_per_run():
    # bwrap re-reads the mount table at each mount it makes: per-run input binds cost O(N^2).
    inputs = tuple((f"{INPUT}/f{i}", f"f{i}") for i in range(50))
    p = run_plan(inputs=inputs, scratch_source="/run/session/scratch", inputs_in_scratch=True)
    assert _input_binds(p) == []
    assert triples(list(p.argv), "--bind").count(("/run/session/scratch", "/scratch")) == 1
    detail = p.report.layers["filesystem"].detail["inputs"]
    assert detail["entries"] == 50 and detail["mounted"] == "once per kernel session"
    assert _input_binds(run_plan(inputs=inputs, inputs_in_scratch=True)) != []  # no session: bwrap binds them


@pytest.mark.parametrize("bad", ["..", ".", "", "a/../../etc", "/abs", "a//b", "x\0y"])
def test_inputs_cannot_escape_the_scratch_dir(bad):
    p = run_plan(inputs=((f"{INPUT}/x", bad), (f"{INPUT}/ok.txt", "ok.txt"), ("relative/src", "rel.txt")))
    assert _input_binds(p) == [(f"{INPUT}/ok.txt", "/scratch/ok.txt")]


def test_input_binds_are_bounded():
    many = tuple((f"{INPUT}/f{i:05d}", f"f{i:05d}") for i in range(1500))
    p = run_plan(inputs=many)
    assert len(_input_binds(p)) == 1000
    assert len(p.report.layers["filesystem"].detail["inputs"]["exposed"]) == 100


def test_scratch_only_does_not_expose_the_inputs():
    p = run_plan(pol=policy({"filesystem": {"mode": "scratch-only"}}), inputs=((f"{INPUT}/data.csv", "data.csv"),))
    assert _input_binds(p) == []


def test_caller_notes_reach_the_report_and_never_refuse():
    p = run_plan(pol=policy(on_unavailable="fail"), notes=(("filesystem", "working dir not reachable"),))
    assert ("filesystem", "working dir not reachable") in [(n.layer, n.note) for n in p.report.notes]
    assert not p.report.downgrades


def test_disabled_policy_still_keeps_supervisor_secrets_out():
    p = run_plan(pol=policy(enabled=False), host_env={"PATH": "/usr/bin", "AWS_SECRET_ACCESS_KEY": "x", "LANG": "C"})
    assert "AWS_SECRET_ACCESS_KEY" not in p.env and p.env["PATH"] == "/usr/bin" and p.env["LANG"] == "C"
    assert not p.sandboxed and all(not v for v in p.report.enforced.values())


def test_dev_is_read_only_with_a_sized_shm():
    argv = list(run_plan().argv)
    dev = argv.index("--dev")
    assert argv[dev + 1] == "/dev"
    rest = argv[dev:]
    assert rest[2:7] == ["--size", str(2**30), "--tmpfs", "/dev/shm", "--remount-ro"] and rest[7] == "/dev"
