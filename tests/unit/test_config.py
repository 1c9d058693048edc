"""Operator policy from traitlets config: real Jupyter config files found through
JUPYTER_CONFIG_DIR / JUPYTER_CONFIG_PATH, the policy_file trait, and errors naming
``c.SandboxPolicyConfig.<trait>``."""

from __future__ import annotations

import json
import textwrap

import pytest
from traitlets.config import Config

from sandbox_kernel.config import (
    CONFIG_BASENAME,
    FIELD_TRAITS,
    TRAIT_FIELDS,
    SandboxPolicyConfig,
    load_jupyter_config,
    operator_policy,
)
from sandbox_kernel.policy import GiB, MiB, PolicyError, SandboxPolicy, policy_from_dict, secure_default

CLS = "SandboxPolicyConfig"


@pytest.fixture
def jupyter_dirs(tmp_path, monkeypatch):
    """An isolated Jupyter config search path: (config_dir, config_path_dir).

    JUPYTER_CONFIG_PATH entries rank above JUPYTER_CONFIG_DIR; env/system dirs (sys.prefix,
    /etc/jupyter) rank below both, so whatever they hold cannot override these tests."""
    config_dir = tmp_path / "config-dir"
    path_dir = tmp_path / "config-path"
    config_dir.mkdir()
    path_dir.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(path_dir))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    monkeypatch.delenv("JUPYTER_NO_CONFIG", raising=False)
    return config_dir, path_dir


def write_py(directory, body: str):
    (directory / f"{CONFIG_BASENAME}.py").write_text("c = get_config()  # noqa\n" + textwrap.dedent(body))


def write_json(directory, section: dict):
    (directory / f"{CONFIG_BASENAME}.json").write_text(json.dumps({CLS: section}))


def config(**traits) -> Config:
    c = Config()
    for name, value in traits.items():
        c[CLS][name] = value
    return c


# --------------------------------------------------------------------------- real config files


def test_no_config_gives_the_secure_default(jupyter_dirs):
    assert operator_policy() == secure_default()
    assert operator_policy(Config()) == secure_default()


def test_python_config_file(jupyter_dirs):
    config_dir, _ = jupyter_dirs
    write_py(config_dir, """
        c.SandboxPolicyConfig.memory_bytes = "1G"
        c.SandboxPolicyConfig.cpu_seconds = "unlimited"
        c.SandboxPolicyConfig.max_processes = 64
        c.SandboxPolicyConfig.wall_seconds = 90
        c.SandboxPolicyConfig.network_mode = "allowlist"
        c.SandboxPolicyConfig.network_allow = ["203.0.113.9/24:443", "[2001:db8::1]:443"]
        c.SandboxPolicyConfig.read_only_paths = ["/data/"]
        c.SandboxPolicyConfig.on_unavailable = "degrade"
    """)
    p = operator_policy()
    assert p.resources.memory_bytes == GiB
    assert p.resources.cpu_seconds is None
    assert p.resources.max_processes == 64
    assert p.resources.wall_seconds == 90.0
    assert p.network.mode == "allowlist"
    assert p.network.allow == ["203.0.113.0/24:443", "[2001:db8::1]:443"]
    assert p.filesystem.read_only_paths == ["/data"]
    assert p.on_unavailable == "degrade"
    # everything not configured stays at the secure default
    d = secure_default()
    assert p.resources.max_open_files == d.resources.max_open_files
    assert p.resources.max_output_bytes == d.resources.max_output_bytes
    assert p.filesystem.mode == d.filesystem.mode
    assert p.network.block_metadata is True
    assert p.privilege == d.privilege
    assert p.enabled is True


def test_json_config_file(jupyter_dirs):
    config_dir, _ = jupyter_dirs
    write_json(config_dir, {"filesystem_mode": "scratch-only", "scratch_bytes": "256M", "max_output_bytes": 1024,
                            "block_metadata": True, "privilege_mode": "drop-to-uid", "uid": 1234, "gid": 1235})
    p = operator_policy()
    assert p.filesystem.mode == "scratch-only"
    assert p.filesystem.scratch_bytes == 256 * MiB
    assert p.resources.max_output_bytes == 1024
    assert (p.privilege.mode, p.privilege.uid, p.privilege.gid) == ("drop-to-uid", 1234, 1235)
    assert p.resources.memory_bytes == secure_default().resources.memory_bytes


def test_load_jupyter_config_reads_the_section(jupyter_dirs):
    config_dir, _ = jupyter_dirs
    write_py(config_dir, "c.SandboxPolicyConfig.max_open_files = 256\n")
    cfg = load_jupyter_config()
    assert cfg[CLS]["max_open_files"] == 256
    assert operator_policy(cfg).resources.max_open_files == 256


def test_json_beats_py_in_the_same_dir(jupyter_dirs):
    # traitlets' own rule for a directory holding both files
    config_dir, _ = jupyter_dirs
    write_py(config_dir, "c.SandboxPolicyConfig.cpu_seconds = 10\nc.SandboxPolicyConfig.max_processes = 20\n")
    write_json(config_dir, {"cpu_seconds": 30})
    p = operator_policy()
    assert p.resources.cpu_seconds == 30
    assert p.resources.max_processes == 20


def test_config_path_beats_config_dir(jupyter_dirs):
    config_dir, path_dir = jupyter_dirs
    write_py(config_dir, "c.SandboxPolicyConfig.cpu_seconds = 10\nc.SandboxPolicyConfig.max_processes = 20\n")
    write_py(path_dir, "c.SandboxPolicyConfig.cpu_seconds = 5\n")
    p = operator_policy()
    assert p.resources.cpu_seconds == 5
    assert p.resources.max_processes == 20


def test_operator_may_disable_or_loosen(jupyter_dirs):
    # The operator's config is the base: it is not tighten-only.
    config_dir, _ = jupyter_dirs
    write_py(config_dir, """
        c.SandboxPolicyConfig.enabled = False
        c.SandboxPolicyConfig.network_mode = "unrestricted"
        c.SandboxPolicyConfig.block_metadata = False
        c.SandboxPolicyConfig.memory_bytes = "unlimited"
    """)
    p = operator_policy()
    assert (p.enabled, p.network.mode, p.network.block_metadata, p.resources.memory_bytes) == (False, "unrestricted", False, None)


def test_list_append_on_an_unset_trait(jupyter_dirs):
    config_dir, _ = jupyter_dirs
    write_py(config_dir, """
        c.SandboxPolicyConfig.network_mode = "allowlist"
        c.SandboxPolicyConfig.network_allow.append("10.0.0.0/8:443")
        c.SandboxPolicyConfig.read_only_paths.extend(["/data", "/models"])
    """)
    p = operator_policy()
    assert p.network.allow == ["10.0.0.0/8:443"]
    assert p.filesystem.read_only_paths == ["/data", "/models"]


def test_overrides_hold_only_the_set_traits():
    obj = SandboxPolicyConfig(config=config(memory_bytes="1G", network_mode="deny"))
    assert obj.overrides() == {"resources": {"memory_bytes": "1G"}, "network": {"mode": "deny"}}
    assert SandboxPolicyConfig().overrides() == {}


# --------------------------------------------------------------------------- policy_file


def test_policy_file_with_traits_overriding_it(jupyter_dirs, tmp_path):
    config_dir, _ = jupyter_dirs
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(textwrap.dedent("""
        version = 1
        on_unavailable = "degrade"
        [resources]
        memory_bytes = "256M"
        cpu_seconds = 10
        [network]
        mode = "allowlist"
        allow = ["203.0.113.0/24:443"]
    """))
    write_py(config_dir, f"""
        c.SandboxPolicyConfig.policy_file = {str(policy_file)!r}
        c.SandboxPolicyConfig.memory_bytes = "128M"
    """)
    p = operator_policy()
    assert p.resources.memory_bytes == 128 * MiB  # trait wins over the file
    assert p.resources.cpu_seconds == 10  # from the file
    assert p.on_unavailable == "degrade"  # from the file
    assert p.network.allow == ["203.0.113.0/24:443"]  # from the file
    assert p.resources.max_processes == secure_default().resources.max_processes  # neither: secure default


def test_policy_file_json(tmp_path):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"filesystem": {"mode": "scratch-only"}}))
    p = operator_policy(config(policy_file=str(policy_file)))
    assert p.filesystem.mode == "scratch-only"


def test_trait_network_mode_deny_over_an_allowlist_file(tmp_path):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[network]\nmode = "allowlist"\nallow = ["10.0.0.0/8"]\n')
    p = operator_policy(config(policy_file=str(policy_file), network_mode="deny"))
    assert (p.network.mode, p.network.allow) == ("deny", [])


def test_policy_file_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.toml").write_text("[resources]\ncpu_seconds = 7\n")
    assert operator_policy(config(policy_file="~/p.toml")).resources.cpu_seconds == 7


def test_missing_policy_file_names_the_trait(tmp_path):
    with pytest.raises(PolicyError) as info:
        operator_policy(config(policy_file=str(tmp_path / "nope.toml")))
    assert info.value.fields == [f"c.{CLS}.policy_file"]
    assert "nope.toml" in str(info.value)


def test_bad_policy_file_names_the_field_and_the_file(tmp_path):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[resources]\nmemory_bytes = "lots"\n')
    with pytest.raises(PolicyError) as info:
        operator_policy(config(policy_file=str(policy_file)))
    assert info.value.fields == ["resources.memory_bytes"]
    assert str(policy_file) in str(info.value)


# --------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    "trait,value,field",
    [
        # refused by the policy model
        ("memory_bytes", "lots", "memory_bytes"),
        ("memory_bytes", "1K", "memory_bytes"),
        ("memory_bytes", True, "memory_bytes"),
        ("cpu_seconds", 0, "cpu_seconds"),
        ("cpu_seconds", "60", "cpu_seconds"),
        ("max_processes", 10**9, "max_processes"),
        ("max_open_files", 1, "max_open_files"),
        ("max_file_size_bytes", "-1M", "max_file_size_bytes"),
        ("max_output_bytes", "12X", "max_output_bytes"),
        ("wall_seconds", 0.0, "wall_seconds"),
        ("wall_seconds", "soon", "wall_seconds"),
        ("scratch_bytes", "1K", "scratch_bytes"),
        ("uid", 0, "uid"),
        ("read_only_paths", ["relative/path"], "read_only_paths[0]"),
        ("read_only_paths", ["/ok", "/a/../etc"], "read_only_paths[1]"),
        # refused by the trait type
        ("memory_bytes", 1.5, "memory_bytes"),
        ("network_mode", "open", "network_mode"),
        ("filesystem_mode", "readonly", "filesystem_mode"),
        ("privilege_mode", "root", "privilege_mode"),
        ("on_unavailable", "warn", "on_unavailable"),
        ("enabled", "yes", "enabled"),
        ("block_metadata", "no", "block_metadata"),
        ("uid", "1000", "uid"),
        ("read_only_paths", "/data", "read_only_paths"),
        ("network_allow", "10.0.0.0/8", "network_allow"),
        ("policy_file", 42, "policy_file"),
    ],
)
def test_invalid_values_name_the_trait(trait, value, field):
    with pytest.raises(PolicyError) as info:
        operator_policy(config(**{trait: value}))
    assert info.value.fields == [f"c.{CLS}.{field}"], info.value.problems
    assert f"c.{CLS}.{field}: " in str(info.value)


def test_invalid_allow_entry_names_the_trait_and_quotes_it():
    with pytest.raises(PolicyError) as info:
        operator_policy(config(network_mode="allowlist", network_allow=["10.0.0.1", "1.2.3.4; flush ruleset"]))
    assert info.value.fields == [f"c.{CLS}.network_allow[1]"]
    assert "'1.2.3.4; flush ruleset'" in str(info.value)


def test_allow_without_allowlist_mode_names_the_trait():
    with pytest.raises(PolicyError) as info:
        operator_policy(config(network_allow=["10.0.0.1"]))
    assert info.value.fields == [f"c.{CLS}.network_allow"]


def test_gid_without_uid_names_the_trait():
    with pytest.raises(PolicyError) as info:
        operator_policy(config(gid=1000))
    assert info.value.fields == [f"c.{CLS}.gid"]


def test_every_bad_trait_is_reported():
    with pytest.raises(PolicyError) as info:
        operator_policy(config(network_mode="open", enabled="yes"))
    assert set(info.value.fields) == {f"c.{CLS}.network_mode", f"c.{CLS}.enabled"}
    with pytest.raises(PolicyError) as info:
        operator_policy(config(memory_bytes="lots", cpu_seconds=0))
    assert set(info.value.fields) == {f"c.{CLS}.memory_bytes", f"c.{CLS}.cpu_seconds"}


def test_misspelt_option_is_an_error_not_a_warning():
    with pytest.raises(PolicyError) as info:
        operator_policy(config(memroy_bytes="128M"))
    assert info.value.fields == [f"c.{CLS}.memroy_bytes"]
    assert "memory_bytes" in str(info.value)  # the suggestion


def test_invalid_value_in_a_real_config_file(jupyter_dirs):
    config_dir, _ = jupyter_dirs
    write_py(config_dir, 'c.SandboxPolicyConfig.memory_bytes = "lots"\n')
    with pytest.raises(PolicyError) as info:
        operator_policy()
    assert info.value.fields == [f"c.{CLS}.memory_bytes"]
    write_json(config_dir, {"network_mode": "wide-open"})  # .json wins over .py
    with pytest.raises(PolicyError) as info:
        operator_policy()
    assert info.value.fields == [f"c.{CLS}.network_mode"]


def test_constructing_the_configurable_directly_raises_policy_error():
    # the provisioner builds SandboxPolicyConfig(config=...) itself
    with pytest.raises(PolicyError):
        SandboxPolicyConfig(config=config(network_mode="open"))


def test_other_sections_are_ignored():
    c = config(cpu_seconds=5)
    c.ServerApp.port = 9999
    c.KernelManager.bogus = 1
    assert operator_policy(c).resources.cpu_seconds == 5


# --------------------------------------------------------------------------- the trait <-> policy mapping


def test_every_trait_has_help():
    traits = SandboxPolicyConfig.class_traits(config=True)
    assert set(traits) == set(TRAIT_FIELDS) | {"policy_file"}
    for name, trait in traits.items():
        assert trait.help and len(trait.help.strip()) > 10, name


def test_every_policy_field_has_a_trait():
    def leaves(model, prefix=()):
        for name, info in model.model_fields.items():
            if name == "version":
                continue
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, SandboxPolicy.__mro__[1]):  # a nested _Strict model
                yield from leaves(ann, prefix + (name,))
            else:
                yield ".".join(prefix + (name,))

    assert set(leaves(SandboxPolicy)) == set(FIELD_TRAITS)


@pytest.mark.parametrize("trait", sorted(TRAIT_FIELDS))
def test_traits_default_to_unset(trait):
    assert getattr(SandboxPolicyConfig(), trait) is None


def test_every_trait_reaches_its_policy_field():
    values = {
        "enabled": False, "on_unavailable": "degrade", "cpu_seconds": 7, "memory_bytes": "64M", "max_processes": 9,
        "max_open_files": 99, "max_file_size_bytes": "2M", "max_output_bytes": "3K", "wall_seconds": 4.5,
        "cgroup_parent": "sandbox-kernel/user-alice",
        "filesystem_mode": "scratch-only", "read_only_paths": ["/srv/data"], "scratch_bytes": "32M",
        "node_modules": "/srv/node_modules",
        "outputs_enabled": False, "outputs_dir": "results", "outputs_max_files": 5, "outputs_max_file_bytes": "1M",
        "outputs_max_total_bytes": "2M",
        "network_mode": "allowlist", "network_allow": ["192.0.2.0/24"], "block_metadata": True,
        "privilege_mode": "drop-to-uid", "uid": 2000, "gid": 2001, "uid_range": [300000, 300999],
    }
    assert set(values) == set(TRAIT_FIELDS)
    p = operator_policy(config(**values)).to_dict()
    expected = policy_from_dict({
        "enabled": False, "on_unavailable": "degrade",
        "resources": {"cpu_seconds": 7, "memory_bytes": "64M", "max_processes": 9, "max_open_files": 99,
                      "max_file_size_bytes": "2M", "max_output_bytes": "3K", "wall_seconds": 4.5,
                      "cgroup_parent": "sandbox-kernel/user-alice"},
        "filesystem": {"mode": "scratch-only", "read_only_paths": ["/srv/data"], "scratch_bytes": "32M",
                       "node_modules": "/srv/node_modules",
                       "outputs": {"enabled": False, "dir": "results", "max_files": 5, "max_file_bytes": "1M",
                                   "max_total_bytes": "2M"}},
        "network": {"mode": "allowlist", "allow": ["192.0.2.0/24"], "block_metadata": True},
        "privilege": {"mode": "drop-to-uid", "uid": 2000, "gid": 2001, "uid_range": [300000, 300999]},
    }).to_dict()
    assert p == expected


def test_command_line_values():
    # `jupyter server --SandboxPolicyConfig.memory_bytes=1G` arrives as a string typed by the trait
    from traitlets.config.loader import DeferredConfigString

    c = Config()
    c[CLS]["memory_bytes"] = DeferredConfigString("1G")
    c[CLS]["max_processes"] = DeferredConfigString("32")
    c[CLS]["network_mode"] = DeferredConfigString("deny")
    p = operator_policy(c)
    assert (p.resources.memory_bytes, p.resources.max_processes, p.network.mode) == (GiB, 32, "deny")
    c[CLS]["network_mode"] = DeferredConfigString("open")
    c[CLS]["uid"] = DeferredConfigString("root")
    with pytest.raises(PolicyError) as info:
        operator_policy(c)
    assert set(info.value.fields) == {f"c.{CLS}.network_mode", f"c.{CLS}.uid"}
