"""Table-driven unit tests of the pure planner ``plan(policy, caps, spec)``.

Hosts are hand-built HostCapabilities records (no probing, no subprocess, no file I/O): a fully
capable root host, and variants made with ``dataclasses.replace``. Each table reads like a row
of the policy matrix: host variant, policy, expected layer state / argv / report entries.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from sandbox_kernel.planner import ETC_PLACEHOLDER, FD_PLACEHOLDER, STAGED_PLACEHOLDER, plan
from sandbox_kernel.planner.env import BASE_PATH
from sandbox_kernel.planner.filesystem import CURATED_ETC, MINIMAL_ETC, STAGED_ETC, STAGED_SUBDIR
from sandbox_kernel.planner.network import build_ruleset
from sandbox_kernel.planner.privilege import UNLEASED
from sandbox_kernel.planner.resources import PIDS_OVERHEAD
from sandbox_kernel.policy import MiB, PolicyError, parse_allow_entry
from sandbox_kernel.report import LAYERS, SandboxUnavailable

from .hosts import (BWRAP, CMD, PRLIMIT, SANDBOX_UID, SETPRIV, TOOLS, after_bwrap, bwrap_args, downgrades,
                    enforced, has_seq, host, index_of_seq, layer, notes, pairs, policy, prlimit_args, ruleset_lines,
                    run_plan, spec, triples)

# =========================================================================== privilege

SETPRIV_FLAGS = ["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]

NONROOT = "cannot give each kernel its own uid"
PRIVILEGE_MATRIX = [
    # id, host variants, privilege policy, state, (uid, gid) run as, setpriv prefix?, downgrade substr,
    # note substrs, one uid per kernel?
    ("root-leased", (), {}, "enforced", (SANDBOX_UID, SANDBOX_UID), True, None, [], True),
    ("root-explicit-uid", (), {"uid": 2000}, "enforced", (2000, 2000), True, None, ["is fixed"], False),
    ("root-explicit-uid-gid", (), {"uid": 2000, "gid": 3000}, "enforced", (2000, 3000), True, None, ["is fixed"], False),
    ("root-no-leases-explicit-uid", ("no-uid-leases",), {"uid": 2000}, "enforced", (2000, 2000), True, None, ["is fixed"], False),
    ("root-no-leases-no-uid", ("no-uid-leases",), {}, "degraded", (0, 0), False, "host root", [], None),
    ("root-inherit", (), {"mode": "inherit"}, "degraded", (0, 0), False, "inherit", [], None),
    ("root-no-setpriv", ("no-setpriv",), {}, "degraded", (0, 0), False, "setpriv", [], None),
    ("root-no-setpriv-explicit-uid", ("no-setpriv",), {"uid": 2000}, "degraded", (0, 0), False, "setpriv", [], None),
    ("root-no-bwrap-still-drops", ("no-bwrap",), {}, "enforced", (SANDBOX_UID, SANDBOX_UID), True, None, [], True),
    ("nonroot-drop", ("non-root",), {}, "enforced", (1000, 1000), False, None, [NONROOT], False),
    ("nonroot-drop-same-uid", ("non-root",), {"uid": 1000}, "enforced", (1000, 1000), False, None, [NONROOT], False),
    ("nonroot-drop-other-uid", ("non-root",), {"uid": 2000}, "enforced", (1000, 1000), False, None, [NONROOT, "2000 ignored"], False),
    ("nonroot-inherit", ("non-root",), {"mode": "inherit"}, "enforced", (1000, 1000), False, None, [NONROOT], False),
    ("nonroot-no-setpriv-needed", ("non-root", "no-setpriv"), {}, "enforced", (1000, 1000), False, None, [NONROOT], False),
]


@pytest.mark.parametrize("variants,priv,state,ids,prefixed,down,note,per_kernel",
                         [r[1:] for r in PRIVILEGE_MATRIX], ids=[r[0] for r in PRIVILEGE_MATRIX])
def test_privilege_matrix(variants, priv, state, ids, prefixed, down, note, per_kernel):
    p = run_plan(host(*variants), policy({"privilege": priv}))
    lay = layer(p, "privilege")
    assert lay["state"] == state
    assert enforced(p, "privilege") is (state == "enforced")
    assert p.run_as[1:] == ids
    if prefixed:
        uid, gid = ids
        assert list(p.argv[:7]) == [SETPRIV, f"--reuid={uid}", f"--regid={gid}", *SETPRIV_FLAGS]
        assert lay["mechanism"] == "setpriv" and (lay["uid"], lay["gid"]) == ids
    else:
        assert SETPRIV not in p.argv
    if state == "enforced":
        assert lay["uid"] == ids[0] and lay["no_new_privs"] is True
        assert lay["uid_per_kernel"] is per_kernel
    got = downgrades(p, "privilege")
    if down:
        assert len(got) == 1 and down in got[0]
    else:
        assert got == []
    got_notes = notes(p, "privilege")
    assert len(got_notes) == len(note) and all(any(n in g for g in got_notes) for n in note), got_notes


def test_leased_uid_comes_from_the_spec_and_the_range_is_reported():
    p = run_plan(pol=policy({"privilege": {"uid_range": [300000, 300009]}}), identity=(300004, 300004))
    assert p.run_as == ("sandbox", 300004, 300004)
    assert layer(p, "privilege")["uid_range"] == [300000, 300009]


def test_a_plan_without_a_lease_is_a_dry_run():
    """doctor plans a kernel without leasing: the report says "one uid per kernel" and the plan
    carries a uid that start() refuses and setpriv would not parse."""
    p = run_plan(identity=None)
    lay = layer(p, "privilege")
    assert lay["state"] == "enforced" and lay["uid"] is None and lay["uid_per_kernel"] is True
    assert p.run_as[1:] == (UNLEASED, UNLEASED)


def test_a_fixed_uid_wins_over_a_lease():
    p = run_plan(pol=policy({"privilege": {"uid": 2000}}), identity=(300004, 300004))
    assert p.run_as[1:] == (2000, 2000)


def test_setpriv_comes_right_before_bwrap_and_nothing_runs_as_root():
    p = run_plan()
    assert p.argv[7] == BWRAP
    assert p.run_as == ("sandbox", SANDBOX_UID, SANDBOX_UID)


@pytest.mark.parametrize("how", ["session", "egress"])
def test_a_root_run_that_joins_namespaces_switches_uid_in_that_nsenter(how):
    """A kernel session's cell, or an allowlisted run, starts behind the launch shell's nsenter:
    that nsenter switches the uid (no setpriv, one program fewer) and the report says so."""
    kw = {"scratch_source": "/tmp/session-scratch"} if how == "session" else {}
    pol = policy({"network": {"mode": "allowlist", "allow": ["203.0.113.7:443"]}}) if how == "egress" else policy()
    p = run_plan(pol=pol, **kw)
    lay = layer(p, "privilege")
    assert SETPRIV not in p.argv and p.argv[0] == BWRAP
    assert p.nsenter_switch == (SANDBOX_UID, SANDBOX_UID) and p.run_as[1:] == (SANDBOX_UID, SANDBOX_UID)
    assert (lay["state"], lay["mechanism"], lay["uid"], lay["no_new_privs"]) == ("enforced", "nsenter", SANDBOX_UID, True)


def test_a_run_that_joins_nothing_keeps_setpriv_and_a_nonroot_one_switches_nothing():
    assert run_plan().nsenter_switch is None and run_plan().argv[0] == SETPRIV
    rootless = run_plan(host("non-root"), scratch_source="/tmp/session-scratch")
    assert rootless.nsenter_switch is None and layer(rootless, "privilege")["mechanism"] == "non-root supervisor"


def test_nonroot_argv_starts_with_bwrap():
    p = run_plan(host("non-root"))
    assert p.argv[0] == BWRAP
    assert "--uid" not in bwrap_args(p)  # no rootless id games without allowlisted egress


# =========================================================================== filesystem

FORBIDDEN_HOST_DIRS = ("/home", "/root", "/srv", "/opt", "/var", "/run", "/mnt", "/media")


@pytest.mark.parametrize("layout_variant,expected", [
    ((), {"ro": ["/usr"], "symlink": [("usr/bin", "/bin"), ("usr/sbin", "/sbin"), ("usr/lib", "/lib"), ("usr/lib64", "/lib64")]}),
    (("split-usr",), {"ro": ["/usr", "/bin", "/sbin", "/lib", "/lib64"], "symlink": []}),
], ids=["merged-usr", "split-usr"])
@pytest.mark.parametrize("mode", ["scratch-plus-ro", "scratch-only"])
def test_system_dirs_follow_host_layout(layout_variant, expected, mode):
    p = run_plan(host(*layout_variant), policy({"filesystem": {"mode": mode}}))
    args = bwrap_args(p)
    ro = [dst for src, dst in triples(args, "--ro-bind") if src == dst]
    assert ro == expected["ro"]
    assert triples(args, "--symlink") == expected["symlink"]
    for absent in ("/lib32", "/libx32"):
        assert absent not in args


@pytest.mark.parametrize("mode", ["scratch-plus-ro", "scratch-only"])
def test_config_dirs_inside_system_dirs_are_masked_read_only(mode):
    caps = replace(host(), hidden_dirs=("/usr/local/etc", "/usr/etc"))
    args = bwrap_args(run_plan(caps, policy({"filesystem": {"mode": mode}})))
    for d in ("/usr/local/etc", "/usr/etc"):
        at = args.index(d)
        assert args[at - 1:at + 3] == ["--tmpfs", d, "--remount-ro", d]
        assert at > args.index("/usr")  # on top of the /usr bind


@pytest.mark.parametrize("mode,etc_expected,etc_absent", [
    ("scratch-plus-ro", CURATED_ETC, ()),
    ("scratch-only", MINIMAL_ETC, tuple(n for n in CURATED_ETC if n not in MINIMAL_ETC)),
])
def test_etc_is_curated_and_staged(mode, etc_expected, etc_absent):
    p = run_plan(pol=policy({"filesystem": {"mode": mode}}))
    args = bwrap_args(p)
    # One bind of the prepared /etc, which holds copies of these host entries, and one of the
    # staged files' dir inside it.
    binds = triples(args, "--ro-bind")
    assert [dst for src, dst in binds if src == ETC_PLACEHOLDER] == ["/etc"]
    assert [(src, dst) for src, dst in binds if dst.startswith("/etc/")] == [(STAGED_PLACEHOLDER, f"/etc/{STAGED_SUBDIR}")]
    assert binds.index((ETC_PLACEHOLDER, "/etc")) < binds.index((STAGED_PLACEHOLDER, f"/etc/{STAGED_SUBDIR}"))
    assert not any(dst.startswith("/etc") for flag in ("--ro-bind-try", "--bind") for _, dst in triples(args, flag))
    assert set(p.etc_entries) == set(etc_expected)
    assert not set(p.etc_entries) & set(etc_absent)
    assert set(p.staged_files) == set(STAGED_ETC)
    assert not set(p.etc_entries) & {*STAGED_ETC, STAGED_SUBDIR}  # nor replaces a staged file
    # The host's own identity, secrets and /etc never show up as a source.
    sources = [src for flag in ("--ro-bind", "--ro-bind-try", "--bind") for src, _ in triples(args, flag)]
    for secret in ("/etc", "/etc/shadow", "/etc/gshadow", "/etc/passwd", "/etc/group", "/etc/sudoers", "/etc/ssh", "/"):
        assert secret not in sources
    assert not any(s.startswith("/etc/") and s[5:] not in CURATED_ETC for s in sources)


@pytest.mark.parametrize("mode", ["scratch-plus-ro", "scratch-only"])
def test_no_private_host_dirs(mode):
    p = run_plan(pol=policy({"filesystem": {"mode": mode}}))
    args = bwrap_args(p)
    for arg in args:
        for d in FORBIDDEN_HOST_DIRS:
            assert arg != d and not arg.startswith(d + "/"), arg


def test_tmp_tmpfs_sized_and_before_every_path_under_tmp():
    pol = policy({"filesystem": {"scratch_bytes": "64M"}})
    p = run_plan(pol=pol, scratch_dir="/tmp/scratch", runtime_paths=("/tmp/venv",), rw_paths=("/tmp/ipc",))
    args = bwrap_args(p)
    tmp = index_of_seq(args, ["--size", str(64 * MiB), "--tmpfs", "/tmp"])
    under_tmp = [i for i, a in enumerate(args) if a.startswith("/tmp/")]
    assert under_tmp and min(under_tmp) > tmp
    assert ("/tmp/venv", "/tmp/venv") in triples(args, "--ro-bind-try")
    assert ("/tmp/ipc", "/tmp/ipc") in triples(args, "--bind")
    assert has_seq(args, ["--size", str(64 * MiB), "--tmpfs", "/tmp/scratch", "--chmod", "0700", "/tmp/scratch"])


@pytest.mark.parametrize("scratch_bytes,sized", [("1G", True), (None, False)])
def test_scratch_tmpfs_sized_by_scratch_bytes(scratch_bytes, sized):
    p = run_plan(pol=policy({"filesystem": {"scratch_bytes": scratch_bytes}}))
    args = bwrap_args(p)
    if sized:
        assert has_seq(args, ["--size", str(1024 * MiB), "--tmpfs", "/scratch"])
        assert layer(p, "filesystem")["scratch_bytes"] == 1024 * MiB
    else:
        assert "--size" not in args
        assert has_seq(args, ["--tmpfs", "/scratch"])


@pytest.mark.parametrize("cwd,expected", [(None, "/scratch"), ("/scratch/work", "/scratch/work")])
def test_proc_dev_and_chdir(cwd, expected):
    p = run_plan(cwd=cwd)
    args = bwrap_args(p)
    assert has_seq(args, ["--proc", "/proc"]) and has_seq(args, ["--dev", "/dev"])
    assert pairs(args, "--chdir") == [expected]
    assert p.cwd == expected
    lay = layer(p, "filesystem")
    assert lay["state"] == "enforced" and lay["mechanism"] == "bwrap" and enforced(p, "filesystem")


@pytest.mark.parametrize("mode,ro_policy_bound", [("scratch-plus-ro", True), ("scratch-only", False)])
def test_read_only_paths_and_runtime_paths(mode, ro_policy_bound):
    pol = policy({"filesystem": {"mode": mode, "read_only_paths": ["/data/shared"]}})
    p = run_plan(pol=pol, runtime_paths=("/venv/kernel", "/usr/lib/python3"))
    tried = triples(bwrap_args(p), "--ro-bind-try")
    assert ("/venv/kernel", "/venv/kernel") in tried  # runtime paths survive scratch-only
    assert (("/data/shared", "/data/shared") in tried) is ro_policy_bound
    assert ("/usr/lib/python3", "/usr/lib/python3") not in tried  # already under the ro /usr


@pytest.mark.parametrize("path", ["/", "/etc", "/etc/shadow", "/proc/1", "/dev", "/tmp"])
def test_read_only_path_may_not_replace_the_sandbox_layout(path):
    p = run_plan(pol=policy({"filesystem": {"read_only_paths": [path]}}))
    args = bwrap_args(p)
    assert (path, path) not in triples(args, "--ro-bind-try")
    assert "/etc/shadow" not in args
    # The prepared /etc and the staged files in it stay in force.
    assert [src for src, dst in triples(args, "--ro-bind") if dst == "/etc"] == [ETC_PLACEHOLDER]
    assert (STAGED_PLACEHOLDER, f"/etc/{STAGED_SUBDIR}") in triples(args, "--ro-bind")
    assert set(p.staged_files) == set(STAGED_ETC)
    assert any(path in n for n in notes(p, "filesystem"))
    assert downgrades(p) == []


def test_filesystem_off_binds_host_root_and_is_not_requested():
    p = run_plan(pol=policy({"filesystem": {"mode": "off"}}), rw_paths=("/run/ipc",))
    args = bwrap_args(p)
    assert has_seq(args, ["--bind", "/", "/"])
    assert ("/run/ipc", "/run/ipc") in triples(args, "--bind")
    assert "--tmpfs" not in args and p.staged_files == {}
    lay = layer(p, "filesystem")
    assert lay["state"] == "not-requested" and enforced(p, "filesystem") is False
    assert downgrades(p, "filesystem") == []
    # The network namespace does not cut host Unix sockets when the host root is bound.
    assert any("Unix sockets" in n for n in notes(p, "network"))


@pytest.mark.parametrize("mode,state,downgraded", [
    ("scratch-plus-ro", "degraded", True),
    ("scratch-only", "degraded", True),
    ("off", "not-requested", False),
])
def test_filesystem_without_bwrap(mode, state, downgraded):
    p = run_plan(host("no-bwrap"), policy({"filesystem": {"mode": mode}}))
    assert BWRAP not in p.argv
    assert layer(p, "filesystem")["state"] == state
    assert enforced(p, "filesystem") is False
    got = downgrades(p, "filesystem")
    if downgraded:
        assert len(got) == 1 and "bwrap" in got[0]
    else:
        assert got == []
    assert p.staged_files == {}
    assert p.env["HOME"] == p.cwd  # no private scratch dir exists: HOME is not a made-up path


@pytest.mark.parametrize("variants,pol,user,uid,gid", [
    ((), {}, "sandbox", SANDBOX_UID, SANDBOX_UID),
    (("non-root",), {}, "alice", 1000, 1000),
    ((), {"privilege": {"uid": 2000, "gid": 3000}}, "sandbox", 2000, 3000),
])
def test_staged_passwd_names_the_run_uid_only(variants, pol, user, uid, gid):
    p = run_plan(host(*variants), policy(pol))
    passwd = p.staged_files["passwd"].splitlines()
    assert f"{user}:x:{uid}:{gid}:sandboxed code:/scratch:/bin/sh" in passwd
    assert {line.split(":")[0] for line in passwd} == {"root", user, "nobody"}
    assert f"{user}:x:{gid}:" in p.staged_files["group"].splitlines()
    assert "sandbox" in p.staged_files["hostname"]
    assert p.staged_files["nsswitch.conf"].startswith("passwd: files")


def test_staged_passwd_has_no_duplicate_root_when_running_as_root():
    p = run_plan(pol=policy({"privilege": {"mode": "inherit"}}))
    names = [line.split(":")[0] for line in p.staged_files["passwd"].splitlines()]
    assert names.count("root") == 1


# =========================================================================== network

ALLOW = ["203.0.113.0/24:443"]


def allowlist(allow, block=True):
    return policy({"network": {"mode": "allowlist", "allow": allow, "block_metadata": block}})


NETWORK_MATRIX = [
    # id, host variants, network policy, bwrap net flag (None: no bwrap), state, egress?, downgrade substr
    ("deny", (), {"mode": "deny"}, "--unshare-net", "enforced", False, None),
    ("allowlist-empty", (), {"mode": "allowlist", "allow": []}, "--unshare-net", "enforced", False, None),
    ("allowlist", (), {"mode": "allowlist", "allow": ALLOW}, "--share-net", "enforced", True, None),
    ("allowlist-nonroot", ("non-root",), {"mode": "allowlist", "allow": ALLOW}, "--share-net", "enforced", True, None),
    ("unrestricted-block", (), {"mode": "unrestricted"}, "--share-net", "enforced", True, None),
    ("unrestricted-open", (), {"mode": "unrestricted", "block_metadata": False}, "--share-net", "not-requested", False, None),
    ("allowlist-no-egress", ("no-egress",), {"mode": "allowlist", "allow": ALLOW}, "--unshare-net", "degraded", False, "unreachable"),
    ("unrestricted-block-no-egress", ("no-egress",), {"mode": "unrestricted"}, "--share-net", "degraded", False, "metadata"),
    ("allowlist-empty-no-egress", ("no-egress",), {"mode": "allowlist"}, "--unshare-net", "enforced", False, None),
    ("deny-no-egress", ("no-egress",), {"mode": "deny"}, "--unshare-net", "enforced", False, None),
    ("deny-no-bwrap", ("no-bwrap",), {"mode": "deny"}, None, "degraded", False, "egress unrestricted"),
    ("allowlist-empty-no-bwrap", ("no-bwrap",), {"mode": "allowlist"}, None, "degraded", False, "egress unrestricted"),
    ("allowlist-no-bwrap", ("no-bwrap",), {"mode": "allowlist", "allow": ALLOW}, None, "degraded", False, "egress unrestricted"),
    ("unrestricted-block-no-bwrap", ("no-bwrap",), {"mode": "unrestricted"}, None, "degraded", False, "metadata"),
    ("unrestricted-open-no-bwrap", ("no-bwrap",), {"mode": "unrestricted", "block_metadata": False}, None, "not-requested", False, None),
]


@pytest.mark.parametrize("variants,net,flag,state,has_egress,down",
                         [r[1:] for r in NETWORK_MATRIX], ids=[r[0] for r in NETWORK_MATRIX])
def test_network_matrix(variants, net, flag, state, has_egress, down):
    p = run_plan(host(*variants), policy({"network": net}))
    if flag is None:
        assert BWRAP not in p.argv
    else:
        args = bwrap_args(p)
        assert flag in args
        assert ({"--unshare-net", "--share-net"} - {flag}).isdisjoint(args)
    lay = layer(p, "network")
    assert lay["state"] == state
    assert enforced(p, "network") is (state == "enforced")
    assert (p.egress is not None) is has_egress
    got = downgrades(p, "network")
    if down:
        assert len(got) == 1 and down in got[0]
    else:
        assert got == []
    if has_egress:
        assert lay["mechanism"] == "nft+slirp4netns" and lay["refusal"] == "reject"


def test_allowlist_without_egress_is_no_network_not_a_claimed_blackhole():
    p = run_plan(host("no-egress"), allowlist(ALLOW))
    assert "--unshare-net" in bwrap_args(p)
    assert p.egress is None
    reason = downgrades(p, "network")[0]
    assert "allowed destinations are unreachable" in reason and "slirp4netns" in reason
    assert enforced(p, "network") is False


@pytest.mark.parametrize("variants,rootless,uid_gid", [
    ((), False, None),
    (("non-root",), True, ("1000", "1000")),
])
def test_egress_rootless_follows_euid(variants, rootless, uid_gid):
    p = run_plan(host(*variants), allowlist(ALLOW))
    assert p.egress.rootless is rootless
    args = bwrap_args(p)
    if uid_gid is None:
        assert "--uid" not in args and "--gid" not in args
    else:
        assert pairs(args, "--uid") == [uid_gid[0]] and pairs(args, "--gid") == [uid_gid[1]]
    assert (p.egress.unshare, p.egress.nsenter, p.egress.nft, p.egress.slirp4netns) == (
        TOOLS["unshare"], TOOLS["nsenter"], TOOLS["nft"], TOOLS["slirp4netns"])


def test_allowlist_ruleset_rejects_and_blocks_metadata_first():
    p = run_plan(pol=allowlist(["203.0.113.7", "198.51.100.0/24:443"]))
    lines = ruleset_lines(p)
    assert lines[0] == "table inet sandbox_egress {"
    verdict_lines = [ln for ln in lines if not ln.startswith("type ")]
    assert not any(re.search(r"\bdrop\b", ln) for ln in verdict_lines)  # reject, never a silent drop
    assert lines.count("type filter hook output priority 0; policy drop;") == 1
    meta4 = next(i for i, ln in enumerate(lines) if "169.254.0.0/16" in ln)
    meta6 = next(i for i, ln in enumerate(lines) if "fe80::/10" in ln)
    first_accept = min(i for i, ln in enumerate(lines) if ln.endswith("accept"))
    assert max(meta4, meta6) < first_accept
    for needle in ("100.100.100.200/32", "fc00::/7"):
        assert needle in lines[meta4] + lines[meta6]
    assert "reject" in lines[meta4] and "reject" in lines[meta6]
    assert "ip daddr 203.0.113.7/32 accept" in lines
    assert "ip daddr 198.51.100.0/24 tcp dport 443 accept" in lines
    assert "ip daddr 198.51.100.0/24 udp dport 443 accept" in lines
    output_chain = lines[:lines.index("chain input {")]
    assert output_chain[-3:] == ["meta l4proto tcp reject with tcp reset", "reject with icmpx type admin-prohibited", "}"]
    assert "accept" not in output_chain  # no default accept in allowlist mode
    detail = layer(p, "network")
    assert detail["allow"] == ["203.0.113.7", "198.51.100.0/24:443"] and detail["metadata_blocked"] is True


def test_unrestricted_with_block_is_filtered_default_accept():
    p = run_plan(pol=policy({"network": {"mode": "unrestricted", "block_metadata": True}}))
    lines = ruleset_lines(p)
    meta = next(i for i, ln in enumerate(lines) if "169.254.0.0/16" in ln)
    assert "reject" in lines[meta]
    assert lines.index("accept") > meta
    assert "--disable-host-loopback" in p.egress.slirp_flags
    assert p.egress.dns is True and "--disable-dns" not in p.egress.slirp_flags
    assert layer(p, "network")["allow"] == "all except metadata"


def test_allowlist_without_metadata_block_has_no_metadata_lines():
    p = run_plan(pol=allowlist(["169.254.169.254:80"], block=False))
    assert "169.254.0.0/16" not in p.egress.ruleset
    assert "ip daddr 169.254.169.254/32 tcp dport 80 accept" in ruleset_lines(p)
    assert not any("metadata" in n for n in notes(p, "network"))


@pytest.mark.parametrize("entry", ["169.254.169.254", "169.254.0.0/16:80", "100.100.100.200"])
def test_metadata_entry_gets_a_note_and_is_still_rejected_first(entry):
    p = run_plan(pol=allowlist([entry, "203.0.113.7"]))
    rule = parse_allow_entry(entry)
    assert any("metadata" in n and str(rule) in n for n in notes(p, "network"))
    lines = ruleset_lines(p)
    meta = next(i for i, ln in enumerate(lines) if "169.254.0.0/16" in ln)
    allow_line = next(i for i, ln in enumerate(lines) if rule.network.with_prefixlen in ln and ln.endswith("accept"))
    assert meta < allow_line
    assert downgrades(p) == []


SLIRP_MATRIX = [
    # allow entries, host loopback open?, dns?
    (["203.0.113.7"], False, False),
    (["10.0.2.2"], True, False),
    (["10.0.2.2:8888"], True, False),
    (["10.0.2.0/24:8888"], False, False),  # a range is not "exactly 10.0.2.2"
    (["10.0.2.3:53"], False, True),
    (["10.0.2.3"], False, True),
    (["10.0.2.3:80"], False, False),
    (["10.0.2.2:8888", "10.0.2.3:53"], True, True),
    # A broad entry covers the resolver (and the host's loopback) but names neither exactly.
    (["10.0.0.0/8"], False, False),
    (["10.0.2.0/24:53"], False, False),
]


@pytest.mark.parametrize("allow,loopback,dns", SLIRP_MATRIX, ids=[",".join(r[0]) for r in SLIRP_MATRIX])
def test_slirp_flags(allow, loopback, dns):
    p = run_plan(pol=allowlist(allow))
    flags = p.egress.slirp_flags
    assert "--enable-sandbox" in flags and "--enable-seccomp" in flags
    assert ("--disable-host-loopback" in flags) is not loopback
    assert ("--disable-dns" in flags) is not dns
    assert p.egress.dns is dns
    resolv = p.staged_files["resolv.conf"]
    dns_notes = [n for n in notes(p, "network") if "name resolution is unavailable" in n]
    if dns:
        assert resolv == "nameserver 10.0.2.3\n" and dns_notes == []
    else:
        assert "nameserver" not in resolv and len(dns_notes) == 1
    assert layer(p, "network")["host_loopback"] is loopback
    # Whatever slirp's flags do, the ruleset refuses the closed doors before any allow entry.
    lines = ruleset_lines(p)
    first_accept = min(i for i, ln in enumerate(lines) if ln.endswith("accept"))
    for address, is_open in (("10.0.2.2/32", loopback), ("10.0.2.3/32", dns)):
        refused = [i for i, ln in enumerate(lines) if address in ln and "reject" in ln]
        assert bool(refused) is not is_open and all(i < first_accept for i in refused)


HOST_ADDRESSES = ("192.0.2.2/32", "203.0.113.0/24", "10.0.2.15/32", "2001:db8::2/128")


def host_with_addresses():
    return replace(host(), host_addresses=HOST_ADDRESSES)


def refused_before_accept(p) -> set[str]:
    lines = ruleset_lines(p)
    first_accept = min(i for i, ln in enumerate(lines) if ln.endswith("accept"))
    return {n.strip() for ln in lines[:first_accept] if "reject" in ln and "{" in ln
            for n in ln[ln.index("{") + 1:ln.index("}")].split(",")}


def test_unrestricted_refuses_the_hosts_own_addresses():
    """slirp4netns connects from the host: without this, ``unrestricted`` reaches every service
    listening on the host's LAN address. Addresses inside slirp's own 10.0.2.0/24 never reach
    the host and stay out of the set (the namespace's own address may be there)."""
    p = run_plan(host_with_addresses(), pol=policy({"network": {"mode": "unrestricted"}}))
    refused = refused_before_accept(p)
    assert {"192.0.2.2/32", "203.0.113.0/24", "2001:db8::2/128", "10.0.2.2/32"} <= refused
    assert "10.0.2.15/32" not in refused and "10.0.2.3/32" not in refused  # DNS stays open here
    assert layer(p, "network")["host_addresses_blocked"] == ["192.0.2.2/32", "203.0.113.0/24", "2001:db8::2/128"]


def test_allowlist_reaches_a_host_address_only_by_exact_entry():
    broad = run_plan(host_with_addresses(), pol=allowlist(["192.0.2.0/24:5432"]))
    assert "192.0.2.2/32" in refused_before_accept(broad)
    assert any("host's own addresses" in n and "192.0.2.2/32" in n for n in notes(broad, "network"))
    exact = run_plan(host_with_addresses(), pol=allowlist(["192.0.2.2:5432"]))
    assert "192.0.2.2/32" not in refused_before_accept(exact)
    assert "ip daddr 192.0.2.2/32 tcp dport 5432 accept" in ruleset_lines(exact)
    assert layer(exact, "network")["host_addresses_blocked"] == ["203.0.113.0/24", "2001:db8::2/128"]


def test_azure_wireserver_is_in_the_metadata_block():
    p = run_plan(pol=policy({"network": {"mode": "unrestricted"}}))
    assert "168.63.129.16/32" in refused_before_accept(p)


def test_deny_notes_no_name_resolution():
    p = run_plan()
    assert any("name resolution is unavailable" in n for n in notes(p, "network"))
    assert "nameserver" not in p.staged_files["resolv.conf"]


def test_ipv6_allow_entries_are_a_downgrade_not_a_silent_blackhole():
    p = run_plan(pol=allowlist(["203.0.113.7", "[2001:db8::1]:443"]))
    assert "ip6 daddr 2001:db8::1/128 tcp dport 443 accept" in ruleset_lines(p)
    got = downgrades(p, "network")
    assert len(got) == 1 and "IPv4-only" in got[0] and "2001:db8::1" in got[0]
    assert enforced(p, "network") is False
    with pytest.raises(SandboxUnavailable):
        plan(policy({"network": {"mode": "allowlist", "allow": ["[2001:db8::1]:443"]}}, on_unavailable="fail"), host(), spec())


@pytest.mark.parametrize("entry", [
    "1.2.3.4} accept; {", "1.2.3.4;", "10.0.0.0/8 accept", "example.com", "1.2.3.4:443}", '"1.2.3.4"', "1.2.3.4\naccept",
])
def test_allow_entries_cannot_inject_rule_text(entry):
    with pytest.raises(ValueError):
        parse_allow_entry(entry)
    with pytest.raises(PolicyError) as err:
        policy({"network": {"mode": "allowlist", "allow": [entry]}})
    assert "network.allow" in str(err.value)


def test_ruleset_holds_only_parsed_addresses():
    rules = [parse_allow_entry(e) for e in (" 10.1.2.3/8:443 ", "[2001:db8::/32]:53", "192.0.2.9")]
    text = build_ruleset(rules, True, False)
    accept_lines = [ln.strip() for ln in text.splitlines() if "daddr" in ln and ln.strip().endswith("accept")]
    assert accept_lines == [
        "ip daddr 10.0.0.0/8 tcp dport 443 accept", "ip daddr 10.0.0.0/8 udp dport 443 accept",
        "ip6 daddr 2001:db8::/32 tcp dport 53 accept", "ip6 daddr 2001:db8::/32 udp dport 53 accept",
        "ip daddr 192.0.2.9/32 accept",
    ]
    # Braces: the table and two chains, plus one set per metadata line; nothing from entries.
    assert text.count("{") == text.count("}") == 3 + 2


# =========================================================================== resources

FULL_CONTROLS = {
    "cpu_seconds": "rlimit",
    "max_open_files": "rlimit",
    "max_file_size_bytes": "rlimit",
    "max_processes": "cgroup-v1-pids+rlimit-nproc-in-userns",
    "memory_bytes": "cgroup-v1-memory",
    "max_output_bytes": "supervisor-stream-cap",
    "wall_seconds": "supervisor-timer",
}


def test_each_control_names_its_mechanism():
    p = run_plan(pol=policy({"resources": {"wall_seconds": 30}}))
    controls = layer(p, "resources")["controls"]
    assert {k: v["mechanism"] for k, v in controls.items()} == FULL_CONTROLS
    assert all(v["state"] == "enforced" for v in controls.values())
    assert layer(p, "resources")["state"] == "enforced" and enforced(p, "resources")
    assert prlimit_args(p) == ["--cpu=60", "--nofile=1024", "--fsize=268435456", "--nproc=256"]
    assert p.cgroup.version == 1
    assert p.cgroup.memory_bytes == 512 * MiB and p.cgroup.memory_root == "/sys/fs/cgroup/memory/sandbox-kernel"
    assert p.cgroup.pids_max == 256 + PIDS_OVERHEAD and p.cgroup.pids_root == "/sys/fs/cgroup/pids/sandbox-kernel"
    assert p.max_output_bytes == 5 * MiB and p.wall_seconds == 30
    assert downgrades(p, "resources") == [] and notes(p, "resources") == []


def test_prlimit_runs_inside_the_sandbox():
    p = run_plan()
    inner = after_bwrap(p)
    assert inner[0] == PRLIMIT
    assert PRLIMIT not in list(p.argv)[: list(p.argv).index(BWRAP)]
    assert inner[inner.index("--") + 1:] == list(CMD)


RESOURCE_MATRIX = [
    # id, host variants, runtime, resources policy, {control: mechanism or None(degraded)}, prlimit flags (subset),
    # absent flags, downgrade substrs, note substrs
    # RLIMIT_AS caps each process, not the sandbox: applied, but a downgrade.
    ("no-cgroups-python", ("no-cgroups",), "python", {},
     {"max_processes": "rlimit-nproc-in-userns", "memory_bytes": ("rlimit-as", "degraded")},
     ["--nproc=256", f"--as={512 * MiB}"], [], ["memory_bytes: per process via RLIMIT_AS, not per sandbox"], ["max_processes"]),
    ("no-cgroups-shell", ("no-cgroups",), "shell", {},
     {"memory_bytes": ("rlimit-as", "degraded")}, [f"--as={512 * MiB}"], [], ["per process via RLIMIT_AS"], ["RLIMIT_NPROC"]),
    ("no-cgroups-node", ("no-cgroups",), "node", {},
     {}, ["--nproc=256"], ["--as="], ["memory_bytes: no memory cgroup (no cgroup filesystem mounted); only node's JavaScript heap"],
     ["max_processes"]),
    ("no-cgroups-other", ("no-cgroups",), "other", {},
     {"memory_bytes": None}, [], ["--as="], ["RLIMIT_AS would break"], ["max_processes"]),
    ("node-with-cgroup", (), "node", {}, {"memory_bytes": "cgroup-v1-memory"}, [], ["--as="], [], []),
    ("no-bwrap-cgroups", ("no-bwrap",), "python", {},
     {"max_processes": "cgroup-v1-pids"}, ["--cpu=60"], ["--nproc="], [], []),
    ("no-bwrap-no-cgroups", ("no-bwrap", "no-cgroups"), "python", {},
     {"max_processes": None, "memory_bytes": ("rlimit-as", "degraded")}, [f"--as={512 * MiB}"], ["--nproc="],
     ["user namespace", "per process via RLIMIT_AS"], []),
    ("no-prlimit", ("no-prlimit",), "python", {},
     {"cpu_seconds": None, "max_open_files": None, "max_file_size_bytes": None,
      "max_processes": "cgroup-v1-pids", "memory_bytes": "cgroup-v1-memory"}, [], ["--cpu="],
     ["cpu_seconds: needs prlimit", "max_open_files: needs prlimit", "max_file_size_bytes: needs prlimit"], []),
    ("no-prlimit-no-cgroups", ("no-prlimit", "no-cgroups"), "python", {},
     {"max_processes": None, "memory_bytes": None}, [], ["--cpu="],
     ["cpu_seconds: needs prlimit", "max_open_files: needs prlimit", "max_file_size_bytes: needs prlimit",
      "max_processes: no pids cgroup", "memory_bytes: no memory cgroup"], []),
    ("only-output-cap", (), "python",
     {"cpu_seconds": None, "memory_bytes": None, "max_processes": None, "max_open_files": None, "max_file_size_bytes": None},
     {"max_output_bytes": "supervisor-stream-cap"}, [], ["--cpu="], [], []),
]


@pytest.mark.parametrize("variants,runtime,res,mechanisms,flags,absent,downs,note_subs",
                         [r[1:] for r in RESOURCE_MATRIX], ids=[r[0] for r in RESOURCE_MATRIX])
def test_resources_matrix(variants, runtime, res, mechanisms, flags, absent, downs, note_subs):
    p = run_plan(host(*variants), policy({"resources": res}), runtime=runtime)
    controls = layer(p, "resources")["controls"]
    for name, mech in mechanisms.items():
        mech, state = mech if isinstance(mech, tuple) else (mech, "enforced" if mech else "degraded")
        assert controls[name]["mechanism"] == mech, name
        assert controls[name]["state"] == state, name
    got_flags = prlimit_args(p)
    for f in flags:
        assert f in got_flags
    for f in absent:
        assert not any(a.startswith(f) for a in got_flags)
    got = downgrades(p, "resources")
    assert len(got) == len(downs)
    for sub in downs:
        assert any(sub in r for r in got), (sub, got)
    if downs:
        assert layer(p, "resources")["state"] == "degraded" and enforced(p, "resources") is False
    got_notes = notes(p, "resources")
    assert len(got_notes) == len(note_subs)
    for sub in note_subs:
        assert any(sub in n for n in got_notes), (sub, got_notes)


def test_without_prlimit_rlimit_reasons_do_not_blame_memory():
    # R1 of the anchor: memory never depended on prlimit when a memory cgroup exists.
    p = run_plan(host("no-prlimit"))
    assert PRLIMIT not in p.argv
    assert all("memory" not in r for r in downgrades(p, "resources"))
    assert layer(p, "resources")["controls"]["memory_bytes"]["state"] == "enforced"


def test_without_bwrap_prlimit_wraps_the_command_directly_and_never_sets_nproc():
    p = run_plan(host("no-bwrap", "no-cgroups"))
    argv = list(p.argv)
    assert argv[:7] == [SETPRIV, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", *SETPRIV_FLAGS]
    assert argv[7] == PRLIMIT
    assert not any(a.startswith("--nproc") for a in argv)
    assert argv[argv.index("--", 7) + 1:] == list(CMD)


def test_nothing_requested_is_not_requested():
    none = {k: None for k in ("cpu_seconds", "memory_bytes", "max_processes", "max_open_files",
                              "max_file_size_bytes", "max_output_bytes", "wall_seconds")}
    p = run_plan(pol=policy({"resources": none}))
    lay = layer(p, "resources")
    assert lay["state"] == "not-requested" and lay["mechanism"] is None and lay["controls"] == {}
    assert enforced(p, "resources") is False
    assert PRLIMIT not in p.argv and p.cgroup is None and p.max_output_bytes is None
    assert after_bwrap(p) == list(CMD)


# =========================================================================== seccomp

def test_seccomp_enforced():
    p = run_plan()
    args = bwrap_args(p)
    assert has_seq(args, ["--seccomp", FD_PLACEHOLDER])
    assert "--disable-userns" in args
    assert p.seccomp is not None and "ptrace" in p.seccomp.denied
    lay = layer(p, "seccomp")
    assert lay["state"] == "enforced" and lay["mechanism"] == "seccomp-bpf" and enforced(p, "seccomp")
    # The report lists what is refused: the exploit aids, the socket families, unknown syscalls.
    assert {"io_uring_setup", "io_uring_enter", "io_uring_register", "modify_ldt", "bpf"} <= set(lay["denied"])
    assert lay["socket_families"] == ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK (NETLINK_ROUTE only)"]
    assert lay["other_socket_families"] == "EAFNOSUPPORT" and lay["unknown_syscalls"].startswith("ENOSYS")
    assert set(p.seccomp.socket_families) == {1, 2, 10} and p.seccomp.netlink_protocols == (0,)


@pytest.mark.parametrize("variant,why", [("no-seccomp", "seccomp filter"), ("no-bwrap", "bwrap")])
def test_seccomp_unavailable(variant, why):
    p = run_plan(host(variant))
    assert "--seccomp" not in p.argv and FD_PLACEHOLDER not in p.argv and "--disable-userns" not in p.argv
    assert p.seccomp is None
    got = downgrades(p, "seccomp")
    assert len(got) == 1 and why in got[0]
    assert enforced(p, "seccomp") is False


# =========================================================================== env

HOSTILE_OVERRIDES = [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE",
    "PYTHONINSPECT", "PYTHONBREAKPOINT", "PYTHONWARNINGS", "NODE_OPTIONS", "NODE_PATH", "BASH_ENV", "ENV",
    "http_proxy", "HTTPS_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "GCONV_PATH", "MALLOC_ARENA_MAX",
    "BASH_FUNC_x%%", "IFS", "PATH", "HOME", "TMPDIR",
]
HOST_ENV = {"AWS_SECRET_ACCESS_KEY": "hunter2", "GITHUB_TOKEN": "ghp_x", "JUPYTER_TOKEN": "tok",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "PATH": "/root/bin:/usr/bin", "HOME": "/root",
            "LD_PRELOAD": "/host/evil.so", "SSH_AUTH_SOCK": "/run/ssh.sock"}


@pytest.mark.parametrize("key", HOSTILE_OVERRIDES)
def test_hostile_override_is_dropped_and_reported(key):
    p = run_plan(env={key: "/evil", "FOO": "1"})
    assert p.env.get(key) != "/evil"
    assert key in layer(p, "env")["dropped_keys"]
    assert p.env["FOO"] == "1"


@pytest.mark.parametrize("key,value", [("FOO", "1"), ("PYTHONUNBUFFERED", "1"), ("MPLBACKEND", "Agg"), ("OMP_NUM_THREADS", "2"),
                                       ("JPY_SESSION_NAME", "/home/u/nb.ipynb")])
def test_benign_override_passes(key, value):
    p = run_plan(env={key: value})
    assert p.env[key] == value
    assert layer(p, "env")["dropped_keys"] == []


def test_supervisor_env_never_leaks_only_locale_passes():
    p = run_plan(host_env=HOST_ENV)
    for secret in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "JUPYTER_TOKEN", "LD_PRELOAD", "SSH_AUTH_SOCK"):
        assert secret not in p.env
    assert "hunter2" not in json.dumps(p.env) and "hunter2" not in json.dumps(p.report.to_dict())
    assert {k: p.env[k] for k in ("LANG", "LC_ALL", "TZ")} == {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    assert p.env["PATH"] == BASE_PATH
    assert p.env["HOME"] == "/scratch"


def test_pinned_values_and_sandbox_env_bypass():
    p = run_plan(env={"HOME": "/root", "TMPDIR": "/var/tmp", "USER": "root"},
                 sandbox_env={"PYTHONPATH": "/kernel/lib", "JPY_PARENT_PID": "1"})
    assert p.env["HOME"] == "/scratch" and p.env["TMPDIR"] == "/tmp"
    assert p.env["USER"] == p.env["LOGNAME"] == "sandbox"
    assert p.env["PYTHONPATH"] == "/kernel/lib" and p.env["JPY_PARENT_PID"] == "1"
    assert set(layer(p, "env")["dropped_keys"]) == {"HOME", "TMPDIR", "USER"}


def test_home_follows_filesystem_mode_off():
    p = run_plan(pol=policy({"filesystem": {"mode": "off"}}))
    assert p.env["HOME"] == p.cwd == "/tmp"


# =========================================================================== report

REPORT_POLICIES = {
    "default": {},
    "allowlist": {"network": {"mode": "allowlist", "allow": ALLOW}},
    "unrestricted-block": {"network": {"mode": "unrestricted"}},
    "unrestricted-open": {"network": {"mode": "unrestricted", "block_metadata": False}},
    "fs-off": {"filesystem": {"mode": "off"}},
    "scratch-only": {"filesystem": {"mode": "scratch-only"}},
    "inherit": {"privilege": {"mode": "inherit"}},
    "no-caps": {"resources": {"cpu_seconds": None, "memory_bytes": None, "max_processes": None, "max_open_files": None,
                              "max_file_size_bytes": None, "max_output_bytes": None}},
}
REPORT_HOSTS = [(), ("non-root",), ("no-bwrap",), ("no-setpriv",), ("no-prlimit",), ("no-seccomp",), ("no-egress",),
                ("no-cgroups",), ("no-uid-leases",), ("non-root", "no-cgroups", "no-egress"), ("darwin",)]


@pytest.mark.parametrize("variants", REPORT_HOSTS, ids=lambda v: "+".join(v) or "root")
@pytest.mark.parametrize("pol_name", list(REPORT_POLICIES))
def test_report_contract_holds_across_the_matrix(variants, pol_name):
    p = run_plan(host(*variants), policy(REPORT_POLICIES[pol_name]))
    r = p.report.to_dict()
    assert json.loads(json.dumps(r)) == r
    assert {"version", "scope", "platform", "requested", "enforced", "layers", "downgrades", "notes"} <= set(r)
    assert r["version"] == 1 and r["scope"] == "cell"
    assert r["platform"] == ("darwin" if "darwin" in variants else "linux")
    assert r["requested"] == policy(REPORT_POLICIES[pol_name]).to_dict()
    assert set(r["layers"]) == set(LAYERS) == set(r["enforced"])
    for name, lay in r["layers"].items():
        assert lay["state"] in ("enforced", "degraded", "not-requested") and "mechanism" in lay
        # enforced.X only if requested AND enforced; a downgrade always shows as "degraded".
        assert r["enforced"][name] is (lay["state"] == "enforced")
        has_down = any(d["layer"] == name for d in r["downgrades"])
        assert has_down is (lay["state"] == "degraded"), (name, lay, r["downgrades"])
        if lay["state"] == "enforced":
            assert lay["mechanism"]
    for d in r["downgrades"]:
        assert set(d) == {"layer", "reason"} and d["layer"] in LAYERS and d["reason"]
    for n in r["notes"]:
        assert set(n) == {"layer", "note"} and n["note"]


def test_report_scope_follows_spec():
    assert run_plan(scope="kernel").report.to_dict()["scope"] == "kernel"


def test_secure_default_on_capable_host_is_fully_enforced():
    for variants in ((), ("non-root",)):
        p = plan(policy(on_unavailable="fail"), host(*variants), spec())
        r = p.report.to_dict()
        assert r["downgrades"] == []
        assert all(r["enforced"].values()), r["enforced"]


@pytest.mark.parametrize("variants,layers_down", [
    (("darwin",), {"filesystem", "network", "resources", "seccomp"}),
    (("no-bwrap",), {"filesystem", "network", "seccomp"}),
])
def test_weak_hosts_downgrade_exactly_the_missing_layers(variants, layers_down):
    p = run_plan(host(*variants))
    assert {d.layer for d in p.report.downgrades} == layers_down
    if "darwin" in variants:
        assert all("darwin" in d.reason for d in p.report.downgrades)
        assert p.argv == CMD  # non-root, nothing to wrap with: the plain command (and the report says so)


def test_disabled_policy_is_plain():
    p = run_plan(pol=policy(enabled=False), env={"LD_PRELOAD": "x"})
    r = p.report.to_dict()
    assert p.argv == CMD and p.sandboxed is False
    assert all(lay["state"] == "not-requested" for lay in r["layers"].values())
    assert not any(r["enforced"].values())
    assert r["downgrades"] == [] and r["requested"]["enabled"] is False
    assert p.egress is None and p.cgroup is None and p.seccomp is None and p.staged_files == {}


def test_disabled_policy_never_refuses_on_a_weak_host():
    p = plan(policy(enabled=False, on_unavailable="fail"), host("darwin"), spec())
    assert p.argv == CMD


# =========================================================================== fail-closed gate

GATE_MATRIX = [
    # id, host variants, policy overrides, expected downgraded layers
    ("no-bwrap", ("no-bwrap",), {}, ["filesystem", "network", "seccomp"]),
    ("no-prlimit", ("no-prlimit",), {}, ["resources", "resources", "resources"]),
    ("root-inherit", (), {"privilege": {"mode": "inherit"}}, ["privilege"]),
    ("no-egress-allowlist", ("no-egress",), {"network": {"mode": "allowlist", "allow": ALLOW}}, ["network"]),
    ("everything-missing", ("no-bwrap", "no-setpriv", "no-prlimit", "no-seccomp", "no-egress", "no-cgroups"),
     {"network": {"mode": "allowlist", "allow": ALLOW}},
     ["privilege", "filesystem", "network", "resources", "resources", "resources", "resources", "resources", "seccomp"]),
]


@pytest.mark.parametrize("variants,pol,layers_down", [r[1:] for r in GATE_MATRIX], ids=[r[0] for r in GATE_MATRIX])
def test_fail_refuses_listing_every_downgrade_and_degrade_reports_them(variants, pol, layers_down):
    caps = host(*variants)
    with pytest.raises(SandboxUnavailable) as err:
        plan(policy(pol, on_unavailable="fail"), caps, spec())
    degraded = plan(policy(pol, on_unavailable="degrade"), caps, spec())
    assert [d.layer for d in degraded.report.downgrades] == layers_down
    exc = err.value
    assert str(exc).startswith("sandbox unavailable")
    assert exc.downgrades == degraded.report.downgrades
    for d in degraded.report.downgrades:
        assert f"{d.layer}: {d.reason}" in str(exc)
    assert exc.report is not None and exc.report.to_dict()["downgrades"] == degraded.report.to_dict()["downgrades"]


@pytest.mark.parametrize("variants,pol", [
    (("non-root",), {"privilege": {"uid": 2000}}),
    (("no-cgroups",), {"resources": {"memory_bytes": "unlimited"}}),
    ((), {"network": {"mode": "allowlist", "allow": ["169.254.169.254", "203.0.113.7"]}}),
    ((), {"filesystem": {"read_only_paths": ["/etc"]}}),
    ((), {"filesystem": {"mode": "off"}}),
], ids=["uid-ignored", "no-cgroups", "metadata-entry", "reserved-ro-path", "fs-off"])
def test_notes_never_refuse(variants, pol):
    p = plan(policy(pol, on_unavailable="fail"), host(*variants), spec())
    assert p.report.notes and p.report.downgrades == []


def test_rootless_memory_by_rlimit_as_alone_is_refused_under_fail():
    """The issue's rootless supervisor: no memory cgroup, so memory is per process only."""
    with pytest.raises(SandboxUnavailable) as exc:
        plan(policy(on_unavailable="fail"), host("non-root", "no-cgroups"), spec())
    assert "resources: memory_bytes: per process via RLIMIT_AS, not per sandbox" in str(exc.value)
    controls = layer(run_plan(host("non-root", "no-cgroups")), "resources")["controls"]
    assert controls["memory_bytes"] == {"limit": 512 * MiB, "mechanism": "rlimit-as", "state": "degraded", "scope": "per-process"}
    # RLIMIT_NPROC set inside the sandbox's own user namespace counts that namespace's
    # processes only: a per-sandbox cap, so not a downgrade.
    assert controls["max_processes"]["state"] == "enforced"


# =========================================================================== argv order

@pytest.mark.parametrize("variants,head,has_bwrap,has_prlimit", [
    ((), SETPRIV, True, True),
    (("non-root",), BWRAP, True, True),
    (("no-bwrap",), SETPRIV, False, True),
    (("non-root", "no-bwrap"), PRLIMIT, False, True),
    (("non-root", "no-prlimit"), BWRAP, True, False),
    (("non-root", "no-bwrap", "no-prlimit"), CMD[0], False, False),
])
def test_argv_order(variants, head, has_bwrap, has_prlimit):
    p = run_plan(host(*variants))
    argv = list(p.argv)
    assert argv[0] == head
    assert argv[-len(CMD):] == list(CMD)
    assert (BWRAP in argv) is has_bwrap and (PRLIMIT in argv) is has_prlimit
    pos = {name: argv.index(name) for name in (SETPRIV, BWRAP, PRLIMIT) if name in argv}
    order = [n for n in (SETPRIV, BWRAP, PRLIMIT) if n in pos]
    assert [pos[n] for n in order] == sorted(pos.values())
    if has_bwrap:
        sep = argv.index("--", pos[BWRAP])
        inner = argv[sep + 1:]
        if has_prlimit:
            assert inner[0] == PRLIMIT and inner[inner.index("--") + 1:] == list(CMD)
        else:
            assert inner == list(CMD)
        assert argv[pos[BWRAP]: sep].count("--seccomp") == 1
