"""One kernel's sandbox: what a kernel is run as, and everything it holds on the host.

``kernel_run_spec`` is the one description of a sandboxed kernel (its
:class:`~sandbox_kernel.planner.RunSpec`). The provisioner starts kernels from it, and
``doctor`` and ``run``'s pre-check plan from it (``plan_kernel``), so "doctor says
enforceable" is about the kernel that will really start: same binds, same environment, same
scratch, same checks.

:class:`KernelSandbox` owns a kernel's host-side state across restarts (see
``docs/architecture.md``, "One kernel start"):

- from the first start to :meth:`KernelSandbox.close`: the uid lease (root supervisor), the
  run dir and the cell-socket dir with their janitor (which removes them, and gives the uid
  back, even if the supervisor is killed), and the kernel session (its shared scratch tmpfs);
- per start, until :meth:`KernelSandbox.stop`: the plan, the cell service and the process.

Run dir layout (root supervisor): the run dir stays the supervisor's (root, 0710, the
kernel's group may only traverse it); the kernel gets just what it must open: its own 0700
``kernel/`` dir for the ipc sockets and IPython's state, and the connection file (the HMAC
key) by group-read (0640 root:kernel-gid). Another kernel has another uid and gid: it can open
none of them, even with ``filesystem: off``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, replace

from .cell_protocol import REPORT_ENV, SOCKET_ENV, SOCKET_NAME
from .cell_reports import CellReports
from .errors import SandboxKernelError
from .cells import CellService, make_socket_dir
from .host import HostCapabilities
from .launch import lease_for, prepare, start
from .launch.inputs import InputListing, list_inputs
from .launch.outputs import OutputCollector
from .launch.janitor import JANITOR
from .launch.process import SandboxProcess, forward_capped
from .launch.session import Session, open_session
from .launch.signals import signal_command
from .launch.uids import UidLease
from .logs import layers_summary
from .planner import Plan, RunSpec, plan
from .planner.privilege import plan_privilege
from .policy import SandboxPolicy
from .runtime import python_runtime_paths

__all__ = ["KERNEL_EXTENSION", "KernelDirs", "KernelSandbox", "kernel_command", "kernel_run_spec", "plan_kernel"]

log = logging.getLogger(__name__)

KERNEL_EXTENSION = "sandbox_kernel.kernel"
RUN_DIR_PREFIX = "sandbox-kernel-"
SOCKET_DIR_PREFIX = "sandbox-kernel-cells-"
PLACEHOLDER = "XXXXXXXX"  # a dry run's stand-in for mkdtemp's random part


@dataclass(frozen=True)
class KernelDirs:
    """Where a kernel's host-side files live."""

    run_dir: str  # the supervisor's: connection file, session scratch mount point
    socket_dir: str  # the cell service's socket, bound read-only into the kernel

    @property
    def kernel_dir(self) -> str:
        """The kernel's own dir (its uid's, 0700): ipc sockets, IPython's state under 'off'."""
        return os.path.join(self.run_dir, "kernel")

    @property
    def ipc_base(self) -> str:
        return os.path.join(self.kernel_dir, "k")

    @property
    def connection_file(self) -> str:
        return os.path.join(self.run_dir, "connection.json")

    @property
    def scratch_source(self) -> str:
        return os.path.join(self.run_dir, "scratch")

    @classmethod
    def placeholder(cls) -> KernelDirs:
        """Dirs named like a real kernel's, for planning without starting (nothing is made)."""
        tmp = tempfile.gettempdir()
        return cls(os.path.join(tmp, RUN_DIR_PREFIX + PLACEHOLDER), os.path.join(tmp, SOCKET_DIR_PREFIX + PLACEHOLDER))


def kernel_command(argv, ipc_base: str) -> tuple[str, ...]:
    """The kernelspec's command, told to use ipc sockets under ``ipc_base`` and to load the
    in-kernel extension (ipykernel ignores the connection file's transport unless told on its
    command line)."""
    argv = tuple(argv)
    if any("ipykernel" in part for part in argv):
        argv += ("--transport=ipc", f"--ip={ipc_base}", f"--IPKernelApp.extra_extensions={KERNEL_EXTENSION}")
    return argv


def shares_scratch(policy: SandboxPolicy, caps: HostCapabilities) -> bool:
    """Does the kernel get a session scratch its cells share (else each has a private one)?"""
    return caps.session.ok and policy.filesystem.mode != "off"


def kernel_run_spec(policy: SandboxPolicy, caps: HostCapabilities, argv, dirs: KernelDirs, *,
                    env: dict[str, str] | None = None, inputs: InputListing | None = None,
                    identity: tuple[int, int] | None = None, host_env: dict[str, str] | None = None) -> RunSpec:
    """The description of a sandboxed kernel: ``argv`` (already :func:`kernel_command`) run
    with ``dirs``, the caller's ``env`` overrides, the ``inputs`` it sees of its working dir,
    as ``identity`` (its leased uid and gid)."""
    inputs = inputs or InputListing((), (), ())
    return RunSpec(
        argv=tuple(argv), runtime="python", scope="kernel",
        runtime_paths=(*python_runtime_paths(), dirs.socket_dir), rw_paths=(dirs.run_dir,), env=dict(env or {}),
        inputs=inputs.binds, notes=inputs.notes,
        sandbox_env={
            "JPY_PARENT_PID": "1", "PYTHONDONTWRITEBYTECODE": "1",
            # IPython's state in the sandbox's private /tmp, or under filesystem 'off' (where
            # /tmp is the host's, shared with every other kernel) in the kernel's own dir.
            "IPYTHONDIR": os.path.join(dirs.kernel_dir, "ipython") if policy.filesystem.mode == "off" else "/tmp/.ipython",
            SOCKET_ENV: os.path.join(dirs.socket_dir, SOCKET_NAME),
            REPORT_ENV: "",  # the report itself, filled in once planned (with_report)
        },
        host_env=dict(os.environ) if host_env is None else host_env,
        scratch_source=dirs.scratch_source if shares_scratch(policy, caps) else None,
        inputs_in_scratch=shares_scratch(policy, caps),
        identity=identity,
    )


def with_report(kernel_plan: Plan) -> Plan:
    """The plan with its own report in the kernel's environment (for the in-kernel extension,
    labelled ``reported_by: kernel`` there: the kernel can rewrite it)."""
    return replace(kernel_plan, env={**kernel_plan.env, REPORT_ENV: kernel_plan.report.to_json()})


def default_kernel_argv(connection_file: str) -> tuple[str, ...]:
    """The installed kernelspec's command (``kernelspec.kernelspec``), formatted as
    jupyter_client formats it."""
    from .kernelspec import kernelspec

    return tuple(a.replace("{connection_file}", connection_file) for a in kernelspec()["argv"])


def plan_kernel(policy: SandboxPolicy, caps: HostCapabilities) -> Plan:
    """Plan (never start) the default sandboxed kernel under ``policy``, exactly as the
    provisioner would start it, with placeholder dirs and no uid leased (``doctor``, ``run``'s
    pre-check). Raises SandboxUnavailable under ``fail``."""
    dirs = KernelDirs.placeholder()
    argv = kernel_command(default_kernel_argv(dirs.connection_file), dirs.ipc_base)
    return plan(policy, caps, kernel_run_spec(policy, caps, argv, dirs))


_announced = threading.Lock()


def announce_host(policy: SandboxPolicy, caps: HostCapabilities) -> None:
    """Once per process, at the first kernel start: which mechanism enforces each layer of the
    operator's ``policy`` on this host, and a banner when that policy is degraded here."""
    if not _announced.acquire(blocking=False):
        return
    try:
        report = plan_kernel(policy.model_copy(update={"on_unavailable": "degrade"}), caps).report
    except SandboxKernelError as e:  # the kernel's own start reports it; a summary must not stop it
        log.warning("sandbox-kernel on this host: no summary (%s: %s)", type(e).__name__, e)
        return
    log.info("sandbox-kernel on this host: %s", layers_summary(report))
    if report.downgrades:
        gaps = "; ".join(f"{d.layer}: {d.reason}" for d in report.downgrades)
        if policy.on_unavailable == "degrade":
            log.warning("*** SANDBOX DEGRADED on this host: the operator's policy (on_unavailable=degrade) starts "
                        "kernels without: %s. This is not a security boundary; `sandbox-kernel doctor` shows how to "
                        "close each gap ***", gaps)
        else:
            log.warning("*** the operator's policy cannot be enforced on this host; kernels will be refused "
                        "(on_unavailable=fail): %s ***", gaps)


class KernelSandbox:
    """A kernel's host-side state across restarts; the provisioner adapts it to jupyter_client.

    ``open`` (each start) -> ``prepare`` -> ``start`` -> ``stop`` (each shutdown or restart)
    ... -> ``close`` (final cleanup). Every method is safe to call in any state."""

    lease: UidLease | None = None  # the kernel's uid (root supervisor), from the first open to close
    dirs: KernelDirs | None = None  # made at the first open, removed at close
    session: Session | None = None  # the shared scratch of the kernel and its cells
    session_inputs: InputListing | None = None  # what is mounted into the session's scratch
    plan: Plan | None = None  # the running (or last) start's plan
    report: dict | None = None  # its trusted kernel-scope report
    cells: CellService | None = None
    process: SandboxProcess | None = None
    last_exit: dict | None = None  # {"returncode", "oom"} of the last process that ended
    owner: tuple[int, int] | None = None  # (uid, gid) the kernel runs as: its dirs' owner
    outputs: OutputCollector | None = None  # copies results out of the session scratch, across restarts
    _janitor: str | None = None  # what the janitor watches of it (launch/janitor.py)

    def __init__(self) -> None:
        self.cell_reports = CellReports()  # trusted reports of its recent magic cells, by msg_id
        self._outputs_lock = threading.Lock()
        self._outputs_log: list[dict] = []  # collections since the last take_outputs()

    # ------------------------------------------------------------------ host-side state

    @property
    def is_open(self) -> bool:
        return self.dirs is not None

    def identity(self) -> tuple[int, int] | None:
        return (self.lease.uid, self.lease.gid) if self.lease is not None else None

    def open(self, policy: SandboxPolicy, caps: HostCapabilities) -> KernelDirs:
        """At the first start: lease the kernel's uid (SandboxUnavailable if none is free) and
        make its dirs, owned so that only it can use them. Later starts reuse them."""
        if self.dirs is not None:
            return self.dirs
        self.lease = lease_for(policy, caps)
        # Whom the planner will run the kernel as: the owner of its dirs.
        _, uid, gid = plan_privilege(policy.privilege, caps, self.identity()).run_as
        run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)  # 0700, ours
        socket_dir = None
        try:
            socket_dir = make_socket_dir(gid)
            dirs = KernelDirs(run_dir, socket_dir)
            os.mkdir(dirs.kernel_dir, 0o700)
            if os.geteuid() == 0:
                os.chown(dirs.kernel_dir, uid, gid)
                os.chown(run_dir, 0, gid)
                os.chmod(run_dir, 0o710)
            # The run dir holds the connection file (the HMAC key): gone even if we are
            # killed, and the kernel's uid is not handed out again before it is.
            self._janitor = JANITOR.watch(paths=[run_dir, socket_dir], lease=self.lease)
        except BaseException:
            for path in (run_dir, socket_dir):
                if path is not None:
                    shutil.rmtree(path, ignore_errors=True)
            self._release_lease()
            raise
        self.dirs, self.owner = dirs, (uid, gid)
        return dirs

    def protect_connection_file(self, path: str) -> None:
        """The key, readable by the kernel's group only. The run dir is ours and not writable
        by the kernel, so the path cannot be a planted symlink."""
        if os.geteuid() == 0 and self.owner is not None:
            os.chown(path, 0, self.owner[1], follow_symlinks=False)
            os.chmod(path, 0o640, follow_symlinks=False)

    def prepare(self, policy: SandboxPolicy, caps: HostCapabilities, argv, *, env: dict[str, str] | None = None,
                cwd: str | None = None, inputs: dict | None = None, outputs_dest: str | None = None,
                warm_from_start: tuple[str, ...] | None = None) -> Plan:
        """Plan this start of the kernel (SandboxUnavailable before anything starts) and
        bring up what it needs beside it: the session (first start) and a new cell service.
        ``inputs``: an embedding runner's ``{"exclude": paths, "data": paths}`` for the
        listing of ``cwd``. ``outputs_dest``: the host dir the kernel's results are copied
        to (None: ``<cwd>/<outputs dir>``, or nowhere without a cwd). ``warm_from_start``: the
        kinds of cell sandbox started ahead with the kernel (None: the cell service's default)."""
        dirs = self.open(policy, caps)
        identity = self.identity()
        _, uid, gid = plan_privilege(policy.privilege, caps, identity).run_as
        want = inputs or {}
        exclude = tuple(want.get("exclude", ()))
        root_refused = bool(cwd) and os.path.realpath(cwd) == "/"
        if root_refused:  # a client's cwd too: the host root is never a notebook's dir, nor where results go
            cwd = None
        results = policy.filesystem.outputs
        if results.enabled and cwd:
            # The working dir's own results dir is neither an input (it would be bound
            # read-only over the kernel's /scratch/outputs) nor seen by the kernel later.
            exclude += (os.path.join(cwd, results.dir),)
            outputs_dest = outputs_dest or os.path.join(os.path.realpath(cwd), results.dir)
        if outputs_dest:
            exclude += (outputs_dest,)
        shared = shares_scratch(policy, caps)
        if shared and self.session is not None and self.session_inputs is not None:
            listing = self.session_inputs  # mounted at the session's start; a restart keeps them
        else:
            # What the kernel (and its cells) see of the working dir, listed once per session.
            listing = list_inputs(cwd, exclude=exclude, data=want.get("data", ()), uid=uid, gid=gid)
            if root_refused:
                listing = replace(listing, notes=(*listing.notes, ("filesystem", "working directory / (the host root) "
                                                                   "not exposed, and no results are copied there")))
        if shared and self.session is None:
            # Before anything untrusted runs in it: the inputs are mounted into the session's
            # fresh scratch once, rather than bound by bwrap at every kernel and cell start.
            os.makedirs(dirs.scratch_source, exist_ok=True)
            self.session = open_session(dirs.scratch_source, policy.filesystem.scratch_bytes, (uid, gid),
                                        unshare=caps.tool("unshare"), nsenter=caps.tool("nsenter"))
            binds = listing.binds if policy.filesystem.mode == "scratch-plus-ro" else ()
            mounted, skipped = self.session.mount_inputs(binds, (uid, gid))
            notes = listing.notes + tuple(("filesystem", f"input {dest} not exposed: {why}") for dest, why in skipped[:10])
            listing = self.session_inputs = replace(listing, binds=mounted, notes=notes)
        spec = kernel_run_spec(policy, caps, kernel_command(argv, dirs.ipc_base), dirs, env=env, inputs=listing,
                               identity=identity)
        kernel_plan = with_report(prepare(policy, spec, caps))
        self.plan, self.report = kernel_plan, kernel_plan.report.to_dict()
        if self.session is not None and results.enabled and outputs_dest and self.outputs is None:
            # The scratch tmpfs exists only in the session's mount namespace: read it there.
            self.outputs = OutputCollector(f"/proc/{self.session.pid}/root{spec.scratch_source}", outputs_dest, results)
        if self.cells is not None:
            self.cells.close()
        # The kernel's overrides (the operator's kernelspec env) reach its cells the same way.
        cell_fields = {"inputs": spec.inputs, "inputs_in_scratch": spec.inputs_in_scratch,
                       "scratch_source": spec.scratch_source, "identity": identity,
                       "env": dict(spec.env)}
        self.cells = CellService(dirs.socket_dir, policy, caps, self.report, session=self.session,
                                 recorder=self.cell_reports, spec_extras=lambda: cell_fields,
                                 collect_outputs=self.collect_outputs, warm_from_start=warm_from_start)
        return kernel_plan

    def collect_outputs(self) -> dict | None:
        """Copy the kernel's new results out now (None: results are not copied for this
        kernel). Serialised: the kernel's request and the runner's own call may race."""
        if self.outputs is None:
            return None
        with self._outputs_lock:
            summary = self.outputs.collect()
            self._outputs_log.append(summary)
        if summary["copied_count"] or summary["refused_count"]:
            log.info("kernel results: %d copied to %s, %d refused", summary["copied_count"], summary["dest"],
                     summary["refused_count"])
        return summary

    def take_outputs(self) -> dict | None:
        """What the collections since the last call copied and refused, merged (the batch
        runner's per-cell record); None if nothing was copied or refused."""
        with self._outputs_lock:
            entries, self._outputs_log = self._outputs_log, []
        copied = [p for e in entries for p in e["copied"]]
        refused = {r["path"]: r for e in entries for r in e["refused"]}  # the same refusal once
        if not copied and not refused:
            return None
        last = entries[-1]
        return {**last, "copied": copied, "copied_count": sum(e["copied_count"] for e in entries),
                "refused": list(refused.values()), "refused_count": len(refused)}

    def start(self) -> SandboxProcess:
        """Start the prepared plan. The kernel's own fd 1/2 (not cell output) go to our stderr
        (the server's log), capped: an untrusted kernel must not flood the log or the disk."""
        kernel_plan = self.plan
        self.process = start(kernel_plan, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             session=self.session)
        forward_capped(self.process.popen.stdout, sys.stderr.fileno(), kernel_plan.max_output_bytes, "kernel process")
        report, pid = kernel_plan.report, self.process.pid
        log.info("sandboxed kernel started: pid %d, uid %d; %s", pid, kernel_plan.run_as[1], layers_summary(report))
        # Under on_unavailable=degrade a gap is allowed, never silent: one warning per start,
        # in the server's log, where an operator looks.
        if report.downgrades:
            log.warning("sandboxed kernel pid %d runs with a degraded sandbox (on_unavailable=degrade): %s", pid,
                        "; ".join(f"{d.layer}: {d.reason}" for d in report.downgrades))
        if report.notes:
            log.info("sandboxed kernel pid %d notes: %s", pid, "; ".join(f"{n.layer}: {n.note}" for n in report.notes))
        return self.process

    # ------------------------------------------------------------------ process control

    def signal(self, signum: int) -> None:
        if self.process is None:
            return
        if signum in (signal.SIGKILL, signal.SIGTERM):
            self.process.kill_tree("signal")
            return
        # bwrap does not forward signals: deliver e.g. SIGINT to the kernel inside the namespace.
        signal_command(self.process, signum)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill_tree("kill", grace=0)

    def terminate(self) -> None:
        if self.process is not None:
            self.process.kill_tree("terminate")

    def stop(self) -> None:
        """End this start: the process (its exit recorded for :meth:`death_reason`) and the
        cell service, which kills a running cell: it must not outlive its kernel."""
        if self.process is not None:
            proc, self.process = self.process, None
            cg = proc.cgroups
            self.last_exit = {"returncode": proc.popen.poll() if proc.popen else None,
                              "oom": bool(cg and cg.oom_killed())}
            proc.close()
            log.info("sandboxed kernel pid %s ended: %s", proc.pid, self.death_reason())
        if self.cells is not None:
            self.cells.close()
            self.cells = None

    def close(self) -> None:
        """Final cleanup: stop, then remove the session, the dirs and give the uid back (which
        kills anything still running as it). Idempotent."""
        self.stop()
        if self.session is not None:
            self.session.close()
            self.session = self.session_inputs = None
        self.outputs = None
        if self.dirs is not None:
            for path in (self.dirs.run_dir, self.dirs.socket_dir):
                shutil.rmtree(path, ignore_errors=True)
            self.dirs = self.owner = None
        if self._janitor is not None:
            JANITOR.forget(self._janitor)
            self._janitor = None
        self._release_lease()

    def _release_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()  # kills anything still running as the kernel's uid
            self.lease = None

    def death_reason(self) -> str:
        """Why the last kernel process ended, in words (for clients that saw it die)."""
        info = self.last_exit or {}
        if info.get("oom"):
            limit = (self.report or {}).get("requested", {}).get("resources", {}).get("memory_bytes")
            return f"the kernel was killed by the sandbox's memory cgroup (out of memory; limit {limit} bytes)"
        rc = info.get("returncode")
        if rc is None:
            return "the kernel died"
        if rc > 128 or rc < 0:
            sig = rc - 128 if rc > 128 else -rc
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return f"the kernel was killed by {name}"
        return f"the kernel exited with status {rc}"
