"""Notebook parameters with papermill's semantics, injected by papermill itself.

``sandbox-kernel run -p NAME VALUE -r NAME VALUE -f FILE.yaml -y YAML`` means what it means to
papermill: later sources win in the order files, YAML strings, ``-p`` (typed like papermill:
True/False/None, int, float, else a string), ``-r`` (always a string); the cell is made by
``papermill.parameterize.parameterize_notebook`` (tagged ``injected-parameters``, after the
first cell tagged ``parameters``, replacing an ``injected-parameters`` cell the input already
has).

What differs, because the notebook is untrusted:
- the cell is always written in Python: the notebook's metadata (kernelspec, language) does
  not choose papermill's translator, so it cannot pick one whose quoting makes the Python
  kernel that really runs the cell read another value (MATLAB's ``""``) or fail;
- names must be Python identifiers (papermill would write any string before `` = ``);
- ``metadata.papermill`` is ours: whatever the input carried there is replaced;
- ``-f`` reads a local file only, within a size bound (papermill would also fetch URLs).
"""

from __future__ import annotations

import keyword
import os

from .errors import SandboxKernelError

MAX_FILE_BYTES = 1 << 20
LANGUAGE = "python"
TRANSLATOR_KERNEL = "python3"  # papermill's name for its Python translator's kernel


class ParameterError(SandboxKernelError, ValueError):
    """A parameter source that cannot be used; the message names it."""


def resolve_type(value: str):
    """papermill's typing of ``-p`` values (``papermill.cli._resolve_type``)."""
    if value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _load_yaml(text: str, what: str) -> dict:
    import yaml
    from papermill.iorw import NoDatesSafeLoader  # papermill's loader: dates stay strings

    try:
        data = yaml.load(text, Loader=NoDatesSafeLoader)
    except yaml.YAMLError as e:
        raise ParameterError(f"{what}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(f"{what}: must be a YAML mapping of parameter names to values, not a {type(data).__name__}")
    return data


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ParameterError(f"-f {path}: cannot read it: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ParameterError(f"-f {path}: over {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ParameterError(f"-f {path}: not UTF-8 text") from None


def collect(*, files=(), yamls=(), values=(), raws=()) -> dict:
    """The parameters of ``-f``, ``-y``, ``-p``, ``-r`` (papermill's order: later wins)."""
    params: dict = {}
    for path in files:
        params.update(_load_yaml(_read_file(os.fspath(path)), f"-f {path}"))
    for i, text in enumerate(yamls):
        params.update(_load_yaml(text, f"-y (#{i + 1})"))
    for name, value in values:
        params[name] = resolve_type(value)
    for name, value in raws:
        params[name] = value
    for name in params:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ParameterError(f"parameter name {name!r}: must be a Python identifier")
    return params


def parameterize(nb, parameters: dict):
    """``nb`` with papermill's injected-parameters cell (a new NotebookNode may be returned)."""
    from papermill.parameterize import parameterize_notebook

    nb.metadata["papermill"] = {"parameters": {}}  # ours, never the input's
    untagged = [c for c in nb.cells if "tags" not in c.metadata]
    for cell in untagged:  # papermill's reader gives every cell a tags list; its injector relies on it
        cell.metadata["tags"] = []
    nb = parameterize_notebook(nb, parameters, kernel_name=TRANSLATOR_KERNEL, language=LANGUAGE)
    for cell in untagged:
        if not cell.metadata.get("tags"):
            del cell.metadata["tags"]
    return nb
