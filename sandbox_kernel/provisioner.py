"""SandboxProvisioner: every kernel it starts runs inside the planner's sandbox.

A ``LocalProvisioner`` subclass (entry point ``sandbox-provisioner``) so any Jupyter client
gets a confined kernel just by choosing the kernelspec. It is an adapter: it resolves the
kernel's policy (the operator's, tightened by the kernelspec's keys) and hands everything else
to a :class:`~sandbox_kernel.kernel_sandbox.KernelSandbox` (run dir, uid lease, session, cell
service, process), which plans the kernel with ``kernel_run_spec``, the same description
``doctor`` plans from.

Transport: ZMQ over ``ipc`` sockets in the kernel's run dir bound into the sandbox, because
under ``network: deny`` the kernel has no interface but its own loopback. The run dir and the
connection file survive restarts and are removed at final cleanup. Identity: under a root
supervisor each kernel runs as a uid of its own, leased at the first start from
``privilege.uid_range``, kept across restarts, released after final cleanup; its cells run as
it too.

The kernel-scope report is held here, on the trusted side (``effective_sandbox``, also in
``get_provisioner_info()``): code in the kernel is untrusted and could forge anything the
kernel itself reports.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Dict, Int, Unicode

from .capabilities import detect
from .cell_reports import CellReports
from .config import SandboxPolicyConfig, load_jupyter_config
from .errors import PolicyError
from .kernel_sandbox import KERNEL_EXTENSION, KernelSandbox, announce_host  # noqa: F401 - KERNEL_EXTENSION: historical home
from .logs import route_to
from .policy import SandboxPolicy, deep_merge, read_policy_data, tighten

log = logging.getLogger(__name__)

# The policy sections a kernelspec may tighten, as traits of the same name.
POLICY_KEYS = ("version", "enabled", "on_unavailable", "resources", "filesystem", "network", "privilege")


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
    kernel_policy_file = Unicode(None, allow_none=True,
                                 help="A policy file whose keys tighten the operator's policy for this kernelspec.").tag(config=True)

    sandbox: KernelSandbox  # the kernel's host-side state, for the provisioner's whole life

    def __init__(self, **kwargs: Any):
        # traitlets would only warn about an unknown key: a misspelt "netwrok" in kernel.json
        # must not silently leave the kernel looser than its author meant.
        config_keys = self.class_trait_names(config=True)
        unknown = sorted(set(kwargs) - set(self.class_trait_names()) - {"kernel_id", "kernel_spec", "parent", "config", "log"})
        if unknown:
            allowed = ", ".join(k for k in (*POLICY_KEYS, "kernel_policy_file") if k in config_keys)
            raise PolicyError([(f"kernel_provisioner.config.{k}", f"unknown key (allowed: {allowed})") for k in unknown])
        super().__init__(**kwargs)
        self.sandbox = KernelSandbox()
        route_to(self.log)  # our module loggers' records go to the server's log too

    @property
    def effective_sandbox(self) -> dict | None:
        """The trusted kernel-scope report of the running (or last) kernel."""
        return self.sandbox.report

    @property
    def cell_reports(self) -> CellReports:
        """Trusted reports of the kernel's recent magic cells, by msg_id."""
        return self.sandbox.cell_reports

    # ------------------------------------------------------------------ policy

    def kernelspec_overrides(self) -> dict:
        """The kernelspec's policy keys (its policy file's, then its own), unmerged: they are
        an override, not a base. A bad file raises PolicyError naming
        ``kernel_provisioner.config.kernel_policy_file``."""
        override: dict = {}
        if self.kernel_policy_file:
            override = _file_override(self.kernel_policy_file)
        for key in POLICY_KEYS:
            value = getattr(self, key)
            if value is not None:
                override = deep_merge(override, {key: value})
        return override

    def operator_policy(self) -> SandboxPolicy:
        # An embedding program (the batch executor) hands the operator policy to its kernel
        # manager directly; otherwise it comes from Jupyter config.
        operator = getattr(self.parent, "sandbox_policy", None)
        if operator is None:
            config = load_jupyter_config()
            config.merge(self.config)  # the server's own config files win over ours
            operator = SandboxPolicyConfig(config=config).policy()
        return operator

    def requested_policy(self, operator: SandboxPolicy | None = None) -> SandboxPolicy:
        return tighten(operator or self.operator_policy(), self.kernelspec_overrides())

    # ------------------------------------------------------------------ lifecycle

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        fresh = not self.sandbox.is_open
        try:
            operator = self.operator_policy()
            policy = self.requested_policy(operator)
            caps = detect(policy.resources.cgroup_parent)
            announce_host(operator, caps)
            dirs = self.sandbox.open(policy, caps)  # SandboxUnavailable if no uid is free
            km = self.parent
            if km is not None:
                km.transport, km.cache_ports = "ipc", False
                km.ip, km.connection_file = dirs.ipc_base, dirs.connection_file
            kwargs = await super().pre_launch(**kwargs)
            if km is not None:
                self.sandbox.protect_connection_file(km.connection_file)
            env = kwargs.pop("env", None) or {}
            # Only what the caller deliberately added (kernelspec env, session name) is a
            # candidate override; the supervisor's own environment never reaches the sandbox.
            overrides = {k: v for k, v in env.items() if os.environ.get(k) != v}
            # An embedding runner (the batch executor) lists its inputs itself: no cwd means
            # none there (`run --inputs none`, Dask workers), not the supervisor's.
            cwd = kwargs.get("cwd") if hasattr(km, "sandbox_inputs") else working_dir(kwargs.get("cwd"))
            plan = self.sandbox.prepare(policy, caps, kwargs.pop("cmd"), env=overrides, cwd=cwd,
                                        inputs=getattr(km, "sandbox_inputs", None),
                                        outputs_dest=getattr(km, "sandbox_outputs", None),
                                        warm_from_start=getattr(km, "sandbox_warm_from_start", None))
        except BaseException as e:
            # Refused (SandboxUnavailable, PolicyError) or broken: leave nothing behind.
            log.warning("kernel %s not started: %s: %s", self.kernel_id, type(e).__name__, e)
            if fresh:
                self.sandbox.close()
            raise
        kwargs["cmd"] = list(plan.argv)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        process = self.sandbox.start()
        self.process = process.popen
        self.pid = self.process.pid
        self.pgid = self.process.pid  # start_new_session: the outer bwrap leads its own group
        self.cwd = self.sandbox.plan.cwd
        return self.connection_info

    async def send_signal(self, signum: int) -> None:
        self.sandbox.signal(signum)

    async def kill(self, restart: bool = False) -> None:
        self.sandbox.kill()

    async def terminate(self, restart: bool = False) -> None:
        self.sandbox.terminate()

    def death_reason(self) -> str:
        """Why the last kernel process ended, in words (for clients that saw it die)."""
        return self.sandbox.death_reason()

    async def cleanup(self, restart: bool = False) -> None:
        if restart:
            self.sandbox.stop()
        else:
            self.sandbox.close()
        await super().cleanup(restart=restart)

    async def get_provisioner_info(self) -> dict:
        info = await super().get_provisioner_info()
        info["sandbox"] = self.effective_sandbox
        return info


def working_dir(cwd: str | None) -> str | None:
    """The directory whose files the kernel sees: the client's ``cwd``, or, as a plain kernel
    would inherit it, the supervisor's own (nbconvert with a relative path, nbclient and
    papermill pass none). The host root is never a notebook's directory: it is not exposed."""
    if not cwd:
        try:
            cwd = os.getcwd()
        except OSError:  # removed from under us: nothing to expose
            return None
        if os.path.realpath(cwd) == "/":
            return None
    return cwd


FILE_FIELD = "kernel_provisioner.config.kernel_policy_file"


def _file_override(path: str) -> dict:
    """A kernelspec policy file's keys. Problems name the kernelspec key (the file cannot be
    read or parsed) or the file (its contents are not a policy)."""
    try:
        data = read_policy_data(path)
    except PolicyError as e:
        raise PolicyError([(FILE_FIELD, m) for _, m in e.problems]) from None
    if not isinstance(data, Mapping):
        raise PolicyError(FILE_FIELD, f"{path}: a policy must be a table/object, got {type(data).__name__}")
    return dict(data)
