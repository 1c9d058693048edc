"""The policy model (docs/architecture.md, "Policy keys"): strict validation, sizes, allow entries, versions,
merging over the secure default, tighten(), and file round trips."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from sandbox_kernel.policy import (
    GiB,
    METADATA_NETWORKS,
    MiB,
    TiB,
    AllowRule,
    PolicyError,
    SandboxPolicy,
    deep_merge,
    load_policy_file,
    looser_fields,
    parse_allow_entry,
    parse_size,
    policy_from_dict,
    secure_default,
    tighten,
)


def policy(**sections) -> SandboxPolicy:
    """A valid policy: the given (partial) sections over the secure default."""
    return policy_from_dict(sections)


def assert_policy_error(data, field: str, *, base: SandboxPolicy | None = None) -> PolicyError:
    """``data`` must be refused with exactly one problem, on ``field``, named in str() too."""
    with pytest.raises(PolicyError) as info:
        policy_from_dict(data, base)
    err = info.value
    assert err.fields == [field], err.problems
    assert str(err).startswith(f"{field}: ")
    return err


def assert_file_error(tmp_path, name: str, content: str, fields: set[str]) -> PolicyError:
    """A policy file ``name`` holding ``content`` must be refused on load, naming ``fields``."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert set(info.value.fields) == fields, info.value.problems
    return info.value


# --------------------------------------------------------------------------- the secure default


def test_secure_default_is_secure():
    d = secure_default()
    assert d.version == 1
    assert d.enabled is True
    assert d.on_unavailable == "fail"
    assert d.filesystem.mode == "scratch-plus-ro"
    assert d.filesystem.read_only_paths == []
    assert d.network.mode == "deny"
    assert d.network.allow == []
    assert d.network.block_metadata is True
    assert d.privilege.mode == "drop-to-uid"
    r = d.resources
    for cap in ("memory_bytes", "max_processes", "max_open_files", "max_file_size_bytes", "max_output_bytes"):
        assert getattr(r, cap) is not None, cap
    assert r.memory_bytes == 512 * MiB
    assert r.max_output_bytes == 5 * MiB


def test_empty_dict_is_the_secure_default():
    assert policy_from_dict({}) == secure_default()
    assert SandboxPolicy() == secure_default()


def test_policies_are_frozen():
    p = secure_default()
    with pytest.raises(Exception):
        p.enabled = False  # type: ignore[misc]
    with pytest.raises(Exception):
        p.resources.memory_bytes = None  # type: ignore[misc]


# --------------------------------------------------------------------------- resources: bounds and strictness

# (field, smallest allowed, largest allowed)
INT_CAPS = [
    ("cpu_seconds", 1, 7 * 24 * 3600),
    ("max_processes", 1, 65536),
    ("max_open_files", 16, 1048576),
]
SIZE_CAPS = [
    ("memory_bytes", 16 * MiB, 1 * TiB),
    ("max_file_size_bytes", 1, 1 * TiB),
    ("max_output_bytes", 1, 1 * GiB),
]
ALL_CAPS = [f for f, _, _ in INT_CAPS + SIZE_CAPS] + ["wall_seconds"]


@pytest.mark.parametrize("field,lo,hi", INT_CAPS + SIZE_CAPS)
def test_cap_bounds_inclusive(field, lo, hi):
    assert getattr(policy(resources={field: lo}).resources, field) == lo
    assert getattr(policy(resources={field: hi}).resources, field) == hi


@pytest.mark.parametrize("field,lo,hi", INT_CAPS + SIZE_CAPS)
@pytest.mark.parametrize("side", ["below", "above"])
def test_cap_out_of_bounds(field, lo, hi, side):
    value = lo - 1 if side == "below" else hi + 1
    err = assert_policy_error({"resources": {field: value}}, f"resources.{field}")
    assert ("greater than or equal" if side == "below" else "less than or equal") in str(err)


@pytest.mark.parametrize("field", ALL_CAPS)
@pytest.mark.parametrize("value", [True, False], ids=["True", "False"])
def test_cap_rejects_bool(field, value):
    assert_policy_error({"resources": {field: value}}, f"resources.{field}")


@pytest.mark.parametrize("field", [f for f, _, _ in INT_CAPS + SIZE_CAPS])
@pytest.mark.parametrize("value", [64.0, 64.5], ids=["whole-float", "fraction"])
def test_int_caps_reject_floats(field, value):
    assert_policy_error({"resources": {field: value}}, f"resources.{field}")


@pytest.mark.parametrize("field", [f for f, _, _ in INT_CAPS])
@pytest.mark.parametrize("value", ["64", "lots", [64], {"n": 64}])
def test_count_caps_reject_non_ints(field, value):
    # Counts are strict ints: a quoted number is a mistake, not a size.
    assert_policy_error({"resources": {field: value}}, f"resources.{field}")


@pytest.mark.parametrize("field", ALL_CAPS)
@pytest.mark.parametrize("value", [None, "unlimited"])
def test_caps_can_be_unlimited(field, value):
    assert getattr(policy(resources={field: value}).resources, field) is None


def test_wall_seconds_bounds():
    assert policy(resources={"wall_seconds": 0.5}).resources.wall_seconds == 0.5
    assert policy(resources={"wall_seconds": 30}).resources.wall_seconds == 30.0
    assert policy(resources={"wall_seconds": 7 * 24 * 3600}).resources.wall_seconds == 7 * 24 * 3600
    for bad in (0, -1, 0.0, 7 * 24 * 3600 + 1, float("nan"), float("inf"), "30", "30s"):
        assert_policy_error({"resources": {"wall_seconds": bad}}, "resources.wall_seconds")


def test_scratch_bytes_bounds():
    assert policy(filesystem={"scratch_bytes": "1M"}).filesystem.scratch_bytes == MiB
    assert policy(filesystem={"scratch_bytes": "1T"}).filesystem.scratch_bytes == TiB
    assert policy(filesystem={"scratch_bytes": "unlimited"}).filesystem.scratch_bytes is None
    for bad in (MiB - 1, TiB + 1, True, 1.5, "big"):
        assert_policy_error({"filesystem": {"scratch_bytes": bad}}, "filesystem.scratch_bytes")


# --------------------------------------------------------------------------- enums and booleans


@pytest.mark.parametrize(
    "path,allowed,bad",
    [
        (("on_unavailable",), ["fail", "degrade"], ["FAIL", "warn", "", None, 1]),
        (("filesystem", "mode"), ["off", "scratch-only", "scratch-plus-ro"], ["ro", "scratch_only", "", None, 0]),
        (("network", "mode"), ["deny", "allowlist", "unrestricted"], ["allow", "DENY", "open", "", None]),
        (("privilege", "mode"), ["inherit", "drop-to-uid"], ["root", "drop", "", None]),
    ],
    ids=["on_unavailable", "filesystem.mode", "network.mode", "privilege.mode"],
)
def test_enums(path, allowed, bad):
    def nest(value):
        return {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}

    def get(p):
        return getattr(p, path[0]) if len(path) == 1 else getattr(getattr(p, path[0]), path[1])

    for value in allowed:
        assert get(policy_from_dict(nest(value))) == value
    for value in bad:
        err = assert_policy_error(nest(value), ".".join(path))
        if isinstance(value, str):
            for choice in allowed:  # the message lists the allowed values
                assert choice in str(err)


@pytest.mark.parametrize("path", [("enabled",), ("network", "block_metadata")], ids=["enabled", "network.block_metadata"])
@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_booleans_are_strict(path, value):
    data = {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}
    assert_policy_error(data, ".".join(path))


# --------------------------------------------------------------------------- filesystem paths


@pytest.mark.parametrize("path", ["data", "./data", "", "~/data", "/a/../b", "..", "/data/..", "/a/b\0c"])
def test_read_only_paths_must_be_absolute_without_dotdot(path):
    err = assert_policy_error({"filesystem": {"read_only_paths": ["/ok", path]}}, "filesystem.read_only_paths[1]")
    assert repr(path) in str(err)


@pytest.mark.parametrize("raw,normal", [("/data/", "/data"), ("/a/./b", "/a/b"), ("//a//b", "/a/b"), ("/", "/")])
def test_read_only_paths_are_normalised(raw, normal):
    assert policy(filesystem={"read_only_paths": [raw]}).filesystem.read_only_paths == [normal]


def test_read_only_paths_must_be_a_list():
    assert_policy_error({"filesystem": {"read_only_paths": "/data"}}, "filesystem.read_only_paths")


# --------------------------------------------------------------------------- privilege


@pytest.mark.parametrize("key", ["uid", "gid"])
@pytest.mark.parametrize("value", [0, -1, 2**31 - 1, True, 1000.0, "1000", "unlimited"])
def test_privilege_ids_refuse_root_and_junk(key, value):
    data = {"privilege": {"uid": 1000, "gid": 1000, key: value}}
    assert_policy_error(data, f"privilege.{key}")


def test_privilege_ids_accepted():
    p = policy(privilege={"mode": "drop-to-uid", "uid": 1000, "gid": 1001}).privilege
    assert (p.uid, p.gid) == (1000, 1001)
    assert policy(privilege={"uid": 2**31 - 2}).privilege.uid == 2**31 - 2


def test_gid_needs_uid():
    assert_policy_error({"privilege": {"gid": 1000}}, "privilege.gid")


def test_uid_range_default_and_accepted():
    assert policy().privilege.uid_range == [1879048192, 1879113727]
    assert policy(privilege={"uid_range": [200000, 200000]}).privilege.uid_range == [200000, 200000]


@pytest.mark.parametrize("value", [[2000], [2000, 3000, 4000], [3000, 2000], [0, 10], [999, 2000],
                                   [2000, 2**31 - 1], "2000-3000", [2000.0, 3000], [True, 3000], None])
def test_uid_range_refuses_junk(value):
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"privilege": {"uid_range": value}})
    assert info.value.fields and all(f.startswith("privilege.uid_range") for f in info.value.fields), info.value.problems


def test_uid_range_cannot_be_overridden():
    with pytest.raises(PolicyError) as info:
        tighten(policy(), {"privilege": {"uid_range": [300000, 300009]}})
    assert info.value.fields == ["privilege.uid_range"]


# --------------------------------------------------------------------------- unknown keys (extra="forbid")


@pytest.mark.parametrize(
    "data,field",
    [
        ({"colour": "red"}, "colour"),
        ({"resources": {"memory": "1G"}}, "resources.memory"),
        ({"filesystem": {"paths": ["/data"]}}, "filesystem.paths"),
        ({"network": {"allowlist": ["1.2.3.4"]}}, "network.allowlist"),
        ({"privilege": {"user": "nobody"}}, "privilege.user"),
    ],
)
def test_unknown_keys_rejected_at_every_level(data, field):
    err = assert_policy_error(data, field)
    assert "unknown key" in str(err)


def test_every_problem_is_reported_at_once():
    with pytest.raises(PolicyError) as info:
        policy_from_dict({
            "bogus": 1,
            "resources": {"memory_bytes": "lots", "max_processes": 0, "extra": 1},
            "network": {"mode": "open"},
        })
    assert set(info.value.fields) == {"bogus", "resources.memory_bytes", "resources.max_processes",
                                      "resources.extra", "network.mode"}
    # str() renders one "field: message" line per problem
    assert len(str(info.value).splitlines()) == 5


@pytest.mark.parametrize("data", [[], "deny", 1, None])
def test_policy_must_be_a_mapping(data):
    with pytest.raises(PolicyError) as info:
        policy_from_dict(data)  # type: ignore[arg-type]
    assert info.value.fields == ["<policy>"]


@pytest.mark.parametrize("section", ["resources", "filesystem", "network", "privilege"])
@pytest.mark.parametrize("value", [None, "x", [1]])
def test_sections_must_be_tables(section, value):
    assert_policy_error({section: value}, section)


def test_policy_error_from_a_single_field():
    err = PolicyError("network.mode", "bad")
    assert err.problems == [("network.mode", "bad")]
    assert err.fields == ["network.mode"]
    assert str(err) == "network.mode: bad"
    assert isinstance(err, ValueError)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "value,expected",
    [
        (0, 0),
        (512, 512),
        (1 << 40, 1 << 40),
        ("512", 512),
        ("512B", 512),
        ("1K", 1024),
        ("512M", 512 * MiB),
        ("2G", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("2GB", 2 * GiB),
        ("1.5G", 1536 * MiB),
        ("0.5K", 512),
        ("1T", TiB),
        ("512m", 512 * MiB),
        ("2gib", 2 * GiB),
        ("2gb", 2 * GiB),
        (" 64 M ", 64 * MiB),
        ("1099511627775", 1099511627775),  # exact, no float rounding
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value",
    ["12X", "", " ", "-1M", "M", "1.3K", "1.5", "1e3", "1_000", "1,000", "0x10", "2 G B", "2iB", "\u0663M",
     "2GiBs", True, False, 1.5, 2.0, None, [512]],
)
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize("value", ["12X", "", "-1M", True, "1.3K", "lots"])
@pytest.mark.parametrize("field", ["memory_bytes", "max_file_size_bytes", "max_output_bytes"])
def test_bad_sizes_name_the_field(field, value):
    err = assert_policy_error({"resources": {field: value}}, f"resources.{field}")
    if isinstance(value, str) and value:
        assert repr(value) in str(err)


@pytest.mark.parametrize("field", ["memory_bytes", "max_file_size_bytes", "max_output_bytes"])
def test_sizes_through_the_policy(field):
    assert getattr(policy(resources={field: "64M"}).resources, field) == 64 * MiB
    assert getattr(policy(resources={field: "1G"}).resources, field) == GiB
    assert getattr(policy(resources={field: 32 * MiB}).resources, field) == 32 * MiB


# --------------------------------------------------------------------------- allow entries


@pytest.mark.parametrize(
    "entry,network,port,normal",
    [
        ("203.0.113.7", "203.0.113.7/32", None, "203.0.113.7"),
        ("10.0.0.0/8", "10.0.0.0/8", None, "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8", None, "10.0.0.0/8"),  # host bits dropped (strict=False)
        ("1.2.3.4:443", "1.2.3.4/32", 443, "1.2.3.4:443"),
        ("10.0.0.0/8:443", "10.0.0.0/8", 443, "10.0.0.0/8:443"),
        ("192.0.2.77/24:1", "192.0.2.0/24", 1, "192.0.2.0/24:1"),
        ("1.2.3.4:65535", "1.2.3.4/32", 65535, "1.2.3.4:65535"),
        ("2001:db8::1", "2001:db8::1/128", None, "2001:db8::1"),
        ("2001:db8::/32", "2001:db8::/32", None, "2001:db8::/32"),
        ("2001:db8::1/32", "2001:db8::/32", None, "2001:db8::/32"),
        ("[2001:db8::1]:443", "2001:db8::1/128", 443, "[2001:db8::1]:443"),
        ("[2001:db8::/32]:443", "2001:db8::/32", 443, "[2001:db8::/32]:443"),
        ("2001:DB8:0:0::1", "2001:db8::1/128", None, "2001:db8::1"),
        (" 1.2.3.4 ", "1.2.3.4/32", None, "1.2.3.4"),
    ],
)
def test_parse_allow_entry(entry, network, port, normal):
    rule = parse_allow_entry(entry)
    assert rule == AllowRule(ipaddress.ip_network(network), port)
    assert str(rule) == normal
    # the normal form parses back to the same rule
    assert parse_allow_entry(str(rule)) == rule


@pytest.mark.parametrize(
    "entry",
    [
        "1.2.3.4; flush ruleset",
        "}",
        "1.2.3.4 } ; table",
        "1.2.3.4 }",
        "example.com",
        "example.com:443",
        "1.2.3.4:443:1",
        "",
        "   ",
        "1.2.3.4:",
        ":443",
        "1.2.3.4-1.2.3.9",
        "1.2.3.4/33",
        "256.1.1.1",
        "1.2.3",
        "*",
        "0.0.0.0/0 accept",
        "[2001:db8::1]",
        "[2001:db8::1]:",
        "[1.2.3.4]:80",
        "2001:db8::1]:443",
        "fe80::1%eth0",  # ipaddress accepts scope ids with arbitrary text after '%'
        "fe80::1%eth0 } ; flush ruleset ; table inet x {",
        "[fe80::1%eth0]:443",
        "1.2.3.4:\u0664\u0664\u0663",  # Arabic-Indic digits
        "1.2.3.4\n} flush ruleset",
    ],
)
def test_parse_allow_entry_rejects_and_quotes(entry):
    with pytest.raises(ValueError) as info:
        parse_allow_entry(entry)
    assert repr(entry) in str(info.value)


@pytest.mark.parametrize("entry", ["1.2.3.4:0", "1.2.3.4:65536", "[2001:db8::1]:0", "[2001:db8::1]:65536", "1.2.3.4:99999999999"])
def test_parse_allow_entry_port_range(entry):
    with pytest.raises(ValueError) as info:
        parse_allow_entry(entry)
    assert repr(entry) in str(info.value)
    assert "1-65535" in str(info.value)


@pytest.mark.parametrize("entry", [None, 443, ["1.2.3.4"]])
def test_parse_allow_entry_needs_a_string(entry):
    with pytest.raises(ValueError):
        parse_allow_entry(entry)  # type: ignore[arg-type]


_SAFE_RULE_TEXT = re.compile(r"^[0-9a-f.:/\[\]]+$")


@pytest.mark.parametrize("entry", ["1.2.3.4", "10.1.2.3/8:443", "[2001:db8::/32]:443", "::ffff:1.2.3.4", "1.2.3.4/255.255.255.0"])
def test_accepted_entries_normalise_to_plain_rule_text(entry):
    # These strings end up in an nft ruleset: the normal form is made only of address characters.
    rule = parse_allow_entry(entry)
    assert _SAFE_RULE_TEXT.match(str(rule))
    assert _SAFE_RULE_TEXT.match(rule.network.with_prefixlen)


def test_allow_entries_through_the_policy_are_normalised():
    p = policy(network={"mode": "allowlist", "allow": ["10.1.2.3/8", "[2001:db8::1]:443", "1.2.3.4:53"]})
    assert p.network.allow == ["10.0.0.0/8", "[2001:db8::1]:443", "1.2.3.4:53"]
    assert p.network.rules() == [
        AllowRule(ipaddress.ip_network("10.0.0.0/8")),
        AllowRule(ipaddress.ip_network("2001:db8::1/128"), 443),
        AllowRule(ipaddress.ip_network("1.2.3.4/32"), 53),
    ]


@pytest.mark.parametrize("entry", ["1.2.3.4; flush ruleset", "}", "example.com", "1.2.3.4:443:1", "", "1.2.3.4:0", "fe80::1%x"])
def test_bad_allow_entry_in_policy_names_index_and_quotes_entry(entry):
    err = assert_policy_error({"network": {"mode": "allowlist", "allow": ["1.2.3.4", entry]}}, "network.allow[1]")
    assert repr(entry) in str(err)


def test_allow_entries_need_allowlist_mode():
    assert_policy_error({"network": {"mode": "deny", "allow": ["1.2.3.4"]}}, "network.allow")
    assert_policy_error({"network": {"allow": ["1.2.3.4"]}}, "network.allow")  # default mode is deny


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("net", ["169.254.0.0/16", "fe80::/10", "fc00::/7", "100.100.100.200/32"])
def test_metadata_networks(net):
    assert ipaddress.ip_network(net) in METADATA_NETWORKS


@pytest.mark.parametrize(
    "entry,overlaps",
    [
        ("169.254.169.254", True),
        ("169.254.169.254:80", True),
        ("169.0.0.0/8", True),  # a supernet of the metadata range
        ("0.0.0.0/0", True),
        ("100.100.100.200", True),
        ("192.0.0.192", True),
        ("fe80::1", True),
        ("[fd00:ec2::254]:80", True),
        ("::/0", True),
        ("203.0.113.7", False),
        ("100.100.100.201", False),
        ("169.253.255.255", False),
        ("2001:db8::/32", False),
        ("10.0.0.0/8", False),
    ],
)
def test_overlaps_metadata(entry, overlaps):
    assert parse_allow_entry(entry).overlaps_metadata() is overlaps


# --------------------------------------------------------------------------- version


def test_version_absent_means_1():
    assert policy_from_dict({"enabled": True}).version == 1


def test_version_1_ok():
    assert policy_from_dict({"version": 1}) == secure_default()


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0, None, "v1"])
def test_other_versions_rejected(version):
    err = assert_policy_error({"version": version}, "version")
    assert repr(version) in str(err)


# --------------------------------------------------------------------------- merging over the secure default


def test_partial_network_policy_keeps_secure_defaults():
    p = policy_from_dict({"network": {"mode": "allowlist", "allow": ["203.0.113.0/24:443"]}})
    d = secure_default()
    assert p.network.mode == "allowlist"
    assert p.network.allow == ["203.0.113.0/24:443"]
    assert p.network.block_metadata is True
    assert p.resources == d.resources
    assert p.filesystem == d.filesystem
    assert p.privilege == d.privilege
    assert (p.enabled, p.on_unavailable) == (True, "fail")


def test_partial_resources_keep_other_caps():
    p = policy_from_dict({"resources": {"memory_bytes": "1G"}})
    d = secure_default().resources
    assert p.resources.memory_bytes == GiB
    for cap in ALL_CAPS:
        if cap != "memory_bytes":
            assert getattr(p.resources, cap) == getattr(d, cap), cap


def test_merge_over_a_given_base():
    base = policy(resources={"cpu_seconds": 10}, filesystem={"read_only_paths": ["/a", "/b"]})
    p = policy_from_dict({"filesystem": {"read_only_paths": ["/c"]}}, base)
    assert p.filesystem.read_only_paths == ["/c"]  # replaced, not ["/a", "/b", "/c"]
    assert p.resources.cpu_seconds == 10  # the base's value, not the secure default's
    assert base.filesystem.read_only_paths == ["/a", "/b"]


def test_lists_replace_not_concatenate():
    base = policy(network={"mode": "allowlist", "allow": ["10.0.0.0/8", "192.0.2.1"]})
    p = policy_from_dict({"network": {"allow": ["10.1.0.0/16"]}}, base)
    assert p.network.allow == ["10.1.0.0/16"]
    assert deep_merge({"a": [1, 2], "b": {"c": [3], "d": 4}}, {"a": [5], "b": {"c": []}}) == {"a": [5], "b": {"c": [], "d": 4}}


def test_deep_merge_does_not_alias_inputs():
    base = {"a": {"b": [1]}}
    overlay = {"c": {"d": [2]}}
    out = deep_merge(base, overlay)
    out["a"]["b"].append(9)
    out["c"]["d"].append(9)
    assert base == {"a": {"b": [1]}} and overlay == {"c": {"d": [2]}}


def test_leaving_allowlist_mode_drops_inherited_entries():
    base = policy(network={"mode": "allowlist", "allow": ["10.0.0.0/8"]})
    p = policy_from_dict({"network": {"mode": "deny"}}, base)
    assert (p.network.mode, p.network.allow) == ("deny", [])
    # ...but entries named together with a non-allowlist mode are still an error
    assert_policy_error({"network": {"mode": "deny", "allow": ["10.0.0.0/8"]}}, "network.allow", base=base)


# --------------------------------------------------------------------------- AllowRule.covers


@pytest.mark.parametrize(
    "base,other,covers",
    [
        ("10.0.0.0/8", "10.1.0.0/16", True),
        ("10.0.0.0/8", "10.0.0.0/8", True),
        ("10.0.0.0/8", "10.1.2.3:443", True),  # portless base covers a ported override
        ("10.0.0.0/8:443", "10.1.2.3:443", True),
        ("10.0.0.0/8:443", "10.1.2.3:80", False),  # different port
        ("10.0.0.0/8:443", "10.1.2.3", False),  # all ports is wider than one
        ("10.0.0.0/16", "10.0.0.0/8", False),  # supernet
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/8", "::ffff:10.0.0.1", False),  # v4 vs v6
        ("::/0", "10.0.0.1", False),
        ("0.0.0.0/0", "2001:db8::1", False),
        ("2001:db8::/32", "[2001:db8:1::/48]:443", True),
        ("[2001:db8::/32]:443", "[2001:db8::1]:80", False),
    ],
)
def test_allow_rule_covers(base, other, covers):
    assert parse_allow_entry(base).covers(parse_allow_entry(other)) is covers


# --------------------------------------------------------------------------- tighten: narrowing succeeds

ALLOW_BASE = {"network": {"mode": "allowlist", "allow": ["10.0.0.0/8", "192.0.2.1:443", "2001:db8::/32"]}}

# (id, base sections, override, check on the result)
NARROWING = [
    ("enabled-on", {"enabled": False}, {"enabled": True}, lambda p: p.enabled is True),
    ("enabled-same", {}, {"enabled": True}, lambda p: p.enabled is True),
    ("on_unavailable", {"on_unavailable": "degrade"}, {"on_unavailable": "fail"}, lambda p: p.on_unavailable == "fail"),
    *[
        (f"{cap}-smaller", {}, {"resources": {cap: small}}, (lambda c, v: lambda p: getattr(p.resources, c) == v)(cap, want))
        for cap, small, want in [
            ("cpu_seconds", 5, 5),
            ("memory_bytes", "128M", 128 * MiB),
            ("max_processes", 16, 16),
            ("max_open_files", 64, 64),
            ("max_file_size_bytes", "1M", MiB),
            ("max_output_bytes", "64K", 64 * 1024),
        ]
    ],
    *[
        (f"{cap}-from-unlimited", {"resources": {cap: None}}, {"resources": {cap: val}},
         (lambda c: lambda p: getattr(p.resources, c) is not None)(cap))
        for cap, val in [("cpu_seconds", 5), ("memory_bytes", "1G"), ("max_processes", 10), ("max_open_files", 100),
                         ("max_file_size_bytes", "1G"), ("max_output_bytes", "1M"), ("wall_seconds", 30)]
    ],
    ("wall_seconds-smaller", {"resources": {"wall_seconds": 60}}, {"resources": {"wall_seconds": 1.5}},
     lambda p: p.resources.wall_seconds == 1.5),
    ("fs-off-to-plus-ro", {"filesystem": {"mode": "off"}}, {"filesystem": {"mode": "scratch-plus-ro"}},
     lambda p: p.filesystem.mode == "scratch-plus-ro"),
    ("fs-off-to-only", {"filesystem": {"mode": "off"}}, {"filesystem": {"mode": "scratch-only"}},
     lambda p: p.filesystem.mode == "scratch-only"),
    ("fs-plus-ro-to-only", {}, {"filesystem": {"mode": "scratch-only"}}, lambda p: p.filesystem.mode == "scratch-only"),
    ("ro-paths-subdir", {"filesystem": {"read_only_paths": ["/data", "/opt/models"]}},
     {"filesystem": {"read_only_paths": ["/data/sub", "/opt/models"]}},
     lambda p: p.filesystem.read_only_paths == ["/data/sub", "/opt/models"]),
    ("ro-paths-fewer", {"filesystem": {"read_only_paths": ["/data", "/opt/models"]}},
     {"filesystem": {"read_only_paths": []}}, lambda p: p.filesystem.read_only_paths == []),
    ("scratch-smaller", {}, {"filesystem": {"scratch_bytes": "64M"}}, lambda p: p.filesystem.scratch_bytes == 64 * MiB),
    ("scratch-from-unlimited", {"filesystem": {"scratch_bytes": None}}, {"filesystem": {"scratch_bytes": "2G"}},
     lambda p: p.filesystem.scratch_bytes == 2 * GiB),
    ("net-unrestricted-to-allowlist", {"network": {"mode": "unrestricted"}},
     {"network": {"mode": "allowlist", "allow": ["203.0.113.7:443"]}}, lambda p: p.network.allow == ["203.0.113.7:443"]),
    ("net-unrestricted-to-deny", {"network": {"mode": "unrestricted"}}, {"network": {"mode": "deny"}},
     lambda p: p.network.mode == "deny"),
    ("net-allowlist-to-deny", ALLOW_BASE, {"network": {"mode": "deny"}},
     lambda p: (p.network.mode, p.network.allow) == ("deny", [])),
    ("net-deny-to-empty-allowlist", {}, {"network": {"mode": "allowlist", "allow": []}},
     lambda p: (p.network.mode, p.network.allow) == ("allowlist", [])),
    ("allow-sub-cidr", ALLOW_BASE, {"network": {"allow": ["10.1.0.0/16"]}}, lambda p: p.network.allow == ["10.1.0.0/16"]),
    ("allow-port-under-portless", ALLOW_BASE, {"network": {"allow": ["10.1.2.3:80"]}},
     lambda p: p.network.allow == ["10.1.2.3:80"]),
    ("allow-same-port", ALLOW_BASE, {"network": {"allow": ["192.0.2.1:443"]}}, lambda p: p.network.allow == ["192.0.2.1:443"]),
    ("allow-v6-sub", ALLOW_BASE, {"network": {"allow": ["[2001:db8::1]:443"]}},
     lambda p: p.network.allow == ["[2001:db8::1]:443"]),
    ("allow-none", ALLOW_BASE, {"network": {"allow": []}}, lambda p: p.network.allow == []),
    ("block-metadata-on", {"network": {"mode": "unrestricted", "block_metadata": False}}, {"network": {"block_metadata": True}},
     lambda p: p.network.block_metadata is True),
    ("privilege-inherit-to-drop", {"privilege": {"mode": "inherit"}}, {"privilege": {"mode": "drop-to-uid"}},
     lambda p: p.privilege.mode == "drop-to-uid"),
    ("uid-same", {"privilege": {"uid": 1000, "gid": 1000}}, {"privilege": {"uid": 1000, "gid": 1000}},
     lambda p: (p.privilege.uid, p.privilege.gid) == (1000, 1000)),
    ("outputs-off", {}, {"filesystem": {"outputs": {"enabled": False}}}, lambda p: not p.filesystem.outputs.enabled),
    ("outputs-smaller-caps", {}, {"filesystem": {"outputs": {"max_files": 3, "max_file_bytes": "1K", "max_total_bytes": "2K"}}},
     lambda p: (p.filesystem.outputs.max_files, p.filesystem.outputs.max_file_bytes) == (3, 1024)),
]


@pytest.mark.parametrize("base_sections,override,check", [c[1:] for c in NARROWING], ids=[c[0] for c in NARROWING])
def test_tighten_narrowing_succeeds(base_sections, override, check):
    base = policy_from_dict(base_sections)
    before = base.to_dict()
    result = tighten(base, override)
    assert check(result)
    assert looser_fields(base, result) == []
    assert base.to_dict() == before


# --------------------------------------------------------------------------- tighten: loosening refused

# (id, base sections, override, the one field that must be named)
LOOSENING = [
    ("disable", {}, {"enabled": False}, "enabled"),
    ("degrade", {}, {"on_unavailable": "degrade"}, "on_unavailable"),
    *[(f"{cap}-bigger", {}, {"resources": {cap: big}}, f"resources.{cap}")
      for cap, big in [("cpu_seconds", 61), ("memory_bytes", "1G"), ("max_processes", 257), ("max_open_files", 1025),
                       ("max_file_size_bytes", "512M"), ("max_output_bytes", "6M")]],
    ("wall_seconds-bigger", {"resources": {"wall_seconds": 60}}, {"resources": {"wall_seconds": 61}}, "resources.wall_seconds"),
    *[(f"{cap}-unlimited", {"resources": {"wall_seconds": 60}}, {"resources": {cap: None}}, f"resources.{cap}")
      for cap in ALL_CAPS],
    ("memory-unlimited-string", {}, {"resources": {"memory_bytes": "unlimited"}}, "resources.memory_bytes"),
    ("fs-only-to-plus-ro", {"filesystem": {"mode": "scratch-only"}}, {"filesystem": {"mode": "scratch-plus-ro"}}, "filesystem.mode"),
    ("fs-only-to-off", {"filesystem": {"mode": "scratch-only"}}, {"filesystem": {"mode": "off"}}, "filesystem.mode"),
    ("fs-plus-ro-to-off", {}, {"filesystem": {"mode": "off"}}, "filesystem.mode"),
    ("ro-paths-new", {"filesystem": {"read_only_paths": ["/data"]}}, {"filesystem": {"read_only_paths": ["/etc"]}},
     "filesystem.read_only_paths"),
    ("ro-paths-prefix-trick", {"filesystem": {"read_only_paths": ["/data"]}},
     {"filesystem": {"read_only_paths": ["/database"]}}, "filesystem.read_only_paths"),
    ("ro-paths-parent", {"filesystem": {"read_only_paths": ["/data/sub"]}}, {"filesystem": {"read_only_paths": ["/data"]}},
     "filesystem.read_only_paths"),
    ("ro-paths-from-none", {}, {"filesystem": {"read_only_paths": ["/home"]}}, "filesystem.read_only_paths"),
    ("scratch-bigger", {}, {"filesystem": {"scratch_bytes": "2G"}}, "filesystem.scratch_bytes"),
    ("scratch-unlimited", {}, {"filesystem": {"scratch_bytes": "unlimited"}}, "filesystem.scratch_bytes"),
    ("net-deny-to-unrestricted", {}, {"network": {"mode": "unrestricted"}}, "network.mode"),
    ("net-deny-to-allowlist", {}, {"network": {"mode": "allowlist", "allow": ["203.0.113.7"]}}, "network.mode"),
    ("net-allowlist-to-unrestricted", ALLOW_BASE, {"network": {"mode": "unrestricted"}}, "network.mode"),
    ("allow-outside", ALLOW_BASE, {"network": {"allow": ["11.0.0.1"]}}, "network.allow"),
    ("allow-supernet", ALLOW_BASE, {"network": {"allow": ["10.0.0.0/7"]}}, "network.allow"),
    ("allow-other-port", ALLOW_BASE, {"network": {"allow": ["192.0.2.1:80"]}}, "network.allow"),
    ("allow-all-ports", ALLOW_BASE, {"network": {"allow": ["192.0.2.1"]}}, "network.allow"),
    ("allow-v4-mapped-v6", ALLOW_BASE, {"network": {"allow": ["::ffff:10.0.0.1"]}}, "network.allow"),
    ("allow-other-v6", ALLOW_BASE, {"network": {"allow": ["[2001:db9::1]:443"]}}, "network.allow"),
    ("allow-under-empty-allowlist", {"network": {"mode": "allowlist", "allow": []}},
     {"network": {"allow": ["10.0.0.1"]}}, "network.allow"),
    ("metadata-off", {}, {"network": {"block_metadata": False}}, "network.block_metadata"),
    ("privilege-inherit", {}, {"privilege": {"mode": "inherit"}}, "privilege.mode"),
    ("uid-change", {"privilege": {"uid": 1000, "gid": 1000}}, {"privilege": {"uid": 1001}}, "privilege.uid"),
    ("gid-change", {"privilege": {"uid": 1000, "gid": 1000}}, {"privilege": {"gid": 1001}}, "privilege.gid"),
    ("uid-set", {}, {"privilege": {"uid": 1000}}, "privilege.uid"),
    ("uid-unset", {"privilege": {"uid": 1000}}, {"privilege": {"uid": None}}, "privilege.uid"),
    ("outputs-on", {"filesystem": {"outputs": {"enabled": False}}}, {"filesystem": {"outputs": {"enabled": True}}},
     "filesystem.outputs.enabled"),
    ("outputs-dir", {}, {"filesystem": {"outputs": {"dir": "elsewhere"}}}, "filesystem.outputs.dir"),
    *[(f"outputs-{cap}-bigger", {}, {"filesystem": {"outputs": {cap: big}}}, f"filesystem.outputs.{cap}")
      for cap, big in [("max_files", 101), ("max_file_bytes", "65M"), ("max_total_bytes", "257M")]],
]


@pytest.mark.parametrize("value", ["../etc", "/abs", "a/b", ".", "..", ".hidden", "", "x" * 65, 3])
def test_outputs_dir_is_one_plain_name(value):
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"filesystem": {"outputs": {"dir": value}}})
    assert info.value.fields == ["filesystem.outputs.dir"]


def test_outputs_caps_are_never_unlimited():
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"filesystem": {"outputs": {"max_file_bytes": "unlimited", "max_files": None}}})
    assert set(info.value.fields) == {"filesystem.outputs.max_file_bytes", "filesystem.outputs.max_files"}


@pytest.mark.parametrize("base_sections,override,field", [c[1:] for c in LOOSENING], ids=[c[0] for c in LOOSENING])
def test_tighten_loosening_refused(base_sections, override, field):
    base = policy_from_dict(base_sections)
    before = base.to_dict()
    with pytest.raises(PolicyError) as info:
        tighten(base, override)
    assert info.value.fields == [field], info.value.problems
    assert field in str(info.value)
    assert base.to_dict() == before  # nothing half-applied


def test_tighten_reports_every_loosening_field():
    base = policy_from_dict(ALLOW_BASE)
    with pytest.raises(PolicyError) as info:
        tighten(base, {
            "enabled": False,
            "resources": {"memory_bytes": "2G", "cpu_seconds": None, "max_processes": 8},  # 8 is fine
            "filesystem": {"mode": "off"},
            "network": {"allow": ["10.1.0.0/16", "8.8.8.8:53"], "block_metadata": False},
            "privilege": {"mode": "inherit"},
        })
    assert set(info.value.fields) == {"enabled", "resources.memory_bytes", "resources.cpu_seconds", "filesystem.mode",
                                      "network.allow", "network.block_metadata", "privilege.mode"}
    assert "'8.8.8.8:53'" in str(info.value)
    assert "10.1.0.0/16" not in str(info.value)
    assert base == policy_from_dict(ALLOW_BASE)


def test_tighten_rejects_invalid_overrides_by_field():
    base = secure_default()
    with pytest.raises(PolicyError) as info:
        tighten(base, {"resources": {"memory_bytes": "lots"}, "network": {"nope": 1}})
    assert set(info.value.fields) == {"resources.memory_bytes", "network.nope"}
    with pytest.raises(PolicyError) as info:
        tighten(base, {"version": 2})
    assert info.value.fields == ["version"]


def test_tighten_with_nothing_or_a_policy():
    base = policy(resources={"cpu_seconds": 30})
    assert tighten(base, None) is base
    assert tighten(base, {}) == base
    assert tighten(base, base) == base
    narrower = policy(resources={"cpu_seconds": 10}, network={"mode": "deny"})
    assert tighten(base, narrower) == narrower
    with pytest.raises(PolicyError) as info:
        tighten(base, secure_default())  # cpu_seconds 60 > 30
    assert info.value.fields == ["resources.cpu_seconds"]


def test_tighten_result_never_looser_than_base_on_any_axis():
    base = policy_from_dict({
        "on_unavailable": "degrade",
        "resources": {"cpu_seconds": None, "wall_seconds": 100},
        "filesystem": {"mode": "scratch-plus-ro", "read_only_paths": ["/data"]},
        **ALLOW_BASE,
    })
    for override in ({"resources": {"cpu_seconds": 5}}, {"network": {"mode": "deny"}}, {"filesystem": {"mode": "scratch-only"}},
                     {"on_unavailable": "fail", "network": {"allow": ["10.9.9.9:22"]}}):
        result = tighten(base, override)
        assert looser_fields(base, result) == []
        assert result != base


def test_tightening_twice_is_monotonic():
    base = secure_default()
    once = tighten(base, {"resources": {"memory_bytes": "256M"}})
    twice = tighten(once, {"resources": {"max_processes": 32}})
    assert (twice.resources.memory_bytes, twice.resources.max_processes) == (256 * MiB, 32)
    with pytest.raises(PolicyError) as info:
        tighten(twice, {"resources": {"memory_bytes": "512M"}})  # allowed by base, not by `twice`
    assert info.value.fields == ["resources.memory_bytes"]


# --------------------------------------------------------------------------- files and round trips

ROUND_TRIP = {
    "secure-default": {},
    "custom": {
        "on_unavailable": "degrade",
        "resources": {"cpu_seconds": 5, "memory_bytes": "1G", "wall_seconds": 2.5, "max_output_bytes": "64K"},
        "filesystem": {"mode": "scratch-plus-ro", "read_only_paths": ["/data", "/opt/models"], "scratch_bytes": "64M"},
        "network": {"mode": "allowlist", "allow": ["203.0.113.0/24:443", "[2001:db8::/32]:443", "10.0.2.3:53"],
                    "block_metadata": True},
        "privilege": {"mode": "drop-to-uid", "uid": 1000, "gid": 1001},
    },
    "unlimited": {
        "resources": {cap: None for cap in ALL_CAPS},
        "filesystem": {"mode": "off", "scratch_bytes": None},
        "network": {"mode": "unrestricted", "block_metadata": False},
        "privilege": {"mode": "inherit", "uid": 4242},
    },
    "some-unlimited": {"resources": {"memory_bytes": None, "wall_seconds": 60}, "enabled": False},
}


@pytest.mark.parametrize("fmt", ["json", "toml"])
@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_round_trip(tmp_path, name, fmt):
    original = policy_from_dict(ROUND_TRIP[name])
    path = tmp_path / f"policy.{fmt}"
    path.write_text(original.to_json() if fmt == "json" else original.to_toml())
    assert load_policy_file(path) == original
    assert load_policy_file(str(path)).to_dict() == original.to_dict()


def test_toml_writes_unlimited_caps_as_a_string():
    p = policy(resources={"memory_bytes": None})
    text = p.to_toml()
    assert re.search(r'^memory_bytes = "unlimited"$', text, re.M)
    # "a leased uid per kernel" is written by omission, never as "unlimited"
    assert not re.search(r"^(uid|gid) =", text, re.M)
    assert json.loads(p.to_json())["resources"]["memory_bytes"] is None


def test_toml_file_with_sizes_and_comments(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        'version = 1\n'
        'on_unavailable = "fail"\n'
        '[resources]\nmemory_bytes = "256M"  # a comment\nmax_output_bytes = "1M"\ncpu_seconds = "unlimited"\n'
        '[network]\nmode = "allowlist"\nallow = ["10.0.0.0/8:443"]\n'
    )
    p = load_policy_file(path)
    assert p.resources.memory_bytes == 256 * MiB
    assert p.resources.max_output_bytes == MiB
    assert p.resources.cpu_seconds is None
    assert p.network.allow == ["10.0.0.0/8:443"]
    assert p.resources.max_processes == secure_default().resources.max_processes


def test_unlimited_only_where_a_cap_may_be_lifted(tmp_path):
    assert_file_error(tmp_path, "policy.toml", '[privilege]\nuid = "unlimited"\n', {"privilege.uid"})


def test_file_errors_name_the_field(tmp_path):
    content = json.dumps({"resources": {"memory_bytes": "lots", "bogus": 1}})
    assert_file_error(tmp_path, "policy.json", content, {"resources.memory_bytes", "resources.bogus"})


def test_file_version_2_rejected(tmp_path):
    assert_file_error(tmp_path, "policy.toml", "version = 2\n", {"version"})


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("missing.toml", None, "cannot read"),
        ("bad.json", '{"enabled": tru', "not valid JSON"),
        ("trailing.json", '{"enabled": true,}', "not valid JSON"),
        ("bad.toml", "enabled = \n", "not valid TOML"),
        ("dup.toml", "enabled = true\nenabled = false\n", "not valid TOML"),
        ("json-as-toml.toml", '{"enabled": true}', "not valid TOML"),
        ("binary.toml", b"\xff\xfe\x00bad", "not UTF-8"),
        ("array.json", "[1, 2]", "table/object"),
    ],
)
def test_load_policy_file_errors(tmp_path, name, content, needle):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    assert info.value.fields == ["<policy>" if needle == "table/object" else "<file>"]
    assert needle in str(info.value)


def test_load_policy_file_directory(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy_file(tmp_path)
    assert info.value.fields == ["<file>"]


def test_load_policy_file_over_a_base(tmp_path):
    base = policy(resources={"cpu_seconds": 5})
    path = tmp_path / "p.toml"
    path.write_text('[resources]\nmemory_bytes = "64M"\n')
    p = load_policy_file(path, base)
    assert (p.resources.cpu_seconds, p.resources.memory_bytes) == (5, 64 * MiB)
