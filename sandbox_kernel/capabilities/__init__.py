"""What this host can really enforce, found by running each mechanism once per process.

A tool on PATH proves nothing (a masked /proc, a seccomp profile that forbids user
namespaces, a netns without CAP_NET_ADMIN all pass a PATH check and fail at spawn). So each
probe runs the real thing, one module per mechanism: bwrap with the planner's own flags as the
sandbox uid (``probe_bwrap``), a seccomp filter loaded by bwrap (``probe_seccomp``), prlimit
and setpriv (``probe_rlimits``), a namespace with an nft ruleset and slirp4netns attached, no
packet sent (``probe_egress``), the filtering resolver answering NXDOMAIN inside such a
namespace (``probe_resolver``), a cgroup created, limited and removed (``probe_cgroup``), a
session's scratch tmpfs (``probe_session``), a uid lease (``probe_uids``). Probes run in
parallel; the result is cached for the life of the process.

The results are plain data (:class:`~sandbox_kernel.host.HostCapabilities`, in ``host``,
which is all the planner imports). Probes may use the launch shell; the launch shell never
imports them: whoever starts a run hands it the capabilities (``detect()``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ..host import (APT_PACKAGE, CGROUP_PARENT, TOOLS, Capability, HostCapabilities, find_tools, hidden_dirs,
                    host_addresses, host_layout)
from ..runtime import python_runtime_paths
from . import (probe_bwrap, probe_cgroup, probe_egress, probe_landlock, probe_resolver, probe_rlimits, probe_seccomp,
               probe_session, probe_uids)

__all__ = ["detect", "probe", "Capability", "HostCapabilities", "TOOLS", "APT_PACKAGE", "CGROUP_PARENT",
           "python_runtime_paths"]

log = logging.getLogger(__name__)

_cache: HostCapabilities | None = None
_by_parent: dict[str, HostCapabilities] = {}
_lock = threading.Lock()


def probe() -> HostCapabilities:
    """Run every probe now (uncached)."""
    t0 = time.monotonic()
    euid, egid = os.geteuid(), os.getegid()
    tools, layout = find_tools(), host_layout()
    if sys.platform != "linux":
        no = Capability(False, error=f"OS-level isolation needs Linux; this host is {sys.platform}")
        return HostCapabilities(platform=sys.platform, euid=euid, egid=egid, user_name="?", tools=tools,
                                host_layout=layout, **{name: no for name in _probe_names()})
    uid_range, lease = probe_uids.probe(euid)
    try:
        caps = _probe_all(tools, euid, egid, layout, uid_range, lease)
    finally:
        if lease is not None:
            lease.release()
    caps = replace(caps, probe_seconds=time.monotonic() - t0)
    failed = {name: cap.error for name, cap in caps.probes().items() if not cap.ok}
    log.info("host probed in %.0f ms as uid %d; failed probes: %s", caps.probe_seconds * 1000, euid, failed or "none")
    return caps


def _probe_names() -> tuple[str, ...]:
    return tuple(HostCapabilities(platform="", euid=0, egid=0, user_name="", tools={}, host_layout={}).probes())


def _probe_all(tools, euid, egid, layout, uid_range: Capability, lease) -> HostCapabilities:
    with ThreadPoolExecutor(max_workers=6) as pool:
        f_prlimit = pool.submit(probe_rlimits.probe_prlimit, tools)
        f_setpriv = pool.submit(probe_rlimits.probe_setpriv, tools, euid, lease)
        f_egress = pool.submit(probe_egress.probe, tools, euid)
        f_resolver = pool.submit(probe_resolver.probe, tools, euid)
        f_mem = pool.submit(probe_cgroup.probe, "memory", euid)
        f_pids = pool.submit(probe_cgroup.probe, "pids", euid)
        f_session = pool.submit(probe_session.probe, tools, euid)
        seccomp = probe_seccomp.probe()
        f_bwrap = pool.submit(probe_bwrap.probe, tools, euid, uid_range, layout, seccomp)
        landlock = probe_landlock.probe()
        bwrap, interpreter = f_bwrap.result()
        return HostCapabilities(
            platform=sys.platform, euid=euid, egid=egid,
            user_name=uid_range.detail.get("name", str(euid)) if euid != 0 else "root",
            tools=tools, host_layout=layout, bwrap=bwrap, setpriv=f_setpriv.result(), prlimit=f_prlimit.result(),
            seccomp=seccomp, egress=f_egress.result(), resolver=f_resolver.result(),
            cgroup_memory=f_mem.result(), cgroup_pids=f_pids.result(),
            landlock=landlock, uid_range=uid_range, interpreter=interpreter, session=f_session.result(),
            host_addresses=host_addresses(), hidden_dirs=hidden_dirs(),
        )


def detect(cgroup_parent: str | None = None) -> HostCapabilities:
    """The cached probe result for this process; with ``cgroup_parent`` (a policy's
    ``resources.cgroup_parent``), its cgroup probes re-run once below that parent."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = probe()
        if cgroup_parent is None:
            return _cache
        if cgroup_parent not in _by_parent:
            _by_parent[cgroup_parent] = replace(
                _cache, cgroup_memory=probe_cgroup.probe("memory", _cache.euid, cgroup_parent),
                cgroup_pids=probe_cgroup.probe("pids", _cache.euid, cgroup_parent))
        return _by_parent[cgroup_parent]
