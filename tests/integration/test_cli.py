"""The ``sandbox-kernel`` command (docs/architecture.md, "The command line") run as a real subprocess: ``doctor`` on this
host (and on this host with a tool hidden from PATH), ``policy show|validate``, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel.cli import EXIT_OK, EXIT_UNENFORCEABLE, EXIT_USAGE
from sandbox_kernel.policy import policy_from_dict, secure_default
from sandbox_kernel.report import LAYERS

from .kernels import path_without

pytestmark = pytest.mark.integration

# Probes the secure default depends on (landlock is probed but not used by the planner).
REQUIRED_CAPABILITIES = ("bwrap", "setpriv", "prlimit", "seccomp", "egress", "cgroup_memory", "cgroup_pids",
                         "uid_range", "interpreter")
ALLOWLIST_POLICY = '[network]\nmode = "allowlist"\nallow = ["192.0.2.0/24:443"]\n'


@pytest.fixture
def config_dir(tmp_path) -> Path:
    """An empty Jupyter config dir: the operator policy is the secure default."""
    path = tmp_path / "jupyter-config"
    path.mkdir()
    return path


@pytest.fixture
def cli(tmp_path, config_dir):
    """``cli(*args, path=None)`` runs ``python -m sandbox_kernel.cli ARGS`` and returns the
    CompletedProcess (text mode)."""
    def run(*args: str, path: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
        env.update(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_PREFER_ENV_PATH="0")
        if path is not None:
            env["PATH"] = path
        return subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=timeout)
    return run


def doctor_json(cli, *args: str, path: str | None = None) -> tuple[int, dict]:
    proc = cli("doctor", "--json", *args, path=path)
    assert proc.returncode in (EXIT_OK, EXIT_UNENFORCEABLE), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def allowlist_policy(tmp_path) -> Path:
    path = tmp_path / "allowlist.toml"
    path.write_text(ALLOWLIST_POLICY)
    return path


# --------------------------------------------------------------------------- doctor on this host


def test_doctor_json_secure_default_fully_enforced(cli):
    rc, out = doctor_json(cli)
    assert rc == EXIT_OK
    assert out["enforceable"] is True
    assert out["policy"] == "secure-default" and out["hints"] == []
    report = out["report"]
    assert report["version"] == 1
    assert report["scope"] == "kernel"
    assert report["platform"] == "linux"
    assert report["enforced"] == {layer: True for layer in LAYERS}
    for layer in LAYERS:
        assert report["layers"][layer]["state"] == "enforced", layer
        assert report["layers"][layer]["mechanism"], layer
    assert report["downgrades"] == []
    # the report shows the policy that was checked, fail-closed as configured
    assert report["requested"] == secure_default().to_dict()
    for name in REQUIRED_CAPABILITIES:
        assert out["capabilities"][name]["ok"] is True, (name, out["capabilities"][name])
    assert not set(REQUIRED_CAPABILITIES) & set(out["unavailable"])
    assert out["tools"]["bwrap"]


def test_doctor_text_secure_default(cli):
    proc = cli("doctor")
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    assert "the policy is fully enforceable on this host" in proc.stdout
    for layer in LAYERS:
        assert any(line.split()[:2] == [layer, "enforced"] for line in proc.stdout.splitlines()), layer


def test_doctor_allowlist_policy_enforced_with_every_tool(cli, allowlist_policy):
    # the control for the hidden-tool tests below: on this host an allowlist is plumbed
    rc, out = doctor_json(cli, "--policy", str(allowlist_policy))
    assert rc == EXIT_OK, out["report"]["downgrades"]
    assert out["policy"] == "file"
    network = out["report"]["layers"]["network"]
    assert (network["state"], network["mechanism"]) == ("enforced", "nft+slirp4netns")
    assert network["allow"] == ["192.0.2.0/24:443"]
    assert out["report"]["requested"]["network"]["allow"] == ["192.0.2.0/24:443"]
    assert out["capabilities"]["egress"]["ok"] is True


# --------------------------------------------------------------------------- doctor with a tool hidden


def test_doctor_without_bwrap(cli, tmp_path):
    rc, out = doctor_json(cli, path=path_without(tmp_path / "path-without-bwrap", "bwrap"))
    assert rc == EXIT_UNENFORCEABLE
    assert out["enforceable"] is False
    assert out["tools"]["bwrap"] is None
    bwrap = out["capabilities"]["bwrap"]
    assert bwrap["ok"] is False
    assert "bwrap not found" in bwrap["error"]
    assert "apt-get install bubblewrap" in bwrap["hint"]
    assert out["unavailable"]["bwrap"]["hint"] == bwrap["hint"]
    report = out["report"]
    # everything bwrap provides is reported unavailable, each with a reason naming it
    for layer in ("filesystem", "network", "seccomp"):
        assert report["enforced"][layer] is False, layer
        assert report["layers"][layer]["state"] == "degraded", layer
        reasons = [d["reason"] for d in report["downgrades"] if d["layer"] == layer]
        assert reasons and all("bwrap" in r for r in reasons), (layer, reasons)
    assert report["requested"]["on_unavailable"] == "fail"


def test_doctor_text_without_bwrap_shows_the_hint(cli, tmp_path):
    proc = cli("doctor", path=path_without(tmp_path / "path-without-bwrap", "bwrap"))
    assert proc.returncode == EXIT_UNENFORCEABLE
    assert "hint: apt-get install bubblewrap" in proc.stdout
    assert "downgrade: filesystem confinement needs bwrap" in proc.stdout
    assert "NOT fully enforceable" in proc.stdout
    assert 'on_unavailable = "degrade"' in proc.stdout and "not a security boundary" in proc.stdout


def test_doctor_on_a_non_linux_host_says_enforcement_needs_linux(tmp_path, config_dir):
    """The real probe and planner, with the platform Python reports set to macOS's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_PREFER_ENV_PATH="0")
    code = "import sys; sys.platform = 'darwin'; from sandbox_kernel.cli import main; sys.exit(main(['doctor', '--json']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_UNENFORCEABLE, proc.stderr
    out = json.loads(proc.stdout)
    assert out["enforceable"] is False and out["platform"] == "darwin"
    assert any("enforcement needs Linux" in h for h in out["hints"]), out["hints"]
    assert any('on_unavailable = "degrade"' in h and "not a security boundary" in h for h in out["hints"])


@pytest.mark.parametrize("tool,package", [("slirp4netns", "slirp4netns"), ("nft", "nftables")])
def test_doctor_allowlist_without_egress_tool(cli, tmp_path, allowlist_policy, tool, package):
    rc, out = doctor_json(cli, "--policy", str(allowlist_policy), path=path_without(tmp_path / f"path-without-{tool}", tool))
    assert rc == EXIT_UNENFORCEABLE
    assert out["enforceable"] is False
    assert out["tools"][tool] is None
    egress = out["capabilities"]["egress"]
    assert egress["ok"] is False
    assert f"{tool} not found" in egress["error"]
    assert f"apt-get install {package}" in egress["hint"]
    assert out["unavailable"]["egress"]["hint"] == egress["hint"]
    report = out["report"]
    assert report["enforced"]["network"] is False
    assert report["layers"]["network"]["state"] == "degraded"
    [reason] = [d["reason"] for d in report["downgrades"] if d["layer"] == "network"]
    assert "allowlist needs a filtered, plumbed namespace" in reason
    assert f"{tool} not found" in reason
    # only the network layer depends on the missing tool
    assert [d["layer"] for d in report["downgrades"]] == ["network"]
    for layer in LAYERS:
        if layer != "network":
            assert report["enforced"][layer] is True, layer


@pytest.mark.parametrize("tool", ["slirp4netns", "nft"])
def test_secure_default_does_not_need_egress_tools(cli, tmp_path, tool):
    # network deny is a bare network namespace: no nft, no slirp4netns
    rc, out = doctor_json(cli, path=path_without(tmp_path / f"path-without-{tool}", tool))
    assert out["capabilities"]["egress"]["ok"] is False
    assert rc == EXIT_OK, out["report"]["downgrades"]
    assert out["report"]["enforced"] == {layer: True for layer in LAYERS}


# --------------------------------------------------------------------------- policy validate / show

MALFORMED = {
    "bad.toml": '[resources]\nmemory_bytes = "lots"\nbogus_cap = 3\n',
    "bad.json": json.dumps({"resources": {"memory_bytes": "lots", "bogus_cap": 3}}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_policy_validate_malformed(cli, tmp_path, name):
    path = tmp_path / name
    path.write_text(MALFORMED[name])
    proc = cli("policy", "validate", str(path))
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    fields = {line.split(": ", 1)[0] for line in lines}
    assert fields == {"resources.memory_bytes", "resources.bogus_cap"}, lines
    assert any(line.startswith("resources.memory_bytes: ") and "'lots'" in line for line in lines)
    assert "resources.bogus_cap: unknown key" in lines
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "content,field",
    [
        ('[network]\nmode = "allowlist"\nallow = ["1.2.3.4; flush ruleset"]\n', "network.allow[0]"),
        ("version = 2\n", "version"),
        ("enabled = \n", "<file>"),
        ('[privilege]\nuid = 0\n', "privilege.uid"),
    ],
)
def test_policy_validate_names_the_field(cli, tmp_path, content, field):
    path = tmp_path / "p.toml"
    path.write_text(content)
    proc = cli("policy", "validate", str(path))
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith(f"{field}: ")


def test_policy_validate_missing_file(cli, tmp_path):
    proc = cli("policy", "validate", str(tmp_path / "nope.toml"))
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("<file>: ") and "nope.toml" in proc.stderr


def test_policy_validate_ok(cli, tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(ALLOWLIST_POLICY)
    proc = cli("policy", "validate", str(path))
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.strip() == f"{path}: ok"


def test_policy_show_file_prints_the_merged_policy(cli, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(ALLOWLIST_POLICY + '[resources]\nmemory_bytes = "1G"\ncpu_seconds = "unlimited"\n')
    proc = cli("policy", "show", str(path))
    assert proc.returncode == EXIT_OK, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown == policy_from_dict({
        "network": {"mode": "allowlist", "allow": ["192.0.2.0/24:443"]},
        "resources": {"memory_bytes": "1G", "cpu_seconds": None},
    }).to_dict()
    assert shown["resources"]["memory_bytes"] == 1024**3
    assert shown["resources"]["cpu_seconds"] is None
    # what the file leaves out is the secure default
    assert shown["resources"]["max_processes"] == secure_default().resources.max_processes
    assert shown["filesystem"] == secure_default().to_dict()["filesystem"]


def test_policy_show_malformed_file(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(MALFORMED["bad.toml"])
    proc = cli("policy", "show", str(path))
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    assert "resources.memory_bytes: " in proc.stderr


def test_policy_show_without_config_is_the_secure_default(cli):
    proc = cli("policy", "show")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout) == secure_default().to_dict()


def test_policy_show_reads_the_jupyter_config(cli, config_dir):
    (config_dir / "jupyter_sandbox_kernel_config.py").write_text(
        'c.SandboxPolicyConfig.memory_bytes = "256M"\nc.SandboxPolicyConfig.filesystem_mode = "scratch-only"\n')
    proc = cli("policy", "show")
    assert proc.returncode == EXIT_OK, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["resources"]["memory_bytes"] == 256 * 1024**2
    assert shown["filesystem"]["mode"] == "scratch-only"
    assert shown["network"] == secure_default().to_dict()["network"]


def test_policy_show_bad_jupyter_config(cli, config_dir):
    (config_dir / "jupyter_sandbox_kernel_config.py").write_text('c.SandboxPolicyConfig.network_mode = "open"\n')
    proc = cli("policy", "show")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("c.SandboxPolicyConfig.network_mode: ")
    assert "Traceback" not in proc.stderr


def test_doctor_with_a_malformed_policy(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(MALFORMED["bad.toml"])
    proc = cli("doctor", "--json", "--policy", str(path))
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    assert "resources.memory_bytes: " in proc.stderr


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "args",
    [(), ("frobnicate",), ("policy",), ("policy", "frobnicate"), ("policy", "validate"),
     ("policy", "show", "a.toml", "b.toml"), ("doctor", "--bogus"), ("doctor", "--policy")],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_usage_errors_exit_2(cli, args):
    proc = cli(*args)
    assert proc.returncode == EXIT_USAGE
    assert "usage: sandbox-kernel" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_exits_0(cli):
    proc = cli("--help")
    assert proc.returncode == EXIT_OK
    for command in ("doctor", "policy"):
        assert command in proc.stdout


def test_console_script(tmp_path, config_dir):
    # the installed entry point next to this interpreter behaves like `python -m`
    script = Path(sys.executable).with_name("sandbox-kernel")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_PREFER_ENV_PATH": "0"}
    env.pop("JUPYTER_CONFIG_PATH", None)
    proc = subprocess.run([str(script), "policy", "show"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout) == secure_default().to_dict()
    proc = subprocess.run([str(script), "policy"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == EXIT_USAGE


def test_install_writes_the_sandboxed_kernelspec(tmp_path):
    """`install --user --policy FILE`: the kernelspec names the sandbox provisioner, uses
    message interrupts, and carries the file's keys as (tighten-only) provisioner config."""
    policy = tmp_path / "tight.toml"
    policy.write_text('[resources]\nmemory_bytes = "256M"\n')
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--user", "--name", "sbx-test",
                           "--policy", str(policy)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((tmp_path / "data" / "kernels" / "sbx-test" / "kernel.json").read_text())
    assert spec["interrupt_mode"] == "message"
    assert spec["metadata"]["kernel_provisioner"] == {"provisioner_name": "sandbox-provisioner",
                                                      "config": {"resources": {"memory_bytes": "256M"}}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[resources]\nmemroy = 1\n")
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--user", "--policy", str(bad)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "resources.memroy" in proc.stderr
