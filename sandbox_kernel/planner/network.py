"""Network layer: deny = a fresh namespace with only loopback; allowlist (and unrestricted with
the metadata block) = a namespace the supervisor owns, filtered by nft, plumbed by slirp4netns.

No blackhole and no open hole: an allowlist is either really plumbed and filtered or it is a
downgrade. Under ``degrade`` an unplumbable allowlist runs with *no* network (safe, and the
report says the allowed destinations are unreachable); only ``unrestricted`` keeps host net.

Some destinations open only to an allow entry that names them *exactly* (a broad entry such
as ``10.0.0.0/8``, or ``unrestricted``, does not reach them), because slirp4netns connects
from the host: the host's own addresses (its services listening on the LAN address), slirp's
10.0.2.2 (the host's loopback) and slirp's resolver 10.0.2.3:53 (the host's DNS).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..host import HostCapabilities
from ..policy import METADATA_NETWORKS, AllowRule, NetworkPolicy
from ..report import Downgrade, LayerState, Note

# slirp4netns's fixed addressing inside the namespace.
SLIRP_NETWORK = ipaddress.ip_network("10.0.2.0/24")  # the namespace's side of slirp
SLIRP_GATEWAY = ipaddress.ip_address("10.0.2.2")  # = the host's loopback, if not disabled
SLIRP_DNS = ipaddress.ip_address("10.0.2.3")  # forwards to the host's resolver
TABLE = "sandbox_egress"


@dataclass(frozen=True)
class EgressPlan:
    ruleset: str
    rootless: bool  # True: the namespace lives in a user namespace the supervisor owns
    slirp_flags: list[str]
    dns: bool
    unshare: str
    nsenter: str
    nft: str
    slirp4netns: str


@dataclass
class NetworkDecision:
    bwrap_flag: str  # "--unshare-net" or "--share-net"
    layer: LayerState
    egress: EgressPlan | None = None
    nameserver: str | None = None  # for the staged resolv.conf
    downgrades: list[Downgrade] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def _rule_match(rule: AllowRule) -> list[str]:
    family = "ip" if rule.network.version == 4 else "ip6"
    where = f"{family} daddr {rule.network.with_prefixlen}"
    if rule.port is None:
        return [f"{where} accept"]
    return [f"{where} tcp dport {rule.port} accept", f"{where} udp dport {rule.port} accept"]


def _reject(networks) -> list[str]:
    lines = []
    for version, family in ((4, "ip"), (6, "ip6")):
        listed = ", ".join(n.with_prefixlen for n in networks if n.version == version)
        if listed:
            lines.append(f"    {family} daddr {{ {listed} }} reject with icmpx type admin-prohibited")
    return lines


def build_ruleset(rules: list[AllowRule], block_metadata: bool, default_accept: bool,
                  exact_only: tuple = ()) -> str:
    """nft text for the sandbox namespace. Every element comes from parsed ``ipaddress``
    objects and ints, never from raw policy strings, so entries cannot inject rule text.
    ``reject`` rather than ``drop``: a refused connect fails at once instead of hanging.
    ``exact_only``: networks refused although an entry (or unrestricted) covers them."""
    out = [f"table inet {TABLE} {{", "  chain output {", "    type filter hook output priority 0; policy drop;"]
    # First, so no allow entry below can re-open them.
    if block_metadata:
        out += _reject(METADATA_NETWORKS)
    out += _reject(exact_only)
    out += ['    oif "lo" accept', "    ct state established,related accept"]
    if default_accept:
        out += ["    accept"]
    else:
        for rule in rules:
            out += [f"    {line}" for line in _rule_match(rule)]
        out += ["    meta l4proto tcp reject with tcp reset", "    reject with icmpx type admin-prohibited"]
    out += ["  }", "  chain input {", "    type filter hook input priority 0; policy drop;",
            '    iif "lo" accept', "    ct state established,related accept", "  }", "}", ""]
    return "\n".join(out)


def plan_network(net: NetworkPolicy, caps: HostCapabilities) -> NetworkDecision:
    wrapper = caps.bwrap
    if net.mode == "unrestricted" and not net.block_metadata:
        return NetworkDecision("--share-net", LayerState("not-requested", "host network"))

    rules = net.rules()
    if net.mode == "deny" or (net.mode == "allowlist" and not rules):
        if not wrapper.ok:
            return NetworkDecision(
                "--share-net", LayerState("degraded", None),
                downgrades=[Downgrade("network", f"network deny needs a fresh network namespace from bwrap, which is unavailable: {wrapper.error}; egress unrestricted")],
            )
        return NetworkDecision(
            "--unshare-net",
            LayerState("enforced", "netns", {"interfaces": ["lo"], "dns": False}),
            notes=[Note("network", "name resolution is unavailable: the sandbox has loopback only")],
        )

    # allowlist with entries, or unrestricted + metadata block: needs plumbed, filtered egress.
    problems = []
    if not wrapper.ok:
        problems.append(f"bwrap is unavailable ({wrapper.error})")
    if not caps.egress.ok:
        problems.append(f"egress plumbing is unavailable ({caps.egress.error})")
    if problems:
        reason = "; ".join(problems)
        if net.mode == "unrestricted":
            return NetworkDecision(
                "--share-net", LayerState("degraded", "host network"),
                downgrades=[Downgrade("network", f"the metadata block needs a filtered, plumbed namespace: {reason}; host network kept and metadata addresses are NOT blocked")],
            )
        fallback = "--unshare-net" if wrapper.ok else "--share-net"
        consequence = "the run has no network at all (allowed destinations are unreachable)" if wrapper.ok else "egress unrestricted"
        return NetworkDecision(
            fallback, LayerState("degraded", "netns" if wrapper.ok else None),
            downgrades=[Downgrade("network", f"allowlist needs a filtered, plumbed namespace (nft + slirp4netns): {reason}; {consequence}")],
        )

    notes: list[Note] = []
    downgrades: list[Downgrade] = []
    effective_rules = rules
    v6 = [r for r in rules if r.network.version == 6]
    if v6 and net.mode == "allowlist":
        # slirp4netns is started without IPv6: these destinations would be a silent blackhole.
        downgrades.append(Downgrade("network", "slirp4netns egress is IPv4-only, so these allowed destinations are unreachable: " + ", ".join(map(str, v6))))
    if net.block_metadata:
        dropped = [r for r in rules if r.overlaps_metadata()]
        if dropped:
            notes.append(Note("network", "metadata ranges stay blocked although allowed: " + ", ".join(map(str, dropped))))
    def named_exactly(network, port=None) -> bool:
        """An entry for exactly this network (and, if given, for this port or every port)."""
        return any(r.network == network and (port is None or r.port in (None, port)) for r in effective_rules)

    default_accept = net.mode == "unrestricted"
    # 10.0.2.2 is slirp's door to the host's loopback (the Jupyter server, databases...) and
    # 10.0.2.3:53 its door to the host's resolver: each open only to an entry naming exactly it.
    host_loopback = not default_accept and named_exactly(ipaddress.ip_network(SLIRP_GATEWAY))
    dns = default_accept or named_exactly(ipaddress.ip_network(SLIRP_DNS), 53)
    # The host's own addresses (slirp connects from the host, so the host's services are one
    # hop away), outside slirp's own network: refused unless an entry names one exactly.
    host_nets = [ipaddress.ip_network(a) for a in caps.host_addresses]
    host_blocked = [n for n in host_nets if not n.overlaps(SLIRP_NETWORK) and not named_exactly(n)]
    exact_only = tuple(host_blocked) + tuple(
        ipaddress.ip_network(a) for a, open_ in ((SLIRP_GATEWAY, host_loopback), (SLIRP_DNS, dns)) if not open_)
    covered = [n for n in host_blocked if any(r.network.version == n.version and r.network.overlaps(n) for r in effective_rules)]
    if covered:
        notes.append(Note("network", "the host's own addresses stay refused although an allow entry covers them "
                                     "(name one exactly to reach it): " + ", ".join(map(str, covered))))
    flags = ["--enable-sandbox", "--enable-seccomp"]
    if not host_loopback:
        flags.append("--disable-host-loopback")
    if not dns:
        flags.append("--disable-dns")
        notes.append(Note("network", f"name resolution is unavailable: allow exactly {SLIRP_DNS}:53 to use the host's resolver"))
    egress = EgressPlan(
        ruleset=build_ruleset(effective_rules, net.block_metadata, default_accept, exact_only),
        rootless=caps.euid != 0,
        slirp_flags=flags,
        dns=dns,
        unshare=caps.tool("unshare"),
        nsenter=caps.tool("nsenter"),
        nft=caps.tool("nft"),
        slirp4netns=caps.tool("slirp4netns"),
    )
    mechanism = "nft+slirp4netns"
    detail = {
        "allow": [str(r) for r in effective_rules] if not default_accept else "all except metadata",
        "metadata_blocked": net.block_metadata,
        "host_loopback": bool(host_loopback),
        "host_addresses_blocked": [str(n) for n in host_blocked],
        "dns": dns,
        "refusal": "reject",
    }
    return NetworkDecision(
        "--share-net", LayerState("degraded" if downgrades else "enforced", mechanism, detail), egress=egress,
        nameserver=str(SLIRP_DNS) if dns else None, downgrades=downgrades, notes=notes,
    )
