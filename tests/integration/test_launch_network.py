"""Network confinement, seen from inside the sandbox. Every scenario here runs its supervisor
inside an outer network namespace the test made (loopback and 169.254.1.1 only, no route
out), so even a failed block cannot reach the machine's real network. Servers listen on that
namespace's 127.0.0.1 (the sandbox reaches them only through slirp's 10.0.2.2) and on the
test-owned "metadata" address 169.254.1.1."""

from __future__ import annotations

import errno

import pytest

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
    assert inside["flush"]["rc"] != 0 and "Operation not permitted" in inside["flush"]["stderr"]
    after = inside["after_flush"]
    assert after["allowed"]["result"] == "connected"
    assert refused_fast(after["other_port"]) and refused_fast(after["metadata"])
    assert res["accepted_from_sandbox"] == {"allowed": 2, "other": 0, "metadata": 0}
