"""SandboxProvisioner: every kernel it starts runs inside the planner's sandbox.

A ``LocalProvisioner`` subclass (entry point ``sandbox-provisioner``) so any Jupyter client
gets a confined kernel just by choosing the kernelspec. It decides nothing about confinement
itself: it asks ``plan()`` for the kernel's plan and the launch shell to carry it out.

Transport: ZMQ over ``ipc`` sockets in the kernel's run dir bound into the sandbox, because
under ``network: deny`` the kernel has no interface but its own loopback. The run dir and the
connection file survive restarts and are removed at final cleanup.

Identity: under a root supervisor each kernel runs as a uid of its own, leased at the first
start from ``privilege.uid_range`` (kept across restarts, released after final cleanup; its
cells run as it too). The run dir stays the supervisor's (root, 0710, the kernel's group may
only traverse it); the kernel gets just what it must open: its own 0700 ``kernel/`` dir for
the ipc sockets and IPython's state, and the connection file (the HMAC key) by group-read
(0640 root:kernel-gid). Another kernel, another uid and gid: it can open none of them, even
with ``filesystem: off``.

The kernel-scope report is held here, on the trusted side (``effective_sandbox``, also in
``get_provisioner_info()``): code in the kernel is untrusted and could forge anything the
kernel itself reports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Dict, Int, Unicode

from .capabilities import detect, python_runtime_paths
from .cell_protocol import SOCKET_ENV, SOCKET_NAME
from .cell_reports import CellReports
from .cells import CellService, make_socket_dir
from .config import SandboxPolicyConfig, load_jupyter_config
from .launch import SandboxProcess, lease_for, prepare, start
from .launch.inputs import list_inputs
from .launch.process import forward_capped, start_janitor, stop_janitor
from .launch.session import Session, open_session
from .launch.signals import signal_command
from .launch.uids import UidLease
from .planner import RunSpec
from .planner.privilege import plan_privilege
from .policy import PolicyError, SandboxPolicy, deep_merge, tighten

KERNEL_EXTENSION = "sandbox_kernel.kernel"
REPORT_ENV = "SANDBOX_KERNEL_REPORT"


class SandboxProvisioner(LocalProvisioner):
    """Start the kernel inside the sandbox planned from the operator's policy
    (``SandboxPolicyConfig``) tightened by this kernelspec's ``kernel_provisioner.config``."""

    # Kernelspec config: the same keys as a policy file. They can only tighten the operator's
    # policy; a loosening value refuses the start with PolicyError naming the field.
    version = Int(None, allow_none=True, help="Policy version of the kernelspec's keys (1).").tag(config=True)
    enabled = Bool(None, allow_none=True, help="Kernelspec override of policy 'enabled' (tighten-only).").tag(config=True)
    on_unavailable = Unicode(None, allow_none=True, help="Kernelspec override of 'on_unavailable' (tighten-only).").tag(config=True)
    resources = Dict(None, allow_none=True, help="Kernelspec override of policy 'resources' (tighten-only).").tag(config=True)
    filesystem = Dict(None, allow_none=True, help="Kernelspec override of policy 'filesystem' (tighten-only).").tag(config=True)
    network = Dict(None, allow_none=True, help="Kernelspec override of policy 'network' (tighten-only).").tag(config=True)
    privilege = Dict(None, allow_none=True, help="Kernelspec override of policy 'privilege' (tighten-only).").tag(config=True)
    kernel_policy_file = Unicode(None, allow_none=True, help="A policy file whose keys tighten the operator's policy for this kernelspec.").tag(config=True)

    def __init__(self, **kwargs: Any):
        # traitlets would only warn about an unknown key: a misspelt "netwrok" in kernel.json
        # must not silently leave the kernel looser than its author meant.
        known = set(self.class_trait_names()) | {"kernel_id", "kernel_spec", "parent", "config", "log"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PolicyError([(f"kernel_provisioner.config.{k}", "unknown key (allowed: version, enabled, on_unavailable, "
                                "resources, filesystem, network, privilege, kernel_policy_file)") for k in unknown])
        super().__init__(**kwargs)

    effective_sandbox: dict | None = None  # the trusted kernel-scope report of the running kernel
    cell_reports: CellReports | None = None  # trusted reports of its recent magic cells, by msg_id
    _sandbox: SandboxProcess | None = None
    _run_dir: str | None = None
    _kernel_dir: str | None = None  # the kernel's own dir in the run dir: ipc sockets, IPython
    _lease: UidLease | None = None  # the kernel's uid (root supervisor), from start to final cleanup
    _run_dir_janitor: subprocess.Popen | None = None
    _socket_dir: str | None = None  # the cell service's socket, read-only inside the kernel
    _last_exit: dict | None = None
    _cells: CellService | None = None
    _session: Session | None = None

    # ------------------------------------------------------------------ policy

    def kernelspec_overrides(self) -> dict:
        override: dict = {}
        if self.kernel_policy_file:
            override = _raw_policy(self.kernel_policy_file)
        for key in ("version", "enabled", "on_unavailable", "resources", "filesystem", "network", "privilege"):
            value = getattr(self, key)
            if value is not None:
                override = deep_merge(override, {key: value})
        return override

    def requested_policy(self) -> SandboxPolicy:
        # An embedding program (the batch executor) hands the operator policy to its kernel
        # manager directly; otherwise it comes from Jupyter config.
        operator = getattr(self.parent, "sandbox_policy", None)
        if operator is None:
            config = load_jupyter_config()
            config.merge(self.config)  # the server's own config files win over ours
            operator = SandboxPolicyConfig(config=config).policy()
        return tighten(operator, self.kernelspec_overrides())

    # ------------------------------------------------------------------ lifecycle

    def _ensure_run_dir(self, uid: int, gid: int) -> str:
        if self._run_dir is None:
            self._run_dir = tempfile.mkdtemp(prefix="sandbox-kernel-")  # 0700, ours
            self._kernel_dir = os.path.join(self._run_dir, "kernel")
            os.mkdir(self._kernel_dir, 0o700)
            if os.geteuid() == 0:
                os.chown(self._kernel_dir, uid, gid)
                os.chown(self._run_dir, 0, gid)
                os.chmod(self._run_dir, 0o710)
            self._socket_dir = make_socket_dir(gid)
            # The run dir holds the connection file (the HMAC key): gone even if we are killed,
            # and the kernel's uid is not handed out again before it is.
            self._run_dir_janitor = start_janitor([self._run_dir, self._socket_dir], [], self._lease)
        return self._run_dir

    def _remove_run_dir(self) -> None:
        for attr in ("_run_dir", "_socket_dir"):
            if getattr(self, attr) is not None:
                shutil.rmtree(getattr(self, attr), ignore_errors=True)
                setattr(self, attr, None)
        self._kernel_dir = None
        if self._run_dir_janitor is not None:
            stop_janitor(self._run_dir_janitor)
            self._run_dir_janitor = None
        if self._lease is not None:
            self._lease.release()  # kills anything still running as the kernel's uid
            self._lease = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        fresh = self._run_dir is None
        try:
            return await self._pre_launch(fresh, **kwargs)
        except BaseException:
            # Refused (SandboxUnavailable, PolicyError) or broken: leave nothing behind.
            if fresh:
                if self._session is not None:
                    self._session.close()
                    self._session = None
                self._remove_run_dir()
            raise

    async def _pre_launch(self, fresh: bool, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        policy = self.requested_policy()
        caps = detect()
        if fresh:
            self._lease = lease_for(policy, caps)  # SandboxUnavailable if no uid is free
        identity = (self._lease.uid, self._lease.gid) if self._lease is not None else None
        # Whom the planner will run the kernel as: the owner of its dirs, and whether the
        # working dir is reachable.
        _, uid, gid = plan_privilege(policy.privilege, caps, identity).run_as
        run_dir = self._ensure_run_dir(uid, gid)
        ipc_base = os.path.join(self._kernel_dir, "k")
        if km is not None:
            km.transport = "ipc"
            km.cache_ports = False
            km.ip = ipc_base
            km.connection_file = os.path.join(run_dir, "connection.json")
        kwargs = await super().pre_launch(**kwargs)
        if km is not None and os.geteuid() == 0:
            # The key, readable by the kernel's group only. The run dir is ours and not
            # writable by the kernel, so the path cannot be a planted symlink.
            os.chown(km.connection_file, 0, gid, follow_symlinks=False)
            os.chmod(km.connection_file, 0o640, follow_symlinks=False)

        cmd = list(kwargs.pop("cmd"))
        if any("ipykernel" in part for part in cmd):
            # ipykernel ignores the connection file's transport unless told on its command line.
            cmd += ["--transport=ipc", f"--ip={ipc_base}",
                    f"--IPKernelApp.extra_extensions={KERNEL_EXTENSION}"]
        env = kwargs.pop("env", None) or {}
        # Only what the caller deliberately added (kernelspec env, session name) is a candidate
        # override; the supervisor's own environment never reaches the sandbox.
        overrides = {k: v for k, v in env.items() if os.environ.get(k) != v}
        # What the kernel (and its cells) see of the working dir, listed once per start. An
        # embedding runner (the batch executor) may exclude paths and add data paths.
        want = getattr(km, "sandbox_inputs", None) or {}
        inputs = list_inputs(kwargs.get("cwd"), exclude=want.get("exclude", ()), data=want.get("data", ()), uid=uid, gid=gid)
        # The kernel session's scratch, shared with its cells and kept across restarts.
        share_scratch = caps.session.ok and policy.filesystem.mode != "off"
        spec = RunSpec(
            argv=tuple(cmd), staging_dir="", runtime="python", scope="kernel",
            runtime_paths=(*python_runtime_paths(), self._socket_dir), rw_paths=(run_dir,), env=overrides,
            inputs=inputs.binds, notes=inputs.notes,
            # IPython's state in the sandbox's private /tmp, or under filesystem 'off' (where /tmp
            # is the host's, shared with every other kernel) in the kernel's own dir.
            sandbox_env={"JPY_PARENT_PID": "1", "PYTHONDONTWRITEBYTECODE": "1",
                         "IPYTHONDIR": os.path.join(self._kernel_dir, "ipython") if policy.filesystem.mode == "off" else "/tmp/.ipython"},
            host_env=dict(os.environ), scratch_source=os.path.join(run_dir, "scratch") if share_scratch else None,
            identity=identity,
        )
        plan = prepare(policy, spec, caps)  # raises SandboxUnavailable before anything starts
        plan.env[REPORT_ENV] = plan.report.to_json()
        plan.env[SOCKET_ENV] = os.path.join(self._socket_dir, SOCKET_NAME)
        self._plan = plan
        self.effective_sandbox = plan.report.to_dict()
        if share_scratch and self._session is None:
            os.makedirs(spec.scratch_source, exist_ok=True)
            self._session = open_session(spec.scratch_source, policy.filesystem.scratch_bytes, plan.run_as[1:],
                                         unshare=caps.tool("unshare"), nsenter=caps.tool("nsenter"))
        if self._cells is not None:
            self._cells.close()
        if self.cell_reports is None:
            self.cell_reports = CellReports()
        self._cells = CellService(
            self._socket_dir, policy, self.effective_sandbox, session=self._session, recorder=self.cell_reports,
            spec_extras=lambda: {"inputs": spec.inputs, "scratch_source": spec.scratch_source, "identity": identity},
        )
        kwargs["cmd"] = plan.argv
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        self._sandbox = start(self._plan, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              session=self._session)
        # The kernel's own fd 1/2 (not cell output) go to our log, capped: an untrusted kernel
        # must not be able to flood the server's log or disk.
        forward_capped(self._sandbox.popen.stdout, sys.stderr.fileno(), self._plan.max_output_bytes, "kernel process")
        self.process = self._sandbox.popen
        self.pid = self.process.pid
        self.pgid = self.process.pid  # start_new_session: the outer bwrap leads its own group
        self.cwd = self._plan.cwd
        return self.connection_info

    async def send_signal(self, signum: int) -> None:
        if self._sandbox is None:
            return
        if signum in (signal.SIGKILL, signal.SIGTERM):
            self._sandbox.kill_tree("signal")
            return
        # bwrap does not forward signals: deliver e.g. SIGINT to the kernel inside the namespace.
        signal_command(self._sandbox, signum)

    async def kill(self, restart: bool = False) -> None:
        if self._sandbox is not None:
            self._sandbox.kill_tree("kill", grace=0)

    async def terminate(self, restart: bool = False) -> None:
        if self._sandbox is not None:
            self._sandbox.kill_tree("terminate")

    def death_reason(self) -> str:
        """Why the last kernel process ended, in words (for clients that saw it die)."""
        info = self._last_exit or {}
        if info.get("oom"):
            limit = (self.effective_sandbox or {}).get("requested", {}).get("resources", {}).get("memory_bytes")
            return f"the kernel was killed by the sandbox's memory cgroup (out of memory; limit {limit} bytes)"
        rc = info.get("returncode")
        if rc is None:
            return "the kernel died"
        if rc > 128 or rc < 0:
            sig = rc - 128 if rc > 128 else -rc
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            return f"the kernel was killed by {name}"
        return f"the kernel exited with status {rc}"

    async def cleanup(self, restart: bool = False) -> None:
        if self._sandbox is not None:
            cg = self._sandbox.cgroups
            self._last_exit = {"returncode": self._sandbox.popen.poll() if self._sandbox.popen else None,
                               "oom": bool(cg and cg.oom_killed())}
            self._sandbox.close()
            self._sandbox = None
        if self._cells is not None:  # kills a running cell: it must not outlive its kernel
            self._cells.close()
            self._cells = None
        if not restart:
            if self._session is not None:
                self._session.close()
                self._session = None
            self._remove_run_dir()
        await super().cleanup(restart=restart)

    async def get_provisioner_info(self) -> dict:
        info = await super().get_provisioner_info()
        info["sandbox"] = self.effective_sandbox
        return info


def _raw_policy(path: str) -> dict:
    """A kernelspec policy file's keys, unmerged (they are an override, not a base)."""
    import json
    import tomllib

    with open(path, "rb") as f:
        return json.load(f) if path.endswith(".json") else tomllib.load(f)
