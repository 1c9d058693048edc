"""The cell service: how ``%%sh``/``%%node``/``%%sandbox`` cells get their own sandbox.

Cell sandboxes are started from *outside* the kernel, by the supervisor that started the
kernel, never nested inside it: the kernel's seccomp filter forbids user namespaces and mounts
(the kernel-exploit surface nested sandboxes would need), and a nested bwrap could not mount a
fresh /proc anyway. The kernel reaches the supervisor through one narrow channel: a Unix socket
in a supervisor-owned directory bound read-only into the kernel's sandbox. Over it the kernel can only ask "run this body as sh/node/python with
these options"; the supervisor tightens *its own* record of the kernel's policy with the
options (the kernel cannot claim a looser policy), plans the cell with the same ``plan()``,
runs it with the same launch shell and streams the output back.

Wire format: newline-delimited JSON. Request ``{"kind", "source", "options", "msg_id"}`` (the
execute request that ran the cell, under which the report is recorded); replies
``{"t": "out", "stream", "data"(base64)}``... then one ``{"t": "done", "report"}`` or
``{"t": "error", "problems": [[field, message], ...]}``. Closing the socket cancels the run.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace
from typing import Callable

from .capabilities import python_runtime_paths
from .cell_protocol import SOCKET_NAME, option_problems
from .launch import prepare, start
from .launch.process import SandboxProcess, communicate
from .planner import RunSpec
from .policy import PolicyError, SandboxPolicy, tighten
from .report import SandboxUnavailable

MAX_REQUEST = 8 * 1024 * 1024  # a cell body larger than this is refused
BUSY_WAIT = 10.0  # seconds a request waits for the kernel's previous cell to finish
KINDS = {"sh": "shell", "node": "node", "python": "python"}
WARM_KINDS = ("sh",)  # kinds with a sandbox started ahead of time (cheap to keep idle)


def cell_argv(kind: str) -> tuple[str, ...]:
    """The interpreter reads the cell body from stdin: no argv length limit, nothing spliced."""
    if kind == "sh":
        return ("/bin/sh", "-s")
    if kind == "node":
        node = shutil.which("node")
        if node is None:
            raise FileNotFoundError("node is not installed on this host (apt-get install nodejs)")
        return (os.path.realpath(node), "-")
    return (sys.executable, "-")


def make_socket_dir(group: int) -> str:
    """The directory the cell socket lives in: the supervisor's, never writable by the kernel
    (it is bound read-only into the kernel's sandbox), so nothing the kernel does can swap the
    socket for a symlink while we set its mode. Only the sandbox's group may traverse it."""
    path = tempfile.mkdtemp(prefix="sandbox-kernel-cells-")
    if os.geteuid() == 0:
        os.chown(path, 0, group)
        os.chmod(path, 0o710)
    return path


class CellService:
    """One per kernel: a Unix-socket server in ``socket_dir``, one cell at a time."""

    def __init__(self, socket_dir: str, kernel_policy: SandboxPolicy, kernel_report: dict,
                 spec_extras: Callable[[], dict] | None = None, session=None, recorder=None):
        self.path = os.path.join(socket_dir, SOCKET_NAME)
        self.kernel_policy = kernel_policy
        self.kernel_report = kernel_report
        self.spec_extras = spec_extras or (lambda: {})
        self.session = session  # the kernel's session: cells share its scratch
        self.recorder = recorder  # CellReports: what the server extension serves per msg_id
        self._busy = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.lexists(self.path):
            os.unlink(self.path)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o666)  # access is decided by the directory (0710, sandbox group)
        self._sock.listen(4)
        self._closed = False
        # One sandbox per kind in WARM_KINDS, started ahead for the next option-less cell (so a
        # cell does not wait for bwrap): planned and confined exactly like a cold one, idle
        # until the cell body arrives on its stdin.
        self._warm: dict[str, SandboxProcess] = {}
        self._warm_lock = threading.Lock()
        # bwrap --die-with-parent ties a sandbox to the *thread* that spawned it: warm sandboxes
        # come from this one long-lived thread, never from a short-lived one.
        self._warm_requests: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._prewarm_loop, name="sandbox-cell-prewarm", daemon=True).start()
        threading.Thread(target=self._accept_loop, name="sandbox-cell-service", daemon=True).start()
        for kind in WARM_KINDS:
            self._warm_requests.put(kind)

    def close(self) -> None:
        self._closed = True
        self._warm_requests.put(None)
        with self._warm_lock:
            warm, self._warm = list(self._warm.values()), {}
        for proc in warm:
            proc.close()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            send = _sender(conn)
            try:
                request = _read_request(conn)
            except ValueError as e:
                send({"t": "error", "problems": [["request", str(e)]]})
                return
            # The previous cell's handler may still be finishing its teardown when the kernel,
            # which already has its "done", sends the next cell: wait a moment for it.
            if not self._busy.acquire(timeout=BUSY_WAIT):
                send({"t": "error", "problems": [["cell", "another sandboxed cell of this kernel is still running"]]})
                return
            try:
                self._run(conn, request, send)
            finally:
                self._busy.release()

    def _run(self, conn: socket.socket, request: dict, send) -> None:
        kind = request.get("kind")
        if kind not in KINDS or not isinstance(request.get("source"), str):
            send({"t": "error", "problems": [["request", f"kind must be one of {sorted(KINDS)} with a source"]]})
            return
        try:
            options = request.get("options") or {}
            policy = tighten(self.kernel_policy, options)
        except PolicyError as e:
            send({"t": "error", "problems": option_problems(e, options)})
            return
        proc = self._take_warm(kind) if not options else None
        if proc is None:
            try:
                proc = self._spawn(kind, policy)
            except SandboxUnavailable as e:
                send({"t": "error", "problems": [[d.layer, d.reason] for d in e.downgrades], "refused": True})
                return
            except FileNotFoundError as e:
                send({"t": "error", "problems": [[f"%%{kind}", str(e)]]})
                return
            except Exception as e:  # egress, cgroup or session set-up failed: nothing ran
                send({"t": "error", "problems": [["cell", f"the cell's sandbox could not be set up: {e}"]]})
                return
        cancelled = threading.Event()
        threading.Thread(target=_watch_cancel, args=(conn, cancelled), daemon=True).start()
        result = communicate(
            proc, stdin_data=request["source"].encode(), retain=0, interrupted=cancelled.is_set,
            on_output=lambda stream, data: send({"t": "out", "stream": stream, "data": base64.b64encode(data).decode()}),
        )
        report = result.report
        report["kernel"] = self.kernel_report
        if self.recorder is not None:
            self.recorder.record(request.get("msg_id"), report)
        send({"t": "done", "report": report})
        if kind in WARM_KINDS:
            self._warm_requests.put(kind)

    def _spawn(self, kind: str, policy: SandboxPolicy) -> SandboxProcess:
        """Plan and start a cell sandbox; it waits for the cell body on stdin."""
        spec = RunSpec(argv=cell_argv(kind), staging_dir="", runtime=KINDS[kind], scope="cell",
                       runtime_paths=python_runtime_paths() if kind == "python" else (),
                       sandbox_env={"PYTHONDONTWRITEBYTECODE": "1"} if kind == "python" else {},
                       host_env=dict(os.environ))
        spec = replace(spec, **self.spec_extras())
        plan = prepare(policy, spec)  # SandboxUnavailable before anything starts
        return start(plan, stdin=subprocess.PIPE, session=self.session if spec.scratch_source else None)

    def _prewarm_loop(self) -> None:
        while (kind := self._warm_requests.get()) is not None:
            try:
                proc = self._spawn(kind, self.kernel_policy)
            except Exception:  # the cell will take the cold path and report the problem
                continue
            with self._warm_lock:
                old, keep = self._warm.pop(kind, None), not self._closed
                if keep:
                    self._warm[kind] = proc
            for p in (old, None if keep else proc):
                if p is not None:
                    p.close()

    def _take_warm(self, kind: str) -> SandboxProcess | None:
        with self._warm_lock:
            proc = self._warm.pop(kind, None)
        if proc is not None and proc.poll() is not None:  # died while idle: use a fresh one
            proc.close()
            return None
        return proc


def _read_request(conn: socket.socket) -> dict:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError(f"request larger than {MAX_REQUEST} bytes")
    try:
        request = json.loads(buf)
    except ValueError:
        raise ValueError("request is not JSON") from None
    if not isinstance(request, dict):
        raise ValueError("request must be a JSON object")
    return request


def _watch_cancel(conn: socket.socket, cancelled: threading.Event) -> None:
    """The kernel closes its end (or sends anything) to cancel: kill the cell's tree."""
    try:
        conn.recv(1)
    except OSError:
        pass
    cancelled.set()


def _sender(conn: socket.socket):
    lock = threading.Lock()

    def send(message: dict) -> None:
        data = json.dumps(message).encode() + b"\n"
        with lock:
            try:
                conn.sendall(data)
            except OSError:
                pass  # the kernel went away; the cancel watcher stops the run

    return send
