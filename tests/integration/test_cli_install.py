"""`sandbox-kernel install`: name, display name, prefix, env, logos, found by jupyter_client's
own KernelSpecManager; a policy file that loosens the operator's policy is refused at install
with the message a kernel start gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel.cli import EXIT_OK, EXIT_USAGE

from .kernels import write_kernelspec

pytestmark = pytest.mark.integration


def install(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_DATA_DIR=str(tmp_path / "data"), JUPYTER_PREFER_ENV_PATH="0")
    return subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_install_options_and_logos(tmp_path):
    proc = install(tmp_path, "--prefix", str(tmp_path / "env"), "--name", "locked-py", "--display-name", "Python (locked)",
                   "--env", "MPLBACKEND=Agg", "--env", "EMPTY=")
    assert proc.returncode == EXIT_OK, proc.stderr
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "env" / "share" / "jupyter" / "kernels")])
    spec = ksm.get_all_specs()["locked-py"]
    assert spec["spec"]["display_name"] == "Python (locked)"
    assert spec["spec"]["env"] == {"MPLBACKEND": "Agg", "EMPTY": ""}
    assert spec["spec"]["metadata"]["kernel_provisioner"]["provisioner_name"] == "sandbox-provisioner"
    files = set(os.listdir(spec["resource_dir"]))
    assert {"logo-svg.svg", "logo-32x32.png", "logo-64x64.png"} <= files
    for size in (32, 64):
        head = (Path(spec["resource_dir"]) / f"logo-{size}x{size}.png").read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == size


@pytest.mark.parametrize("args, words", [
    (("--name", "has space"), ("--name: ", "not a kernelspec name")),
    (("--env", "NOEQUALS"), ("--env: ", "KEY=VALUE")),
    (("--prefix", "/proc/sys/nope"), ("install: ", "--user")),
])
def test_install_mistakes_are_one_line(tmp_path, args, words):
    proc = install(tmp_path, *args)
    assert proc.returncode == EXIT_USAGE and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


def test_a_loosening_policy_is_refused_at_install_as_at_start(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_server_config.py").write_text('c.SandboxPolicyConfig.memory_bytes = "256M"\n')
    loose = tmp_path / "loose.toml"
    loose.write_text('[resources]\nmemory_bytes = "512M"\n')  # the secure default, but above the operator's
    proc = install(tmp_path, "--user", "--policy", str(loose))
    assert proc.returncode == EXIT_USAGE and proc.stdout == ""
    assert not (tmp_path / "data" / "kernels" / "python3-sandboxed").exists()
    # what a kernel start says for the same keys under the same operator config
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    from sandbox_kernel.policy import PolicyError

    write_kernelspec(tmp_path / "data", name="loose", resources={"memory_bytes": "512M"})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    km = KernelManager(kernel_name="loose", config=Config({"SandboxPolicyConfig": {"memory_bytes": "256M"}}))
    with pytest.raises(PolicyError) as err:
        km.start_kernel()
    assert proc.stderr.strip().splitlines() == [f"{f}: {m}" for f, m in err.value.problems]
    tight = tmp_path / "tight.toml"
    tight.write_text('[resources]\nmemory_bytes = "128M"\n')
    proc = install(tmp_path, "--user", "--policy", str(tight))
    assert proc.returncode == EXIT_OK, proc.stderr
    spec = json.loads((tmp_path / "data" / "kernels" / "python3-sandboxed" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"] == {"resources": {"memory_bytes": "128M"}}
