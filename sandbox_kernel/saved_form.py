"""The saved form of sandbox reports in a notebook: compact by default, full behind a flag.

Pure functions over notebook JSON (dicts or nbformat nodes); no I/O. The batch runner and the
JupyterLab extension (``labextension/src/savedForm.ts``) write the same shape.

Full form: every executed code cell's ``metadata.sandbox`` is the trusted kernel report plus
what our client adds (``reported_by``, ``cell_outcome``, and for a ``%%sh``/``%%node``/
``%%sandbox`` cell ``cell_report``, its own cell-scope report, which nests the kernel report).
Notebook ``metadata.sandbox.kernel`` is the kernel report.

Compact form (``metadata.sandbox.form == "compact"``): each distinct kernel report is stored
once, in notebook ``metadata.sandbox.kernels`` under a short ref (``"k1"``, ``"k2"``, ...);
notebook ``metadata.sandbox.kernel`` and each cell's ``metadata.sandbox.kernel`` are refs into
it, and the cell keeps only what is its own. A ``cell_report`` keeps only what differs from
``{**K, "kernel": K}``, K being the cell's kernel report: dict keys are compared recursively,
any other value is kept whole when it differs, and keys of the base the cell report lacks are
listed under ``"~removed"``. ``expand`` undoes ``compact`` exactly.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import UntrustedInputError

COMPACT = "compact"
FULL = "full"
REMOVED = "~removed"
# The keys of a kernel-scope report (docs/architecture.md, "The report"); a full-form cell holds
# them at its top level.
KERNEL_KEYS = ("version", "scope", "platform", "requested", "enforced", "layers", "downgrades", "notes")


class SavedFormError(UntrustedInputError):
    """A compact notebook refers to a kernel report it does not hold."""


def kernel_ref(kernels: dict, report: dict) -> str:
    """The ref of ``report`` in ``kernels``, adding it under the lowest free ``kN`` if new."""
    for ref, known in kernels.items():
        if known == report:
            return ref
    n = 1
    while f"k{n}" in kernels:
        n += 1
    kernels[f"k{n}"] = copy.deepcopy(report)
    return f"k{n}"


def diff(base: Any, target: Any) -> dict:
    """What ``patch(base, ·)`` needs to turn dict ``base`` into dict ``target``."""
    out: dict = {}
    for key, value in target.items():
        if key not in base:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(base[key], dict):
            sub = diff(base[key], value)
            if sub:
                out[key] = sub
        elif value != base[key]:
            out[key] = copy.deepcopy(value)
    removed = sorted(k for k in base if k not in target)
    if removed:
        out[REMOVED] = removed
    return out


def patch(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key in changes.get(REMOVED, ()):
        out.pop(key, None)
    for key, value in changes.items():
        if key == REMOVED:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _cell_report_base(kernel: dict) -> dict:
    return {**kernel, "kernel": kernel}


def compact_cell(full: dict, kernels: dict) -> dict:
    """A full-form cell ``metadata.sandbox`` as a ref into ``kernels`` (added to if new) plus
    what is the cell's own."""
    kernel = {k: full[k] for k in KERNEL_KEYS if k in full}
    ref = kernel_ref(kernels, kernel)
    out = {"kernel": ref}
    for key, value in full.items():
        if key in KERNEL_KEYS:
            continue
        if key == "cell_report" and isinstance(value, dict):
            value = diff(_cell_report_base(kernels[ref]), value)
        out[key] = copy.deepcopy(value)
    return out


def expand_cell(compact: dict, kernels: dict, where: str = "cell") -> dict:
    ref = compact.get("kernel")
    if ref not in kernels:
        raise SavedFormError(f"{where}: metadata.sandbox.kernel {ref!r} is not in the notebook's metadata.sandbox.kernels")
    kernel = kernels[ref]
    out = copy.deepcopy(kernel)
    for key, value in compact.items():
        if key == "kernel":
            continue
        if key == "cell_report" and isinstance(value, dict):
            value = patch(_cell_report_base(kernel), value)
        out[key] = copy.deepcopy(value)
    return out


def _sandbox_cells(nb):
    for index, cell in enumerate(nb["cells"]):
        sandbox = cell.get("metadata", {}).get("sandbox")
        if cell.get("cell_type") == "code" and isinstance(sandbox, dict):
            yield index, cell, sandbox


def compact_notebook(nb):
    """A copy of ``nb`` in the compact form (unchanged if it already is)."""
    nb = copy.deepcopy(nb)
    meta = nb["metadata"].get("sandbox")
    if isinstance(meta, dict) and meta.get("form") == COMPACT:
        return nb
    kernels: dict = {}
    out_meta = {k: v for k, v in (meta or {}).items() if k != "kernel"}
    if isinstance(meta, dict) and isinstance(meta.get("kernel"), dict):
        out_meta["kernel"] = kernel_ref(kernels, meta["kernel"])
    for _, cell, sandbox in _sandbox_cells(nb):
        cell["metadata"]["sandbox"] = compact_cell(sandbox, kernels)
    if kernels or meta is not None:
        nb["metadata"]["sandbox"] = {**out_meta, "form": COMPACT, "kernels": kernels}
    return nb


def expand_notebook(nb):
    """A copy of ``nb`` in the full form (unchanged if it is not compact). Raises
    SavedFormError naming the cell whose ref is unknown."""
    nb = copy.deepcopy(nb)
    meta = nb["metadata"].get("sandbox")
    if not isinstance(meta, dict) or meta.get("form") != COMPACT:
        return nb
    kernels = meta.get("kernels") or {}
    for index, cell, sandbox in _sandbox_cells(nb):
        cell["metadata"]["sandbox"] = expand_cell(sandbox, kernels, where=f"cell {index}")
    out_meta = {k: v for k, v in meta.items() if k not in ("kernels", "form", "kernel")}
    if meta.get("kernel") is not None:
        if meta["kernel"] not in kernels:
            raise SavedFormError(f"notebook: metadata.sandbox.kernel {meta['kernel']!r} is not in metadata.sandbox.kernels")
        out_meta["kernel"] = copy.deepcopy(kernels[meta["kernel"]])
    nb["metadata"]["sandbox"] = out_meta
    return nb
