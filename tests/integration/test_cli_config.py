"""`jupyter sandbox-kernel` reads the Jupyter config the server reads (docs/cli.md, "Config"):
``c.SandboxPolicyConfig`` in ``jupyter_server_config.py`` is what ``doctor`` and ``policy show``
report. Real ``jupyter`` command, real config files in a temporary JUPYTER_CONFIG_DIR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel import __version__
from sandbox_kernel.cli import EXIT_OK, EXIT_USAGE
from sandbox_kernel.config import TRAIT_FIELDS
from sandbox_kernel.policy import secure_default

pytestmark = pytest.mark.integration

JUPYTER = str(Path(sys.executable).with_name("jupyter"))


@pytest.fixture
def jupyter(tmp_path):
    """``jupyter(*args)``: ``jupyter sandbox-kernel ARGS`` with JUPYTER_CONFIG_DIR = tmp_path/cfg."""
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
        env.update(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_PREFER_ENV_PATH="0")
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return subprocess.run([JUPYTER, "sandbox-kernel", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)
    run.config_dir = config_dir
    return run


SERVER_CONFIG = ('c.SandboxPolicyConfig.memory_bytes = "256M"\n'
                 'c.SandboxPolicyConfig.network_mode = "allowlist"\n'
                 'c.SandboxPolicyConfig.network_allow = ["127.0.0.1:9"]\n')


def test_doctor_reports_the_policy_in_jupyter_server_config(jupyter):
    (jupyter.config_dir / "jupyter_server_config.py").write_text(SERVER_CONFIG)
    proc = jupyter("doctor", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    out = json.loads(proc.stdout)
    assert out["policy"] == "jupyter-config"
    requested = out["report"]["requested"]
    assert requested["resources"]["memory_bytes"] == 256 * 2**20
    assert requested["network"]["mode"] == "allowlist" and requested["network"]["allow"] == ["127.0.0.1:9"]
    assert out["report"]["layers"]["network"]["mechanism"] == "nft+slirp4netns"
    text = jupyter("doctor")
    assert text.returncode == EXIT_OK and "policy: jupyter-config" in text.stdout.splitlines()[0]
    shown = json.loads(jupyter("policy", "show").stdout)
    assert shown["resources"]["memory_bytes"] == 256 * 2**20 and shown["network"]["mode"] == "allowlist"


def test_the_server_config_wins_over_the_sandbox_kernel_config(jupyter):
    # as for the server's own kernels (the provisioner merges the server's config last)
    (jupyter.config_dir / "jupyter_sandbox_kernel_config.py").write_text(
        'c.SandboxPolicyConfig.memory_bytes = "128M"\nc.SandboxPolicyConfig.cpu_seconds = 30\n')
    (jupyter.config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"SandboxPolicyConfig": {"memory_bytes": "256M"}}))
    shown = json.loads(jupyter("policy", "show").stdout)
    assert shown["resources"]["memory_bytes"] == 256 * 2**20 and shown["resources"]["cpu_seconds"] == 30


def test_a_broken_config_file_is_one_line_exit_2(jupyter):
    (jupyter.config_dir / "jupyter_server_config.py").write_text('c.SandboxPolicyConfig.memory_bytes = (\n')
    proc = jupyter("doctor")
    assert proc.returncode == EXIT_USAGE and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "jupyter_server_config.py" in proc.stderr
    (jupyter.config_dir / "jupyter_server_config.py").write_text('c.SandboxPolicyConfig.network_mode = "open"\n')
    proc = jupyter("policy", "show")
    assert proc.returncode == EXIT_USAGE and proc.stderr.startswith("c.SandboxPolicyConfig.network_mode: ")


def test_version_help_all_and_generate_config(jupyter):
    proc = jupyter("--version")
    assert proc.returncode == EXIT_OK and proc.stdout.strip() == __version__
    proc = jupyter("--help-all")
    assert proc.returncode == EXIT_OK and proc.stdout.startswith("usage: jupyter sandbox-kernel")
    for trait in ("policy_file", *TRAIT_FIELDS):
        assert f"--SandboxPolicyConfig.{trait}" in proc.stdout, trait
    proc = jupyter("--generate-config")
    assert proc.returncode == EXIT_OK, proc.stderr
    written = jupyter.config_dir / "jupyter_sandbox_kernel_config.py"
    text = written.read_text()
    for trait in TRAIT_FIELDS:
        assert f"# c.SandboxPolicyConfig.{trait} = " in text, trait
    # every trait commented out: the policy is still the secure default
    assert json.loads(jupyter("policy", "show").stdout) == secure_default().to_dict()
    again = jupyter("--generate-config")
    assert again.returncode == EXIT_USAGE and len(again.stderr.strip().splitlines()) == 1 and "exists" in again.stderr
    assert written.read_text() == text
