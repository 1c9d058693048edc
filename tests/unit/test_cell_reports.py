"""The supervisor's bounded record of magic-cell reports (sandbox_kernel.cell_reports)."""

from __future__ import annotations

import pytest

from sandbox_kernel.cell_reports import CellReports


def test_keeps_the_last_n_and_the_latest_report_per_request():
    reports = CellReports(limit=3)
    for i in range(5):
        assert reports.record(f"msg-{i}", {"n": i})
    assert len(reports) == 3
    assert reports.get("msg-0") is None and reports.get("msg-1") is None
    assert reports.get("msg-4") == {"n": 4}
    reports.record("msg-2", {"n": "again"})  # one cell calling a magic twice: the last one wins
    reports.record("msg-5", {"n": 5})
    assert reports.get("msg-2") == {"n": "again"} and reports.get("msg-3") is None


@pytest.mark.parametrize("msg_id", [None, "", 7, "a" * 129, "../../etc", "id with space", "é", ["x"]])
def test_unusable_ids_are_not_recorded(msg_id):
    reports = CellReports()
    assert reports.record(msg_id, {"n": 1}) is False
    assert len(reports) == 0


def test_jupyter_msg_id_shapes_are_recorded():
    reports = CellReports()
    for msg_id in ("3f2a3b4c-1d2e-4f5a-9b8c-7d6e5f4a3b2c", "a1b2c3d4e5f6_1234_7", "x:y.z"):
        assert reports.record(msg_id, {})
