"""Taking in untrusted JSON on the runner's side, within bounds: input notebooks, and every
message a sandboxed kernel sends to our client.

Both are hostile input to code that usually runs as root. Sizes alone do not bound memory:
``json.loads`` turns ``[{},{},...]`` into a dict per three bytes (about 24 times the text), so
the text's shape is checked before it is parsed (:func:`json_cost`), and deep nesting is
refused after. Kernel messages arrive already bounded in size by the channel guard
(``launch.channel_guard``); here each one is measured (its serialized size on the wire, every
frame), and its content is parsed only when it could be kept: a stream message by a parser
that builds nothing but strings, anything else within the cost bound, and nothing at all when
the cell has no room left for it. What is dropped comes back as a stub message that says so,
for the notebook client to count and mark.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from queue import Empty
from typing import Any

import nbformat
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from traitlets import Any as AnyTrait
from traitlets import Type, default

from .errors import UntrustedInputError

__all__ = ["UntrustedInput", "json_cost", "loads_bounded", "read_notebook", "strip_ours", "SandboxKernelClient", "BoundedChannel"]

MAX_DEPTH = 100
MAX_NOTEBOOK_BYTES = 32 * 2**20
HEADER_LIMIT = 64 * 1024  # header, parent header and message metadata of one message
STATUS_LIMIT = 4096


class UntrustedInput(UntrustedInputError):
    """Untrusted JSON that is malformed or would cost too much to hold; says why."""


def json_cost(raw: bytes) -> int:
    """Upper estimate of the memory ``json.loads(raw)`` builds in CPython: the text itself,
    about 80 bytes per container (a dict or list and its slot) and 56 per value (a boxed
    number or a short string and its slot). Counted on the raw text, so brackets and commas
    inside strings count too: the estimate only errs high."""
    containers = raw.count(b"{") + raw.count(b"[")
    values = raw.count(b",") + raw.count(b":") + containers + 1
    return len(raw) + 80 * containers + 56 * values


def cost_budget(size: int) -> int:
    # Real text (code, prose, CSV, base64, numeric arrays) stays well under this; a stream of
    # empty containers (the amplification attack) is far over it.
    return 12 * size + 32 * 2**20


def loads_bounded(raw: bytes | str, what: str) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    cost = json_cost(data)
    if cost > cost_budget(len(data)):
        raise UntrustedInput(f"{what}: its JSON would take about {cost >> 20} MiB in memory for {len(data)} bytes of text")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise UntrustedInput(f"{what}: not valid JSON ({_short(e)})") from None
    if _deeper_than(obj, MAX_DEPTH):
        raise UntrustedInput(f"{what}: nested more than {MAX_DEPTH} levels deep")
    return obj


def _deeper_than(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


_WS = re.compile(r"[ \t\n\r]*")


def loads_string_fields(raw: bytes) -> dict[str, str]:
    """Parse a flat JSON object whose values are all strings (a stream message's content)
    building nothing but those strings. Raises UntrustedInput for anything else."""
    s = raw.decode("utf-8", errors="replace")
    out: dict[str, str] = {}
    i = _WS.match(s, 0).end()
    if s[i:i + 1] != "{":
        raise UntrustedInput("not a JSON object")
    i = _WS.match(s, i + 1).end()
    if s[i:i + 1] == "}":
        i += 1
    else:
        while True:
            key, i = _string_at(s, i)
            i = _WS.match(s, i).end()
            if s[i:i + 1] != ":":
                raise UntrustedInput("expected ':'")
            value, i = _string_at(s, _WS.match(s, i + 1).end())
            out[key] = value
            i = _WS.match(s, i).end()
            if s[i:i + 1] == "}":
                i += 1
                break
            if s[i:i + 1] != ",":
                raise UntrustedInput("expected ',' or '}'")
            i = _WS.match(s, i + 1).end()
    if _WS.match(s, i).end() != len(s):
        raise UntrustedInput("trailing data")
    return out


def _string_at(s: str, i: int) -> tuple[str, int]:
    if s[i:i + 1] != '"':
        raise UntrustedInput("expected a string")
    try:
        return json.decoder.scanstring(s, i + 1)
    except ValueError as e:
        raise UntrustedInput(_short(e)) from None


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- input notebooks


def notebook_language(nb) -> str | None:
    """The language a notebook says it is written in (its kernelspec's, else its
    language_info's), lower case; None when it says nothing (taken as Python)."""
    for key in ("kernelspec", "language_info"):
        meta = nb.metadata.get(key)
        value = meta.get("language" if key == "kernelspec" else "name") if isinstance(meta, dict) else None
        if isinstance(value, str) and value.strip():
            return value.strip().lower()[:100]
    return None


def language_problem(nb) -> str | None:
    """Why a notebook cannot run in the sandboxed Python kernel, or None."""
    language = notebook_language(nb)
    if language in (None, "python", "python3"):
        return None
    return (f"its kernelspec language is {language!r}, and the sandboxed kernel runs Python only "
            "(pass --any-language to run its cells as Python anyway)")


def read_notebook(path: str) -> nbformat.NotebookNode:
    """Read an input notebook without trusting it: a regular file (never through a final
    symbolic link, which could point the root runner at a file the submitter cannot read),
    bounded in size and shape, valid nbformat. Everything a previous run (or a forger) left in
    it that our side writes is removed: each cell's ``metadata.sandbox`` and
    ``metadata.execution``, code cells' ``outputs`` and ``execution_count``, the notebook's
    ``metadata.sandbox`` and widget state. Raises UntrustedInput with the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise UntrustedInput("it is a symbolic link" if e.errno == 40 else f"cannot open it: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UntrustedInput("it is a directory, not a notebook" if stat.S_ISDIR(st.st_mode) else "it is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_NOTEBOOK_BYTES:
            raise UntrustedInput(f"it is {st.st_size} bytes; the limit is {MAX_NOTEBOOK_BYTES} (clear its outputs)")
        raw = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(raw) > MAX_NOTEBOOK_BYTES:
        raise UntrustedInput(f"it is over {MAX_NOTEBOOK_BYTES} bytes (clear its outputs)")
    data = loads_bounded(raw, "the notebook")
    del raw
    if not isinstance(data, dict):
        raise UntrustedInput("the notebook is not a JSON object")
    try:
        major, minor = nbformat.reader.get_version(data)
        nb = nbformat.convert(nbformat.versions[major].to_notebook_json(data, minor=minor), 4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises several kinds for a bad document; all mean invalid
        raise UntrustedInput(f"not a valid notebook: {_short(getattr(e, 'message', None) or e)}") from None
    return strip_ours(nb)


def strip_ours(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove, in place, what only our side writes (see :func:`read_notebook`)."""
    for cell in nb.cells:
        cell.metadata.pop("sandbox", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("sandbox", None)
    nb.metadata.pop("widgets", None)
    return nb


# --------------------------------------------------------------------------- kernel messages


class BoundedChannel(AsyncZMQSocketChannel):
    """A channel that measures each message and parses only what may be kept.

    ``budget`` (set by :class:`SandboxKernelClient`) answers ``room()``: the bytes the running
    cell may still keep (None: no limit)."""

    budget: Any = None
    replies = False  # shell: a dropped reply must still end the request

    async def _recv(self, **kwargs: Any) -> dict[str, Any]:
        while True:
            frames = await self.socket.recv_multipart(**kwargs)
            msg = self.take(frames)
            if msg is not None:
                return msg

    def take(self, frames: list[bytes]) -> dict[str, Any] | None:
        try:
            _, parts = self.session.feed_identities(frames)
        except ValueError:
            return None  # no delimiter: not a Jupyter message at all
        wire = sum(len(p) for p in parts)
        if len(parts) < 5 or any(len(p) > HEADER_LIMIT for p in parts[1:4]):
            return None
        try:
            msg = self.session.deserialize(parts, content=False)  # checks the signature
        except Exception:  # bad signature or a malformed header: nothing usable
            return None
        raw, msg_type = msg["content"], msg["msg_type"]
        msg["sandbox_wire_bytes"] = wire
        room = self.budget.room() if self.budget is not None and not self.replies else None
        try:
            if msg_type == "status":
                if len(raw) > STATUS_LIMIT:
                    raise UntrustedInput(f"a {len(raw)}-byte status message")
            elif room is not None and (wire > room if msg_type != "stream" else room == 0):
                # (a stream message over the room is still read: its first part may be kept)
                raise UntrustedInput("no room left")
            if msg_type == "stream":
                msg["content"] = loads_string_fields(raw)
            else:
                msg["content"] = loads_bounded(raw, f"a {msg_type} message")
            if not isinstance(msg["content"], dict):
                raise UntrustedInput(f"a {msg_type} message whose content is not an object")
        except UntrustedInput as e:
            msg["content"] = _dropped_reply(str(e)) if self.replies else {}
            msg["sandbox_dropped"] = str(e)
        return msg


def _dropped_reply(reason: str) -> dict:
    return {"status": "error", "ename": "SandboxKernelError", "traceback": [],
            "evalue": f"the kernel's reply could not be read within the runner's bounds: {reason}"}


class BoundedShellChannel(BoundedChannel):
    replies = True


STALE_IOPUB_MESSAGES = 64  # dropped at most once the kernel is ready


class SandboxKernelClient(AsyncKernelClient):
    """The batch runner's kernel client: every channel measured and bounded."""

    shell_channel_class = Type(BoundedShellChannel)
    iopub_channel_class = Type(BoundedChannel)
    stdin_channel_class = Type(BoundedChannel)
    control_channel_class = Type(BoundedChannel)
    budget = AnyTrait(None, allow_none=True, help="Answers room(): output bytes the running cell may still keep.")
    socket_options = AnyTrait(None, allow_none=True, help="ZMQ socket options for every channel (receive bounds).")

    @default("context")
    def _context_default(self):
        context = super()._context_default()
        for option, value in (self.socket_options or {}).items():
            context.setsockopt(option, value)
        return context

    @property
    def iopub_channel(self):
        channel = super().iopub_channel
        channel.budget = self.budget
        return channel

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        """jupyter_client's (kernel_info until it is answered and iopub is seen connected),
        except at the end: it drops the iopub messages queued by then instead of waiting for
        0.2 s of silence, a fixed 0.2 s on every kernel start (and endless under a kernel that
        never stops sending). One that comes later is harmless: nbclient keeps only messages
        whose parent is the request it waits on."""
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            self.kernel_info()
            try:
                msg = await self.shell_channel.get_msg(timeout=1)
            except Empty:
                pass
            else:
                if msg["msg_type"] == "kernel_info_reply":
                    try:
                        await self.iopub_channel.get_msg(timeout=0.2)
                    except Empty:  # iopub not connected yet: ask again
                        pass
                    else:
                        self._handle_kernel_info_reply(msg)
                        break
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")
        for _ in range(STALE_IOPUB_MESSAGES):  # bounded: a kernel may send without end
            try:
                await self.iopub_channel.get_msg(timeout=0)
            except Empty:
                return

    wait_for_ready = _async_wait_for_ready  # the base class binds jupyter_client's own
