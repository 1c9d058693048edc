"""Batch execution of untrusted notebooks: nbclient driving a sandboxed kernel per notebook.

The runner sits outside the sandbox, usually as root, and everything a notebook controls is
hostile input to it. What plain nbclient/papermill leave open and this closes:

- input: a notebook is read within bounds and stripped of everything our side writes
  (``intake.read_notebook``); one that cannot be read gets an ``invalid`` row, never an
  exception out of the batch;
- what it sees: its inputs are listed by ``launch.inputs`` (no dotfiles or links at any depth,
  no other notebook of the run, nothing the runner writes);
- output: every message of a cell is counted by its serialized size, whatever its type, and
  kept only within the per-cell and per-notebook caps (a visible marker says what was cut);
  consecutive stream output is merged as it arrives; the kernel's sockets are reached through
  ``launch.channel_guard`` so no single message can be larger than the cell may keep;
- time: a per-cell wall clock (the policy's ``wall_seconds``, secure default 10 min) and a
  per-notebook one (default 60 min); a prompt, explained end when the kernel dies;
- results: written only through ``launch.results`` (no link followed, nothing replaced that
  is not ours);
- the record: every code cell gets ``cell.metadata.sandbox`` (the trusted kernel report from
  the provisioner, the kernel-reported report of magic cells, and the cell's outcome, also
  ``not-run``), the notebook gets ``metadata.sandbox``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import queue
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import Any as AnyTrait
from traitlets import Int, Type, default

from . import saved_form
from .intake import SandboxKernelClient, UntrustedInput, language_problem, read_notebook
from .kernelspec import KERNEL_NAME, kernelspec
from .launch.channel_guard import ChannelGuard
from .launch.results import ResultDir, dump_json
from .errors import LaunchError, SandboxUnavailable
from .policy import GiB, MiB, SandboxPolicy, secure_default
from .text_cut import utf8_prefix_text

log = logging.getLogger(__name__)

DEFAULT_NOTEBOOK_SECONDS = 3600.0
# The largest single message the runner accepts from a kernel, whatever the caps: it is
# received whole before it can be judged. An output larger than this (a 20 MB image) is
# dropped with a marker; output made of many messages may use the whole cap.
MAX_MESSAGE_BYTES = 16 * MiB
# ... and the largest it always accepts on iopub, whatever the caps: ipykernel sends 0.2 s of
# prints as one stream message, whose part within the cap the client keeps.
MIN_MESSAGE_BYTES = 8 * MiB
ENVELOPE_BYTES = 64 * 1024  # header, parent header, metadata and signature around a message
SMALL_CHANNEL_BYTES = 1 * MiB  # control, stdin, heartbeat: only small replies are legitimate
RECEIVE_HWM = 4  # messages each of our sockets queues; the kernel keeps (and drops) the rest
DEFAULT_NOTEBOOK_OUTPUT = 4  # the notebook cap, in cell caps, by default (at most 1 GiB)


def default_notebook_output(cell_cap: int | None) -> int:
    return min(DEFAULT_NOTEBOOK_OUTPUT * cell_cap, GiB) if cell_cap else GiB


def iopub_message_limit(cell_cap: int | None, notebook_cap: int) -> int:
    """The largest iopub message the guard passes: what a cell may keep, within
    [MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES], plus the envelope."""
    keep = min(cell_cap or notebook_cap, notebook_cap)
    return min(max(keep, MIN_MESSAGE_BYTES), MAX_MESSAGE_BYTES) + ENVELOPE_BYTES


def runner_memory_bound(cell_cap: int | None, notebook_cap: int) -> int:
    """The most one notebook's kernel can make the runner hold: its kept output (up to the
    notebook cap, twice the last cell's while it is joined), the messages queued on its
    sockets and in the guard, one message being parsed (text, decoded copy, objects)."""
    message = iopub_message_limit(cell_cap, notebook_cap)
    shell = MAX_MESSAGE_BYTES + ENVELOPE_BYTES
    return notebook_cap + min(cell_cap or notebook_cap, notebook_cap) + (RECEIVE_HWM + 3) * (message + shell) + 14 * message


class SandboxKernelManager(AsyncKernelManager):
    """Always the sandboxed ipykernel (whatever the notebook's metadata names), started by the
    sandbox provisioner under ``sandbox_policy``, the operator's policy for this run. Its
    sockets, and those of its clients, reach the kernel through a :class:`ChannelGuard`."""

    sandbox_policy = AnyTrait(None, allow_none=True, help="SandboxPolicy the provisioner enforces (operator level).")
    sandbox_inputs = AnyTrait(None, allow_none=True, help="{'exclude': paths, 'data': paths} for the provisioner's input listing.")
    sandbox_outputs = AnyTrait(None, allow_none=True, help="Host dir the kernel's results are copied to (None: <cwd>/outputs).")
    # A batch's notebooks mostly have no magic cell: their kernels start no cell sandbox ahead
    # until one runs (each costs the runner ~10-15 ms of CPU that the other slots want).
    sandbox_warm_from_start = AnyTrait((), help="Kinds of cell sandbox started ahead with the kernel.")
    message_limit = Int(MAX_MESSAGE_BYTES + ENVELOPE_BYTES, help="Largest iopub message accepted from the kernel, in bytes.")
    budget = AnyTrait(None, allow_none=True, help="Passed to clients: answers room() for the running cell.")
    client_factory = Type(SandboxKernelClient)
    _guard: ChannelGuard | None = None

    def __init__(self, **kwargs):
        super().__init__(kernel_name=KERNEL_NAME, **kwargs)
        spec = kernelspec()
        self._kernel_spec = KernelSpec(resource_dir="", **spec)

    @default("context")
    def _context_default(self):
        context = super()._context_default()
        for option, value in socket_options().items():
            context.setsockopt(option, value)
        return context

    async def _async_post_start_kernel(self, **kw):
        if self.transport != "ipc":
            raise LaunchError("the sandboxed kernel must use the ipc transport (its guard relays Unix sockets)")
        if self._guard is not None:  # a restart: new ports, a new guard
            self._guard.close()
        channels = ("shell", "iopub", "stdin", "control", "hb")
        limits = {"iopub": self.message_limit, "shell": MAX_MESSAGE_BYTES + ENVELOPE_BYTES}
        self._guard = ChannelGuard(self.ip, {c: (getattr(self, f"{c}_port"), limits.get(c, SMALL_CHANNEL_BYTES)) for c in channels})
        await super()._async_post_start_kernel(**kw)

    def _make_url(self, channel: str) -> str:
        url = super()._make_url(channel)
        return url.replace(self.ip, self._guard.ip, 1) if self._guard is not None else url

    def client(self, **kwargs):
        extra = {"ip": self._guard.ip} if self._guard is not None else {}
        return super().client(budget=self.budget, socket_options=socket_options(), **extra, **kwargs)

    def take_drops(self):
        return self._guard.take_drops() if self._guard is not None else []

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._guard is not None and not restart:
            self._guard.close()

    cleanup_resources = _async_cleanup_resources


def socket_options() -> dict[int, int]:
    # The guard already bounds each message; these are the second line (a frame over the
    # limit closes the connection) and the queue length.
    return {zmq.RCVHWM: RECEIVE_HWM, zmq.MAXMSGSIZE: MAX_MESSAGE_BYTES + ENVELOPE_BYTES}


@dataclass
class CellRecord:
    index: int
    status: str  # "ok" | "error" | "timeout" | "dead-kernel" | "not-run"
    output_truncated: bool = False


@dataclass
class NotebookResult:
    path: str
    status: str  # "ok" | "error" | "timeout" | "dead-kernel" | "refused" | "invalid"
    cells_run: int = 0
    cells_errored: int = 0
    duration: float = 0.0
    downgrades: list[dict] = field(default_factory=list)
    reason: str | None = None
    output_path: str | None = None
    layers: dict[str, str] = field(default_factory=dict)  # layer -> mechanism, or its state
    output_bytes: int = 0  # serialized size of every message its cells sent
    output_truncated: bool = False
    timeouts: dict[str, float | None] = field(default_factory=dict)  # {"cell": s, "notebook": s}
    inputs: list[str] = field(default_factory=list)  # what it saw of its inputs (in its scratch dir)

    def to_dict(self) -> dict:
        return asdict(self)


class _Stream:
    """The stream output being extended: chunks are joined once, when it is closed."""

    def __init__(self, outs: list, node):
        self.outs, self.node, self.chunks = outs, node, [node["text"]]


class SandboxNotebookClient(NotebookClient):
    """nbclient with a sandboxed kernel, bounded output and sandbox reports in metadata."""

    run_options: RunOptions  # set by notebook_client()

    max_output_bytes = Int(None, allow_none=True, help="Output bytes kept per cell (serialized size of its messages).").tag(config=True)
    max_notebook_output_bytes = Int(None, allow_none=True, help="Output bytes kept per notebook.").tag(config=True)

    def __init__(self, nb, policy: SandboxPolicy | None = None, inputs: dict | None = None, on_progress=None,
                 outputs: str | None = None, **kw):
        self.sandbox_policy = policy or secure_default()
        self.sandbox_inputs = inputs
        self.sandbox_outputs = outputs
        # on_progress(event): {"event": "cell", "index", "of", "status"} as each code cell ends,
        # {"event": "output", "stream", "text"} for stream output kept in the notebook.
        self.on_progress = on_progress
        super().__init__(nb, km=None, kernel_manager_class=SandboxKernelManager, **kw)
        if self.max_output_bytes is None:
            self.max_output_bytes = self.sandbox_policy.resources.max_output_bytes
        if self.max_notebook_output_bytes is None:
            self.max_notebook_output_bytes = default_notebook_output(self.max_output_bytes)
        self.cell_records: dict[int, CellRecord] = {}
        self.kernel_report: dict | None = None
        self.provisioner = None
        self.on_cell_executed = self._record_cell
        self.on_cell_execute = self._cell_started
        self.current_cell: int | None = None
        self._timed_out: set[int] = set()
        self._notebook_used = 0
        self._used: dict[int, int] = {}
        self._dropped: dict[int, int] = {}
        self._cut: dict[int, set[str]] = {}  # cell -> reasons its output was cut
        self._stream: _Stream | None = None

    # ------------------------------------------------------------------ kernel

    def message_limit(self) -> int:
        return iopub_message_limit(self.max_output_bytes, self.max_notebook_output_bytes)

    def create_kernel_manager(self):
        self.km = SandboxKernelManager(config=self.config, sandbox_policy=self.sandbox_policy, sandbox_inputs=self.sandbox_inputs,
                                       sandbox_outputs=self.sandbox_outputs, message_limit=self.message_limit(), budget=self)
        return self.km

    async def _async_cleanup_kernel(self):
        # nbclient calls this twice when the client fails to start; the second call would
        # raise an AssertionError that hides why the start failed.
        if self.km is not None:
            await super()._async_cleanup_kernel()

    async def async_start_new_kernel(self, **kwargs):
        await super().async_start_new_kernel(**kwargs)
        self.provisioner = self.km.provisioner  # kept: nbclient drops km when the kernel dies
        self.kernel_report = self.provisioner.effective_sandbox  # trusted: from our side

    async def _async_handle_timeout(self, timeout, cell=None):
        if cell is not None and self.current_cell is not None:
            self._timed_out.add(self.current_cell)  # the running cell (cells may be equal by value)
        return await super()._async_handle_timeout(timeout, cell)

    async def _check_raise_for_error(self, cell, cell_index, exec_reply):
        # nbclient's CellExecutionError copies every stream output of the cell into its text (a
        # few more copies of up to the whole cap): let it see the cell without its outputs.
        view = nbformat.NotebookNode({**cell, "outputs": []})
        return await super()._check_raise_for_error(view, cell_index, exec_reply)

    # ------------------------------------------------------------------ output budget

    def room(self) -> int:
        """Bytes the running cell may still keep (the channel asks before parsing)."""
        i = self.current_cell
        left = self.max_notebook_output_bytes - self._notebook_used
        if self.max_output_bytes is not None and i is not None:
            left = min(left, self.max_output_bytes - self._used.get(i, 0))
        return max(0, left)

    def process_message(self, msg, cell, cell_index):
        self._take_guard_drops(cell, cell_index)
        size, dropped = msg.get("sandbox_wire_bytes", 0), msg.get("sandbox_dropped")
        msg_type = msg["msg_type"]
        if msg_type == "status":  # tiny, never kept, and it ends the cell: counted within the caps, never refused
            self._charge(cell_index, min(size, self.room()))
            return None if dropped else super().process_message(msg, cell, cell_index)
        if dropped:
            self._drop(cell, cell_index, size, "message" if "no room" not in dropped else self._full_cap())
            return None
        # A display update rewrites every output with its display id, in any cell: each copy is
        # saved, so each counts.
        transient = msg["content"].get("transient")
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        copies = 0 if msg_type == "update_display_data" else 1
        if display_id and msg_type in ("display_data", "execute_result", "update_display_data"):
            copies += sum(len(v) for v in self._display_id_map.get(display_id, {}).values())
        cost, room = size * max(copies, 1), self.room()
        if cost <= room:
            self._charge(cell_index, cost)
            return super().process_message(msg, cell, cell_index)
        reason = self._full_cap()
        text = msg["content"].get("text")
        keep = room - (size - len(text.encode("utf-8", "surrogatepass"))) if msg_type == "stream" and isinstance(text, str) else 0
        if keep > 0:  # the part of a stream message that still fits, in bytes, up to a whole character
            self._charge(cell_index, room)
            super().process_message({**msg, "content": {**msg["content"], "text": utf8_prefix_text(text, keep)}}, cell, cell_index)
        self._drop(cell, cell_index, cost - max(keep, 0), reason)
        return None

    def _full_cap(self) -> str:
        i = self.current_cell
        cell_left = None if self.max_output_bytes is None else self.max_output_bytes - self._used.get(i, 0)
        return "cell" if cell_left is not None and cell_left <= self.max_notebook_output_bytes - self._notebook_used else "notebook"

    def _charge(self, cell_index: int, n: int) -> None:
        self._used[cell_index] = self._used.get(cell_index, 0) + n
        self._notebook_used += n

    def _drop(self, cell, cell_index: int, n: int, reason: str) -> None:
        self._dropped[cell_index] = self._dropped.get(cell_index, 0) + n
        reasons = self._cut.setdefault(cell_index, set())
        if reason in reasons:
            return
        reasons.add(reason)
        self._close_stream()
        text = {
            "cell": f"output truncated at {self.max_output_bytes} bytes for this cell; the rest was dropped",
            "notebook": f"output truncated: the notebook reached its {self.max_notebook_output_bytes}-byte output cap; "
                        "the rest of its output was dropped",
            "message": f"a message from the kernel over {self.message_limit()} bytes (or otherwise unreadable) was dropped",
        }[reason]
        cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=f"\n[sandbox-kernel: {text}]\n"))

    def _take_guard_drops(self, cell, cell_index: int) -> None:
        for drop in self.km.take_drops() if self.km is not None else ():
            self._drop(cell, cell_index, drop.size, "message")

    # Consecutive stream messages extend one output instead of adding one object per message
    # (a flood of short lines would otherwise cost far more memory than the bytes counted).
    def output(self, outs, msg, display_id, cell_index):
        parent = msg["parent_header"].get("msg_id")
        s = self._stream
        if (msg["msg_type"] == "stream" and s is not None and s.outs is outs and outs and outs[-1] is s.node
                and s.node["name"] == msg["content"].get("name") and not self.clear_before_next_output
                and not self.output_hook_stack[parent]):
            s.chunks.append(msg["content"].get("text", ""))
            return s.node
        self._close_stream()
        if msg["msg_type"] == "stream" and self.on_progress is not None:
            self.on_progress({"event": "output", "stream": msg["content"].get("name"), "text": msg["content"].get("text", "")})
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None and out.get("output_type") == "stream" and outs and outs[-1] is out:
            self._stream = _Stream(outs, out)
        return out

    def clear_output(self, outs, msg, cell_index):
        self._close_stream()
        return super().clear_output(outs, msg, cell_index)

    def _close_stream(self) -> None:
        s, self._stream = self._stream, None
        if s is not None and len(s.chunks) > 1:
            s.node["text"] = "".join(s.chunks)

    # ------------------------------------------------------------------ the record

    def _cell_started(self, cell, cell_index):
        self.current_cell = cell_index

    def _record_cell(self, cell, cell_index, execute_reply, status: str | None = None):
        self._take_guard_drops(cell, cell_index)
        self._close_stream()
        content = (execute_reply or {}).get("content", {})
        if status is None:
            status = "timeout" if cell_index in self._timed_out else content.get("status", "error")
            status = status if status in ("ok", "error", "timeout") else "error"
        truncated = bool(self._cut.get(cell_index))
        self.cell_records[cell_index] = CellRecord(cell_index, status, truncated)
        if self.on_progress is not None:
            order = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
            self.on_progress({"event": "cell", "index": order.index(cell_index) + 1 if cell_index in order else len(self.cell_records),
                              "of": len(order), "status": status})
        kernel_said = (execute_reply or {}).get("metadata", {}).get("sandbox")
        extra = {}
        if isinstance(kernel_said, dict) and kernel_said.get("scope") == "cell":
            # A magic cell's own sandbox, as the kernel describes it: untrusted, labelled so.
            # (Bounded: message metadata over the header limit is never parsed.)
            extra["cell_report"] = {**kernel_said, "reported_by": "kernel"}
        outputs = self._collect_outputs()
        if outputs is not None:
            extra["outputs"] = outputs
        self._stamp(cell, {"status": status, "output_truncated": truncated, "timed_out": cell_index in self._timed_out,
                           "output_bytes": self._used.get(cell_index, 0),
                           "output_dropped_bytes": self._dropped.get(cell_index, 0),
                           "output_cut_by": sorted(self._cut.get(cell_index, ()))}, extra)

    def _collect_outputs(self) -> dict | None:
        """Copy the cell's results out ourselves (the kernel's own request after the cell
        may never come) and return what this cell's collections copied and refused."""
        sandbox = getattr(self.provisioner, "sandbox", None)
        if sandbox is None:
            return None
        try:
            sandbox.collect_outputs()
        except OSError as e:  # the kernel is gone with its scratch: nothing more to copy
            log.debug("results not collected: %s", e)
        return sandbox.take_outputs()

    def _stamp(self, cell, outcome: dict, extra: dict | None = None) -> None:
        cell.metadata["sandbox"] = {**(self.kernel_report or {}), "reported_by": "provisioner", "cell_outcome": outcome,
                                    **(extra or {})}

    def stamp_not_run(self, final_status: str) -> None:
        """Code cells that did not run say so, in our words (never the input's)."""
        for i, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code" or i in self.cell_records:
                continue
            if not cell.source.strip():
                why = "empty cell"
            elif self.skip_cells_with_tag in cell.metadata.get("tags", []):
                why = f"tagged {self.skip_cells_with_tag}"
            else:
                why = f"the notebook ended with status {final_status} before this cell"
            self._stamp(cell, {"status": "not-run", "reason": why, "output_truncated": False, "timed_out": False})


def _mark_interrupted(client: SandboxNotebookClient, nb, status: str) -> None:
    """The cell that was running when the notebook timed out or the kernel died gets its
    report too, with that status."""
    i = client.current_cell
    if i is not None and i not in client.cell_records and client.kernel_report is not None:
        client._record_cell(nb.cells[i], i, None, status=status)


def _death_reason(client: SandboxNotebookClient) -> str:
    reason = getattr(client.provisioner, "death_reason", None)
    return reason() if callable(reason) else "the kernel died"


# Terminal escapes (CSI/OSC sequences) and other control characters: IPython colours its
# tracebacks, and a reason goes into a table, a log and summary.json as plain text.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(text: str | None) -> str | None:
    """``text`` without terminal escapes or control characters (newlines kept)."""
    return _ESCAPES.sub("", text) if text else text


def _last_line(text: str, limit: int = 500) -> str:
    """The last line of an error text (the exception itself), bounded; never splits all of a
    text a kernel made as long as it liked."""
    line = (plain_text(text[-8 * limit:]).strip().splitlines() or ["cell error"])[-1]
    return line if len(line) <= limit else line[:limit] + "..."


async def execute_notebook_async(nb, **options) -> tuple[Any, NotebookResult]:
    """Execute ``nb`` (already read with ``intake.read_notebook``) in its own sandboxed kernel.
    ``options``: those of :func:`notebook_client`."""
    return await execute_client(notebook_client(nb, **options))


@dataclass(frozen=True)
class RunOptions:
    """What :func:`execute_client` needs besides the client."""

    path: str
    cell_timeout: float | None
    notebook_timeout: float | None
    allow_errors: bool


def notebook_client(nb, *, policy: SandboxPolicy | None = None, cwd: str | None = None,
                    cell_timeout: float | None = None, notebook_timeout: float | None = DEFAULT_NOTEBOOK_SECONDS,
                    allow_errors: bool = False, path: str = "<notebook>", inputs: dict | None = None,
                    max_notebook_output: int | None = None, on_progress=None,
                    outputs: str | None = None) -> SandboxNotebookClient:
    """The client that runs ``nb`` in its own sandboxed kernel (not started yet).
    ``cwd``: the directory whose entries it sees (None: none); ``inputs``: exclusions and data
    paths for that listing. The per-cell clock is the smaller of ``cell_timeout`` and the
    policy's ``wall_seconds``."""
    policy = policy or secure_default()
    # The kernel report delegates the policy's per-cell wall clock to us: honour it.
    limits = [t for t in (cell_timeout, policy.resources.wall_seconds) if t]
    cell_timeout = min(limits) if limits else None
    client = SandboxNotebookClient(
        nb, policy=policy, inputs=inputs, outputs=outputs, timeout=math.ceil(cell_timeout) if cell_timeout else None,
        interrupt_on_timeout=True, allow_errors=allow_errors, record_timing=True, shutdown_kernel="immediate",
        error_on_timeout={"ename": "CellTimeoutError", "evalue": f"cell exceeded the {cell_timeout} s timeout", "traceback": []},
        resources={"metadata": {"path": cwd}} if cwd else {}, max_notebook_output_bytes=max_notebook_output,
        on_progress=(lambda event: on_progress({**event, "path": path})) if on_progress else None,
    )
    client.run_options = RunOptions(path, cell_timeout, notebook_timeout, allow_errors)
    return client


async def start_kernel(client: SandboxNotebookClient) -> None:
    """Start ``client``'s kernel and wait until it is ready, exactly as its execution would
    (the same manager, the same arguments, hence the same plan): called ahead, it takes the
    kernel's start out of the notebook's turn. On failure nothing of it is left."""
    client.km = client.create_kernel_manager()
    try:
        await client.async_start_new_kernel()
        await client.async_start_new_kernel_client()
    except BaseException:
        await discard_kernel(client)
        raise


async def discard_kernel(client: SandboxNotebookClient) -> None:
    """Shut ``client``'s kernel down and remove all it holds on the host (best effort: the
    kernel may be gone already)."""
    atexit.unregister(client._cleanup_kernel)  # left registered when the start failed
    client._close_stream()
    try:
        await client._async_cleanup_kernel()
    except Exception as e:
        log.debug("%s: kernel cleanup: %s: %s", client.run_options.path, type(e).__name__, e)


async def execute_client(client: SandboxNotebookClient) -> tuple[Any, NotebookResult]:
    """Run the notebook of ``client`` (from :func:`notebook_client`; its kernel started
    ahead by :func:`start_kernel`, or now), then shut its kernel down. The notebook's clock
    starts here."""
    nb, opts = client.nb, client.run_options
    path, cell_timeout, notebook_timeout, allow_errors = opts.path, opts.cell_timeout, opts.notebook_timeout, opts.allow_errors
    result = NotebookResult(path=path, status="ok", timeouts={"cell": cell_timeout, "notebook": notebook_timeout})
    t0 = time.monotonic()
    # Not asyncio.wait_for: nbclient turns a cancelled cell into DeadKernelError, which would
    # hide that it was our notebook deadline that ended the run.
    task = asyncio.ensure_future(client.async_execute())
    try:
        done, _ = await asyncio.wait({task}, timeout=notebook_timeout)
    except asyncio.CancelledError:  # the runner is stopping: the kernel goes with the run
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await discard_kernel(client)
        raise
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
        log.info("%s: the kernel died: %s", path, result.reason)
        _mark_interrupted(client, nb, "dead-kernel")
    except CellTimeoutError as e:
        result.status, result.reason = "timeout", _last_line(str(e)[:500].partition("\n")[0] or "cell timeout")
    except CellExecutionError as e:
        result.status, result.reason = "error", _last_line(str(e))
    except RuntimeError as e:  # e.g. "Kernel died before replying to kernel_info"
        result.status, result.reason = "dead-kernel", f"{_last_line(str(e))}: {_death_reason(client)}"
        log.info("%s: the kernel died: %s", path, result.reason)
    except Exception as e:  # anything else a hostile kernel provoked: this notebook fails, the batch goes on
        log.exception("%s: the runner failed", path)
        result.status, result.reason = "error", f"runner: {type(e).__name__}: {_last_line(str(e))}"
        _mark_interrupted(client, nb, "error")
    finally:
        await discard_kernel(client)
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
    client.stamp_not_run(result.status)
    result.reason = plain_text(result.reason)
    result.output_bytes = client._notebook_used
    result.output_truncated = bool(client._cut)
    report = client.kernel_report
    if report is not None:
        result.downgrades = report.get("downgrades", [])
        result.layers = {name: (layer["mechanism"] if layer["state"] == "enforced" else layer["state"])
                         for name, layer in report.get("layers", {}).items()}
        result.inputs = report.get("layers", {}).get("filesystem", {}).get("inputs", {}).get("exposed", [])
    nb.metadata["sandbox"] = {"kernel": report, "summary": {k: v for k, v in result.to_dict().items() if k != "output_path"}}
    return nb, result


def execute_notebook(path_or_nb, *, policy: SandboxPolicy | None = None, **kwargs) -> tuple[Any, NotebookResult]:
    """Execute one notebook in its own sandboxed kernel. Returns (executed notebook, result).
    ``path_or_nb``: a path (read as untrusted input; its directory is readable from the
    kernel) or a NotebookNode."""
    if isinstance(path_or_nb, (str, os.PathLike)):
        path = Path(path_or_nb)
        nb = read_notebook(str(path))
        kwargs.setdefault("cwd", str(path.resolve().parent))
        kwargs.setdefault("path", str(path))
    else:
        nb = path_or_nb
    return asyncio.run(execute_notebook_async(nb, policy=policy, **kwargs))


# ----------------------------------------------------------------------------- batch


def read_runnable(path: str, any_language: bool = False, parameters: dict | None = None):
    """``read_notebook``, the language check, then papermill's parameters injected. Raises
    UntrustedInput with the reason."""
    nb = read_notebook(path)
    problem = None if any_language else language_problem(nb)
    if problem:
        raise UntrustedInput(problem)
    return _parameterize(nb, parameters)


def prepare_one(path: str, *, policy: SandboxPolicy, results: ResultDir, inputs: dict | None, expose_dir: bool = True,
                parameters: dict | None = None, any_language: bool = False,
                **options) -> SandboxNotebookClient | NotebookResult:
    """The client for one notebook of a batch (its kernel not started), or its row when it
    cannot run. Never raises. ``parameters``: papermill's, injected (``parameters.py``)."""
    try:
        nb = read_runnable(path, any_language, parameters)
    except UntrustedInput as e:
        return NotebookResult(path=path, status="invalid", reason=plain_text(str(e)))
    cwd = os.path.dirname(os.path.abspath(path)) if expose_dir else None
    try:
        # Its results (what it wrote under /scratch/outputs) go beside the executed notebook.
        outputs = os.path.join(results.path, files_dir_name(path))
        return notebook_client(nb, policy=policy, cwd=cwd, path=path, inputs=inputs, outputs=outputs, **options)
    except Exception as e:  # a runner bug must cost one row, not the batch
        return _runner_failed(path, e)


async def finish_one(client: SandboxNotebookClient, results: ResultDir, full_reports: bool = False) -> NotebookResult:
    """Run a prepared notebook (its kernel started ahead or not) and save it, in the compact
    form (``saved_form``), or the full form if ``full_reports``. Never raises but
    CancelledError (the runner stops; its kernel is shut down)."""
    path = client.run_options.path
    try:
        nb, result = await execute_client(client)
    except Exception as e:
        return _runner_failed(path, e)
    return save(results, path, result, lambda f: dump_json(saved(nb, full_reports), f.write))


def _runner_failed(path: str, e: Exception) -> NotebookResult:
    log.error("%s: the runner failed", path, exc_info=e)
    return NotebookResult(path=path, status="error", reason=f"runner: {type(e).__name__}: {_last_line(str(e))}")


def files_dir_name(path: str) -> str:
    """``<notebook>_files``: where ``run`` puts a notebook's results (as nbconvert names its
    extracted files)."""
    return os.path.splitext(os.path.basename(path))[0] + "_files"


def _parameterize(nb, parameters: dict | None):
    if parameters:
        from .parameters import parameterize

        try:
            nb = parameterize(nb, parameters)
        except Exception as e:  # whatever this notebook's shape made papermill trip on: its row says so
            raise UntrustedInput(f"the parameters could not be injected: {type(e).__name__}: {_last_line(str(e))}") from None
    return nb


def saved(nb, full_reports: bool = False):
    """The notebook as it is saved: the reports' compact form (the same as JupyterLab writes), or
    the full form behind a flag."""
    return nb if full_reports else saved_form.compact_notebook(nb)


def save(results: ResultDir, path: str, result: NotebookResult, write) -> NotebookResult:
    try:
        with results.create(os.path.basename(path)) as f:
            write(f)
        result.output_path = os.path.join(results.path, os.path.basename(path))
    except Exception as e:  # refused (a planted link), disk full...: the row says so
        result.status, result.reason = "error", f"the executed notebook was not written: {_last_line(str(e))}"
    return result


def dask_task(nb_json: str, name: str, policy_json: str, options: dict, full_reports: bool = False) -> tuple[str, dict]:
    """Runs on a Dask worker: execute one notebook in a sandboxed kernel there, send back the
    executed notebook and the result. The worker needs sandbox-kernel installed."""
    import io

    nb = nbformat.reads(nb_json, as_version=4)  # read and stripped by our client already
    policy = SandboxPolicy.model_validate_json(policy_json)
    nb, result = asyncio.run(execute_notebook_async(nb, policy=policy, path=name, **options))
    out = io.StringIO()
    dump_json(saved(nb, full_reports), out.write)
    return out.getvalue(), result.to_dict()


def run_batch(paths: list[str], *, policy: SandboxPolicy, output_dir: str | ResultDir, jobs: int = 1,
              dask_scheduler: str | None = None, on_result=None, inputs: str = "dir", data: tuple[str, ...] = (),
              summary: str | None = None, parameters: dict | None = None, any_language: bool = False,
              full_reports: bool = False, ahead: int | None = None, **options) -> list[NotebookResult]:
    """Execute every notebook; results come back in input order, one per notebook whatever
    happens to it. ``on_result`` is called as each one finishes (progress display).
    ``inputs``: "dir" (each notebook sees its directory, minus the other notebooks of the run
    and the runner's output paths) or "none"; ``data``: extra read-only paths for every one;
    ``any_language``: run notebooks whose kernelspec language is not Python (as Python);
    ``ahead``: kernels started ahead of their notebook's turn at once (default: one per slot,
    at most one per CPU; 0: none), see ``_LocalBatch``."""
    results_dir = output_dir if isinstance(output_dir, ResultDir) else ResultDir.open(output_dir)
    everyone = [os.path.realpath(p) for p in paths]
    runner_paths = [results_dir.path] + ([os.path.abspath(summary)] if summary else [])
    results: dict[int, NotebookResult] = {}

    def done(i: int, result: NotebookResult) -> None:
        result.reason = plain_text(result.reason)
        results[i] = result
        if on_result:
            on_result(result)

    def prepare(i: int) -> SandboxNotebookClient | NotebookResult:
        listing = {"exclude": [q for j, q in enumerate(everyone) if j != i] + runner_paths, "data": list(data)}
        return prepare_one(paths[i], policy=policy, results=results_dir, inputs=listing, expose_dir=inputs == "dir",
                           parameters=parameters, any_language=any_language, **options)

    try:
        if dask_scheduler:
            options.pop("on_progress", None)  # a callback does not travel to the workers
            _run_on_dask(paths, policy, results_dir, dask_scheduler, options, done, parameters, any_language,
                         full_reports)
        else:
            _LocalBatch(len(paths), max(1, jobs), prepare, lambda c: finish_one(c, results_dir, full_reports),
                        ahead=ahead).run(done)
    finally:
        if results_dir is not output_dir:
            results_dir.close()
    return [results.get(i) or NotebookResult(path=p, status="error", reason="the runner stopped before it ran")
            for i, p in enumerate(paths)]


STOP_SECONDS = 30.0  # how long an interrupted runner waits for its slots to shut their kernels down


class _LocalBatch:
    """A batch on this host: ``jobs`` slots, each a thread with its own event loop running
    notebooks one after the other, taken in order from one queue.

    Kernel start ahead: once a slot's notebook has its kernel ready, the slot takes the next
    notebook and starts that one's kernel, for it alone, while the current one runs, so the
    batch does not pay kernel starts one after the other. The client, and so the plan, is the
    notebook's own, made exactly as at its turn (``start_kernel``): same policy, same report,
    its own inputs and working dir; a kernel is never used for another notebook. At most
    ``ahead`` kernels are started ahead at once (one per slot at most), and only while every
    other slot still has a notebook to take (a started one cannot move to an idle slot). A
    start that fails is discarded and done again in the notebook's turn, as without the
    head start (a refusal is then that notebook's row). Kernels started ahead and never used
    (the runner stops) are shut down; if the runner is killed, they die with it like any
    kernel (``--die-with-parent``) and their janitors remove the rest."""

    def __init__(self, count: int, jobs: int, prepare, finish, ahead: int | None = None):
        self.count, self.jobs, self.prepare, self.finish = count, jobs, prepare, finish
        # A kernel's start keeps a CPU busy for a few tenths of a second: more starts at once
        # than CPUs only queue (on 2 CPUs, 1 or 2 at --jobs 2 measured alike: docs/performance.md).
        ahead = min(jobs, os.cpu_count() or 1) if ahead is None else min(max(0, ahead), jobs)
        self._ahead = threading.BoundedSemaphore(ahead) if ahead else None
        self._lock = threading.Lock()
        self._next = 0
        self._stopping = threading.Event()
        self._finished: queue.Queue[tuple[int, NotebookResult]] = queue.Queue()
        self._slots: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []

    def run(self, done) -> None:
        """Run every notebook; ``done(index, result)`` is called in this thread as each ends.
        An exception here (Ctrl-C) stops the slots, which shut their kernels down."""
        threads = [threading.Thread(target=self._slot_thread, name=f"sandbox-batch-{n}", daemon=True)
                   for n in range(min(self.jobs, self.count))]
        for t in threads:
            t.start()
        try:
            left = self.count
            while left and (any(t.is_alive() for t in threads) or not self._finished.empty()):
                try:
                    i, result = self._finished.get(timeout=0.2)
                except queue.Empty:
                    continue
                left -= 1
                done(i, result)
        except BaseException:
            self.stop()
            deadline = time.monotonic() + STOP_SECONDS
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            raise
        for t in threads:
            t.join()

    def stop(self) -> None:
        """Hand out no more notebooks and cancel what the slots run (kernels shut down)."""
        self._stopping.set()
        with self._lock:
            slots = list(self._slots)
        for loop, task in slots:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that slot's loop is already closed
                pass

    def _take(self) -> int | None:
        with self._lock:
            if self._stopping.is_set() or self._next >= self.count:
                return None
            self._next += 1
            return self._next - 1

    def _take_ahead(self) -> int | None:
        """The next notebook to start ahead, if the bound allows and every other slot still
        has one to take after it."""
        with self._lock:
            if self._stopping.is_set() or self.count - self._next < self.jobs or self._ahead is None:
                return None
            if not self._ahead.acquire(blocking=False):
                return None
            self._next += 1
            return self._next - 1

    def _slot_thread(self) -> None:
        # The slot's kernels live in this thread: bwrap --die-with-parent ends them with it.
        try:
            asyncio.run(self._slot())
        except asyncio.CancelledError:
            pass

    async def _slot(self) -> None:
        with self._lock:
            self._slots.append((asyncio.get_running_loop(), asyncio.current_task()))
        ahead: tuple[int, Any, asyncio.Task] | None = None  # (index, client, its kernel start)

        def start_next(**_) -> None:  # nbclient's on_notebook_start: the current kernel is ready
            nonlocal ahead
            while (i := self._take_ahead()) is not None:
                client = self.prepare(i)
                if not isinstance(client, NotebookResult):
                    ahead = (i, client, asyncio.ensure_future(start_kernel(client)))
                    return
                self._ahead.release()  # cannot run: its row now, no kernel
                self._finished.put((i, client))

        try:
            while True:
                if ahead is not None:
                    i, client, starting = ahead
                    await asyncio.wait({starting})  # not cancelled with us: the finally ends it
                    ahead = None
                    self._ahead.release()
                    if starting.exception() is None:
                        start_next()
                    else:  # discarded by start_kernel: started again in its turn
                        log.info("%s: kernel start ahead failed (%s); starting it in its turn",
                                 client.run_options.path, starting.exception())
                        client = self.prepare(i)
                else:
                    i = self._take()
                    if i is None:
                        return
                    client = self.prepare(i)
                if isinstance(client, NotebookResult):
                    self._finished.put((i, client))
                    continue
                if client.km is None:  # started in its turn: start the next one once this kernel is ready
                    client.on_notebook_start = start_next
                self._finished.put((i, await self.finish(client)))
        finally:
            if ahead is not None:  # never used: shut down, nothing left
                i, client, starting = ahead
                self._ahead.release()
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                await discard_kernel(client)


def _run_on_dask(paths, policy, results_dir: ResultDir, scheduler: str, options: dict, done, parameters: dict | None = None,
                 any_language: bool = False, full_reports: bool = False) -> None:
    from distributed import Client
    from distributed import as_completed as dask_completed

    with Client(scheduler, timeout=30) as client:
        futures = {}
        for i, p in enumerate(paths):
            try:
                nb = read_runnable(p, any_language, parameters)
            except UntrustedInput as e:
                done(i, NotebookResult(path=p, status="invalid", reason=str(e)))
                continue
            text = []
            dump_json(nb, text.append)
            futures[client.submit(dask_task, "".join(text), p, policy.model_dump_json(), options, full_reports,
                                  pure=False)] = i
        for fut in dask_completed(futures):
            i = futures[fut]
            try:
                nb_json, data = fut.result()
                result = NotebookResult(**data)
            except Exception as e:  # the worker failed: this notebook's row says so
                done(i, NotebookResult(path=paths[i], status="error", reason=f"dask worker: {_last_line(str(e))}"))
                continue
            done(i, save(results_dir, paths[i], result, lambda f: f.write(nb_json)))


def batch_exit_code(results: list[NotebookResult]) -> int:
    if any(r.status == "refused" for r in results):
        return 3
    return 0 if all(r.status == "ok" for r in results) else 1


TABLE_HEADERS = ("notebook", "status", "cells run", "errored", "duration", "output", "downgrades", "reason")
TABLE_FORMATS = ("text", "markdown", "csv")


def format_table(results: list[NotebookResult], fmt: str = "text") -> str:
    """The result table: ``text`` for a terminal (then each failure's reason and the layers in
    force), ``markdown`` (a GitHub table, for CI job summaries) or ``csv``. Tables are drawn by
    tabulate: alignment and Markdown escaping done once, well, by a small pure-Python library."""
    import csv
    import io

    from tabulate import tabulate

    rows = []
    for r in results:
        downs = ", ".join(sorted({d["layer"] for d in r.downgrades})) or "-"
        output = _human(r.output_bytes) + (" (cut)" if r.output_truncated else "") if r.output_bytes else "-"
        rows.append([r.path, r.status, r.cells_run, r.cells_errored, f"{r.duration:.1f}s", output, downs,
                     plain_text(r.reason) if r.status != "ok" and r.reason else ""])
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([TABLE_HEADERS, *rows])
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        escaped = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
        return tabulate(escaped, headers=TABLE_HEADERS, tablefmt="github", disable_numparse=True)
    lines = tabulate([row[:-1] for row in rows], headers=TABLE_HEADERS[:-1], tablefmt="simple",
                     disable_numparse=True).splitlines()
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


def _human(n: int) -> str:
    for unit, factor in (("G", GiB), ("M", MiB), ("K", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"
