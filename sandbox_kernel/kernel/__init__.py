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

REPORT_ENV = "SANDBOX_KERNEL_REPORT"


def kernel_report() -> dict:
    raw = os.environ.get(REPORT_ENV)
    if not raw:
        return {"version": 1, "scope": "kernel", "state": "unsandboxed",
                "note": "this kernel was not started by the sandbox provisioner"}
    try:
        return json.loads(raw)
    except ValueError:
        return {"version": 1, "scope": "kernel", "state": "unknown", "note": f"unreadable {REPORT_ENV}"}


def load_ipython_extension(ip) -> None:
    from .magics import SandboxMagics

    pending: dict = {}  # the cell-scope report of a magic cell, until its execute_reply
    ip.register_magics(SandboxMagics(ip, on_report=lambda report: pending.update(cell=report)))
    kernel = getattr(ip, "kernel", None)
    if kernel is None or getattr(kernel, "_sandbox_reply_hook", False):
        return
    report = {**kernel_report(), "reported_by": "kernel"}
    original = kernel.finish_metadata

    def finish_metadata(parent, metadata, reply_content):
        metadata = original(parent, metadata, reply_content)
        # A magic cell's report is cell-scoped and nests the kernel report.
        metadata["sandbox"] = pending.pop("cell", None) or report
        return metadata

    kernel.finish_metadata = finish_metadata
    kernel._sandbox_reply_hook = True
