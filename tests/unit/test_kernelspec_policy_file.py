"""A kernelspec's policy file goes through the one policy-file reader: every problem is a
PolicyError naming the kernelspec key, never a raw OSError or TOMLDecodeError at kernel start."""

from __future__ import annotations

import json

import pytest

from sandbox_kernel.errors import PolicyError
from sandbox_kernel.kernelspec import kernelspec
from sandbox_kernel.provisioner import SandboxProvisioner

FIELD = "kernel_provisioner.config.kernel_policy_file"


def given(provisioner: SandboxProvisioner) -> dict:
    """The kernelspec's overrides, without the sections it leaves empty (unset Dict traits)."""
    return {k: v for k, v in provisioner.kernelspec_overrides().items() if v != {}}


@pytest.mark.parametrize("name, text, needle", [
    ("missing.toml", None, "cannot read policy file"),
    ("broken.toml", "network = [", "not valid TOML"),
    ("broken.json", "{", "not valid JSON"),
    ("latin1.toml", b"mode = '\xe9'", "not UTF-8"),
    ("list.json", "[1, 2]", "table/object"),
])
def test_a_bad_kernelspec_policy_file_names_the_kernelspec_key(tmp_path, name, text, needle):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    provisioner = SandboxProvisioner(kernel_policy_file=str(path))
    with pytest.raises(PolicyError) as info:
        provisioner.kernelspec_overrides()
    assert info.value.fields == [FIELD]
    assert needle in str(info.value) and name in str(info.value)


def test_an_upper_case_json_suffix_is_read_as_json_at_start_as_at_install(tmp_path):
    """``policy.JSON`` was validated as JSON at install, then parsed as TOML at kernel start."""
    path = tmp_path / "policy.JSON"
    path.write_text(json.dumps({"network": {"mode": "deny"}, "resources": {"memory_bytes": "256M"}}))
    spec = kernelspec(policy_file=str(path))
    overrides = given(SandboxProvisioner(kernel_policy_file=str(path)))
    assert overrides == spec["metadata"]["kernel_provisioner"]["config"]
    assert overrides == {"network": {"mode": "deny"}, "resources": {"memory_bytes": "256M"}}


def test_kernelspec_keys_are_applied_over_the_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[resources]\nmemory_bytes = "256M"\ncpu_seconds = 30\n')
    overrides = given(SandboxProvisioner(kernel_policy_file=str(path), resources={"cpu_seconds": 10}))
    assert overrides == {"resources": {"memory_bytes": "256M", "cpu_seconds": 10}}
