"""Probe: the filtering resolver of host-name allow entries. In an egress namespace (no
slirp4netns attached, so nothing can leave the machine) with the ruleset that has a name set,
dnsmasq starts with one allowed name and answers NXDOMAIN to an unlisted one from inside."""

from __future__ import annotations

import sys

from ..errors import EgressError
from ..host import APT_PACKAGE, Capability
from ..launch.egress import start_resolver, stop_resolver
from ..launch.holder import HolderError, close_streams, start_holder
from ..planner.network import RESOLVER_ADDRESS, build_ruleset, resolver_argv
from ..policy import parse_name_entry
from .common import describe_failure as _err
from .common import run as _run

# A DNS query (id 0x5342, recursion desired) for "unlisted.invalid" type A: the resolver must
# answer it itself with NXDOMAIN (rcode 3), since only probe.invalid is allowed.
QUERY = r"""
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x5342, 0x0100, 1, 0, 0, 0) + b"\x08unlisted\x07invalid\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, (sys.argv[1], 53))
r = s.recv(512)
print(r[3] & 15 if r[:2] == q[:2] else "mismatch")
"""


def probe(tools, euid) -> Capability:
    missing = [t for t in ("unshare", "nsenter", "nft", "dnsmasq") if not tools[t]]
    if missing:
        return Capability(False, error=f"{', '.join(missing)} not found on PATH",
                          hint="apt-get install " + " ".join(sorted({APT_PACKAGE[t] for t in missing})))
    rootless = euid != 0
    names = [parse_name_entry("probe.invalid:443")]
    prefix = [tools["unshare"], "--net"] + (["--user", "--map-root-user"] if rootless else [])
    try:
        holder = start_holder(prefix, "ip link set lo up")
    except HolderError as e:
        return Capability(False, error=f"could not create a network namespace: {e}")
    try:
        net = f"--net=/proc/{holder.pid}/ns/net"
        enter = ([tools["nsenter"], "--preserve-credentials", f"--user=/proc/{holder.pid}/ns/user", net, "--"]
                 if rootless else [tools["nsenter"], net, "--"])
        load = _run(enter + [tools["nft"], "-f", "-"], input=build_ruleset([], True, False, name_ports=(443,)).encode())
        if load.returncode != 0:
            return Capability(False, error=f"nft could not load a ruleset with a name set: {_err(load)}")
        try:
            resolver = start_resolver(resolver_argv(names, tools["dnsmasq"], rootless), enter, tools["unshare"])
        except EgressError as e:
            return Capability(False, error=str(e), hint="dnsmasq-base 2.87+ (built with nftset) is needed")
        try:
            answer = _run(enter + [sys.executable, "-I", "-c", QUERY, RESOLVER_ADDRESS])
        finally:
            stop_resolver(resolver)
        if answer.returncode != 0 or answer.stdout.strip() != b"3":
            return Capability(False, error=f"the resolver did not refuse an unlisted name: {_err(answer)}")
    finally:
        holder.kill()
        holder.wait()
        close_streams(holder)
    return Capability(True, "dnsmasq in a namespace with a name set answered NXDOMAIN for an unlisted name; no packet left it",
                      detail={"program": "dnsmasq", "rootless": rootless})
