"""%%node specifics of the planner: the operator's node_modules root, the V8 heap cap."""

from __future__ import annotations

import pytest

from sandbox_kernel.policy import MiB, PolicyError, policy_from_dict, tighten
from sandbox_kernel.report import SandboxUnavailable

from .hosts import bwrap_args, downgrades, host, layer, policy, run_plan, triples

ROOT = "/opt/notebook-node/node_modules"


@pytest.mark.parametrize("mode", ["scratch-plus-ro", "scratch-only"])
def test_node_runs_see_the_operator_node_modules_read_only_with_node_path(mode):
    p = run_plan(pol=policy({"filesystem": {"mode": mode, "node_modules": ROOT}}), runtime="node",
                 argv=("/usr/bin/node", "-"), env={"NODE_PATH": "/scratch/evil", "NODE_OPTIONS": "--require=/x"})
    assert (ROOT, ROOT) in triples(bwrap_args(p), "--ro-bind-try")
    assert p.env["NODE_PATH"] == ROOT and "NODE_OPTIONS" not in p.env
    assert {"NODE_PATH", "NODE_OPTIONS"} <= set(layer(p, "env")["dropped_keys"])  # the caller's never pass


@pytest.mark.parametrize("runtime", ["python", "shell"])
def test_other_runtimes_do_not_get_node_modules(runtime):
    p = run_plan(pol=policy({"filesystem": {"node_modules": ROOT}}), runtime=runtime)
    assert ROOT not in bwrap_args(p) and "NODE_PATH" not in p.env


def test_no_root_configured_no_bind_no_node_path():
    p = run_plan(runtime="node", argv=("/usr/bin/node", "-"))
    assert "NODE_PATH" not in p.env


def test_a_kernelspec_may_drop_the_root_but_not_point_it_elsewhere():
    base = policy_from_dict({"filesystem": {"node_modules": ROOT}})
    assert tighten(base, {"filesystem": {"node_modules": None}}).filesystem.node_modules is None
    assert tighten(base, {"filesystem": {"node_modules": ROOT}}).filesystem.node_modules == ROOT
    with pytest.raises(PolicyError, match="filesystem.node_modules"):
        tighten(base, {"filesystem": {"node_modules": "/home/attacker/node_modules"}})
    with pytest.raises(PolicyError, match="filesystem.node_modules"):
        tighten(policy_from_dict({}), {"filesystem": {"node_modules": ROOT}})
    with pytest.raises(PolicyError, match="filesystem.node_modules"):
        policy_from_dict({"filesystem": {"node_modules": "relative/node_modules"}})


def test_node_without_a_memory_cgroup_gets_a_v8_heap_cap_reported_as_a_downgrade():
    p = run_plan(host("no-cgroups"), policy({"resources": {"memory_bytes": 256 * MiB}}), runtime="node",
                 argv=("/usr/bin/node", "-"))
    assert p.env["NODE_OPTIONS"] == "--max-old-space-size=256"
    control = layer(p, "resources")["controls"]["memory_bytes"]
    assert control == {"limit": 256 * MiB, "mechanism": "v8-heap-limit", "state": "degraded", "scope": "js-heap"}
    assert any("JavaScript heap" in d for d in downgrades(p, "resources"))
    assert not any(a.startswith("--as=") for a in p.argv)


def test_fail_refuses_a_heap_only_cap():
    with pytest.raises(SandboxUnavailable) as e:
        run_plan(host("no-cgroups"), policy({"resources": {"memory_bytes": 256 * MiB}}, on_unavailable="fail"),
                 runtime="node", argv=("/usr/bin/node", "-"))
    assert [d.layer for d in e.value.downgrades] == ["resources"] and "heap" in e.value.downgrades[0].reason


def test_with_a_memory_cgroup_node_gets_no_heap_flag():
    p = run_plan(pol=policy({"resources": {"memory_bytes": 256 * MiB}}), runtime="node", argv=("/usr/bin/node", "-"))
    assert "NODE_OPTIONS" not in p.env
    assert layer(p, "resources")["controls"]["memory_bytes"]["state"] == "enforced"
