"""Network confinement, seen from inside the sandbox. Every scenario here runs its supervisor
inside an outer network namespace the test made (loopback and 169.254.1.1 only, no route
out), so even a failed block cannot reach the machine's real network. Servers listen on that
namespace's 127.0.0.1 (the sandbox reaches them only through slirp's 10.0.2.2) and on the
test-owned "metadata" address 169.254.1.1."""

from __future__ import annotations

import errno

import pytest

from .supervisors import HOST_TEST_ADDRESS, RESOLVER_TEST_ADDRESS

pytestmark = pytest.mark.integration

FAST_REFUSALS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def refused_fast(attempt: dict) -> bool:
    """The connect returned an error at once (a reject), not a timeout (a silent drop)."""
    return attempt["result"] != "connected" and not attempt["timeout"] and attempt["errno"] in FAST_REFUSALS


def test_deny_blocks_every_destination(scenario):
    res = scenario("network", mode="deny", outer_netns=True)
    assert res["exit_code"] == 0, res["stderr_tail"]
    inside = res["inside"]
    for name in ("allowed", "other_port", "metadata", "own_loopback"):
        assert refused_fast(inside[name]), (name, inside[name])
    assert res["accepted_from_sandbox"] == {"allowed": 0, "other": 0, "metadata": 0}


def test_allowlist_reaches_only_the_allowed_destination(scenario):
    res = scenario("network", mode="allowlist", outer_netns=True)
    assert res["exit_code"] == 0, res["stderr_tail"]
    inside = res["inside"]
    # Joining the egress namespace (the holder's user namespace, for a non-root supervisor)
    # gives the sandboxed code no privilege.
    assert inside["who"]["uid"] != "0" and int(inside["who"]["CapEff"], 16) == 0 and inside["who"]["Seccomp"] == "2"
    assert inside["allowed"] == {"result": "connected", "data": "hello"}
    assert refused_fast(inside["other_port"]) and inside["other_port"]["errno"] == errno.ECONNREFUSED
    # The policy allowed 169.254.1.1 explicitly; the metadata block wins, and says so.
    assert refused_fast(inside["metadata"]) and inside["metadata"]["errno"] == errno.EHOSTUNREACH
    assert any("metadata" in n["note"] and "169.254.1.1" in n["note"] for n in res["notes"])
    assert res["accepted_from_sandbox"]["other"] == 0 and res["accepted_from_sandbox"]["metadata"] == 0


def test_sandbox_cannot_flush_the_ruleset(scenario):
    res = scenario("network", mode="allowlist", outer_netns=True)
    inside = res["inside"]
    # seccomp refuses the NETLINK_NETFILTER socket before CAP_NET_ADMIN would even be checked.
    assert inside["flush"]["rc"] != 0 and "Protocol not supported" in inside["flush"]["stderr"]
    after = inside["after_flush"]
    assert after["allowed"]["result"] == "connected"
    assert refused_fast(after["other_port"]) and refused_fast(after["metadata"])
    assert res["accepted_from_sandbox"] == {"allowed": 2, "other": 0, "metadata": 0}


def edges(scenario, allow):
    res = scenario("network_edges", allow=allow, host_address=HOST_TEST_ADDRESS,
                   resolver_address=RESOLVER_TEST_ADDRESS, outer_netns=True)
    assert res["exit_code"] == 0, res["stderr_tail"]
    return res


def test_unrestricted_cannot_reach_the_hosts_own_address(scenario):
    """slirp4netns connects from the host, so "everything except metadata" used to include
    every service listening on the host's LAN address."""
    res = edges(scenario, None)
    assert refused_fast(res["inside"]["host"]), res["inside"]["host"]
    assert res["accepted_from_sandbox"] == 0
    assert f"{HOST_TEST_ADDRESS}/32" in res["network_layer"]["host_addresses_blocked"]
    # Name resolution is part of "unrestricted": the resolver answers (the path works).
    assert res["inside"]["dns"]["result"] == "answered" and res["resolver_answered"] == 1


def test_a_broad_allow_entry_gives_no_dns_and_no_host_address(scenario):
    res = edges(scenario, ["10.0.0.0/8", "198.51.100.0/24"])
    inside = res["inside"]
    assert inside["dns"]["result"] != "answered" and res["resolver_answered"] == 0
    assert "nameserver" not in inside["resolv_conf"]
    assert refused_fast(inside["host"]) and res["accepted_from_sandbox"] == 0
    assert any("10.0.2.3:53" in n["note"] for n in res["notes"])
    assert any("host's own addresses" in n["note"] for n in res["notes"])


def test_exact_entries_open_the_resolver_and_a_host_address(scenario):
    """Control for the two tests above: named exactly, both are reachable."""
    res = edges(scenario, ["10.0.2.3:53", f"{HOST_TEST_ADDRESS}:HOST_PORT"])
    inside = res["inside"]
    assert inside["dns"] == {"result": "answered", "data": "answer:query"} and res["resolver_answered"] == 1
    assert inside["resolv_conf"] == "nameserver 10.0.2.3\n"
    assert inside["host"] == {"result": "connected", "data": "hello"} and res["accepted_from_sandbox"] == 1
