"""Filesystem confinement, seen from inside the sandbox: read-only host, private writable
scratch and /tmp, host data dirs and non-curated /etc files invisible, runs isolated from
each other."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from sandbox_kernel.planner.filesystem import CURATED_ETC, STAGED_ETC, STAGED_SUBDIR

pytestmark = pytest.mark.integration

REFUSED = {"EROFS", "EACCES", "EPERM"}


@pytest.fixture
def secret_in_etc():
    """A file in the host's /etc that is not on the curated list (think: a mounted secret)."""
    path = f"/etc/sandbox-test-secret-{uuid.uuid4().hex[:12]}"
    with open(path, "w") as f:
        f.write("top secret\n")
    os.chmod(path, 0o644)  # readable by anyone who can see it
    try:
        yield path
    finally:
        os.unlink(path)


def test_writes_land_only_in_scratch_and_tmp(scenario):
    res = scenario("filesystem", secret="/nonexistent")
    assert res["exit_code"] == 0, res["stderr_tail"]
    inside = res["inside"]
    assert inside["cwd"] == inside["home"] == "/scratch"
    writes = inside["writes"]
    assert writes.pop("/scratch/probe") == writes.pop("/tmp/probe") == writes.pop("/scratch/home-probe") == "ok"
    writes.pop("/dev/sbx-probe")  # see test_dev_is_not_writable
    # Everything else: the host's /etc, /usr, the root, the interpreter's bin/ and lib/.
    assert set(writes.values()) <= REFUSED, writes


def test_dev_is_not_writable(scenario):
    # bwrap's --dev is a tmpfs sized at half the host's RAM, outside scratch_bytes, and for a
    # non-root supervisor outside any memory cgroup: writable, it is an unbounded scratch.
    res = scenario("filesystem", secret="/nonexistent")
    assert res["inside"]["writes"]["/dev/sbx-probe"] in REFUSED


def test_host_data_and_secrets_are_invisible(scenario, secret_in_etc):
    res = scenario("filesystem", secret=secret_in_etc)
    assert res["exit_code"] == 0, res["stderr_tail"]
    assert os.path.exists(secret_in_etc) and os.path.exists("/etc/shadow")
    assert res["inside"]["visible"] == {p: False for p in (
        "/home", "/root", "/srv", "/opt", "/var", "/run", "/etc/shadow", secret_in_etc)}


def test_etc_is_the_prepared_read_only_copy_and_goes_with_its_supervisor(scenario):
    """/etc is the prepared, read-only dir: the staged passwd, no shadow, the TLS trust and the
    loader cache there; the dir lives as long as its supervisor (here a scenario process)."""
    res = scenario("filesystem", secret="/nonexistent")
    assert res["exit_code"] == 0, res["stderr_tail"]
    etc = res["inside"]["etc"]
    names = {line.split(":")[0] for line in etc["passwd"].splitlines()}
    # Staged: root, the sandbox's account, nobody; none of the host's system accounts.
    assert len(names) == 3 and {"root", "nobody"} < names and "daemon" not in names, etc["passwd"]
    assert "shadow" not in etc["listing"] and "gshadow" not in etc["listing"]
    assert set(etc["listing"]) <= {*CURATED_ETC, *STAGED_ETC, STAGED_SUBDIR}, etc["listing"]
    assert etc["read_only"] and res["inside"]["writes"]["/etc/sbx-probe"] in REFUSED
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        assert etc["tls_trust"] == "-----BEGIN CERTIFICATE-----"
    assert etc["ld_so_cache"] == os.path.getsize("/etc/ld.so.cache")
    assert res["prepared_etc_exists"] and not os.path.exists(res["prepared_etc"])


def test_scratch_tmp_and_processes_are_private_per_run(scenario):
    res = scenario("private_scratch")
    assert res["a_wrote"], res["a"]
    assert res["a"]["exit_code"] == 0 and res["b"]["exit_code"] == 0, (res["a"]["stderr_tail"], res["b"]["stderr_tail"])
    b = res["b"]["inside"]
    assert "from-run-a" not in b["scratch"] and "from-run-a" not in b["tmp"]
    # Its own pid namespace: bwrap's init and the command, nothing of run A or the host.
    assert b["pids"] == [1, 2], b["pids"]


def test_only_the_interpreters_bin_and_lib_trees_are_visible(scenario):
    """A prefix's etc/ (etc/jupyter: server config and tokens) and share/ stay out; config dirs
    inside /usr (npm's /usr/etc/npmrc, /usr/local/etc/jupyter) are empty."""
    res = scenario("filesystem", secret="/nonexistent")
    assert res["exit_code"] == 0, res["stderr_tail"]
    on_host = set(os.listdir(sys.prefix))
    assert {"etc", "share", "bin", "lib"} <= on_host  # the venv has them
    inside = set(res["inside"]["prefix"])
    assert {"bin", "lib", "pyvenv.cfg"} <= inside and not {"etc", "share", "include"} & inside
    assert all(entries == [] for entries in res["inside"]["config_dirs"].values())
    for d in ("/usr/etc", "/usr/local/etc"):
        if os.path.isdir(d) and os.listdir(d):  # on this host kind: npmrc in both
            assert res["inside"]["config_dirs"][d] == []
