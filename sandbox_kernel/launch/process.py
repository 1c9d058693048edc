"""Carry out a Plan: fill in /etc, bring up egress, create cgroups, spawn, stream, kill, clean.

All OS work lives here and in its siblings (egress, cgroup, seccomp_bpf); nothing here decides
policy. Every path (success, refusal, timeout, exception) ends in :meth:`SandboxProcess.close`,
which kills the whole tree and removes the cgroups and namespace. If the
supervisor dies without getting there, its janitor (launch/janitor.py) does the removing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import LaunchError
from ..logs import layers_summary
from ..planner import ETC_PLACEHOLDER, FD_PLACEHOLDER, STAGED_PLACEHOLDER, Plan
from ..planner.privilege import UNLEASED
from ..text_cut import utf8_prefix
from . import cgroup as cgroups_mod
from .etc import CACHE as ETC_CACHE
from .etc import PreparedEtc
from .egress import EgressHandle, bring_up
from .janitor import JANITOR
from .seccomp_bpf import filter_fd

TERM_GRACE = 0.5  # seconds between SIGTERM to the sandbox's processes and SIGKILL
REMOVE_WAIT = 5.0  # seconds close() tries to remove the run's cgroups before its janitor takes over
READ_CHUNK = 65536
DEFAULT_RETAIN = 16 * 1024 * 1024  # bytes kept in memory when the policy sets no output cap

log = logging.getLogger(__name__)


# Where the spawning thread cannot step into the run's cgroups (v2; cgroup.ThreadHop), a shell
# joins them and execs the rest. "0" written to cgroup.procs (v2) or tasks (v1) moves the
# writer itself; the shell then becomes the sandbox. On v1 the shell writes tasks: it is
# single-threaded, so moving its one thread moves the process, and the kernel skips the
# system-wide lock a cgroup.procs write takes (a wait for an RCU grace period: ~10 ms per cold
# launch on these hosts).
JOIN_CGROUPS = 'for p; do [ "$p" = -- ] && break; echo 0 > "$p" || exit 125; shift; done; shift; exec "$@"'


def forward_capped(stream, sink_fd: int, cap: int | None, what: str) -> threading.Thread:
    """Copy a long-lived process's raw output (a kernel's fd 1/2, not its cell output) to
    ``sink_fd`` until ``cap`` bytes, then drop the rest behind one marker line. The pipe is
    always drained, so the process never blocks, and nothing is kept in memory."""
    def pump() -> None:
        sent, dropping = 0, False
        while chunk := os.read(stream.fileno(), READ_CHUNK):
            if dropping:
                continue
            if cap is not None and sent + len(chunk) > cap:
                marker = f"\n[sandbox-kernel: {what} output beyond {cap} bytes dropped]\n".encode()
                os.write(sink_fd, utf8_prefix(chunk, cap - sent) + marker)
                dropping = True
                continue
            sent += len(chunk)
            os.write(sink_fd, chunk)
        stream.close()

    thread = threading.Thread(target=pump, name=f"sandbox-forward-{what}", daemon=True)
    thread.start()
    return thread


def truncation_marker(limit: int) -> bytes:
    return f"\n[sandbox-kernel: output truncated at {limit} bytes; the run was stopped]\n".encode()


@dataclass
class SandboxProcess:
    plan: Plan
    popen: subprocess.Popen | None = None
    egress: EgressHandle | None = None
    cgroups: cgroups_mod.RunCgroups | None = None
    seccomp_fd: int | None = None
    args_fd: int | None = None
    janitor_key: str | None = None  # what the supervisor's janitor watches for this run
    etc: PreparedEtc | None = None  # the prepared /etc and the staged files it holds
    staged: PreparedEtc | None = None
    timings: dict[str, float] = field(default_factory=dict)
    killed_reason: str | None = None
    _closed: bool = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def kill_tree(self, reason: str | None = None, grace: float = TERM_GRACE) -> None:
        """SIGTERM the sandbox's processes, then SIGKILL the whole tree. Killing the outer bwrap
        takes its pid namespace down with it (--die-with-parent on pid 1); the process group
        and the cgroups catch anything else."""
        if reason and self.killed_reason is None:
            self.killed_reason = reason
        if self.popen is None:
            return
        if self.popen.poll() is None and grace > 0 and self.cgroups is not None:
            outer = self.popen.pid
            for pid in self.cgroups.pids() - {outer}:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        for target in (lambda s: os.killpg(self.popen.pid, s), lambda s: self.popen.send_signal(s)):
            try:
                target(signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.cgroups is not None:
            self.cgroups.kill_all()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    def close(self) -> None:
        """Kill anything left and remove every trace of the run. Idempotent."""
        if self._closed:
            return
        self._closed = True
        t0 = time.monotonic()
        try:
            if self.popen is not None:
                if self.popen.poll() is None:
                    self.kill_tree(grace=0)
                elif self.cgroups is not None:
                    self.cgroups.kill_all(settle=0.5)
                try:  # stray members of our process group (unsandboxed, degraded runs)
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
                    if stream:
                        stream.close()
        finally:
            if self.egress is not None:
                self.egress.close()
            busy = self.cgroups.remove(REMOVE_WAIT) if self.cgroups is not None else []
            for attr in ("seccomp_fd", "args_fd"):
                if getattr(self, attr) is not None:
                    os.close(getattr(self, attr))
                    setattr(self, attr, None)
            for attr in ("etc", "staged"):
                if getattr(self, attr) is not None:
                    ETC_CACHE.release(getattr(self, attr))
                    setattr(self, attr, None)
            if self.janitor_key is not None:
                if busy:
                    # A process of the run that takes long to exit (seen with big mount tables
                    # on a loaded host) keeps its cgroup busy: the janitor keeps at it.
                    log.warning("%s sandbox: cgroups %s still busy after the run; the janitor removes them",
                                self.plan.report.scope, ", ".join(busy))
                    JANITOR.clean(self.janitor_key)
                else:
                    JANITOR.forget(self.janitor_key)
            if self.plan.uid_lease is not None:  # after everything of the run is gone, or handed over
                self.plan.uid_lease.release(janitor_keeps=bool(busy and self.janitor_key is not None))
            self.timings["teardown"] = time.monotonic() - t0
            if self.popen is not None:
                log.debug("%s sandbox pid %d closed: exit %s%s", self.plan.report.scope, self.popen.pid,
                          self.popen.returncode, f", killed ({self.killed_reason})" if self.killed_reason else "")


def _bwrap_args_via_fd(argv: list[str]) -> tuple[list[str], int | None]:
    """Hand bwrap its options through ``--args FD`` instead of argv: bwrap's pid 1 in the
    sandbox keeps its argv, and ``/proc/1/cmdline`` would show every host path we bind."""
    at = next((i for i, a in enumerate(argv) if os.path.basename(a) == "bwrap"), None)
    if at is None:
        return argv, None
    end = argv.index("--", at)
    fd = os.memfd_create("sandbox-bwrap-args", os.MFD_CLOEXEC)
    os.write(fd, b"".join(a.encode() + b"\0" for a in argv[at + 1:end]))
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return argv[:at + 1] + ["--args", str(fd)] + argv[end:], fd


def start(plan: Plan, *, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          pass_fds: tuple[int, ...] = (), session=None) -> SandboxProcess:
    """Stage, plumb and spawn (inside ``session``, a kernel session whose scratch the plan
    binds, if given). On any failure everything set up so far is torn down and the error
    propagates: nothing untrusted has run.

    The sandbox lives only as long as the *thread* that calls this: bwrap --die-with-parent
    uses PR_SET_PDEATHSIG, which fires when the spawning thread exits, not the process."""
    proc = SandboxProcess(plan)
    t0 = time.monotonic()
    try:
        if plan.sandboxed and plan.run_as[1] == UNLEASED:
            raise LaunchError("this plan was made without a uid lease (a dry run): use launch.prepare() to start one")
        argv = list(plan.argv)
        if ETC_PLACEHOLDER in argv:
            proc.etc = ETC_CACHE.acquire(plan.etc_entries, tuple(plan.staged_files))
            proc.staged = ETC_CACHE.acquire_staged(plan.staged_files, plan.run_as[2])
            fill = {ETC_PLACEHOLDER: proc.etc.path, STAGED_PLACEHOLDER: proc.staged.path}
            argv = [fill.get(a, a) for a in argv]
        fds = list(pass_fds)
        if plan.seccomp is not None:
            proc.seccomp_fd = filter_fd(plan.seccomp)
            os.set_inheritable(proc.seccomp_fd, True)
            argv = [str(proc.seccomp_fd) if a == FD_PLACEHOLDER else a for a in argv]
            fds.append(proc.seccomp_fd)
        argv, proc.args_fd = _bwrap_args_via_fd(argv)
        if proc.args_fd is not None:
            fds.append(proc.args_fd)
        join: list[str] = []
        if plan.egress is not None:
            proc.egress = bring_up(plan.egress, session)
            join = list(proc.egress.join_prefix)
            proc.timings["egress"] = time.monotonic() - t0
        elif session is not None:
            join = session.join_prefix()
        if plan.nsenter_switch is not None:
            if not join:
                raise LaunchError("this plan switches uid in the nsenter that joins a kernel session or egress "
                                  "namespace, and there is none: start it with its session")
            uid, gid = plan.nsenter_switch
            join = join[:-1] + [f"--setuid={uid}", f"--setgid={gid}", "--"]  # also drops supplementary groups
        argv = join + argv
        # The janitor first, told the cgroups about to be made: a supervisor killed at any
        # point from here on leaves nothing behind.
        name = cgroups_mod.new_name()
        paths = cgroups_mod.paths_for(plan.cgroup, name) if plan.cgroup is not None else []
        if paths or plan.uid_lease is not None:  # else nothing is left to clean up
            proc.janitor_key = JANITOR.watch(cgroups=paths, lease=plan.uid_lease)
        hop = None
        if plan.cgroup is not None:
            proc.cgroups = cgroups_mod.create(plan.cgroup, name)
            # The first process starts inside the run's cgroups, so every later one does too:
            # on v1 this thread steps in to spawn it (ThreadHop); elsewhere a shell joins them
            # before it execs the rest (not a preexec_fn: that would force a slow fork of
            # this large, threaded supervisor).
            hop = proc.cgroups.thread_hop()
            if hop is None:
                procs = [os.path.join(p, "tasks" if plan.cgroup.version == 1 else "cgroup.procs") for p in proc.cgroups.paths]
                argv = ["/bin/sh", "-c", JOIN_CGROUPS, "sandbox-join", *procs, "--", *argv]
        with hop.inside() if hop is not None else contextlib.nullcontext():
            proc.popen = subprocess.Popen(
                argv, env=plan.env, cwd="/", stdin=stdin, stdout=stdout, stderr=stderr,
                pass_fds=tuple(fds), start_new_session=True,
            )
        proc.timings["setup"] = time.monotonic() - t0
        log.debug("started %s sandbox, pid %d, as uid %d in %.0f ms: %s", plan.report.scope, proc.popen.pid,
                  plan.run_as[1], proc.timings["setup"] * 1000, layers_summary(plan.report))
        return proc
    except BaseException as e:
        if isinstance(e, Exception):
            log.warning("could not start a %s sandbox: %s: %s", plan.report.scope, type(e).__name__, e)
        proc.close()
        raise


@dataclass
class RunResult:
    exit_code: int | None
    signal: int | None
    timed_out: bool
    truncated: bool
    killed_reason: str | None
    stdout: bytes
    stderr: bytes
    durations: dict[str, float]
    report: dict

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.truncated


OutputCallback = Callable[[str, bytes], None]


def communicate(proc: SandboxProcess, *, timeout: float | None = None, on_output: OutputCallback | None = None,
                retain: int | None = None, stdin_data: bytes | bytearray | None = None,
                interrupted: Callable[[], bool] | None = None, close: bool = True) -> RunResult:
    """Feed ``stdin_data``, stream the run's output against one combined byte budget, enforce
    the wall clock, then tear the run down and describe what happened.

    ``close=False``: the caller closes ``proc`` (removes its cgroups, staging dir, janitor)
    after using the result, e.g. after answering; its sandbox's processes are gone already
    (the outer bwrap has exited, and with it the sandbox's pid namespace), unless this raises.

    One loop does it all and never blocks on the sandbox: the clock starts before the first
    byte of input is fed, and a process that stops reading its stdin or closes its stdout
    still meets its deadline and ``interrupted`` (polled at least every 0.1 s)."""
    plan, popen = proc.plan, proc.popen
    cap = plan.max_output_bytes
    limits = [t for t in (timeout, plan.wall_seconds) if t is not None]
    wall = min(limits) if limits else None
    keep = retain if retain is not None else (cap if cap is not None else DEFAULT_RETAIN)
    kept = {"stdout": bytearray(), "stderr": bytearray()}
    total = 0
    truncated = timed_out = False
    t0 = time.monotonic()
    deadline = t0 + wall if wall is not None else None

    sel = selectors.DefaultSelector()
    for name in ("stdout", "stderr"):
        stream = getattr(popen, name)
        if stream is not None:
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ, name)
    pending = memoryview(stdin_data) if stdin_data is not None and popen.stdin else None
    if pending is not None:
        os.set_blocking(popen.stdin.fileno(), False)
        sel.register(popen.stdin, selectors.EVENT_WRITE, "stdin")

    def stop_feeding() -> None:
        sel.unregister(popen.stdin)
        popen.stdin.close()  # EOF: the program is complete

    def feed() -> None:
        nonlocal pending
        try:
            pending = pending[os.write(popen.stdin.fileno(), pending[:READ_CHUNK]):]
        except BlockingIOError:
            return
        except OSError:  # it closed its stdin: the rest is not wanted
            pending = pending[:0]
        if not pending:
            stop_feeding()

    def emit(name: str, data: bytes, always_keep: bool = False) -> None:
        room = max(0, keep - len(kept["stdout"]) - len(kept["stderr"]))
        kept[name] += data if always_keep else data[:room]
        if on_output is not None:
            on_output(name, data)

    def reading() -> bool:
        return any(key.data not in ("stdin", "exit") for key in sel.get_map().values())

    # Wake the moment the main process exits, not at a Popen.wait() polling step.
    try:
        exit_fd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # pre-5.3 kernel: poll as before
        exit_fd = None
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ, "exit")

    if pending is not None and not pending:
        stop_feeding()
    drain_until = None  # after the main process is gone, read what is left for at most 1 s
    try:
        while True:
            wait = 0.1
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            if sel.get_map():
                events = sel.select(wait)
            else:  # its pipes are closed: wake as soon as it exits, not at the next tick
                events = []
                try:
                    popen.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
            for key, _ in events:
                if key.data == "stdin":
                    feed()
                    continue
                if key.data == "exit":
                    sel.unregister(exit_fd)
                    continue
                try:
                    chunk = os.read(key.fileobj.fileno(), READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                if cap is not None and total + len(chunk) > cap:
                    emit(key.data, utf8_prefix(chunk, cap - total))
                    total = cap
                    truncated = True
                    # The marker is kept even when the retained bytes are full: without it a
                    # cut-off result looks like complete output.
                    emit(key.data, truncation_marker(cap), always_keep=True)
                    proc.kill_tree("output-cap", grace=0)
                    for k in list(sel.get_map().values()):
                        sel.unregister(k.fileobj)
                    break
                total += len(chunk)
                emit(key.data, chunk)
            now = time.monotonic()
            if deadline is not None and now >= deadline and popen.poll() is None:
                timed_out = True
                proc.kill_tree("timeout")
                deadline = None
            if interrupted is not None and popen.poll() is None and interrupted():
                proc.kill_tree("interrupted")
            if popen.poll() is not None:
                if "stdin" in (key.data for key in sel.get_map().values()):
                    stop_feeding()
                drain_until = drain_until or time.monotonic() + 1.0
                if not reading() or time.monotonic() >= drain_until:
                    break
        popen.wait()
        closed = close
    except BaseException:
        closed = True  # an error (or interrupt) in here: nothing may outlive the call
        raise
    finally:
        sel.close()
        if exit_fd is not None:
            os.close(exit_fd)
        run_seconds = time.monotonic() - t0
        oom = proc.cgroups.oom_killed() if proc.cgroups is not None else False
        if closed:
            proc.close()
    if oom and proc.killed_reason is None:
        proc.killed_reason = "oom"
    rc = popen.returncode
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if plan.sandboxed and rc is not None and rc > 128 else None)
    durations = {"setup": proc.timings.get("setup", 0.0), "run": run_seconds}
    if closed:
        durations["teardown"] = proc.timings.get("teardown", 0.0)
    report = plan.report.to_dict()
    report["outcome"] = {
        "exit_code": rc, "signal": sig, "timed_out": timed_out, "output_truncated": truncated,
        "killed_reason": proc.killed_reason, "oom_killed": oom,
        "durations": {k: round(v, 4) for k, v in durations.items()},
    }
    return RunResult(rc, sig, timed_out, truncated, proc.killed_reason, bytes(kept["stdout"]),
                     bytes(kept["stderr"]), durations, report)
