"""Resources layer: one mechanism per control, and the report names the one actually used.

- cpu, open files, file size: rlimits set by ``prlimit`` *inside* the sandbox.
- processes: a pids cgroup where the host gives us one, plus RLIMIT_NPROC applied inside the
  sandbox's fresh user namespace (applied outside it, the limit would count every process of
  the uid, so one run's fork bomb would stop another run of the same uid from forking).
- memory: a memory cgroup (v1 or v2) where available. Without one, RLIMIT_AS still caps each
  process for runtimes that tolerate it (not Node/V8, which reserves huge address ranges), but
  the control asks for the *sandbox's* memory and 256 processes may each take the cap: that is
  a downgrade (refused under ``on_unavailable: fail``), applied as the best there is.
- output and wall clock: enforced by the supervisor while it streams the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..host import HostCapabilities
from ..policy import ResourcesPolicy
from ..report import Downgrade, LayerState, Note

RLIMIT_AS_TOLERANT = ("python", "shell")
# Headroom in the pids cgroup for bwrap's own two processes (monitor and pid 1).
PIDS_OVERHEAD = 2


@dataclass(frozen=True)
class CgroupPlan:
    version: int
    memory_bytes: int | None
    pids_max: int | None
    memory_root: str | None
    pids_root: str | None


@dataclass
class ResourcesDecision:
    prlimit: list[str]  # argv run inside the sandbox before the command ("prlimit ... --"), or []
    cgroup: CgroupPlan | None
    max_output_bytes: int | None
    wall_seconds: float | None
    layer: LayerState
    downgrades: list[Downgrade] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set by the sandbox, bypasses the denylist


def plan_resources(res: ResourcesPolicy, caps: HostCapabilities, runtime: str, in_userns: bool,
                   scope: str = "cell") -> ResourcesDecision:
    controls: dict[str, dict] = {}
    downgrades: list[Downgrade] = []
    notes: list[Note] = []
    rlimit_flags: list[str] = []
    sandbox_env: dict[str, str] = {}

    def control(name: str, limit, mechanism: str | None, reason: str | None = None):
        controls[name] = {"limit": limit, "mechanism": mechanism, "state": "degraded" if reason else "enforced"}
        if reason:
            downgrades.append(Downgrade("resources", f"{name}: {reason}"))

    prlimit_ok = caps.prlimit.ok
    for name, flag in (("cpu_seconds", "--cpu"), ("max_open_files", "--nofile"), ("max_file_size_bytes", "--fsize")):
        limit = getattr(res, name)
        if limit is None:
            continue
        if prlimit_ok:
            rlimit_flags.append(f"{flag}={limit}")
            control(name, limit, "rlimit")
        else:
            control(name, limit, None, f"needs prlimit, which is unavailable: {caps.prlimit.error}")

    memory_cg = caps.cgroup_memory.ok
    pids_cg = caps.cgroup_pids.ok
    cgroup_memory = cgroup_pids = None

    if res.max_processes is not None:
        mechanisms = []
        if pids_cg:
            cgroup_pids = res.max_processes + PIDS_OVERHEAD
            mechanisms.append(f"cgroup-v{caps.cgroup_pids.detail['version']}-pids")
        if prlimit_ok and in_userns:
            rlimit_flags.append(f"--nproc={res.max_processes}")
            mechanisms.append("rlimit-nproc-in-userns")
        if mechanisms:
            control("max_processes", res.max_processes, "+".join(mechanisms))
            if not pids_cg:
                notes.append(Note("resources", "max_processes: no pids cgroup here; RLIMIT_NPROC in the sandbox's own user namespace "
                                               "is the only cap"))
        else:
            why = f"no pids cgroup ({caps.cgroup_pids.error})" + (
                f", and RLIMIT_NPROC needs prlimit, which is unavailable: {caps.prlimit.error}" if in_userns
                else ", and no user namespace to scope RLIMIT_NPROC (a per-uid limit outside it would throttle other runs)")
            control("max_processes", res.max_processes, None, why)

    if res.memory_bytes is not None:
        if memory_cg:
            cgroup_memory = res.memory_bytes
            control("memory_bytes", res.memory_bytes, f"cgroup-v{caps.cgroup_memory.detail['version']}-memory")
        elif prlimit_ok and runtime in RLIMIT_AS_TOLERANT:
            rlimit_flags.append(f"--as={res.memory_bytes}")
            control("memory_bytes", res.memory_bytes, "rlimit-as",
                    f"per process via RLIMIT_AS, not per sandbox (no memory cgroup: {caps.cgroup_memory.error})")
            controls["memory_bytes"]["scope"] = "per-process"
            # glibc reserves 64 MiB of address space per thread arena: a dozen threads (an
            # ipykernel) would spend the cap on reservations alone.
            sandbox_env["MALLOC_ARENA_MAX"] = "2"
        else:
            why = f"no memory cgroup ({caps.cgroup_memory.error})"
            if runtime not in RLIMIT_AS_TOLERANT:
                why += f", and RLIMIT_AS would break the {runtime} runtime"
            else:
                why += f", and RLIMIT_AS needs prlimit, which is unavailable: {caps.prlimit.error}"
            control("memory_bytes", res.memory_bytes, None, why)

    if scope == "kernel":
        # A kernel lives across cells: output and wall-clock caps apply per cell, enforced by the
        # executing client (the batch executor), not by anything around the kernel process.
        for name in ("max_output_bytes", "wall_seconds"):
            limit = getattr(res, name)
            if limit is not None:
                controls[name] = {"limit": limit, "mechanism": "per-cell, by the executing client", "state": "delegated"}
                notes.append(Note("resources", f"{name} applies per cell and only where a sandbox-kernel client executes "
                                               "(plain clients do not cap it)"))
        if res.max_output_bytes is not None:
            notes.append(Note("resources", "the kernel process's own stdout/stderr go to the supervisor's log, cut at max_output_bytes"))
    else:
        if res.max_output_bytes is not None:
            control("max_output_bytes", res.max_output_bytes, "supervisor-stream-cap")
        if res.wall_seconds is not None:
            control("wall_seconds", res.wall_seconds, "supervisor-timer")

    cgroup = None
    if cgroup_memory is not None or cgroup_pids is not None:
        cgroup = CgroupPlan(
            version=caps.cgroup_memory.detail.get("version") if memory_cg else caps.cgroup_pids.detail["version"],
            memory_bytes=cgroup_memory, pids_max=cgroup_pids,
            memory_root=caps.cgroup_memory.detail.get("root") if cgroup_memory is not None else None,
            pids_root=caps.cgroup_pids.detail.get("root") if cgroup_pids is not None else None,
        )
    if not controls:
        state, mechanism = "not-requested", None
    else:
        state = "degraded" if downgrades else "enforced"
        mechanism = "+".join(sorted({c["mechanism"] for c in controls.values() if c["mechanism"] and c["state"] != "delegated"})) or None
    prlimit = [caps.tool("prlimit"), *rlimit_flags, "--"] if rlimit_flags else []
    return ResourcesDecision(
        prlimit, cgroup, res.max_output_bytes, res.wall_seconds,
        LayerState(state, mechanism, {"controls": controls}), downgrades, notes, sandbox_env,
    )
