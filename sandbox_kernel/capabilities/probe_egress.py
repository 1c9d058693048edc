"""Probe: an egress network namespace with the nft ruleset loaded and slirp4netns attached
(no packet is sent). The body is the launch shell's own ``bring_up`` with a throwaway plan."""

from __future__ import annotations

from ..errors import EgressError
from ..host import APT_PACKAGE, Capability
from ..launch.egress import bring_up
from ..planner.network import EgressPlan, build_ruleset
from ..policy import parse_allow_entry
from .common import describe_failure as _err
from .common import run as _run


def probe(tools, euid) -> Capability:
    missing = [t for t in ("unshare", "nsenter", "nft", "slirp4netns") if not tools[t]]
    if missing:
        return Capability(False, error=f"{', '.join(missing)} not found on PATH",
                          hint="apt-get install " + " ".join(sorted({APT_PACKAGE[t] for t in missing})))
    plan = EgressPlan(
        ruleset=build_ruleset([parse_allow_entry("192.0.2.1:9")], True, False), rootless=euid != 0,
        slirp_flags=["--enable-sandbox", "--enable-seccomp", "--disable-host-loopback", "--disable-dns"], dns=False,
        unshare=tools["unshare"], nsenter=tools["nsenter"], nft=tools["nft"], slirp4netns=tools["slirp4netns"],
    )
    try:
        handle = bring_up(plan)
    except EgressError as e:
        hint = ("slirp4netns needs /dev/net/tun (mode 0666 for a non-root supervisor: chmod 0666 /dev/net/tun); "
                "nft needs CONFIG_NF_TABLES; a non-root supervisor needs unprivileged user namespaces")
        return Capability(False, error=str(e), hint=hint)
    try:
        listing = _run(handle.join_prefix + [tools["nft"], "list", "table", "inet", "sandbox_egress"])
        if listing.returncode != 0 or b"reject" not in listing.stdout:
            return Capability(False, error=f"ruleset not in force after loading: {_err(listing)}")
        ms = {k: round(v * 1000, 1) for k, v in handle.timings.items()}
    finally:
        handle.close()
    return Capability(True, f"namespace + nft ruleset + slirp4netns up (ms: {ms}); no packet sent",
                      detail={"backend": "slirp4netns", "rootless": euid != 0})
