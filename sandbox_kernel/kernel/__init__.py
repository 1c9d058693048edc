"""Code that runs *inside* the sandboxed kernel (untrusted territory).

Loaded automatically in sandboxed kernels (``--IPKernelApp.extra_extensions``) and loadable
with ``%load_ext sandbox_kernel.kernel``. It adds ``metadata.sandbox`` to every
``execute_reply`` so plain clients see the report too. Everything it sends is labelled
``reported_by: kernel``: code in the kernel can forge it, so our own clients take the
kernel-scope report from the provisioner instead.
"""

from __future__ import annotations

import json
import os
import re
import socket

from ..cell_protocol import OUTPUTS_KIND, REPORT_ENV, SOCKET_ENV, encode_request
# ipykernel sends what a cell printed in the last 0.2 s as one stream message, however large,
# and the batch runner drops a message over its limit (at least 8 MiB) whole. Flushing every
# MiB keeps a print flood in messages whose part within the output cap can be kept.
STREAM_FLUSH_BYTES = 1 << 20


def kernel_report() -> dict:
    raw = os.environ.get(REPORT_ENV)
    if not raw:
        return {"version": 1, "scope": "kernel", "state": "unsandboxed",
                "note": "this kernel was not started by the sandbox provisioner"}
    try:
        return json.loads(raw)
    except ValueError:
        return {"version": 1, "scope": "kernel", "state": "unknown", "note": f"unreadable {REPORT_ENV}"}


OUTPUTS_TIMEOUT = 10.0  # seconds a cell's reply waits for the copy (a later cell collects what it missed)
MAX_OUTPUTS_REPLY = 1 << 20


def results_dir() -> str | None:
    """The kernel's results dir (``/scratch/outputs``) if results are copied out, else None."""
    outputs = kernel_report().get("requested", {}).get("filesystem", {}).get("outputs", {})
    if not isinstance(outputs, dict) or not outputs.get("enabled") or not isinstance(outputs.get("dir"), str):
        return None
    return os.path.join(os.environ.get("HOME", "/scratch"), outputs["dir"])


def request_outputs() -> dict | None:
    """Ask the supervisor to copy this kernel's results (``/scratch/outputs``) out now; its
    summary of what it copied and refused, or None (no cell service, no answer)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(OUTPUTS_TIMEOUT)
    try:
        conn.connect(path)
        conn.sendall(encode_request(OUTPUTS_KIND, b"", {}))
        line = conn.makefile("rb").readline(MAX_OUTPUTS_REPLY)
        reply = json.loads(line)
    except (OSError, ValueError):
        return None
    finally:
        conn.close()
    report = reply.get("report") if isinstance(reply, dict) and reply.get("t") == "done" else None
    return report if isinstance(report, dict) else None


def bound_stream_messages(streams) -> None:
    """Make each ipykernel output stream flush once a MiB is pending (flush() waits for the
    send: a fast writer is slowed down instead of building one huge message)."""
    for stream in streams:
        if getattr(stream, "_sandbox_bounded", False) or not hasattr(stream, "pub_thread"):
            continue
        pending = [0]

        def write(text, _write=stream.write, _stream=stream, _pending=pending):
            n = _write(text)
            _pending[0] += len(text)
            if _pending[0] >= STREAM_FLUSH_BYTES:
                _pending[0] = 0
                _stream.flush()
            return n

        stream.write = write
        stream._sandbox_bounded = True


_HELP_ONLY = re.compile(r"%%(sh|node|sandbox)((?:\s.*)?\s(?:-h|--help))(?:\s.*)?")


def help_only_cell(lines: list[str]) -> list[str]:
    """``%%sh --help`` alone in a cell prints the help: IPython refuses a cell magic with an
    empty body before the magic sees its options, so such a cell calls the magic directly."""
    match = _HELP_ONLY.fullmatch(lines[0].rstrip("\n")) if lines else None
    if not match or any(line.strip() for line in lines[1:]):
        return lines
    name, line = match.group(1), lines[0].rstrip("\n")[len(match.group(1)) + 2:]
    return [f"get_ipython().magics_manager.magics['cell'][{name!r}]({line!r}, '')\n"]


def load_ipython_extension(ip) -> None:
    import sys

    from .magics import SandboxMagics

    bound_stream_messages((sys.stdout, sys.stderr))

    pending: dict = {}  # the cell-scope report of a magic cell, until its execute_reply
    ip.register_magics(SandboxMagics(ip, on_report=lambda report: pending.update(cell=report)))
    cleanup = getattr(ip, "input_transformers_cleanup", None)
    if cleanup is not None and help_only_cell not in cleanup:
        cleanup.append(help_only_cell)
    kernel = getattr(ip, "kernel", None)
    if kernel is None or getattr(kernel, "_sandbox_reply_hook", False):
        return
    report = {**kernel_report(), "reported_by": "kernel"}
    original = kernel.finish_metadata

    def finish_metadata(parent, metadata, reply_content):
        metadata = original(parent, metadata, reply_content)
        # A magic cell's report is cell-scoped and nests the kernel report.
        metadata["sandbox"] = pending.pop("cell", None) or report
        # After every cell, the supervisor copies the results out (so a file browser shows
        # them when the cell ends); what it did is part of this cell's report.
        # Only once the results dir exists: a notebook that writes none pays nothing.
        where = results_dir()
        outputs = request_outputs() if where and os.path.isdir(where) else None
        if outputs and (outputs.get("copied_count") or outputs.get("refused_count")):
            metadata["sandbox"] = {**metadata["sandbox"], "outputs": outputs}
        return metadata

    kernel.finish_metadata = finish_metadata
    kernel._sandbox_reply_hook = True
