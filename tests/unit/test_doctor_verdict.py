"""doctor's last line agrees with its probes: never "fully enforceable" after a failed one."""

from sandbox_kernel.cli import verdict


def test_fully_enforceable_only_when_every_probe_passed():
    assert verdict(True, []) == "the policy is fully enforceable on this host"


def test_enforceable_policy_with_a_failed_probe_names_it():
    line = verdict(True, ["cgroup_memory", "cgroup_pids"])
    assert "fully" not in line and "2 probe(s) failed (cgroup_memory, cgroup_pids)" in line


def test_unenforceable():
    assert verdict(False, ["bwrap"]).startswith("NOT fully enforceable")
