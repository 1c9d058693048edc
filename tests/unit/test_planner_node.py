"""%%node specifics of the planner: the operator's node_modules root."""

from __future__ import annotations

import pytest

from sandbox_kernel.policy import PolicyError, policy_from_dict, tighten

from .hosts import bwrap_args, layer, policy, run_plan, triples

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
