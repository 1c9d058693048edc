"""The cell service: how ``%%sh``/``%%node``/``%%sandbox`` cells get their own sandbox.

Cell sandboxes are started from *outside* the kernel, by the supervisor that started the
kernel, never nested inside it: the kernel's seccomp filter forbids user namespaces and mounts
(the kernel-exploit surface nested sandboxes would need), and a nested bwrap could not mount a
fresh /proc anyway. The kernel reaches the supervisor through one narrow channel: a Unix socket
in a supervisor-owned directory bound read-only into the kernel's sandbox. Over it the kernel
can only ask "run this body as sh/node/python with these options"; the supervisor tightens *its own* record of the kernel's policy with the
options (the kernel cannot claim a looser policy), plans the cell with the same ``plan()``,
runs it with the same launch shell and streams the output back.

Wire format (see ``cell_protocol``): a request is one JSON header line ``{"kind", "options",
"source_bytes", "msg_id"}`` followed by exactly ``source_bytes`` bytes of cell body. Replies are JSON
lines: ``{"t": "out", "stream", "data"(base64)}``... then one ``{"t": "done", "report"}`` or
``{"t": "error", "problems": [[field, message], ...]}``. After its request the kernel only
reads; closing its end (or sending anything) cancels the run. The final report is also recorded
under ``msg_id`` (the execute request that ran the cell) for the server extension.

This process is root and the kernel is hostile, so the service is bounded in every direction:
one connection per kernel at a time (another is refused at once, with an error reply), one
worker thread, the whole request read within READ_TIMEOUT and MAX_HEADER/MAX_SOURCE bytes,
every header checked by one schema (``cell_protocol.decode_header``), and every request
answered. A running cell is killed at its deadline, when the kernel hangs up (interrupt),
stops reading for SEND_TIMEOUT, or when the service is closed (kernel restart or shutdown).
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
import queue
import select
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from typing import Callable

from .cell_protocol import MAX_HEADER, OUTPUTS_KIND, SOCKET_NAME, CellRequest, RequestError, decode_header, option_problems
from .errors import LaunchError, PolicyError, RuntimeMissing, SandboxKernelError, SandboxUnavailable
from .host import HostCapabilities
from .launch import prepare, start
from .launch.process import SandboxProcess, communicate
from .logs import layers_summary
from .planner import RunSpec
from .planner.env import is_denied
from .policy import SandboxPolicy, tighten
from .runtime import CELL_RUNTIMES, cell_argv, cell_runtime_paths

READ_TIMEOUT = 10.0  # seconds for a whole request to arrive, once the worker takes it up
SEND_TIMEOUT = 10.0  # seconds one reply may wait for the kernel to read it; then the run is cancelled
CLOSE_WAIT = 15.0  # seconds close() waits for each thread (a running cell's teardown, a spawn)
RECV_CHUNK = 65536
MAX_LOGGED_ERRORS = 10  # internal errors logged per service: a kernel must not flood the log
# Sandboxes kept ready, per kind, for option-less cells: each holds cgroups, a staging dir and
# an idle process (for python and node an interpreter, already started, waiting for the body on
# stdin), so the pool is small. Two shells, so that back-to-back cells ("Run all") find one
# ready while the replacement for the previous one is still starting.
WARM_POOL = {"sh": 2, "python": 1, "node": 1}
WARM_FROM_START = ("sh",)  # the others once the kernel has run one such cell (~10-45 MB idle each)
# Cells with options run cold, unless the same options (and --env) recur (among the last
# RECENT_OPTION_SETS sets of options used): from then on one sandbox with exactly those options
# waits too. One such option set per kernel (the latest recurring one), so a kernel holds at
# most five sandboxes ahead.
WARM_FOR_OPTIONS = 1
RECENT_OPTION_SETS = 2
# A replacement waits (at most this long) for the running cell to finish while another sandbox
# of its kind is ready: starting a sandbox takes CPU (and the supervisor's GIL) that the cell
# and its relay would otherwise get (measured: +10-15 ms per spaced cell on a loaded 2-CPU host).
DEFER_WHILE_READY = 1.0

log = logging.getLogger(__name__)


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
    """One per kernel: a Unix-socket server in ``socket_dir``, one request at a time."""

    def __init__(self, socket_dir: str, kernel_policy: SandboxPolicy, caps: HostCapabilities, kernel_report: dict,
                 spec_extras: Callable[[], dict] | None = None, session=None, recorder=None,
                 collect_outputs: Callable[[], dict | None] | None = None,
                 warm_from_start: tuple[str, ...] | None = None):
        self.path = os.path.join(socket_dir, SOCKET_NAME)
        self.kernel_policy = kernel_policy
        self.caps = caps  # the host as probed for the kernel: cells are planned against the same
        self.kernel_report = kernel_report
        self.spec_extras = spec_extras or (lambda: {})
        self.session = session  # the kernel's session: cells share its scratch
        self.recorder = recorder  # CellReports: what the server extension serves per msg_id
        self.collect_outputs = collect_outputs  # copies the kernel's results out (KernelSandbox)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.lexists(self.path):
            os.unlink(self.path)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o666)  # access is decided by the directory (0710, sandbox group)
        self._sock.listen(16)
        self._closed = threading.Event()
        # Held from a connection's accept until its run is over (released just before the
        # final reply, so the kernel's next cell never finds it taken).
        self._slot = threading.Lock()
        self._jobs: queue.Queue[socket.socket | None] = queue.Queue()
        self._conn: socket.socket | None = None  # the connection the worker is serving
        self._errors_logged = 0
        # Up to WARM_POOL[kind] sandboxes per kind, started ahead for the next
        # option-less cells (so a cell does not wait for bwrap): planned and confined exactly
        # like a cold one, idle until the cell body arrives on its stdin. A replacement is
        # requested as soon as one is taken (it starts at once if none is left ready, else when
        # the cell is over); a cold cell leaves them alone.
        self._warm: dict[WarmKey, list[SandboxProcess]] = {}
        kinds = WARM_FROM_START if warm_from_start is None else warm_from_start  # the others: once used
        self._warming: set[WarmKey] = {(kind, "") for kind in kinds}  # kept ready (the worker adds)
        self._option_set: tuple[WarmKey, SandboxPolicy, dict] | None = None  # the recurring options kept ready
        self._recent_options: collections.deque[WarmKey] = collections.deque(maxlen=RECENT_OPTION_SETS)
        self._warm_lock = threading.Lock()
        self._warm_requests: queue.Queue[WarmKey | None] = queue.Queue()
        self._no_cell_running = threading.Event()
        self._no_cell_running.set()
        # bwrap --die-with-parent ties a sandbox to the *thread* that spawned it: sandboxes
        # come from these long-lived threads only (warm ones from the first, cold from the
        # worker), never from a short-lived one.
        self._threads = [threading.Thread(target=target, name=f"sandbox-cell-{name}", daemon=True)
                         for name, target in (("prewarm", self._prewarm_loop), ("worker", self._work),
                                              ("accept", self._accept_loop))]
        for thread in self._threads:
            thread.start()
        for key in self._warming:
            for _ in range(_pool_size(key)):
                self._warm_requests.put(key)

    def close(self) -> None:
        """Stop serving. A running cell is killed (the worker sees ``_closed`` within 0.1 s)
        and its teardown waited for; so are the warm sandboxes."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._no_cell_running.set()  # a waiting replacement gives up at once
        prewarm, worker, accept = self._threads
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        accept.join(CLOSE_WAIT)
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._jobs.put(None)
        deadline = time.monotonic() + CLOSE_WAIT
        while worker.is_alive() and time.monotonic() < deadline:
            if (conn := self._conn) is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # unblocks a read, or a reply nobody reads
                except OSError:
                    pass
            worker.join(0.1)
        self._warm_requests.put(None)
        prewarm.join(CLOSE_WAIT)
        with self._warm_lock:
            warm = [proc for pool in self._warm.values() for proc in pool]
            for pool in self._warm.values():
                pool.clear()
        for proc in warm:
            proc.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.1)  # out of file descriptors, say: keep serving once they are back
                continue
            if self._closed.is_set():
                _refuse(conn, [["cell", "the kernel's cell service is shutting down"]])
            elif not self._slot.acquire(blocking=False):
                _refuse(conn, [["cell", "another sandboxed cell of this kernel is running (they run one at a time)"]])
            else:
                self._jobs.put(conn)

    def _work(self) -> None:
        while (conn := self._jobs.get()) is not None:
            self._conn = conn
            try:
                self._serve(conn)
            except Exception:  # the worker must outlive any one request
                self._log_internal_error()
            finally:
                self._conn = None
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        send = _Sender(conn)
        self._no_cell_running.clear()
        ran: list[SandboxProcess] = []  # the cell's sandbox, removed after the reply
        try:
            try:
                final = self._answer(conn, send, ran)
            except Exception:  # a bug, never the kernel's input: the kernel still gets an answer
                self._log_internal_error()
                final = {"t": "error", "problems": [["cell", "internal error in the cell service (see the server log)"]]}
            finally:
                self._slot.release()
            send(final)
        finally:
            # Its processes are gone (its pid namespace ended with it): what is left is removing
            # its cgroups, staging dir and janitor, which the cell need not wait for.
            for proc in ran:
                proc.close()
            self._no_cell_running.set()  # after the reply: a replacement starting now does not delay it

    def _log_internal_error(self, what: str = "serving a request") -> None:
        if self._errors_logged < MAX_LOGGED_ERRORS:
            self._errors_logged += 1
            log.exception("cell service: internal error while %s", what)

    def _answer(self, conn: socket.socket, send: _Sender, ran: list[SandboxProcess]) -> dict:
        """Read, check and run one request; return the final reply. The sandbox it ran in is
        added to ``ran``, for the caller to close once the reply is sent."""
        if self._closed.is_set():
            return {"t": "error", "problems": [["cell", "the kernel's cell service is shutting down"]]}
        try:
            request, source = _read_request(conn)
        except RequestError as e:
            return {"t": "error", "problems": e.problems}
        if request.kind == OUTPUTS_KIND:
            outputs = self.collect_outputs() if self.collect_outputs is not None else None
            return {"t": "done", "report": outputs or {"note": "results are not copied out of this kernel"}}
        try:
            policy = tighten(self.kernel_policy, request.options)
        except PolicyError as e:
            return {"t": "error", "problems": option_problems(e, request.options)}
        # Refused rather than silently dropped: the author asked for it by name.
        denied = sorted(name for name in request.env if is_denied(name))
        if denied:
            return {"t": "error", "problems": [["--env", f"{name}: not allowed in a sandbox's environment (loader, "
                                                "interpreter or shell start-up hooks, proxies, TLS trust)"] for name in denied]}
        key = warm_key(request.kind, request.options, request.env)
        proc = self._take_warm(key)
        if proc is None:
            try:
                proc = self._spawn(request.kind, policy, request.env)
            except SandboxUnavailable as e:
                log.info("%%%%%s cell refused: %s", request.kind, e)
                return {"t": "error", "problems": [[d.layer, d.reason] for d in e.downgrades], "refused": True}
            except RuntimeMissing as e:
                return {"t": "error", "problems": [[f"%%{request.kind}", str(e)]]}
            except (LaunchError, OSError) as e:  # egress, cgroup or session set-up failed: nothing ran
                log.warning("%%%%%s cell: its sandbox could not be set up: %s", request.kind, e)
                return {"t": "error", "problems": [["cell", f"the cell's sandbox could not be set up: {e}"]]}
            self._keep_ready(key, policy, request.env)
        # The kernel cancels by hanging up (it does on interrupt); a kernel that stops reading
        # the output, or a kernel restart or shutdown (close()), cancels too.
        ran.append(proc)
        result = communicate(
            proc, stdin_data=source, retain=0, close=False,
            interrupted=lambda: self._closed.is_set() or send.broken or _kernel_hung_up(conn),
            on_output=lambda stream, data: send({"t": "out", "stream": stream, "data": base64.b64encode(data).decode()}),
        )
        report = result.report
        log.debug("%%%%%s cell done: exit %s, killed %s, %.2f s", request.kind, result.exit_code, result.killed_reason,
                  result.durations.get("run", 0.0))
        report["kernel"] = self.kernel_report
        if self.recorder is not None:
            self.recorder.record(request.msg_id, report)
        return {"t": "done", "report": report}

    def _spawn(self, kind: str, policy: SandboxPolicy, env: dict | None = None) -> SandboxProcess:
        """Plan and start a cell sandbox; it waits for the cell body on stdin. ``env``: the
        cell's ``--env``, over the kernel's own overrides; both pass the planner's denylist."""
        extras = self.spec_extras()
        argv = cell_argv(kind)
        spec = RunSpec(argv=argv, runtime=CELL_RUNTIMES[kind], scope="cell", runtime_paths=cell_runtime_paths(kind, argv),
                       sandbox_env={"PYTHONDONTWRITEBYTECODE": "1"} if kind == "python" else {},
                       host_env=dict(os.environ))
        spec = replace(spec, **{**extras, "env": {**extras.get("env", {}), **(env or {})}})
        plan = prepare(policy, spec, self.caps)  # SandboxUnavailable before anything starts
        log.debug("%%%%%s cell planned: %s", kind, layers_summary(plan.report))
        return start(plan, stdin=subprocess.PIPE, session=self.session if spec.scratch_source else None)

    def warm_count(self, kind: str, options: dict | None = None, env: dict | None = None) -> int:
        """How many sandboxes for ``kind`` cells with ``options`` (and ``env``) wait ready
        (for tests and benchmarks)."""
        with self._warm_lock:
            return len(self._warm.get(warm_key(kind, options, env), ()))

    def _keep_ready(self, key: WarmKey, policy: SandboxPolicy, env: dict) -> None:
        """After a cold cell: keep sandboxes like it ready from now on if its kind is one the
        kernel now uses, or its options recur (replacing the option set kept ready before,
        whose sandboxes are closed)."""
        kind, options = key
        if key in self._warming or kind not in WARM_POOL:
            return
        dropped: list[SandboxProcess] = []
        if options:
            recurring = key in self._recent_options
            self._recent_options.append(key)
            if not recurring:
                return
            with self._warm_lock:
                if self._option_set is not None:
                    old = self._option_set[0]
                    self._warming.discard(old)
                    dropped = self._warm.pop(old, [])
                self._option_set = (key, policy, dict(env))
                self._warming.add(key)
        else:
            with self._warm_lock:
                self._warming.add(key)  # this kernel uses the kind
        for proc in dropped:
            proc.close()
        for _ in range(_pool_size(key)):
            self._warm_requests.put(key)

    def _prewarm_loop(self) -> None:
        while (key := self._warm_requests.get()) is not None:
            kind = key[0]
            if self.warm_count(kind) > 0:  # the next cell finds one ready: do not slow this one down
                self._no_cell_running.wait(DEFER_WHILE_READY)
            with self._warm_lock:
                wanted = key in self._warming and len(self._warm.get(key, ())) < _pool_size(key)
                option_set = self._option_set
            if self._closed.is_set() or not wanted:
                continue
            policy, env = (option_set[1], option_set[2]) if option_set and option_set[0] == key else (self.kernel_policy, {})
            try:
                proc = self._spawn(kind, policy, env)
            except (SandboxKernelError, OSError) as e:  # the cell will take the cold path and report it
                log.debug("no warm %%%%%s sandbox: %s", kind, e)
                continue
            except Exception:  # a bug: logged (bounded); the loop must outlive it
                self._log_internal_error(f"starting a warm %%{kind} sandbox")
                continue
            with self._warm_lock:
                pool = self._warm.setdefault(key, [])
                keep = not self._closed.is_set() and key in self._warming and len(pool) < _pool_size(key)
                if keep:
                    pool.append(proc)
            if not keep:
                proc.close()

    def _take_warm(self, key: WarmKey) -> SandboxProcess | None:
        """The longest-waiting ready sandbox for ``key``, or None; each one taken (or found
        dead) is replaced at once, so the next cell finds one ready."""
        while True:
            with self._warm_lock:
                pool = self._warm.get(key)
                proc = pool.pop(0) if pool else None
            if proc is None:
                return None
            self._warm_requests.put(key)
            if proc.poll() is None:
                return proc
            proc.close()  # died while idle: try the next one


WarmKey = tuple[str, str]  # (kind, the cell's options and --env as canonical JSON; "" for none)


def warm_key(kind: str, options: dict | None, env: dict | None) -> WarmKey:
    return kind, json.dumps([options or {}, env or {}], sort_keys=True) if options or env else ""


def _pool_size(key: WarmKey) -> int:
    return WARM_FOR_OPTIONS if key[1] else WARM_POOL[key[0]]


def _read_request(conn: socket.socket) -> tuple[CellRequest, bytearray]:
    """One request, all of it within READ_TIMEOUT: a header line of at most MAX_HEADER bytes,
    checked by the protocol's schema, then exactly the body it announces."""
    deadline = time.monotonic() + READ_TIMEOUT
    buf = bytearray()
    while True:
        chunk = _recv(conn, RECV_CHUNK, deadline)
        at = chunk.find(b"\n")
        if at >= 0:
            end = len(buf) + at
            buf += chunk
            break
        buf += chunk
        if len(buf) > MAX_HEADER:
            raise RequestError([["request", f"header longer than {MAX_HEADER} bytes"]])
    request = decode_header(bytes(buf[:end]))
    body = buf[end + 1:]
    del buf
    if len(body) > request.source_bytes:
        raise RequestError([["request", f"more than the {request.source_bytes} bytes of body announced"]])
    while len(body) < request.source_bytes:
        body += _recv(conn, min(RECV_CHUNK, request.source_bytes - len(body)), deadline)
    return request, body


def _recv(conn: socket.socket, size: int, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)
        chunk = conn.recv(size)
    except TimeoutError:
        raise RequestError([["request", f"not complete within {READ_TIMEOUT} s"]]) from None
    except OSError as e:
        raise RequestError([["request", f"could not be read: {e.strerror}"]]) from None
    if not chunk:
        raise RequestError([["request", "the connection closed before the request was complete"]])
    return chunk


def _kernel_hung_up(conn: socket.socket) -> bool:
    """After its request the kernel only reads: anything to read, or EOF, means "cancel"."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return bool(poller.poll(0))


class _Sender:
    """Replies to the kernel, each within SEND_TIMEOUT: a kernel that stops reading can hold
    the worker (and delay its cell's deadline) that long at most. After one failed send the
    connection counts as broken (a reply may be cut in half): nothing more is sent and the run
    is cancelled."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.broken = False

    def __call__(self, message: dict) -> None:
        if self.broken:
            return
        try:
            self.conn.settimeout(SEND_TIMEOUT)
            self.conn.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            self.broken = True


def _refuse(conn: socket.socket, problems: list[list[str]]) -> None:
    """Answer a connection we will not serve, without waiting on it, and close it."""
    conn.setblocking(False)
    try:
        conn.send(json.dumps({"t": "error", "problems": problems}).encode() + b"\n")
    except OSError:
        pass
    conn.close()
