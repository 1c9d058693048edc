"""The compact saved form of sandbox reports (sandbox_kernel.saved_form): the kernel report once
per notebook, each cell a ref plus its own part, and ``expand`` giving back the full form."""

from __future__ import annotations

import copy
import json

import nbformat
import pytest

from sandbox_kernel.saved_form import (REMOVED, SavedFormError, compact_notebook, diff, expand_notebook,
                                       kernel_ref, patch)


def kernel_report(memory=536870912, run_dir="/tmp/sandbox-kernel-a"):
    return {
        "version": 1, "scope": "kernel", "platform": "linux",
        "requested": {"version": 1, "enabled": True, "on_unavailable": "fail",
                      "resources": {"memory_bytes": memory, "wall_seconds": None},
                      "network": {"mode": "deny", "allow": [], "block_metadata": True}},
        "enforced": {"filesystem": True, "network": True, "resources": True},
        "layers": {"filesystem": {"state": "enforced", "mechanism": "bwrap", "writable": ["/scratch", run_dir]},
                   "network": {"state": "enforced", "mechanism": "netns", "interfaces": ["lo"]},
                   "resources": {"state": "enforced", "mechanism": "cgroup-v1-memory",
                                 "controls": {"memory_bytes": {"limit": memory, "state": "enforced"}}}},
        "downgrades": [],
        "notes": [{"layer": "network", "note": "name resolution is unavailable"}],
    }


def cell_report(kernel):
    """A %%sandbox --memory 64M cell killed by its memory cap, as the cell service reports it."""
    report = copy.deepcopy(kernel)
    report["scope"] = "cell"
    report["requested"]["resources"]["memory_bytes"] = 64 << 20
    report["layers"]["resources"]["controls"]["memory_bytes"]["limit"] = 64 << 20
    report["layers"]["filesystem"]["writable"] = ["/scratch"]
    del report["layers"]["network"]["interfaces"]
    report["notes"] = []
    report["outcome"] = {"exit_code": 137, "signal": 9, "timed_out": False, "output_truncated": False,
                         "killed_reason": "oom"}
    report["kernel"] = kernel
    report["reported_by"] = "provisioner"
    return report


def full_notebook(kernel, second_kernel=None):
    """What the batch runner writes today: the full form."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("print(1)"),
                nbformat.v4.new_code_cell("%%sandbox --memory 64M\nx = bytearray(1 << 28)"),
                nbformat.v4.new_code_cell("never ran")]
    nb.cells[1].metadata["sandbox"] = {**kernel, "reported_by": "provisioner", "cell_outcome": {"status": "ok"}}
    nb.cells[2].metadata["sandbox"] = {**kernel, "reported_by": "provisioner", "cell_outcome": {"status": "error"},
                                       "cell_report": cell_report(kernel)}
    nb.cells[3].metadata["sandbox"] = {**(second_kernel or kernel), "reported_by": "provisioner",
                                       "cell_outcome": {"status": "not-run"}}
    nb.metadata["sandbox"] = {"kernel": kernel, "summary": {"status": "error", "cells_run": 2}}
    return nb


def test_compact_stores_the_kernel_report_once_and_cells_keep_only_their_own():
    kernel = kernel_report()
    nb = full_notebook(kernel)
    compact = compact_notebook(nb)
    meta = compact.metadata.sandbox
    assert meta["form"] == "compact" and meta["kernels"] == {"k1": kernel} and meta["kernel"] == "k1"
    assert meta["summary"] == {"status": "error", "cells_run": 2}
    assert compact.cells[1].metadata.sandbox == {"kernel": "k1", "reported_by": "provisioner", "cell_outcome": {"status": "ok"}}
    assert compact.cells[3].metadata.sandbox["cell_outcome"] == {"status": "not-run"}
    own = compact.cells[2].metadata.sandbox["cell_report"]
    # Only what differs from the kernel report: the tighter cap, the outcome, the scope.
    assert own["scope"] == "cell" and own["outcome"]["killed_reason"] == "oom"
    assert own["requested"] == {"resources": {"memory_bytes": 64 << 20}}
    assert own["layers"]["network"] == {REMOVED: ["interfaces"]}
    assert "kernel" not in own and "enforced" not in own and "platform" not in own
    assert len(json.dumps(compact.cells[2].metadata.sandbox)) < len(json.dumps(nb.cells[2].metadata.sandbox)) / 3
    assert "markdown" == compact.cells[0].cell_type and "sandbox" not in compact.cells[0].metadata


def test_expand_gives_back_the_full_form_exactly():
    nb = full_notebook(kernel_report(), second_kernel=kernel_report(run_dir="/tmp/sandbox-kernel-b"))
    compact = compact_notebook(nb)
    assert sorted(compact.metadata.sandbox["kernels"]) == ["k1", "k2"]
    assert compact.cells[3].metadata.sandbox["kernel"] == "k2"
    assert expand_notebook(compact) == nb
    nbformat.validate(compact)
    assert nbformat.reads(nbformat.writes(compact), as_version=4) == compact


def test_compact_is_idempotent_and_leaves_the_input_alone():
    nb = full_notebook(kernel_report())
    before = copy.deepcopy(nb)
    once = compact_notebook(nb)
    assert nb == before
    assert compact_notebook(once) == once
    assert expand_notebook(nb) == nb  # a full notebook is already expanded


def test_a_forged_nested_kernel_report_stays_in_its_cell():
    """A cell report whose nested kernel report differs from the trusted one (the kernel lied)
    keeps the difference in the cell; the notebook's kernel reports stay the trusted ones."""
    kernel = kernel_report()
    nb = full_notebook(kernel)
    forged = kernel_report()
    forged["enforced"]["network"] = False
    nb.cells[2].metadata.sandbox["cell_report"]["kernel"] = forged
    compact = compact_notebook(nb)
    assert compact.metadata.sandbox["kernels"] == {"k1": kernel}
    assert compact.cells[2].metadata.sandbox["cell_report"]["kernel"] == {"enforced": {"network": False}}
    assert expand_notebook(compact) == nb


def test_unknown_ref_names_the_cell():
    compact = compact_notebook(full_notebook(kernel_report()))
    compact.cells[2].metadata.sandbox["kernel"] = "k9"
    with pytest.raises(SavedFormError, match="cell 2: metadata.sandbox.kernel 'k9'"):
        expand_notebook(compact)


def test_notebook_without_reports_is_unchanged():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1")]
    assert compact_notebook(nb) == nb


@pytest.mark.parametrize("base, target", [
    ({"a": 1, "b": {"c": [1, 2], "d": None}}, {"a": 1, "b": {"c": [1], "d": None}}),
    ({"a": {"x": 1}}, {"a": 5}),
    ({"a": 5}, {"a": {"x": 1}}),
    ({"a": {"x": 1, "y": 2}}, {"a": {}}),
    ({"a": None}, {"a": {"b": None}, "c": []}),
    ({}, {}),
])
def test_patch_undoes_diff(base, target):
    assert patch(base, diff(base, target)) == target


def test_kernel_ref_reuses_equal_reports_and_takes_the_lowest_free_name():
    kernels = {"k2": {"a": 1}}
    assert kernel_ref(kernels, {"a": 1}) == "k2"
    assert kernel_ref(kernels, {"a": 2}) == "k1"
    assert kernel_ref(kernels, {"a": 3}) == "k3"
