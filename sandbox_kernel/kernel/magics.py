"""``%%sh``, ``%%node`` and ``%%sandbox``: run a cell in its own sandbox, never looser than the
kernel's. The options are checked here for a quick, friendly error, but the decision is the
supervisor's (see ``sandbox_kernel.cells``): it tightens its own record of the kernel policy.

``%%sh`` replaces IPython's, so it also takes IPython's ``%%script`` options with their meaning
(``--out``, ``--err``, ``--no-raise-error``, ``-h``); ``--bg`` and ``--proc`` cannot be honoured
(the cell's sandbox lives only as long as the cell, and its process is the supervisor's, not
the kernel's) and are refused saying so. See docs/magics.md.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import functools
import json
import os
import shlex
import socket
import sys

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class

from ..cell_protocol import CELL_OPTIONS, SOCKET_ENV, encode_request, option_problems, options_usage, parse_env_entry
from ..errors import SandboxKernelError

# The policy model (pydantic) is imported on first use, not at kernel start.


class SandboxCellError(SandboxKernelError):
    """The cell's sandboxed process failed: non-zero exit, timeout, kill, or a refused option."""

    def _render_traceback_(self):  # IPython: show the message, not a Python traceback
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage()}")


_ARG_TYPES = {"int": int, "number": float}

# IPython's own %%script options (IPython.core.magics.script), same names and meanings.
IPYTHON_OPTIONS = ("--out", "--err", "--no-raise-error", "--bg", "--proc", "--help")
_REFUSED = {
    "bg": "--bg cannot be honoured: a cell's sandbox lives only as long as the cell (run it in the foreground, "
          "or start the background work from Python in the kernel)",
    "proc": "--proc cannot be honoured: the cell's process belongs to the sandbox supervisor, not to this kernel "
            "(use --out/--err for its output)",
}


@functools.lru_cache(maxsize=None)  # one per magic: building it costs ~1 ms a cell
def _parser(magic: str) -> _Parser:
    p = _Parser(prog=f"%%{magic}", add_help=False,
                description=f"Run the cell in its own sandbox ({'Python' if magic == 'sandbox' else magic}); each "
                            "sandbox option may only tighten the kernel's policy.")
    p.add_argument("--out", metavar="NAME", help="store the cell's stdout in the variable NAME instead of showing it")
    p.add_argument("--err", metavar="NAME", help="store the cell's stderr in the variable NAME instead of showing it")
    p.add_argument("--no-raise-error", action="store_false", dest="raise_error",
                   help="do not raise an error when the script exits with a non-zero status (sandbox limits still raise)")
    p.add_argument("--bg", action="store_true", help="refused: " + _REFUSED["bg"].partition(": ")[2])
    p.add_argument("--proc", metavar="NAME", help="refused: " + _REFUSED["proc"].partition(": ")[2])
    p.add_argument("-h", "--help", action="store_true", help="show this help and do not run the cell")
    for option in CELL_OPTIONS:
        if option.kind == "choice":
            p.add_argument(option.flag, choices=option.choices, help=option.help)
        elif option.kind in ("allow", "env"):
            p.add_argument(option.flag, action="append", metavar=option.metavar, help=option.help)
        else:
            p.add_argument(option.flag, type=_ARG_TYPES.get(option.kind, str), metavar=option.metavar, help=option.help)
    return p


def options_to_override(magic: str, line: str) -> dict:
    """Cell options as a partial policy (what ``tighten`` takes), and ``--env`` as its
    ``"env"`` key (a dict, not a policy field). UsageError on bad syntax."""
    return parse_options(magic, line)[0]


def parse_options(magic: str, line: str) -> tuple[dict, dict]:
    """(the sandbox options as a partial policy, with ``--env`` as its ``"env"`` key; IPython's
    options: out, err, raise_error, help). UsageError on bad syntax, and for the IPython options
    that cannot be honoured."""
    from ..policy import parse_entry, parse_size

    args = vars(_parser(magic).parse_args(shlex.split(line)))
    for name, why in _REFUSED.items():
        if args[name]:
            raise UsageError(f"%%{magic}: {why}")
    local = {k: args[k] for k in ("out", "err", "raise_error", "help")}
    for name in ("out", "err"):
        if local[name] is not None and not local[name].isidentifier():
            raise UsageError(f"%%{magic}: --{name} {local[name]!r} is not a variable name")
    if args["network"] and args["allow"]:
        raise UsageError(f"%%{magic}: --network deny and --allow exclude each other")
    override: dict = {}

    def put(field: str, value) -> None:
        section, key = field.split(".")
        override.setdefault(section, {})[key] = value

    try:
        for option in CELL_OPTIONS:
            value = args[option.flag[2:].replace("-", "_")]
            if value is None:
                continue
            if option.kind == "env":
                override["env"] = dict(parse_env_entry(entry) for entry in value)
                continue
            if option.kind == "allow":
                put("network.mode", "allowlist")
                value = [str(parse_entry(a)) for a in value]
            elif option.kind == "size":
                value = parse_size(value)
            put(option.field, value)
    except ValueError as e:
        raise UsageError(f"%%{magic}: {e}") from None
    return override, local


def kernel_policy():
    from ..policy import SandboxPolicy
    from . import kernel_report

    return SandboxPolicy.model_validate(kernel_report()["requested"])


@magics_class
class SandboxMagics(Magics):
    def __init__(self, shell, on_report=None):
        super().__init__(shell)
        self.on_report = on_report or (lambda report: None)

    @cell_magic
    def sh(self, line, cell):
        self._run("sh", line, cell)

    sh.__doc__ = (f"Run the cell as a shell script in its own sandbox. Options: {options_usage()} "
                  "(each may only tighten the kernel's policy); IPython's --out NAME, --err NAME, --no-raise-error; "
                  "-h for help.")

    @cell_magic
    def node(self, line, cell):
        """Run the cell as a Node.js script in its own sandbox (options as for %%sh)."""
        self._run("node", line, cell)

    @cell_magic
    def sandbox(self, line, cell):
        """Run the cell as Python in a fresh sandboxed interpreter (options as for %%sh)."""
        self._run("python", line, cell, magic="sandbox")

    def _run(self, kind: str, line: str, cell: str, magic: str | None = None) -> None:
        magic = magic or kind
        from ..policy import PolicyError, tighten

        override, local = parse_options(magic, line)
        if local["help"]:
            print(_parser(magic).format_help())
            return
        env = override.pop("env", None)
        try:
            if override:  # early, friendly check; the supervisor decides
                tighten(kernel_policy(), override)
        except PolicyError as e:
            raise SandboxCellError(_problems_text(magic, option_problems(e, override))) from None
        path = os.environ.get(SOCKET_ENV)
        if not path:
            raise SandboxCellError(f"%%{magic}: this kernel was not started by the sandbox provisioner; no cell sandbox is available")
        try:
            request = encode_request(kind, cell.encode(), override, self._execute_request_id(), env)
        except ValueError as e:  # too large (or not encodable as UTF-8)
            raise SandboxCellError(f"%%{magic}: {e}") from None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                conn.connect(path)
            except OSError as e:
                raise SandboxCellError(f"%%{magic}: the cell service is not reachable: {e.strerror}") from None
            try:
                conn.sendall(request)
            except OSError:
                pass  # the supervisor refused before reading it all: its reply says why
            captured = {stream: [] for stream in ("stdout", "stderr") if local[stream[3:]]}
            final = self._relay(conn, captured)
        finally:
            # On KeyboardInterrupt too: EOF tells the supervisor to kill the cell's whole tree.
            # shutdown(), not just close(): the makefile() reader would keep the fd open.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        # As IPython's %%script: the variables are set whatever the outcome, before any error.
        for stream, chunks in captured.items():
            self.shell.user_ns[local[stream[3:]]] = "".join(chunks)
        if final["t"] == "error":
            raise SandboxCellError(_problems_text(magic, final["problems"]))
        report = {**final["report"], "reported_by": "kernel"}
        self.on_report(report)
        outcome = report["outcome"]
        if outcome["timed_out"]:
            limit = report["requested"]["resources"]["wall_seconds"]
            raise SandboxCellError(f"%%{magic}: timed out after {limit} s; its processes were killed")
        if outcome["output_truncated"]:
            limit = report["requested"]["resources"]["max_output_bytes"]
            raise SandboxCellError(f"%%{magic}: output exceeded {limit} bytes; the cell was stopped")
        if outcome["killed_reason"] == "oom":
            raise SandboxCellError(f"%%{magic}: killed by the memory cap")
        if outcome["exit_code"] != 0 and local["raise_error"]:
            sig = outcome.get("signal")
            raise SandboxCellError(f"%%{magic}: exited with status {outcome['exit_code']}" + (f" (signal {sig})" if sig else ""))

    def _execute_request_id(self) -> str | None:
        """The msg_id of the execute request running this cell: the supervisor records the
        cell's report under it for clients (the JupyterLab extension) to fetch."""
        header = getattr(self.shell, "parent_header", None) or {}
        return header.get("msg_id")

    def _relay(self, conn: socket.socket, captured: dict[str, list[str]]) -> dict:
        """Copy the cell's output into this cell as it arrives (or into ``captured[stream]``
        for a stream given to --out/--err); return the final message."""
        reader = conn.makefile("rb")
        # Chunks may split a UTF-8 sequence: decode incrementally, per stream.
        decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in ("stdout", "stderr")}
        try:
            for raw in reader:
                if not raw.endswith(b"\n"):
                    break  # cut off: the supervisor gave up on this connection
                msg = json.loads(raw)
                if msg["t"] == "out":
                    text = decoders[msg["stream"]].decode(base64.b64decode(msg["data"]))
                    if msg["stream"] in captured:
                        captured[msg["stream"]].append(text)
                        continue
                    stream = sys.stdout if msg["stream"] == "stdout" else sys.stderr
                    stream.write(text)
                    stream.flush()
                else:
                    return msg
        except OSError:  # reset after a refusal
            pass
        return {"t": "error", "problems": [["cell", "the supervisor closed the connection"]]}


def _problems_text(magic: str, problems) -> str:
    return "\n".join(f"%%{magic}: {field}: {message}" for field, message in problems)
