"""What the kernel side and the supervisor side of the cell service share, kept free of heavy
imports: the kernel loads it at every start.

A request is one JSON header line, ``{"kind", "options", "source_bytes", "msg_id", "env"}``
(``msg_id``: the execute request running the cell, under which the supervisor records the cell's
report for clients; ``env``: the cell's ``--env`` variables; both optional), followed by exactly
``source_bytes`` raw bytes of cell body. The body travels outside the JSON so that the part the
supervisor parses stays small: a JSON document inflates up to 25-fold in memory when parsed
(``[{},{},...]``), and a cell body can be megabytes. :func:`decode_header` is the one schema
every header is checked against on the supervisor side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import UntrustedInputError

SOCKET_NAME = "cells.sock"
SOCKET_ENV = "SANDBOX_KERNEL_CELL_SOCKET"  # the cell socket's path, in the kernel's environment
REPORT_ENV = "SANDBOX_KERNEL_REPORT"  # the kernel's own report (JSON), in its environment

MAX_HEADER = 64 * 1024  # bytes of header line, newline excluded
MAX_SOURCE = 8 * 1024 * 1024  # bytes of cell body
MAX_ALLOW = 64  # --allow entries in one cell's options
MAX_MSG_ID = 128  # characters of the execute request's msg_id
MAX_ENV = 64  # --env variables in one cell's options
MAX_ENV_NAME, MAX_ENV_VALUE = 128, 4096  # characters
KINDS = ("sh", "node", "python")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Not a cell: "copy my results out now" (sent after every cell; the supervisor decides what
# and how much, and answers {"t": "done", "report": <what was copied and refused>}).
OUTPUTS_KIND = "outputs"



@dataclass(frozen=True)
class CellOption:
    """One option of ``%%sh``/``%%node``/``%%sandbox``: the policy field it tightens and how
    its text is read. ``kind``: "choice" (one of ``choices``), "int", "number", "size"
    (bytes, or "512M"), "allow" (repeatable network.allow entry; sets network.mode allowlist),
    "env" (repeatable NAME=VALUE; not a policy field: it travels as the request's ``env``)."""

    flag: str
    field: str
    kind: str
    metavar: str
    help: str
    choices: tuple[str, ...] = ()

    @property
    def json_type(self) -> str:
        """What the option's value must be in a request header (the policy model then checks
        the value itself)."""
        return {"choice": "a string", "int": "an integer", "number": "a number", "size": "an integer",
                "allow": "a list of strings", "env": "an object of strings"}[self.kind]

    @property
    def usage(self) -> str:
        return f"{self.flag} {'|'.join(self.choices) or self.metavar}"


# The cell options, declared once: the magics' parser, their help, the option -> policy field
# mapping and the request schema below are all made from this table.
CELL_OPTIONS = (
    CellOption("--network", "network.mode", "choice", "MODE", "no network at all", choices=("deny",)),
    CellOption("--allow", "network.allow", "allow", "CIDR[:PORT]",
               "allow only these destinations, or host names as HOST:PORT (repeatable; each must already be allowed)"),
    CellOption("--memory", "resources.memory_bytes", "size", "SIZE", "memory cap of the cell's sandbox"),
    CellOption("--cpu", "resources.cpu_seconds", "int", "S", "CPU seconds per process"),
    CellOption("--timeout", "resources.wall_seconds", "number", "S", "wall-clock seconds for the whole cell"),
    CellOption("--max-output", "resources.max_output_bytes", "size", "SIZE", "output kept before the cell is stopped"),
    CellOption("--processes", "resources.max_processes", "int", "N", "processes and threads at once"),
    CellOption("--fs", "filesystem.mode", "choice", "MODE", "see nothing of the host but system dirs",
               choices=("scratch-only",)),
    CellOption("--env", "env", "env", "NAME=VALUE",
               "set a variable in the cell's environment (repeatable; the sandbox's denylist applies)"),
)
# Cell options <-> policy fields, so an error names what the author typed.
OPTION_FIELDS = {o.flag: o.field for o in CELL_OPTIONS}
FIELD_OPTIONS = {o.field: o.flag for o in CELL_OPTIONS}
_FIELD_TYPES = {o.field: o.json_type for o in CELL_OPTIONS if o.kind != "env"}


def options_usage() -> str:
    """``--network deny, --allow CIDR[:PORT], ...``: the options, for help texts."""
    return ", ".join(o.usage for o in CELL_OPTIONS)


class RequestError(UntrustedInputError):
    """A malformed request; ``problems`` is a list of [field, message] pairs for the reply."""

    def __init__(self, problems: list[list[str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


@dataclass(frozen=True)
class CellRequest:
    kind: str
    options: dict  # a partial policy: only the fields in OPTION_FIELDS, of the right JSON type
    source_bytes: int
    msg_id: str | None = None  # the kernel's word for which execute request ran this cell
    env: dict = field(default_factory=dict)  # --env: names and values checked for shape only


def parse_env_entry(entry: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (name, value); ValueError naming the entry otherwise."""
    name, sep, value = entry.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise ValueError(f"--env {entry!r}: expected NAME=VALUE with NAME made of letters, digits and _")
    return name, value


def encode_request(kind: str, source: bytes, options: dict, msg_id: str | None = None, env: dict | None = None) -> bytes:
    fields = {"kind": kind, "options": options, "source_bytes": len(source)}
    if isinstance(msg_id, str) and 0 < len(msg_id) <= MAX_MSG_ID:
        fields["msg_id"] = msg_id
    if env:
        fields["env"] = env
    header = json.dumps(fields).encode()
    if len(header) > MAX_HEADER:
        raise ValueError(f"the cell's options take more than {MAX_HEADER} bytes")
    if len(source) > MAX_SOURCE:
        raise ValueError(f"the cell body is larger than {MAX_SOURCE} bytes")
    return header + b"\n" + source


def decode_header(line: bytes) -> CellRequest:
    """Parse and check a request header (without its newline). Raises :class:`RequestError`
    naming the bad field for anything but exactly the shape :func:`encode_request` sends."""
    if len(line) > MAX_HEADER:
        raise RequestError([["request", f"header longer than {MAX_HEADER} bytes"]])
    try:
        header = json.loads(line)
    except RecursionError:
        raise RequestError([["request", "header nested too deeply"]]) from None
    except ValueError:  # also not UTF-8, and integers too long to convert
        raise RequestError([["request", "header is not valid JSON"]]) from None
    if not isinstance(header, dict):
        raise RequestError([["request", "header is not a JSON object"]])
    problems = [[f"request.{k}", "unknown key"] for k in sorted(set(header) - {"kind", "options", "source_bytes", "msg_id", "env"})]
    problems += [[f"request.{k}", "missing"] for k in ("kind", "options", "source_bytes") if k not in header]
    kind, options, size = header.get("kind"), header.get("options", {}), header.get("source_bytes", 0)
    msg_id = header.get("msg_id")
    if msg_id is not None and not (isinstance(msg_id, str) and 0 < len(msg_id) <= MAX_MSG_ID):
        problems.append(["request.msg_id", f"must be a string of 1 to {MAX_MSG_ID} characters"])
    if kind not in (*KINDS, OUTPUTS_KIND):
        problems.append(["request.kind", f"must be one of {', '.join((*KINDS, OUTPUTS_KIND))}"])
    if not _is_int(size) or not 0 <= size <= MAX_SOURCE:
        problems.append(["request.source_bytes", f"must be an integer from 0 to {MAX_SOURCE}"])
    problems += _option_type_problems(options)
    env = header.get("env", {})
    problems += _env_problems(env)
    if problems:
        raise RequestError(problems)
    return CellRequest(kind, options, size, msg_id, env)


def _env_problems(env) -> list[list[str]]:
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        return [["--env", f"must be an object of at most {MAX_ENV} variables"]]
    return [["--env", f"{str(name)[:MAX_ENV_NAME]!r}: expected a name of at most {MAX_ENV_NAME} letters, digits and _ "
                      f"and a string value of at most {MAX_ENV_VALUE} characters without NUL"]
            for name, value in env.items()
            if not (_ENV_NAME.match(name) and len(name) <= MAX_ENV_NAME and isinstance(value, str)
                    and len(value) <= MAX_ENV_VALUE and "\0" not in value)]


def _option_type_problems(options) -> list[list[str]]:
    if not isinstance(options, dict):
        return [["request.options", "must be an object"]]
    problems = []
    for section, fields in options.items():
        if not isinstance(fields, dict):
            problems.append([f"request.options.{section}", "must be an object"])
            continue
        for key, value in fields.items():
            field = f"{section}.{key}"
            want = _FIELD_TYPES.get(field)
            if want is None:
                problems.append([f"request.options.{field}", "not a cell option"])
            elif not _has_type(value, want):
                problems.append([FIELD_OPTIONS[field], f"must be {want}" + (f" (at most {MAX_ALLOW})" if field == "network.allow" else "")])
    return problems


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _has_type(value, want: str) -> bool:
    if want == "a string":
        return isinstance(value, str)
    if want == "an integer":
        return _is_int(value)
    if want == "a number":
        return _is_int(value) or isinstance(value, float)
    return isinstance(value, list) and len(value) <= MAX_ALLOW and all(isinstance(v, str) for v in value)


def option_problems(error, override: dict) -> list[list[str]]:
    """(option, message) pairs for a PolicyError: each field named as the option that set it."""
    allow_given = bool(override.get("network", {}).get("allow"))

    def option(field: str) -> str:
        field = field.split("[")[0]
        if field == "network.mode" and allow_given:
            return "--allow"
        return FIELD_OPTIONS.get(field, field)

    return [[option(f), m] for f, m in error.problems]
