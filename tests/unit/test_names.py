"""Host-name allow entries: parsing, narrowing, and what the planner makes of them (the
resolver's argv and the ruleset's sets). Pure: no process is started."""

from __future__ import annotations

import ipaddress

import pytest

from sandbox_kernel.errors import PolicyError
from sandbox_kernel.planner.network import RESOLVER_ADDRESS, RESOLVER_QUERY_PORT, build_ruleset, resolver_argv
from sandbox_kernel.policy import NameRule, parse_entry, parse_name_entry, policy_from_dict, tighten

from .hosts import downgrades, host, layer, notes, policy, run_plan


@pytest.mark.parametrize("entry,expected", [
    ("pypi.org:443", NameRule("pypi.org", 443)),
    ("PyPI.org.:443", NameRule("pypi.org", 443)),
    ("*.githubusercontent.com:443", NameRule("githubusercontent.com", 443, wildcard=True)),
    ("xn--bcher-kva.example:8080", NameRule("xn--bcher-kva.example", 8080)),
])
def test_name_entries_parse(entry, expected):
    assert parse_entry(entry) == expected


@pytest.mark.parametrize("entry", [
    "pypi.org",  # no port: a name entry must say which port
    "pypi.org:0", "pypi.org:65536", "*.org:443", "*.*.example.com:443", "a*.example.com:443", "-a.example.com:443",
    "a..example.com:443", "a b.example.com:443", "pypi.org/x:443", "pypi.org:443#inet", "bücher.example:443",
    "pypi.org\n:443", "pypi.org:443,4#inet#t#s",
    "1.2.3.4.5:80", "example.123:80", "a" * 64 + ".example:443",
])
def test_bad_name_entries_are_refused_naming_the_entry(entry):
    with pytest.raises(PolicyError) as e:
        policy_from_dict({"network": {"mode": "allowlist", "allow": [entry]}})
    assert "network.allow" in str(e.value) and repr(entry)[1:-1][:20] in str(e.value)


def test_ip_entries_still_parse_as_addresses():
    pol = policy_from_dict({"network": {"mode": "allowlist", "allow": ["10.0.0.0/8:443", "pypi.org:443"]}})
    assert [str(r) for r in pol.network.rules()] == ["10.0.0.0/8:443"]
    assert [str(n) for n in pol.network.names()] == ["pypi.org:443"]


@pytest.mark.parametrize("base,narrower", [
    (["*.example.com:443"], ["a.example.com:443"]),
    (["*.example.com:443"], ["*.b.example.com:443"]),
    (["*.example.com:443"], ["example.com:443"]),
    (["pypi.org:443", "files.pythonhosted.org:443"], ["pypi.org:443"]),
])
def test_overrides_may_narrow_names(base, narrower):
    b = policy_from_dict({"network": {"mode": "allowlist", "allow": base}})
    assert tighten(b, {"network": {"mode": "allowlist", "allow": narrower}}).network.allow == narrower


@pytest.mark.parametrize("base,wider", [
    (["pypi.org:443"], ["evil.example:443"]),
    (["pypi.org:443"], ["pypi.org:80"]),
    (["pypi.org:443"], ["*.pypi.org:443"]),
    (["pypi.org:443"], ["x.pypi.org:443"]),
    (["a.example.com:443"], ["*.example.com:443"]),
    (["203.0.113.0/24:443"], ["pypi.org:443"]),
])
def test_overrides_cannot_widen_names(base, wider):
    b = policy_from_dict({"network": {"mode": "allowlist", "allow": base}})
    with pytest.raises(PolicyError) as e:
        tighten(b, {"network": {"mode": "allowlist", "allow": wider}})
    assert "network.allow" in str(e.value) and wider[0] in str(e.value)


def test_resolver_answers_only_the_names_and_fills_per_port_sets():
    names = [parse_name_entry(e) for e in ("pypi.org:443", "*.example.com:443", "a.example.com:8443")]
    argv = resolver_argv(names, "/usr/sbin/dnsmasq", rootless=False)
    assert "--address=/#/" in argv and f"--listen-address={RESOLVER_ADDRESS}" in argv
    assert f"--query-port={RESOLVER_QUERY_PORT}" in argv and "--cache-size=0" in argv
    assert "--pid-file=" in argv and "--conf-file=/dev/null" in argv and "--log-facility=-" in argv
    assert "--server=/pypi.org/10.0.2.3" in argv
    assert "--address=/*.pypi.org/" in argv  # a plain name: its subdomains are refused
    assert "--address=/*.example.com/" not in argv and "--address=/*.a.example.com/" not in argv  # under a wildcard
    assert "--nftset=/pypi.org/4#inet#sandbox_egress#names_443" in argv
    # a.example.com is reachable on its own port and, being under *.example.com, on 443.
    assert "--nftset=/a.example.com/4#inet#sandbox_egress#names_443,4#inet#sandbox_egress#names_8443" in argv
    assert ["--user=nobody", "--group=nogroup"] == [a for a in argv if a.startswith(("--user", "--group"))]
    assert [a for a in resolver_argv(names, "dnsmasq", rootless=True) if a.startswith(("--user", "--group"))] == ["--user=", "--group="]


def test_ruleset_rejects_metadata_and_host_before_the_name_sets():
    exact_only = (ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_network("10.0.2.3/32"))
    text = build_ruleset([], True, False, exact_only, name_ports=(443,), set_timeout=7)
    lines = [line.strip() for line in text.splitlines()]
    assert "set names_443 { type ipv4_addr; flags timeout; timeout 7s; }" in lines
    accept = lines.index("ip daddr @names_443 meta l4proto { tcp, udp } th dport 443 accept")
    rejects = [i for i, line in enumerate(lines) if "reject" in line and ("169.254.0.0/16" in line or "198.51.100.7" in line)]
    assert len(rejects) == 2 and max(rejects) < accept
    # The resolver's own upstream queries pass before slirp's resolver is refused to the rest.
    upstream = lines.index(f"ip daddr 10.0.2.3 udp sport {RESOLVER_QUERY_PORT} udp dport 53 accept")
    assert upstream < next(i for i, line in enumerate(lines) if "10.0.2.3" in line and "reject" in line)


def test_plan_with_names_reports_them_and_the_resolver():
    p = run_plan(host(), policy({"network": {"mode": "allowlist", "allow": ["pypi.org:443", "10.1.2.3:22"]}}))
    lay = layer(p, "network")
    assert lay["state"] == "enforced" and lay["mechanism"] == "nft+slirp4netns+dnsmasq"
    assert lay["names"] == ["pypi.org:443"] and lay["allow"] == ["10.1.2.3:22"]
    assert lay["resolver"]["program"] == "dnsmasq" and lay["dns"] is True
    assert p.egress.resolver is not None and "--disable-dns" not in p.egress.slirp_flags
    assert any("shared" in n for n in notes(p, "network")) and any("timeout" in n for n in notes(p, "network"))


def test_names_without_a_resolver_are_a_downgrade():
    p = run_plan(host("no-resolver"), policy({"network": {"mode": "allowlist", "allow": ["pypi.org:443"]}}))
    assert layer(p, "network")["state"] == "degraded" and p.egress is None
    assert "filtering resolver" in downgrades(p, "network")[0]


def test_names_without_a_resolver_refuse_under_fail():
    from sandbox_kernel.report import SandboxUnavailable
    with pytest.raises(SandboxUnavailable):
        run_plan(host("no-resolver"), policy({"network": {"mode": "allowlist", "allow": ["pypi.org:443"]}}, on_unavailable="fail"))


def test_the_pypi_preset_is_a_names_only_allowlist():
    from pathlib import Path

    from sandbox_kernel.policy import load_policy_file
    pol = load_policy_file(Path(__file__).resolve().parents[2] / "policies" / "pypi.toml")
    assert pol.network.mode == "allowlist" and pol.network.rules() == []
    assert [str(n) for n in pol.network.names()] == ["pypi.org:443", "files.pythonhosted.org:443"]
    p = run_plan(host(), pol)
    assert layer(p, "network")["names"] == ["pypi.org:443", "files.pythonhosted.org:443"]
    assert "--server=/pypi.org/10.0.2.3" in p.egress.resolver.argv
