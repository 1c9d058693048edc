"""Cell magic options -> the partial policy the supervisor tightens with (pure parsing)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from sandbox_kernel.cell_protocol import option_problems
from sandbox_kernel.kernel.magics import options_to_override
from sandbox_kernel.policy import PolicyError, policy_from_dict, secure_default, tighten


@pytest.mark.parametrize("line, expected", [
    ("", {}),
    ("--network deny", {"network": {"mode": "deny"}}),
    ("--allow 10.0.0.0/8:443 --allow 192.0.2.7", {"network": {"mode": "allowlist", "allow": ["10.0.0.0/8:443", "192.0.2.7"]}}),
    ("--memory 64M --max-output 1K", {"resources": {"memory_bytes": 64 * 2**20, "max_output_bytes": 1024}}),
    ("--cpu 5 --timeout 1.5 --processes 10", {"resources": {"cpu_seconds": 5, "wall_seconds": 1.5, "max_processes": 10}}),
    ("--fs scratch-only", {"filesystem": {"mode": "scratch-only"}}),
])
def test_options_map_to_policy_fields(line, expected):
    assert options_to_override("sh", line) == expected


@pytest.mark.parametrize("line, needle", [
    ("--bogus", "unrecognized"),
    ("--network allow", "invalid choice"),
    ("--network deny --allow 10.0.0.1", "exclude each other"),
    ("--allow 'example.com'", "example.com"),
    ("--allow '1.2.3.4; flush ruleset'", "flush ruleset"),
    ("--memory lots", "lots"),
    ("--cpu fast", "invalid int"),
    ("--fs off", "invalid choice"),
])
def test_bad_options_are_usage_errors(line, needle):
    with pytest.raises(UsageError, match=needle):
        options_to_override("sh", line)


@pytest.mark.parametrize("kernel, line, option", [
    ({}, "--memory 1G", "--memory"),
    ({}, "--allow 10.0.2.2:80", "--allow"),
    ({"network": {"mode": "allowlist", "allow": ["10.0.0.0/8:443"]}}, "--allow 10.1.2.3:80", "--allow"),
    ({}, "--processes 1000", "--processes"),
    ({"resources": {"wall_seconds": 10}}, "--timeout 60", "--timeout"),
    ({"filesystem": {"mode": "scratch-only"}}, "", None),
])
def test_loosening_options_name_the_option(kernel, line, option):
    base = policy_from_dict(kernel) if kernel else secure_default()
    override = options_to_override("sh", line)
    if option is None:
        assert tighten(base, override) == base
        return
    with pytest.raises(PolicyError) as err:
        tighten(base, override)
    assert option in [o for o, _ in option_problems(err.value, override)]


def test_allowed_subset_tightens():
    base = policy_from_dict({"network": {"mode": "allowlist", "allow": ["10.0.0.0/8:443"]}})
    result = tighten(base, options_to_override("sh", "--allow 10.1.2.3:443 --memory 64M"))
    assert result.network.allow == ["10.1.2.3:443"] and result.resources.memory_bytes == 64 * 2**20


def test_each_cell_option_is_declared_once_and_documented_from_the_table():
    """The parser, the field mapping, the header schema and the help all come from
    CELL_OPTIONS; the README's list must name the same options."""
    from pathlib import Path

    from sandbox_kernel.cell_protocol import CELL_OPTIONS, FIELD_OPTIONS, OPTION_FIELDS, decode_header, encode_request
    from sandbox_kernel.kernel.magics import IPYTHON_OPTIONS, SandboxMagics, _parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    flags = {a.option_strings[-1] for a in _parser("sh")._actions} - set(IPYTHON_OPTIONS)
    assert flags == set(OPTION_FIELDS) == {o.flag for o in CELL_OPTIONS}
    assert set(FIELD_OPTIONS) == {o.field for o in CELL_OPTIONS}
    for option in CELL_OPTIONS:
        assert option.usage in SandboxMagics.sh.__doc__
        assert f"`{option.usage}`" in readme, f"README, Cell magics: {option.usage} is not listed"
    samples = {"choice": None, "int": "3", "number": "2.5", "size": "1M", "allow": "10.0.0.1"}
    for option in CELL_OPTIONS:
        value = option.choices[0] if option.kind == "choice" else samples[option.kind]
        override = options_to_override("sh", f"{option.flag} {value}")
        section, key = option.field.split(".")
        assert key in override[section]
        assert decode_header(encode_request("sh", b"", override).split(b"\n")[0]).options == override


def test_ipythons_script_options_parse_with_their_meaning():
    from IPython.core.error import UsageError

    from sandbox_kernel.kernel.magics import parse_options

    override, local = parse_options("sh", "--out v --err e --no-raise-error --memory 64M")
    assert override == {"resources": {"memory_bytes": 64 * 2**20}}
    assert local == {"out": "v", "err": "e", "raise_error": False, "help": False}
    assert parse_options("sh", "-h")[1]["help"] is True
    assert parse_options("sh", "")[1] == {"out": None, "err": None, "raise_error": True, "help": False}
    for line, words in (("--bg", "--bg cannot be honoured"), ("--proc p", "--proc cannot be honoured"),
                        ("--out 2x", "not a variable name")):
        with pytest.raises(UsageError, match=words):
            parse_options("sh", line)


def test_a_help_only_cell_calls_the_magic_directly():
    from sandbox_kernel.kernel import help_only_cell

    assert help_only_cell(["%%sh --help\n"]) == ["get_ipython().magics_manager.magics['cell']['sh'](' --help', '')\n"]
    assert help_only_cell(["%%node -h\n", "\n"])[0].startswith("get_ipython()")
    for lines in (["%%sh --help\n", "echo hi\n"], ["%%sh --helpful\n"], ["%%shell --help\n"], ["print(1)\n"], []):
        assert help_only_cell(lines) == lines
