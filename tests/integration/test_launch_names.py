"""Host-name allow entries, seen from inside the sandbox: the filtering resolver answers
only allowed names, fills the nft set the ruleset opens per port, and a name cannot open a
metadata or host address. Runs inside the outer network namespace the test makes (see
``name_scenarios``), root and non-root supervisors."""

from __future__ import annotations

import errno
import os

import pytest

from .procs import cmdline
from .supervisors import HOST_TEST_ADDRESS, start_scenario
from .traces import live_descendants

pytestmark = pytest.mark.integration

NXDOMAIN = 3
REFUSED_FAST = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def refused(attempt: dict) -> bool:
    return attempt["result"] != "connected" and not attempt["timeout"] and attempt["errno"] in REFUSED_FAST


@pytest.fixture
def names_run(scenario):
    return lambda **kw: scenario("names", outer_netns=True, **kw)


def test_allowed_names_resolve_and_connect_on_their_port_only(names_run):
    res = names_run()
    assert res["exit_code"] == 0, res["stderr_tail"]
    inside = res["inside"]
    assert inside["resolv_conf"] == "nameserver 127.0.0.53\n"
    assert inside["allowed"] == {"result": "answered", "rcode": 0, "addresses": ["203.0.113.80"]}
    assert inside["allowed_getaddrinfo"] == ["203.0.113.80"]  # the C library's resolver too
    assert inside["allowed_connect"] == {"result": "connected", "data": "hello"}
    assert refused(inside["allowed_other_port"]), inside["allowed_other_port"]
    # "*.wild.test" answers below the domain; a plain name answers that name only.
    assert inside["wild"]["addresses"] == ["203.0.113.82"] and inside["wild_connect"]["result"] == "connected"
    assert inside["sub"]["rcode"] == NXDOMAIN and inside["sub"]["addresses"] == []
    assert res["accepted"]["a"] == 2 and res["accepted"]["b"] == 0
    layer = res["network_layer"]
    assert layer["state"] == "enforced" and layer["mechanism"] == "nft+slirp4netns+dnsmasq"
    assert "allowed.test:" in " ".join(layer["names"]) and layer["resolver"]["program"] == "dnsmasq"
    assert any("shared" in n["note"] for n in res["notes"])


def test_unlisted_name_is_nxdomain_and_its_address_is_refused(names_run):
    res = names_run()
    inside = res["inside"]
    assert inside["blocked"] == {"result": "answered", "rcode": NXDOMAIN, "addresses": []}
    assert "blocked.test" not in res["upstream_queried"]  # answered by the filter, never forwarded
    assert "allowed.test" in res["upstream_queried"]  # control: allowed names are forwarded
    assert refused(inside["blocked_direct"]), inside["blocked_direct"]
    # slirp's resolver itself is not the sandbox's to use: only the filter's queries pass.
    assert inside["upstream_direct"]["result"] != "answered"
    # ...and it cannot pose as the resolver: the resolver's source port is below 1024.
    assert inside["bind_query_port"] == errno.EACCES, inside["bind_query_port"]
    assert res["accepted"]["b"] == 0


def test_a_name_resolving_to_metadata_or_host_address_stays_refused(names_run):
    res = names_run()
    inside = res["inside"]
    assert inside["meta"]["addresses"] == ["169.254.1.1"] and refused(inside["meta_connect"]), inside["meta_connect"]
    assert inside["lan"]["addresses"] == [HOST_TEST_ADDRESS] and refused(inside["lan_connect"]), inside["lan_connect"]
    assert res["accepted"]["meta"] == 0 and res["accepted"]["lan"] == 0


def test_the_set_forgets_an_address_after_its_timeout(names_run):
    res = names_run(allow=["allowed.test:A"], set_timeout=2)
    inside = res["inside"]
    assert inside["allowed_connect"]["result"] == "connected"
    # Reachable until the set entry times out, then refused, until the name is asked again.
    assert refused(inside["forgotten"]["then"]), inside["forgotten"]
    assert inside["requery"]["addresses"] == ["203.0.113.80"]
    assert inside["after_requery"]["result"] == "connected"


def test_pip_download_through_a_name_allowlist(scenario):
    """The PyPI preset's shape (an index host and a files host, names only) against a test
    index: pip fetches the index page and the wheel by name."""
    res = scenario("pip_download", allow=["index.test:PORT", "files.test:PORT"], outer_netns=True)
    assert res["exit_code"] == 0, res["stderr_tail"]
    assert res["inside"]["rc"] == 0 and res["inside"]["files"] == ["demo_pkg-0.1-py3-none-any.whl"], res["inside"]
    assert res["requests"] == ["index.test/simple/demo-pkg/", "files.test/packages/demo_pkg-0.1-py3-none-any.whl"]


def test_pip_download_fails_without_the_files_host(scenario):
    """Control: with only the index host allowed, the download (on another name) fails."""
    res = scenario("pip_download", allow=["index.test:PORT"], outer_netns=True)
    assert res["inside"]["rc"] != 0 and res["inside"]["files"] == []
    assert res["requests"] == ["index.test/simple/demo-pkg/"]


def test_killed_supervisor_leaves_no_resolver(supervisor, nothing_left_behind):
    """SIGKILL: no close(). The resolver's wrapper sees its pipe close and stops it, so
    nothing keeps the egress namespace (or anything else) alive."""
    proc = start_scenario(supervisor, "killed_supervisor_names", outer_netns=True)
    try:
        assert proc.stdout.readline() == b"running\n"
        assert any(b"dnsmasq" in cmdline(p) for p in live_descendants(os.getpid())), "control: the resolver runs"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert nothing_left_behind.left() == []
