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
from ..policy import METADATA_NETWORKS, AllowRule, NameRule, NetworkPolicy
from ..report import Downgrade, LayerState, Note

# slirp4netns's fixed addressing inside the namespace.
SLIRP_NETWORK = ipaddress.ip_network("10.0.2.0/24")  # the namespace's side of slirp
SLIRP_GATEWAY = ipaddress.ip_address("10.0.2.2")  # = the host's loopback, if not disabled
SLIRP_DNS = ipaddress.ip_address("10.0.2.3")  # forwards to the host's resolver
TABLE = "sandbox_egress"
# Host-name entries: a filtering resolver (dnsmasq) in the egress namespace, on the sandbox's
# loopback. It sends upstream (slirp's resolver) from a fixed port below 1024, which nothing
# in the sandbox can bind (no capability in the namespace's owning user namespace): that port,
# not a uid, tells its queries from the sandbox's, also for a non-root supervisor whose
# sandbox has the same host uid as the resolver.
RESOLVER_ADDRESS = "127.0.0.53"
RESOLVER_QUERY_PORT = 153
# dnsmasq adds answered addresses to the nft set but does not pass the record's TTL, so the
# set's own timeout bounds how long an address stays reachable after its last answer.
NAME_SET_TIMEOUT = 300


@dataclass(frozen=True)
class ResolverPlan:
    argv: list[str]  # the filtering resolver, run inside the egress namespace
    names: list[str]


def name_set(port: int) -> str:
    return f"names_{port}"


def resolver_argv(names: list[NameRule], dnsmasq: str, rootless: bool) -> list[str]:
    """dnsmasq answering only ``names`` (NXDOMAIN for the rest), forwarding them to slirp's
    resolver and adding every answered IPv4 address to the nft set of the entry's port.
    Names come from validated LDH labels, never from raw policy strings. Nothing is written:
    no pid file, no lease file, no cache (a cached answer would not refill the set), logs to
    stderr, no /etc/dnsmasq.conf, /etc/hosts or /etc/resolv.conf read."""
    argv = [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--log-facility=-",
            "--no-resolv", "--no-hosts", "--no-poll", "--cache-size=0", "--filter-AAAA",
            f"--listen-address={RESOLVER_ADDRESS}", "--bind-interfaces",
            f"--query-port={RESOLVER_QUERY_PORT}", "--address=/#/"]
    # Root: drop to nobody (dnsmasq keeps CAP_NET_ADMIN for the set). Rootless: the holder's
    # user namespace maps only its root, so stay (an empty user/group means "do not change").
    argv += ["--user=nobody", "--group=nogroup"] if not rootless else ["--user=", "--group="]
    patterns = sorted({n.name for n in names})
    for pattern in patterns:
        ports = sorted({n.port for n in names if n.matches(pattern)})
        argv.append(f"--server=/{pattern}/{SLIRP_DNS}")
        argv.append(f"--nftset=/{pattern}/" + ",".join(f"4#inet#{TABLE}#{name_set(p)}" for p in ports))
        if not any(n.wildcard and n.matches(pattern) for n in names):
            argv.append(f"--address=/*.{pattern}/")  # a plain name: its subdomains are NXDOMAIN
    return argv


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
    resolver: ResolverPlan | None = None


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
                  exact_only: tuple = (), name_ports: tuple = (), set_timeout: int = NAME_SET_TIMEOUT) -> str:
    """nft text for the sandbox namespace. Every element comes from parsed ``ipaddress``
    objects and ints, never from raw policy strings, so entries cannot inject rule text.
    ``reject`` rather than ``drop``: a refused connect fails at once instead of hanging.
    ``exact_only``: networks refused although an entry (or unrestricted) covers them.
    ``name_ports``: one timed address set per port of a host-name entry, filled by the
    resolver; the metadata and host rejects come first, so a name resolving there is refused."""
    out = [f"table inet {TABLE} {{"]
    for port in name_ports:
        out.append(f"  set {name_set(port)} {{ type ipv4_addr; flags timeout; timeout {int(set_timeout)}s; }}")
    out += ["  chain output {", "    type filter hook output priority 0; policy drop;"]
    if name_ports:
        # The resolver's upstream queries, before the reject of slirp's resolver below.
        out.append(f"    ip daddr {SLIRP_DNS} udp sport {RESOLVER_QUERY_PORT} udp dport 53 accept")
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
        for port in name_ports:
            out.append(f"    ip daddr @{name_set(port)} meta l4proto {{ tcp, udp }} th dport {port} accept")
        out += ["    meta l4proto tcp reject with tcp reset", "    reject with icmpx type admin-prohibited"]
    out += ["  }", "  chain input {", "    type filter hook input priority 0; policy drop;",
            '    iif "lo" accept', "    ct state established,related accept", "  }", "}", ""]
    return "\n".join(out)


def plan_network(net: NetworkPolicy, caps: HostCapabilities) -> NetworkDecision:
    wrapper = caps.bwrap
    if net.mode == "unrestricted" and not net.block_metadata:
        return NetworkDecision("--share-net", LayerState("not-requested", "host network"))

    rules = net.rules()
    names = net.names() if net.mode == "allowlist" else []
    if net.mode == "deny" or (net.mode == "allowlist" and not rules and not names):
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
    if names and not caps.resolver.ok:
        problems.append(f"host-name entries need the filtering resolver, which is unavailable ({caps.resolver.error})")
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
    # Host-name entries need slirp's resolver as the filtering resolver's upstream; the
    # sandbox itself still reaches it only if an entry names it exactly (see build_ruleset).
    slirp_dns = dns or bool(names)
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
    if not slirp_dns:
        flags.append("--disable-dns")
    if not dns and not names:
        notes.append(Note("network", f"name resolution is unavailable: allow exactly {SLIRP_DNS}:53 to use the host's resolver"))
    name_ports = tuple(sorted({n.port for n in names}))
    resolver = ResolverPlan(resolver_argv(names, caps.tool("dnsmasq"), caps.euid != 0), [str(n) for n in names]) if names else None
    if names:
        notes.append(Note("network", "host-name entries: an address an allowed name resolves to is reachable on that entry's "
                                     "port by any name served there (e.g. a CDN address shared with other sites)"))
        notes.append(Note("network", f"an answered address stays reachable for {NAME_SET_TIMEOUT} s after its last answer "
                                     "(the set's timeout; the resolver does not pass the record's TTL)"))
    egress = EgressPlan(
        ruleset=build_ruleset(effective_rules, net.block_metadata, default_accept, exact_only, name_ports, NAME_SET_TIMEOUT),
        rootless=caps.euid != 0,
        slirp_flags=flags,
        dns=dns,
        unshare=caps.tool("unshare"),
        nsenter=caps.tool("nsenter"),
        nft=caps.tool("nft"),
        slirp4netns=caps.tool("slirp4netns"),
        resolver=resolver,
    )
    mechanism = "nft+slirp4netns+dnsmasq" if names else "nft+slirp4netns"
    detail = {
        "allow": [str(r) for r in effective_rules] if not default_accept else "all except metadata",
        "metadata_blocked": net.block_metadata,
        "host_loopback": bool(host_loopback),
        "host_addresses_blocked": [str(n) for n in host_blocked],
        "dns": dns,
        "refusal": "reject",
    }
    if names:
        detail["names"] = [str(n) for n in names]
        detail["resolver"] = {"program": "dnsmasq", "address": RESOLVER_ADDRESS, "answers": "allowed names only, NXDOMAIN otherwise",
                              "ipv6": "AAAA filtered (egress is IPv4-only)", "set_timeout_seconds": NAME_SET_TIMEOUT}
        detail["dns"] = True  # through the filtering resolver (see "resolver")
    return NetworkDecision(
        "--share-net", LayerState("degraded" if downgrades else "enforced", mechanism, detail), egress=egress,
        nameserver=RESOLVER_ADDRESS if names else str(SLIRP_DNS) if dns else None, downgrades=downgrades, notes=notes,
    )
