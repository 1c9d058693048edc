"""JupyterLab with the sandbox-kernel extensions, in a real browser: what a user sees for a
sandboxed kernel (status bar, per-cell badges, why a cell was killed), what the saved notebook
carries, a degraded policy in amber with its reason, and nothing at all for a plain kernel."""

from __future__ import annotations

import copy
import json
import shutil
import time

import nbformat
import pytest

from sandbox_kernel.saved_form import expand_notebook
from tests.integration.kernels import path_without
from tests.servers import REPO, running_server

from .conftest import TIMEOUT_MS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLAIN = "print('hello from the kernel')"
# The notebook `make demo` points newcomers at: markdown around a plain cell, a %%sh cell and a
# %%sandbox --memory 64M cell that allocates 256 MiB.
TOUR = REPO / "notebooks" / "lab-tour.ipynb"


def write_notebook(server, name: str, kernel: str, *sources: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, server.root / name)
    return name


def open_notebook(page, server, name: str) -> None:
    page.goto(f"{server.url}/lab/tree/{name}?token={server.token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    # Fold the file browser away: room for the notebook and the report side by side.
    page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()


def run_code_cells(page) -> None:
    """Run each code cell in place (click, Ctrl+Enter), as a user would."""
    editors = page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-editor")
    for i in range(editors.count()):
        editors.nth(i).click()
        page.keyboard.press("Control+Enter")


def wait_for_saved(path, condition, timeout: float = TIMEOUT_MS / 1000):
    """The notebook on disk, once ``condition(nb)`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            nb = nbformat.read(path, as_version=4)
            if condition(nb):
                return nb
        except (ValueError, OSError):
            pass  # mid-write
        assert time.monotonic() < deadline, f"{path} was not saved as expected"
        time.sleep(0.2)


def the_kernel(server) -> str:
    _, sessions = server.get("/api/sessions")
    assert len(sessions) == 1, sessions
    return sessions[0]["kernel"]["id"]


def test_sandboxed_notebook_status_badges_and_saved_report(tmp_path, lab_page, artifacts):
    with running_server(tmp_path, "jupyterlab") as server:
        name = TOUR.name
        shutil.copy(TOUR, server.root / name)
        page = lab_page(server)
        open_notebook(page, server, name)

        # The status bar says the kernel is sandboxed and which layers hold.
        status = page.locator(".jp-sandbox-status")
        status.wait_for()
        assert status.inner_text().split() == ["sandboxed:", "fs", "net", "res", "priv", "env", "seccomp"]
        assert status.get_attribute("data-level") == "ok"

        run_code_cells(page)
        page.wait_for_function("document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-sandbox-badge').length === 3",
                               timeout=TIMEOUT_MS)
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        assert "hello from the kernel" in cells.nth(0).inner_text()
        # The %%sh cell runs under its kernel's own transient uid, never root.
        shell_uid = int(cells.nth(1).locator(".jp-OutputArea").inner_text().split("shell ", 1)[1].split()[0])
        assert shell_uid >= 1000
        assert "allocated" not in cells.nth(2).locator(".jp-OutputArea").inner_text()

        plain, shell, bomb = (cells.nth(i).locator(".jp-sandbox-badge") for i in range(3))
        assert plain.get_attribute("data-scope") == "kernel" and plain.get_attribute("data-level") == "ok"
        assert "kernel's sandbox, enforced" in plain.inner_text()
        assert shell.get_attribute("data-scope") == "cell"
        assert shell.inner_text().startswith("%%sh") and "own sandbox, enforced" in shell.inner_text()
        assert shell.locator(".jp-sandbox-badge-outcome").inner_text() == "exited 0"
        assert bomb.get_attribute("data-scope") == "cell"
        assert "memory 64 MiB" in bomb.inner_text() and "network deny" in bomb.inner_text()
        killed = bomb.locator(".jp-sandbox-badge-outcome")
        assert killed.inner_text() == "killed by the memory cap (64 MiB)"
        assert "jp-sandbox-failed" in killed.get_attribute("class")
        cells.nth(2).screenshot(path=str(artifacts / "lab-killed-cell.png"))
        page.screenshot(path=str(artifacts / "lab-notebook.png"))

        # A click on the status item opens the full report, readable, raw JSON folded away.
        status.click()
        panel = page.locator(".jp-sandbox-panel").first
        panel.wait_for()
        assert "Every layer of the sandbox holds." in panel.inner_text()
        assert panel.locator("table").first.locator("tbody tr").count() == 6
        assert panel.locator("details").first.get_attribute("open") is None
        page.screenshot(path=str(artifacts / "lab-status-report.png"))
        page.locator("#jp-main-statusbar").screenshot(path=str(artifacts / "lab-status-bar.png"))

        # A click on the killed cell's badge opens that cell's own report.
        bomb.click()
        page.get_by_text("Outcome: killed by the memory cap (64 MiB)").wait_for()

        kernel_id = the_kernel(server)
        code, trusted = server.get(f"/api/sandbox/kernels/{kernel_id}")
        assert code == 200

        # Saved: the kernel report once, each cell a ref plus its own part (compact form).
        cells.nth(0).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        saved = wait_for_saved(server.root / name, lambda nb: "sandbox" in nb.metadata and all(
            "sandbox" in c.metadata for c in nb.cells if c.cell_type == "code"))
    nb = copy.deepcopy(saved)
    nb.cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all("sandbox" not in c.metadata for c in saved.cells if c.cell_type == "markdown")
    meta = nb.metadata.sandbox
    assert meta["form"] == "compact" and meta["kernel"] == "k1"
    assert meta["kernels"] == {"k1": trusted}
    assert [c.metadata.sandbox["kernel"] for c in nb.cells] == ["k1"] * 3
    assert [c.metadata.sandbox["cell_outcome"]["status"] for c in nb.cells] == ["ok", "ok", "error"]
    assert "cell_report" not in nb.cells[0].metadata.sandbox
    own = nb.cells[2].metadata.sandbox["cell_report"]
    assert own["requested"]["resources"] == {"memory_bytes": 64 * 1024 * 1024}
    assert own["outcome"]["killed_reason"] == "oom" and own["reported_by"] == "provisioner"
    assert "kernel" not in own  # the same report as the notebook's k1
    assert len(json.dumps(nb.cells[2].metadata.sandbox)) < len(json.dumps(trusted))
    full = expand_notebook(saved)  # the Python reader understands what Lab wrote
    full.cells = [c for c in full.cells if c.cell_type == "code"]
    cell = full.cells[2].metadata.sandbox
    assert cell["cell_report"]["kernel"] == trusted and cell["cell_report"]["scope"] == "cell"
    assert {k: cell[k] for k in trusted} == trusted


def test_degraded_policy_is_amber_with_its_reason(tmp_path, lab_page, artifacts):
    degrade = ("c.SandboxPolicyConfig.on_unavailable = 'degrade'\n"
               "c.SandboxPolicyConfig.network_mode = 'allowlist'\n"
               "c.SandboxPolicyConfig.network_allow = ['10.0.2.2:9']\n")
    # This host without slirp4netns: the allowlist cannot be plumbed, the kernel runs degraded.
    env = {"PATH": path_without(tmp_path / "bin", "slirp4netns")}
    with running_server(tmp_path, "jupyterlab", env=env, operator_config=degrade) as server:
        name = write_notebook(server, "degraded.ipynb", "python3-sandboxed", PLAIN)
        page = lab_page(server)
        open_notebook(page, server, name)
        status = page.locator(".jp-sandbox-status")
        status.wait_for()
        assert status.get_attribute("data-level") == "warn"
        assert status.inner_text().split()[:2] == ["sandbox", "degraded:"]
        assert "slirp4netns" in status.get_attribute("title")
        degraded = status.locator(".jp-sandbox-state-degraded")
        assert degraded.inner_text() == "net"
        run_code_cells(page)
        badge = page.locator(".jp-Notebook .jp-Cell .jp-sandbox-badge").first
        badge.wait_for()
        assert badge.get_attribute("data-level") == "warn" and "slirp4netns" in badge.inner_text()
        status.click()
        panel = page.locator(".jp-sandbox-panel").first
        assert "Some layers of the sandbox do not hold." in panel.inner_text()
        assert "network degraded" in panel.locator(".jp-sandbox-problem").first.inner_text()
        page.locator("#jp-main-statusbar").screenshot(path=str(artifacts / "lab-degraded-status-bar.png"))


def test_plain_kernel_shows_and_saves_nothing(tmp_path, lab_page):
    with running_server(tmp_path, "jupyterlab") as server:
        name = write_notebook(server, "plain.ipynb", "python3", PLAIN)
        page = lab_page(server)
        # The extension asks the server about the kernel and is told it is not sandboxed.
        with page.expect_response(lambda r: "/api/sandbox/kernels/" in r.url, timeout=TIMEOUT_MS) as asked:
            open_notebook(page, server, name)
        assert asked.value.status == 404
        run_code_cells(page)
        page.locator(".jp-Notebook .jp-Cell .jp-OutputArea-output").first.wait_for()
        assert "hello from the kernel" in page.locator(".jp-Notebook .jp-Cell").first.inner_text()
        assert page.locator(".jp-sandbox-badge").count() == 0
        assert not page.locator(".jp-sandbox-status").is_visible()
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        nb = wait_for_saved(server.root / name, lambda nb: nb.cells[0].outputs)
    assert "sandbox" not in nb.metadata and "sandbox" not in nb.cells[0].metadata
