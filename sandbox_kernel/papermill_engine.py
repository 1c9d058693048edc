"""papermill's ``sandbox`` engine: ``papermill --engine sandbox in.ipynb out.ipynb -p x 5``.

papermill reads, parameterizes and saves the notebook as usual; the cells run through our
batch client (``executor.execute_notebook_async``), as under ``sandbox-kernel run``: the
sandboxed kernel whatever the notebook's kernelspec or ``-k`` names, output counted and cut at
the policy's caps, a per-cell and per-notebook clock, the notebook's directory readable (its
siblings, under the rules of ``launch.inputs``; the output notebook excluded), and the report
in the output notebook (``metadata.sandbox`` and every code cell's ``metadata.sandbox``).

The policy: the engine keyword ``sandbox_policy`` (a file or a ``SandboxPolicy``, from the
Python API), else the file named by ``SANDBOX_KERNEL_POLICY``, else the operator's policy (the
Jupyter config's, as for ``sandbox-kernel run``). A policy that cannot be enforced raises
``SandboxUnavailable`` before any cell runs.

Imported by papermill at its own import (entry point group ``papermill.engine``), so nothing
heavy is imported at module level.
"""

from __future__ import annotations

import asyncio
import os

from nbclient.exceptions import DeadKernelError
from papermill.engines import Engine

from .errors import SandboxKernelError, SandboxUnavailable
from .report import Downgrade

POLICY_ENV = "SANDBOX_KERNEL_POLICY"


class SandboxRunFailed(SandboxKernelError, RuntimeError):
    """The run ended without a cell error papermill could report (notebook timeout, runner failure)."""


def engine_policy(sandbox_policy=None):
    from .config import operator_policy
    from .policy import SandboxPolicy, load_policy_file

    if isinstance(sandbox_policy, SandboxPolicy):
        return sandbox_policy
    path = sandbox_policy or os.environ.get(POLICY_ENV)
    return load_policy_file(path) if path else operator_policy()


def _local(path) -> str | None:
    """The absolute path of a local file papermill reads or writes (None: a URL, stdin, an object)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path) or str(path) == "-" or "://" in str(path):
        return None
    return os.path.abspath(path)


def _run(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # papermill's API called from a running loop (a Jupyter notebook): a loop of our own, elsewhere.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class SandboxEngine(Engine):
    @classmethod
    def nb_kernel_name(cls, nb, name=None):
        from .kernelspec import KERNEL_NAME  # here: papermill imports this module whenever it is imported

        return KERNEL_NAME  # whatever the notebook (or -k) names

    @classmethod
    def nb_language(cls, nb, language=None):
        # papermill picks the parameter translator from this: the kernel is Python whatever the
        # notebook claims, and another language's quoting would change the values it reads.
        return "python"

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, *, input_path=None, execution_timeout=None,
                                 sandbox_policy=None, notebook_timeout=None, max_notebook_output=None, data=(), **kwargs):
        from .executor import DEFAULT_NOTEBOOK_SECONDS, execute_notebook_async
        from .intake import strip_ours

        policy = engine_policy(sandbox_policy)
        source, output = _local(input_path), _local(nb_man.output_path)
        # The notebook's directory, as `sandbox-kernel run` gives it; papermill's --cwd for a
        # notebook that is not a local file.
        cwd = os.path.dirname(source) if source and os.path.isfile(source) else os.getcwd()
        listing = {"exclude": [output] if output else [], "data": list(data)}
        nb = strip_ours(nb_man.nb)  # a forged report from the input never reaches the output
        nb, result = _run(execute_notebook_async(
            nb, policy=policy, cwd=cwd, path=str(input_path or "<notebook>"), inputs=listing, cell_timeout=execution_timeout,
            notebook_timeout=notebook_timeout or DEFAULT_NOTEBOOK_SECONDS, max_notebook_output=max_notebook_output))
        nb_man.nb = nb
        for cell in nb.cells:  # papermill's own per-cell status, from our record
            if cell.metadata.get("sandbox", {}).get("cell_outcome", {}).get("status") in ("error", "timeout", "dead-kernel"):
                nb_man.cell_exception(cell)
        if result.status == "refused":
            raise SandboxUnavailable([Downgrade(d["layer"], d["reason"]) for d in result.downgrades])
        if result.status == "dead-kernel":
            raise DeadKernelError(result.reason)  # papermill's exit code 138
        if result.status != "ok" and not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", ())):
            raise SandboxRunFailed(f"{result.status}: {result.reason}")
        # A cell error is in the notebook: papermill raises PapermillExecutionError for it.
        return nb

