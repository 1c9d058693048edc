"""doctor's host-shape findings from given mount tables, controllers and sysctls."""

from __future__ import annotations

from dataclasses import replace

from sandbox_kernel.host import Capability
from sandbox_kernel.host_shape import cgroups, container, parse_mountinfo, propagation, user_namespaces

from .test_planner import host

# /proc/self/mountinfo of a systemd host (unified cgroup v2, everything shared)...
SYSTEMD = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4006752k,mode=755
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
# ...and of a Debian host without systemd: private, v1 controllers plus a bare v2 hierarchy.
HYBRID = """\
20 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 29 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 30 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
39 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def v2(version: int, root: str) -> Capability:
    return Capability(True, "created and removed a probe cgroup", detail={"version": version, "root": root})


def test_shared_propagation_is_named_and_explained():
    f = propagation(parse_mountinfo(SYSTEMD))
    assert f.detected == "4 of 4 mounts shared, 0 slave; / is shared"
    assert "systemd's default" in f.meaning and "slirp4netns" in f.meaning and f.tested_in_ci


def test_private_propagation():
    f = propagation(parse_mountinfo(HYBRID))
    assert f.detected == "0 of 5 mounts shared, 0 slave; / is private" and f.tested_in_ci


def test_hybrid_cgroups_say_v2_has_no_memory_or_pids_and_name_the_v1_roots():
    f = cgroups(parse_mountinfo(HYBRID), {"/sys/fs/cgroup/unified": {"hugetlb"}}, host())
    assert f.detected == ("cgroup v1 hierarchies for memory and pids; "
                          "cgroup v2 at /sys/fs/cgroup/unified offering: hugetlb")
    assert "memory and pids are not delegated to the v2 hierarchy at /sys/fs/cgroup/unified" in f.meaning
    assert "memory: v1 cgroups below /sys/fs/cgroup/memory/sandbox-kernel" in f.meaning
    assert "delegated" in f.hint and f.tested_in_ci


def test_unified_v2_with_controllers_is_used_and_only_probed():
    caps = replace(host(), cgroup_memory=v2(2, "/sys/fs/cgroup/sandbox-kernel"), cgroup_pids=v2(2, "/sys/fs/cgroup/sandbox-kernel"))
    f = cgroups(parse_mountinfo(SYSTEMD), {"/sys/fs/cgroup": {"cpu", "io", "memory", "pids"}}, caps)
    assert "not delegated" not in f.meaning and f.hint is None
    assert "memory: v2 cgroups below /sys/fs/cgroup/sandbox-kernel" in f.meaning
    assert "probed at run time only" in f.meaning and not f.tested_in_ci


def test_v2_without_memory_says_which_controller_is_missing_and_what_replaces_it():
    caps = host("no-cgroups")
    f = cgroups(parse_mountinfo(SYSTEMD), {"/sys/fs/cgroup": {"cpu", "pids"}}, caps)
    assert "memory is not delegated to the v2 hierarchy at /sys/fs/cgroup" in f.meaning
    assert "memory: no cgroup (no cgroup filesystem mounted)" in f.meaning
    assert "Delegate=yes" in f.hint


def test_no_cgroup_filesystem():
    f = cgroups(parse_mountinfo(HYBRID.splitlines()[0]), {}, host("no-cgroups"))
    assert f.detected == "no cgroup filesystem mounted" and "RLIMIT_AS" in f.meaning and f.hint


def test_container_signals_point_at_the_probes_and_hint_only_when_bwrap_fails():
    assert container([], host()).detected.startswith("no container signal")
    ok = container(["/.dockerenv (Docker)"], host())
    assert "bwrap ok" in ok.meaning and ok.hint is None and not ok.tested_in_ci
    failed = container(["KUBERNETES_SERVICE_HOST set (Kubernetes)"], host("no-bwrap"))
    assert "bwrap FAILED" in failed.meaning and "procMount: Unmasked" in failed.hint


def test_apparmor_userns_restriction():
    on = {"kernel.apparmor_restrict_unprivileged_userns": "1", "user.max_user_namespaces": "63000",
          "kernel.unprivileged_userns_clone": None}
    f = user_namespaces(on, host("no-bwrap"))
    assert "AppArmor restriction is on" in f.meaning and "bwrap probe" in f.meaning
    assert "apparmor_restrict_unprivileged_userns=0" in f.hint and not f.tested_in_ci
    assert user_namespaces(on, host()).hint is None  # a profile already allows it: the probe passed
    off = user_namespaces({**on, "kernel.apparmor_restrict_unprivileged_userns": "0"}, host())
    assert off.meaning.startswith("nothing restricts")
    absent = user_namespaces({"user.max_user_namespaces": "63000"}, host())
    assert "no AppArmor restriction on this kernel" in absent.meaning and absent.tested_in_ci
