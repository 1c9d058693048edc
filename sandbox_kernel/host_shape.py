"""The shape of the host, as far as sandboxing cares, explained for ``doctor``: mount
propagation, the cgroup layout, container signals, user-namespace restrictions.

Each finding says what was detected and what it means here. Nothing is decided from these
findings: the capability probes run the real mechanisms, and the meanings point at their
results. Mount propagation (private and shared) and this cgroup layout (v1 controllers next
to a v2 hierarchy without them) are the shapes CI runs the integration suite on; the other
shapes are probed at run time only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .host import HostCapabilities

CONTROLLERS = ("memory", "pids")
USERNS_SYSCTLS = {  # name -> /proc/sys path
    "kernel.apparmor_restrict_unprivileged_userns": "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    "user.max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "kernel.unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
}
CONTAINER_MARKERS = {
    "/.dockerenv": "Docker",
    "/run/.containerenv": "Podman",
    "/var/run/secrets/kubernetes.io/serviceaccount": "Kubernetes",
}


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    super_options: tuple[str, ...]
    tags: tuple[str, ...]  # propagation: "shared:N", "master:N", ... (none: private)


@dataclass(frozen=True)
class Finding:
    name: str
    detected: str
    meaning: str
    hint: str | None = None
    tested_in_ci: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields, rest = pre.split(), post.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        mounts.append(Mount(fields[4], rest[0], tuple(rest[2].split(",")), tuple(fields[6:])))
    return mounts


def propagation(mounts: list[Mount]) -> Finding:
    shared = [m for m in mounts if any(t.startswith("shared:") for t in m.tags)]
    slave = [m for m in mounts if any(t.startswith("master:") for t in m.tags) and m not in shared]
    root = next((m for m in reversed(mounts) if m.point == "/"), None)
    root_kind = "shared" if root in shared else "slave" if root in slave else "private"
    detected = f"{len(shared)} of {len(mounts)} mounts shared, {len(slave)} slave; / is {root_kind}"
    if shared:
        meaning = ("shared propagation (systemd's default): a mount or unmount made in a copied mount "
                   "namespace reaches the host unless the copy is made private. Every helper that mounts "
                   "does so where nothing propagates back: the kernel session's holder in a private mount "
                   "namespace; slirp4netns's own sandbox in a private namespace (root supervisor) or behind "
                   "the egress holder's user namespace (non-root); bwrap behind the sandbox's user namespace")
    else:
        meaning = ("no mount is shared with another namespace: nothing anyone mounts elsewhere reaches this "
                   "mount table. Helpers still mount only in namespaces of their own")
    return Finding("mount propagation", detected, meaning, tested_in_ci=True)


def cgroups(mounts: list[Mount], v2_controllers: dict[str, set[str]], caps: HostCapabilities) -> Finding:
    """``v2_controllers``: each cgroup2 mount point -> the controllers its cgroup.controllers offers."""
    v1 = sorted({c for m in mounts if m.fstype == "cgroup" for c in CONTROLLERS if c in m.super_options})
    parts = [f"cgroup v1 hierarchies for {' and '.join(v1)}"] if v1 else []
    for point, offered in v2_controllers.items():
        parts.append(f"cgroup v2 at {point} offering: {' '.join(sorted(offered)) or 'no controller'}")
    detected = "; ".join(parts) or "no cgroup filesystem mounted"
    used = []
    for name, cap in (("memory", caps.cgroup_memory), ("pids", caps.cgroup_pids)):
        used.append(f"{name}: v{cap.detail['version']} cgroups below {cap.detail['root']}" if cap.ok
                    else f"{name}: no cgroup ({cap.error})")
    probed = "the probes found " + "; ".join(used)
    delegation = ("a v2 hierarchy enforces memory and pids only where they are delegated to it: a unified "
                  "hierarchy (systemd.unified_cgroup_hierarchy=1), or in a container a cgroup of its own "
                  "with them enabled (Docker --cgroupns=private, systemd Delegate=yes)")
    missing_v2 = {p: [c for c in CONTROLLERS if c not in offered] for p, offered in v2_controllers.items()}
    if not parts:
        return Finding("cgroups", detected, f"no per-run memory or pids cgroup; {probed}. Memory falls back to "
                       "RLIMIT_AS (Python and shell only), processes to RLIMIT_NPROC in the sandbox's own user namespace",
                       hint="mount cgroup2 at /sys/fs/cgroup")
    notes = []
    for point, missing in missing_v2.items():
        if missing:
            notes.append(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not delegated to the v2 "
                         f"hierarchy at {point}, so nothing is enforced through it")
    if v1:
        meaning = "; ".join(notes + [probed])
        return Finding("cgroups", detected, meaning, hint=delegation if any(missing_v2.values()) else None,
                       tested_in_ci=True)
    meaning = "; ".join(notes + [probed]) + " (cgroup v2 is probed at run time only)"
    return Finding("cgroups", detected, meaning, hint=delegation if any(missing_v2.values()) else None)


def container(signals: list[str], caps: HostCapabilities) -> Finding:
    probes = ", ".join(f"{name} {'ok' if cap.ok else 'FAILED'}" for name, cap in (
        ("bwrap", caps.bwrap), ("egress", caps.egress), ("cgroup_memory", caps.cgroup_memory),
        ("cgroup_pids", caps.cgroup_pids)))
    if not signals:
        return Finding("container", "no container signal (/.dockerenv, /run/.containerenv, Kubernetes "
                       "service account or environment)", f"sandboxing runs on the host itself; probes: {probes}")
    meaning = ("this may be a container (a marker file can also come from an image built with one). A "
               "container's runtime decides whether user namespaces, a fresh /proc, /dev/net/tun and a "
               f"writable cgroup exist; the probes ran each: {probes}. Containers are probed at run time only")
    hint = None
    if not caps.bwrap.ok:
        hint = ("Docker: --security-opt seccomp=unconfined --security-opt apparmor=unconfined "
                "--security-opt systempaths=unconfined; Kubernetes: securityContext procMount: Unmasked, "
                "seccompProfile Unconfined, appArmorProfile Unconfined")
    return Finding("container", "signals: " + ", ".join(signals), meaning, hint=hint)


def user_namespaces(sysctls: dict[str, str | None], caps: HostCapabilities) -> Finding:
    shown = [f"{k}={v}" for k, v in sysctls.items() if v is not None]
    detected = ", ".join(shown) or "no user-namespace sysctl present"
    bwrap = "the bwrap probe (user namespaces as the sandbox uid) " + ("succeeded" if caps.bwrap.ok else f"FAILED: {caps.bwrap.error}")
    restrict = sysctls.get("kernel.apparmor_restrict_unprivileged_userns")
    problems, hints = [], []
    if restrict == "1":
        problems.append("Ubuntu's AppArmor restriction is on: an unprivileged process may create a user "
                        "namespace only under an AppArmor profile that allows it, and every sandbox (bwrap as "
                        "the sandbox uid, a non-root supervisor's holders) needs one")
        hints.append("an AppArmor profile for bwrap (and unshare, for a non-root supervisor) with the 'userns,' "
                     "rule, or sysctl kernel.apparmor_restrict_unprivileged_userns=0")
    if sysctls.get("user.max_user_namespaces") == "0":
        problems.append("user namespaces are disabled")
        hints.append("sysctl user.max_user_namespaces=15000")
    if sysctls.get("kernel.unprivileged_userns_clone") == "0":
        problems.append("unprivileged user namespaces are disabled")
        hints.append("sysctl kernel.unprivileged_userns_clone=1")
    if not problems:
        meaning = ("nothing restricts unprivileged user namespaces"
                   + (" (no AppArmor restriction on this kernel)" if restrict is None else "") + f"; {bwrap}")
        return Finding("user namespaces", detected, meaning, tested_in_ci=restrict is None)
    return Finding("user namespaces", detected, "; ".join(problems) + f"; {bwrap}. Probed at run time only",
                   hint=None if caps.bwrap.ok else "; ".join(hints))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _container_signals() -> list[str]:
    found = [f"{path} ({kind})" for path, kind in CONTAINER_MARKERS.items() if os.path.exists(path)]
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        found.append("KUBERNETES_SERVICE_HOST set (Kubernetes)")
    env = _read("/proc/1/environ")
    for var in (env or "").split("\0"):
        if var.startswith("container="):
            found.append(f"pid 1 has {var}")
    return found


def detect(caps: HostCapabilities) -> list[Finding]:
    mounts = parse_mountinfo(_read("/proc/self/mountinfo") or "")
    v2 = {m.point: set((_read(os.path.join(m.point, "cgroup.controllers")) or "").split())
          for m in mounts if m.fstype == "cgroup2"}
    sysctls = {name: _read(path) for name, path in USERNS_SYSCTLS.items()}
    return [propagation(mounts), cgroups(mounts, v2, caps), container(_container_signals(), caps),
            user_namespaces(sysctls, caps)]
