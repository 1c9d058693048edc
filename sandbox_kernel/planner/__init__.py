"""``plan(policy, capabilities, spec) -> Plan``: the one place that decides how a process is
confined. Pure: no subprocess, no file I/O, no globals. The launch shell carries a Plan out.

Argv shape, outer to inner::

    [setpriv --reuid ...]  bwrap <namespaces> <mounts> --seccomp FD --  [prlimit ... --]  cmd...

``FD`` and the sources of ``--ro-bind {prepared-etc} /etc`` and ``--ro-bind {staged-etc}
/etc/sandbox-kernel`` among the mounts are placeholders the launch shell fills in (the seccomp
filter's descriptor; the prepared /etc and staged-files directories, launch/etc.py). In
front the launch shell may put ``nsenter`` (to join an allowlisted network namespace or a
kernel session; under a root supervisor it then switches the uid, ``Plan.nsenter_switch``,
and there is no setpriv) and, where the spawning thread cannot step into the run's cgroups
(cgroup v2), ``/bin/sh -c`` joining them before it execs the rest
(``launch.process.JOIN_CGROUPS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

from ..host import HostCapabilities
from ..policy import SandboxPolicy
from ..report import Downgrade, EffectiveSandbox, LayerState, Note, SandboxUnavailable
from .env import plan_env
from .filesystem import ETC_PLACEHOLDER, STAGED_PLACEHOLDER, plan_filesystem
from .network import EgressPlan, plan_network
from .privilege import plan_privilege
from .resources import CgroupPlan, plan_resources
from .seccomp import FD_PLACEHOLDER, SeccompPlan, plan_seccomp

__all__ = ["RunSpec", "Plan", "plan", "EgressPlan", "CgroupPlan", "SeccompPlan", "FD_PLACEHOLDER", "ETC_PLACEHOLDER",
           "STAGED_PLACEHOLDER"]

Runtime = Literal["python", "shell", "node", "other"]


@dataclass(frozen=True)
class RunSpec:
    """What is being run, and what it needs from the host."""

    argv: tuple[str, ...]
    runtime: Runtime = "other"
    scope: Literal["kernel", "cell"] = "cell"
    scratch_dir: str = "/scratch"  # in-sandbox path of the private, sized scratch tmpfs
    runtime_paths: tuple[str, ...] = ()  # read-only even under scratch-only: the interpreter's env
    rw_paths: tuple[str, ...] = ()  # host paths bound read-write (e.g. a kernel's ipc dir)
    cwd: str | None = None  # default: the scratch dir
    # (host path, path under the scratch dir) pairs exposed read-only: listed by the caller
    # (launch.inputs.list_inputs; plan() does no I/O). A path ending in "/" is a directory.
    inputs: tuple[tuple[str, str], ...] = ()
    # The session's scratch (scratch_source) already holds ``inputs``, mounted once per kernel
    # session (launch.session.Session.mount_inputs): bwrap binds none of them per run.
    inputs_in_scratch: bool = False
    notes: tuple[tuple[str, str], ...] = ()  # (layer, note) facts the caller found, for the report
    # Host path, in a kernel session's mount namespace, of the sized scratch tmpfs the session
    # shares between the kernel and its cells (the launch shell joins that namespace).
    scratch_source: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # caller overrides, filtered
    sandbox_env: Mapping[str, str] = field(default_factory=dict)  # set by our own code, trusted
    host_env: Mapping[str, str] = field(default_factory=dict)  # supervisor env; only locale is read
    # (uid, gid) leased for this run by the launch shell (a kernel's, for its cells): under a
    # root supervisor without a fixed privilege.uid, the sandbox runs as it.
    identity: tuple[int, int] | None = None


@dataclass(frozen=True)
class Plan:
    argv: tuple[str, ...]  # may contain FD_PLACEHOLDER, replaced by the launch shell
    env: dict[str, str]
    cwd: str
    staged_files: dict[str, str]  # /etc name -> content: the launch shell's STAGED_PLACEHOLDER dir
    egress: EgressPlan | None
    cgroup: CgroupPlan | None
    seccomp: SeccompPlan | None
    run_as: tuple[str, int, int]
    max_output_bytes: int | None
    wall_seconds: float | None
    report: EffectiveSandbox
    sandboxed: bool = True
    uid_lease: object | None = None  # the launch shell's lease of run_as's uid, released on close
    # Host /etc entries the prepared /etc (ETC_PLACEHOLDER) holds copies of, next to links to
    # the staged files.
    etc_entries: tuple[str, ...] = ()
    # (uid, gid) the nsenter the launch shell puts in front (session or egress) switches to
    # (--setuid/--setgid) before bwrap: the uid switch of a root supervisor's run that joins one.
    nsenter_switch: tuple[int, int] | None = None


def _disabled_plan(policy: SandboxPolicy, caps: HostCapabilities, spec: RunSpec) -> Plan:
    layers = {name: LayerState("not-requested", None) for name in ("filesystem", "network", "resources", "privilege", "env", "seccomp")}
    report = EffectiveSandbox(spec.scope, policy.to_dict(), layers, notes=[Note("policy", "sandbox disabled by policy (enabled: false)")],
                              platform=caps.platform)
    # No confinement, but still no supervisor secrets: locale and PATH from the host only.
    host = {k: v for k, v in spec.host_env.items() if k == "PATH" or k.startswith("LC_") or k in ("LANG", "TZ")}
    env = {**host, **spec.env, **spec.sandbox_env}
    return Plan(tuple(spec.argv), env, spec.cwd or "/", {}, None, None, None,
                (caps.user_name, caps.euid, caps.egid), None, None, report, sandboxed=False)


def plan(policy: SandboxPolicy, caps: HostCapabilities, spec: RunSpec) -> Plan:
    """Decide the whole confinement of one run. Raises :class:`SandboxUnavailable` (before
    anything runs) when a requested layer cannot be enforced and ``on_unavailable`` is fail."""
    if not policy.enabled:
        return _disabled_plan(policy, caps, spec)

    net = plan_network(policy.network, caps)
    # The launch shell puts nsenter in front to join a kernel session or an egress namespace.
    joins_namespaces = caps.bwrap.ok and (spec.scratch_source is not None or net.egress is not None)
    priv = plan_privilege(policy.privilege, caps, spec.identity, joins_namespaces=joins_namespaces)
    user, uid, gid = priv.run_as
    # The operator's packages for node: read-only, and found through NODE_PATH set here (the
    # caller's NODE_* never passes the env denylist).
    node_modules = policy.filesystem.node_modules if spec.runtime == "node" else None
    fs = plan_filesystem(
        policy.filesystem, caps, scratch_dir=spec.scratch_dir,
        runtime_paths=(*spec.runtime_paths, *([node_modules] if node_modules else [])), rw_paths=spec.rw_paths,
        cwd=spec.cwd, run_as=priv.run_as,
        nameserver=net.nameserver, inputs=spec.inputs,
        scratch_source=spec.scratch_source, inputs_in_scratch=spec.inputs_in_scratch,
    )
    res = plan_resources(policy.resources, caps, spec.runtime, in_userns=caps.bwrap.ok, scope=spec.scope)
    sec = plan_seccomp(caps)
    # HOME is the private scratch dir only where the filesystem layer really provides one.
    scratch = spec.scratch_dir if fs.layer.state == "enforced" else fs.cwd
    sandbox_set = {"HOME": scratch, "TMPDIR": "/tmp", "USER": user, "LOGNAME": user, "SHELL": "/bin/sh",
                   **({"NODE_PATH": node_modules} if node_modules else {}), **res.env, **spec.sandbox_env}
    env = plan_env(spec.host_env, spec.env, sandbox_set)

    layers = {"filesystem": fs.layer, "network": net.layer, "resources": res.layer,
              "privilege": priv.layer, "env": env.layer, "seccomp": sec.layer}
    downgrades: list[Downgrade] = priv.downgrades + fs.downgrades + net.downgrades + res.downgrades + sec.downgrades
    notes: list[Note] = priv.notes + fs.notes + net.notes + res.notes + [Note(layer, n) for layer, n in spec.notes]
    if policy.filesystem.mode == "off" and (net.bwrap_flag == "--unshare-net" or net.egress is not None):
        notes.append(Note("network", "filesystem.mode 'off' binds the host root read-write: host Unix sockets "
                                     "(Docker, D-Bus, the Jupyter server's) stay reachable despite the network namespace"))
    report = EffectiveSandbox(spec.scope, policy.to_dict(), layers, downgrades, notes, caps.platform)
    if downgrades and policy.on_unavailable == "fail":
        raise SandboxUnavailable(downgrades, report)

    argv: list[str] = list(priv.prefix)
    if caps.bwrap.ok:
        argv += [caps.tool("bwrap"), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", net.bwrap_flag, "--die-with-parent", "--new-session",
                 "--cap-drop", "ALL", "--hostname", "sandbox"]
        if sec.plan is not None:
            # Cell sandboxes are started from outside, so nothing inside needs a user namespace.
            argv += ["--disable-userns"]
        if caps.euid != 0 and (net.egress is not None or spec.scratch_source):
            # Joined to a holder's user namespace we are "root" there; map back to our real uid.
            argv += ["--uid", str(uid), "--gid", str(gid)]
        argv += fs.mounts
        if sec.plan is not None:
            argv += ["--seccomp", FD_PLACEHOLDER]
        argv += ["--"]
    argv += res.prlimit + list(spec.argv)
    staged = fs.staged
    return Plan(
        argv=tuple(argv), env=env.env, cwd=fs.cwd, staged_files=staged,
        egress=net.egress, cgroup=res.cgroup, seccomp=sec.plan, run_as=priv.run_as,
        max_output_bytes=res.max_output_bytes, wall_seconds=res.wall_seconds, report=report,
        etc_entries=fs.etc_entries, nsenter_switch=priv.nsenter_switch,
    )

