"""The host's facts, as data the planner reads: which tools are where, what each mechanism's
probe found (:class:`HostCapabilities`), the layout of the system dirs, the host's own
addresses, the config dirs to hide.

The bottom of the house: this module imports nothing of the package, and nothing here runs a
process. The probes that fill :class:`Capability` records by
running the real mechanisms live in :mod:`sandbox_kernel.capabilities` (which may use the
launch shell); the readers here only look at files (``/proc``, the system dirs).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Capability", "HostCapabilities", "TOOLS", "APT_PACKAGE", "CGROUP_PARENT", "SYSTEM_DIRS",
           "find_tools", "host_layout", "host_addresses", "hidden_dirs", "missing_tool"]

CGROUP_PARENT = "sandbox-kernel"  # the product's cgroup below each hierarchy's root
TOOLS = ("bwrap", "setpriv", "prlimit", "unshare", "nsenter", "nft", "slirp4netns", "pasta", "dnsmasq")
APT_PACKAGE = {"bwrap": "bubblewrap", "nft": "nftables", "slirp4netns": "slirp4netns", "pasta": "passt",
               "setpriv": "util-linux", "prlimit": "util-linux", "unshare": "util-linux", "nsenter": "util-linux",
               "dnsmasq": "dnsmasq-base"}
# The host's system dirs, bound read-only whole into every sandbox (planner/filesystem.py).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Capability:
    """What one probe found: ``ok`` only if the mechanism really worked on this host."""

    ok: bool
    evidence: str = ""
    error: str | None = None
    hint: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "evidence": self.evidence, "error": self.error, "hint": self.hint, **self.detail}


def missing_tool(tool: str) -> Capability:
    return Capability(False, error=f"{tool} not found on PATH", hint=f"apt-get install {APT_PACKAGE.get(tool, tool)}")


NOT_PROBED = Capability(False, error="not probed")


@dataclass(frozen=True)
class HostCapabilities:
    """Everything the planner knows about the host. Every :class:`Capability` field is one
    probe's result (:meth:`probes` lists them in declaration order)."""

    platform: str
    euid: int
    egid: int
    user_name: str
    tools: dict[str, str | None]
    host_layout: dict[str, str | None]  # /bin etc.: "dir", a symlink target, or None
    bwrap: Capability = NOT_PROBED
    setpriv: Capability = NOT_PROBED
    prlimit: Capability = NOT_PROBED
    seccomp: Capability = NOT_PROBED
    egress: Capability = NOT_PROBED
    resolver: Capability = NOT_PROBED  # the filtering resolver of host-name allow entries
    cgroup_memory: Capability = NOT_PROBED
    cgroup_pids: Capability = NOT_PROBED
    landlock: Capability = NOT_PROBED
    uid_range: Capability = NOT_PROBED  # root: per-kernel uids can be leased; non-root: the one uid of all sandboxes
    interpreter: Capability = NOT_PROBED
    # A kernel session's shared scratch (launch/session.py). Not a security layer: without it
    # each sandbox gets a private scratch and cells do not see the kernel's files.
    session: Capability = NOT_PROBED
    # The host's own addresses (its network namespace's local routes, loopback aside): what
    # slirp4netns would reach on a sandbox's behalf. A fact, re-read before each run.
    host_addresses: tuple[str, ...] = ()
    hidden_dirs: tuple[str, ...] = ()  # inside the bound system dirs, masked (see hidden_dirs())
    probe_seconds: float = 0.0

    def tool(self, name: str) -> str:
        return self.tools.get(name) or name

    def probes(self) -> dict[str, Capability]:
        """Each probe's result by name, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type in (Capability, "Capability")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform, "euid": self.euid, "user": self.user_name,
            "probe_seconds": round(self.probe_seconds, 3), "tools": self.tools,
            "capabilities": {k: v.to_dict() for k, v in self.probes().items()},
        }


def find_tools() -> dict[str, str | None]:
    """Each tool as found on PATH as the operator set it (hiding a tool hides its layer),
    resolved to its real path: prlimit runs *inside* the sandbox, where only system dirs exist."""
    return {t: os.path.realpath(p) if (p := shutil.which(t)) else None for t in TOOLS}


def host_layout() -> dict[str, str | None]:
    """Each system dir: "dir", the target of a (merged-/usr) symlink, or None if absent."""
    layout: dict[str, str | None] = {}
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            layout[path] = os.readlink(path)
        elif os.path.isdir(path):
            layout[path] = "dir"
        else:
            layout[path] = None
    return layout


def host_addresses() -> tuple[str, ...]:
    """The networks the host answers on as its own, as CIDR strings, loopback excluded: every
    LOCAL route of /proc/net/fib_trie (interface addresses, and whole prefixes routed
    ``local``) and every address of /proc/net/if_inet6. Read for the network namespace the
    supervisor runs in, which is where slirp4netns opens its connections."""
    found: list = []
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    address = None
    for line in lines:
        text = line.strip()
        if text.startswith("|-- "):
            address = text[4:]
        elif text.startswith("/") and address is not None and text.endswith(" host LOCAL"):
            found.append(ipaddress.ip_network(f"{address}{text.split()[0]}", strict=False))
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                parts = line.split()
                if parts:
                    found.append(ipaddress.IPv6Network((int(parts[0], 16), 128)))
    except (OSError, ValueError):
        pass
    out: list[str] = []
    for net in found:
        if net.network_address.is_loopback or str(net) in out:
            continue
        out.append(str(net))
    return tuple(out)


def hidden_dirs() -> tuple[str, ...]:
    """Config dirs of interpreter prefixes that live inside the system dirs the sandbox binds
    whole (``/usr/etc``, ``/usr/local/etc``): hidden behind an empty read-only tmpfs. Jupyter
    reads ``/usr/local/etc/jupyter`` and ``<prefix>/etc/jupyter``; npm keeps its global
    ``npmrc`` (registry tokens) in ``<prefix>/etc``."""
    out = []
    for prefix in (sys.prefix, sys.base_prefix, "/usr", "/usr/local"):
        etc = os.path.join(prefix, "etc")
        inside = any(etc.startswith(d + "/") for d in SYSTEM_DIRS)
        if inside and os.path.isdir(etc) and not os.path.islink(etc) and etc not in out:
            out.append(etc)
    return tuple(out)
