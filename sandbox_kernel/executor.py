"""Batch execution of untrusted notebooks: nbclient driving a sandboxed kernel per notebook.

What plain nbclient/papermill leave open and this closes: a whole-notebook timeout, a prompt
and explained end when the kernel dies (OOM, killed) instead of a hang, a per-cell output cap
with a visible marker, and a record in the notebook of how it was confined: every executed
code cell gets ``cell.metadata.sandbox`` (the trusted kernel report from the provisioner, plus
the kernel-reported cell report of magic cells), the notebook gets ``metadata.sandbox``.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import Any as AnyTrait
from traitlets import Int

from .kernelspec import KERNEL_NAME, kernelspec
from .policy import SandboxPolicy, secure_default
from .report import SandboxUnavailable


class SandboxKernelManager(AsyncKernelManager):
    """Always the sandboxed ipykernel (whatever the notebook's metadata names), started by the
    sandbox provisioner under ``sandbox_policy``, the operator's policy for this run."""

    sandbox_policy = AnyTrait(None, allow_none=True, help="SandboxPolicy the provisioner enforces (operator level).")

    def __init__(self, **kwargs):
        super().__init__(kernel_name=KERNEL_NAME, **kwargs)
        spec = kernelspec()
        self._kernel_spec = KernelSpec(resource_dir="", **spec)


@dataclass
class CellRecord:
    index: int
    status: str  # "ok" | "error" | "timeout" | "dead-kernel" | "not-run"
    output_truncated: bool = False


@dataclass
class NotebookResult:
    path: str
    status: str  # "ok" | "error" | "timeout" | "dead-kernel" | "refused"
    cells_run: int = 0
    cells_errored: int = 0
    duration: float = 0.0
    downgrades: list[dict] = field(default_factory=list)
    reason: str | None = None
    output_path: str | None = None
    layers: dict[str, str] = field(default_factory=dict)  # layer -> mechanism, or its state

    def to_dict(self) -> dict:
        return asdict(self)


class SandboxNotebookClient(NotebookClient):
    """nbclient with a sandboxed kernel, per-cell output caps and sandbox reports in metadata."""

    max_output_bytes = Int(None, allow_none=True, help="Output bytes kept per cell; the rest is dropped with a marker.").tag(config=True)

    def __init__(self, nb, policy: SandboxPolicy | None = None, **kw):
        self.sandbox_policy = policy or secure_default()
        super().__init__(nb, km=None, kernel_manager_class=SandboxKernelManager, **kw)
        if self.max_output_bytes is None:
            self.max_output_bytes = self.sandbox_policy.resources.max_output_bytes
        self.cell_records: dict[int, CellRecord] = {}
        self._cell_bytes: dict[int, int] = {}
        self._truncated: set[int] = set()
        self._timed_out: set[int] = set()
        self.kernel_report: dict | None = None
        self.provisioner = None
        self.on_cell_executed = self._record_cell
        self.on_cell_execute = self._cell_started
        self.current_cell: int | None = None

    def create_kernel_manager(self):
        self.km = SandboxKernelManager(config=self.config, sandbox_policy=self.sandbox_policy)
        return self.km

    async def async_start_new_kernel(self, **kwargs):
        await super().async_start_new_kernel(**kwargs)
        self.provisioner = self.km.provisioner  # kept: nbclient drops km when the kernel dies
        self.kernel_report = self.provisioner.effective_sandbox  # trusted: from our side

    async def _async_handle_timeout(self, timeout, cell=None):
        if cell is not None and self.current_cell is not None:
            self._timed_out.add(self.current_cell)  # the running cell (cells may be equal by value)
        return await super()._async_handle_timeout(timeout, cell)

    # Output cap: count what each cell emits; past the cap keep a marker and drop the rest, so
    # a flood cannot grow the notebook (or our memory) without bound.
    def output(self, outs, msg, display_id, cell_index):
        cap = self.max_output_bytes
        if cap is None:
            return super().output(outs, msg, display_id, cell_index)
        if cell_index in self._truncated:
            return None
        content = msg.get("content", {})
        size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in content.get("data", {}).values())
        used = self._cell_bytes.get(cell_index, 0)
        if used + size > cap:
            self._truncated.add(cell_index)
            room = max(0, cap - used)
            if msg["msg_type"] == "stream" and room:
                trimmed = copy.deepcopy(msg)
                trimmed["content"]["text"] = content["text"][:room]
                super().output(outs, trimmed, display_id, cell_index)
            marker = nbformat.v4.new_output(
                "stream", name="stderr",
                text=f"\n[sandbox-kernel: output truncated at {cap} bytes for this cell; the rest was dropped]\n")
            outs.append(marker)
            return marker
        self._cell_bytes[cell_index] = used + size
        return super().output(outs, msg, display_id, cell_index)

    def _cell_started(self, cell, cell_index):
        self.current_cell = cell_index

    def _record_cell(self, cell, cell_index, execute_reply, status: str | None = None):
        content = (execute_reply or {}).get("content", {})
        if status is None:
            status = "timeout" if cell_index in self._timed_out else content.get("status", "error")
        self.cell_records[cell_index] = CellRecord(cell_index, status, cell_index in self._truncated)
        report = dict(self.kernel_report or {})
        report["reported_by"] = "provisioner"
        report["cell_outcome"] = {"status": status, "output_truncated": cell_index in self._truncated,
                                  "timed_out": cell_index in self._timed_out}
        kernel_said = (execute_reply or {}).get("metadata", {}).get("sandbox")
        if isinstance(kernel_said, dict) and kernel_said.get("scope") == "cell":
            # A magic cell's own sandbox, as the kernel describes it: untrusted, labelled so.
            report["cell_report"] = {**kernel_said, "reported_by": "kernel"}
        cell.metadata["sandbox"] = report


def _mark_interrupted(client: SandboxNotebookClient, nb, status: str) -> None:
    """The cell that was running when the notebook timed out or the kernel died gets its
    report too, with that status."""
    i = client.current_cell
    if i is not None and i not in client.cell_records and client.kernel_report is not None:
        client._record_cell(nb.cells[i], i, None, status=status)


def _death_reason(client: SandboxNotebookClient) -> str:
    reason = getattr(client.provisioner, "death_reason", None)
    return reason() if callable(reason) else "the kernel died"


async def execute_notebook_async(nb, *, policy: SandboxPolicy | None = None, cwd: str | None = None,
                                 cell_timeout: float | None = None, notebook_timeout: float | None = None,
                                 allow_errors: bool = False, path: str = "<notebook>") -> tuple[Any, NotebookResult]:
    policy = policy or secure_default()
    # The kernel report delegates the policy's per-cell wall clock to us: honour it.
    limits = [t for t in (cell_timeout, policy.resources.wall_seconds) if t]
    cell_timeout = min(limits) if limits else None
    client = SandboxNotebookClient(
        nb, policy=policy, timeout=math.ceil(cell_timeout) if cell_timeout else None, interrupt_on_timeout=True,
        allow_errors=allow_errors, record_timing=True, shutdown_kernel="immediate",
        error_on_timeout={"ename": "CellTimeoutError", "evalue": f"cell exceeded the {cell_timeout} s timeout", "traceback": []},
        resources={"metadata": {"path": cwd}} if cwd else {},
    )
    result = NotebookResult(path=path, status="ok")
    t0 = time.monotonic()
    # Not asyncio.wait_for: nbclient turns a cancelled cell into DeadKernelError, which would
    # hide that it was our notebook deadline that ended the run.
    task = asyncio.ensure_future(client.async_execute())
    done, _ = await asyncio.wait({task}, timeout=notebook_timeout)
    notebook_timed_out = not done
    if notebook_timed_out:
        task.cancel()
    try:
        await task
    except (asyncio.CancelledError, DeadKernelError) if notebook_timed_out else ():
        pass
    except SandboxUnavailable as e:
        result.status, result.reason = "refused", str(e)
        result.downgrades = [d.to_dict() for d in e.downgrades]
    except DeadKernelError:
        result.status, result.reason = "dead-kernel", _death_reason(client)
        _mark_interrupted(client, nb, "dead-kernel")
    except CellTimeoutError as e:
        result.status, result.reason = "timeout", str(e).splitlines()[0]
    except CellExecutionError as e:
        result.status, result.reason = "error", (str(e).strip().splitlines() or ["cell error"])[-1]
    except RuntimeError as e:  # e.g. "Kernel died before replying to kernel_info"
        result.status, result.reason = "dead-kernel", f"{e}: {_death_reason(client)}"
    finally:
        atexit.unregister(client._cleanup_kernel)  # left registered when the start failed
        if client.km is not None:
            try:
                await client._async_cleanup_kernel()
            except Exception:  # the kernel may already be gone; cleanup is best effort
                pass
    if notebook_timed_out:
        result.status, result.reason = "timeout", f"notebook exceeded the {notebook_timeout} s timeout"
        _mark_interrupted(client, nb, "timeout")
    result.duration = time.monotonic() - t0
    records = client.cell_records
    result.cells_run = len(records)
    result.cells_errored = sum(1 for r in records.values() if r.status != "ok")
    if result.status in ("ok", "error") and any(r.status == "timeout" for r in records.values()):
        result.status, result.reason = "timeout", "a cell exceeded the cell timeout"
    if result.status == "ok" and result.cells_errored and not allow_errors:
        result.status = "error"
    report = client.kernel_report
    if report is not None:
        result.downgrades = report.get("downgrades", [])
        result.layers = {name: (layer["mechanism"] if layer["state"] == "enforced" else layer["state"])
                         for name, layer in report.get("layers", {}).items()}
    nb.metadata["sandbox"] = {"kernel": report, "summary": {k: v for k, v in result.to_dict().items() if k != "output_path"}}
    return nb, result


def execute_notebook(path_or_nb, *, policy: SandboxPolicy | None = None, **kwargs) -> tuple[Any, NotebookResult]:
    """Execute one notebook in its own sandboxed kernel. Returns (executed notebook, result).
    ``path_or_nb``: a path (its directory is readable from the kernel) or a NotebookNode."""
    if isinstance(path_or_nb, (str, os.PathLike)):
        path = Path(path_or_nb)
        nb = nbformat.read(path, as_version=4)
        kwargs.setdefault("cwd", str(path.resolve().parent))
        kwargs.setdefault("path", str(path))
    else:
        nb = path_or_nb
    return asyncio.run(execute_notebook_async(nb, policy=policy, **kwargs))


# ----------------------------------------------------------------------------- batch


def run_one(path: str, *, policy: SandboxPolicy, output_dir: str, **options) -> NotebookResult:
    nb, result = execute_notebook(path, policy=policy, **options)
    out = Path(output_dir) / Path(path).name
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    result.output_path = str(out)
    return result


def dask_task(nb_json: str, name: str, policy_json: str, options: dict) -> tuple[str, dict]:
    """Runs on a Dask worker: execute one notebook in a sandboxed kernel there, send back the
    executed notebook and the result. The worker needs sandbox-kernel installed."""
    nb = nbformat.reads(nb_json, as_version=4)
    policy = SandboxPolicy.model_validate_json(policy_json)
    nb, result = asyncio.run(execute_notebook_async(nb, policy=policy, path=name, **options))
    return nbformat.writes(nb), result.to_dict()


def run_batch(paths: list[str], *, policy: SandboxPolicy, output_dir: str, jobs: int = 1,
              dask_scheduler: str | None = None, on_result=None, **options) -> list[NotebookResult]:
    """Execute every notebook; results come back in input order. ``on_result`` is called as
    each one finishes (progress display)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    results: dict[int, NotebookResult] = {}
    if dask_scheduler:
        from distributed import Client, as_completed as dask_completed

        with Client(dask_scheduler, timeout=30) as client:
            futures = {}
            for i, p in enumerate(paths):
                text = Path(p).read_text()
                fut = client.submit(dask_task, text, p, policy.model_dump_json(), options, pure=False)
                futures[fut] = i
            for fut in dask_completed(futures):
                i = futures[fut]
                nb_json, data = fut.result()
                out = Path(output_dir) / Path(paths[i]).name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(nb_json)
                results[i] = NotebookResult(**{**data, "output_path": str(out)})
                if on_result:
                    on_result(results[i])
    else:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(run_one, p, policy=policy, output_dir=output_dir, **options): i for i, p in enumerate(paths)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if on_result:
                    on_result(results[futures[fut]])
    return [results[i] for i in range(len(paths))]


def batch_exit_code(results: list[NotebookResult]) -> int:
    if any(r.status == "refused" for r in results):
        return 3
    return 0 if all(r.status == "ok" for r in results) else 1


def format_table(results: list[NotebookResult]) -> str:
    rows = [("notebook", "status", "cells run", "errored", "duration", "downgrades")]
    for r in results:
        downs = ", ".join(sorted({d["layer"] for d in r.downgrades})) or "-"
        rows.append((r.path, r.status, str(r.cells_run), str(r.cells_errored), f"{r.duration:.1f}s", downs))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.reason and r.status != "ok":
            lines.append(f"{r.path}: {r.reason}")
    seen = set()
    for r in results:
        enforced = ", ".join(f"{k}={v}" for k, v in r.layers.items())
        if enforced and enforced not in seen:
            seen.add(enforced)
            lines.append(f"sandbox: {enforced}")
    return "\n".join(lines)
