"""The sandbox policy: validated, secure by default, and only ever tightened by overrides.

The policy keys are listed in ``docs/architecture.md`` ("Policy keys"). Every model forbids unknown keys, every number has
bounds, sizes accept ``"512M"``-style strings, and ``network.allow`` entries are parsed with
:mod:`ipaddress` (they end up in an nftables ruleset, so nothing unparsed may pass).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import PolicyError

POLICY_VERSION = 1

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

# Addresses that hand out cloud credentials or reach host-local services. Blocked whenever
# network.block_metadata is true, even if an allow entry covers them.
METADATA_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: AWS/GCP/Azure/OpenStack metadata at 169.254.169.254
        "168.63.129.16/32",  # Azure WireServer (VM agent, extensions, health probes)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud legacy metadata
        "fe80::/10",  # IPv6 link-local
        "fc00::/7",  # IPv6 unique-local, includes AWS IMDS fd00:ec2::254
    )
)


# --------------------------------------------------------------------------- sizes

# ASCII digits only (``\d`` would also take e.g. Arabic-Indic digits); a unit letter may be
# followed by "B" or "iB"; a bare "B" means bytes.
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


def parse_size(value: Any) -> int:
    """``512`` -> 512, ``"512M"`` -> 512 MiB, ``"2G"``/``"2GiB"``/``"2GB"`` -> 2 GiB (binary units)."""
    if isinstance(value, bool):
        raise ValueError("a size must be an integer number of bytes or a string like '512M'")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number, unit = m.groups()
            # Exact arithmetic: float() would silently round large byte counts.
            size = Fraction(number) * _SIZE_UNITS[(unit or "").upper()]
            if size.denominator != 1:
                raise ValueError(f"size {value!r} is not a whole number of bytes")
            return int(size)
    raise ValueError(f"{value!r} is not a size; use bytes (an integer) or a string like '512M', '2G'")


def format_size(n: int) -> str:
    for unit, factor in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _size_field(minimum: int, maximum: int):
    return Annotated[int, BeforeValidator(parse_size), Field(ge=minimum, le=maximum)]


# --------------------------------------------------------------------------- allow entries

_PORTED_V6 = re.compile(r"^\[([^\]]+)\]:([0-9]+)$", re.ASCII)
_PORTED_V4 = re.compile(r"^([0-9./]+):([0-9]+)$", re.ASCII)


@dataclass(frozen=True)
class AllowRule:
    """One parsed ``network.allow`` entry: a network and an optional port (any protocol)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    def __str__(self) -> str:
        net = str(self.network)
        if self.network.num_addresses == 1:
            net = str(self.network.network_address)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"

    def covers(self, other: "AllowRule") -> bool:
        """True if every destination ``other`` allows is also allowed by ``self``."""
        if self.network.version != other.network.version:
            return False
        if not other.network.subnet_of(self.network):  # type: ignore[arg-type]
            return False
        return self.port is None or self.port == other.port

    def overlaps_metadata(self) -> bool:
        return any(
            self.network.version == m.version and self.network.overlaps(m)  # type: ignore[arg-type]
            for m in METADATA_NETWORKS
        )


def parse_allow_entry(entry: str) -> AllowRule:
    """Parse ``IP``, ``CIDR``, ``IP:port``, ``CIDR:port``, ``[v6]:port`` or ``[v6/len]:port``.

    Anything else (names, ranges, stray characters such as ``;`` or ``}``) is rejected with a
    message that quotes the entry, because these strings become nftables rule text.
    """
    if not isinstance(entry, str):
        raise ValueError(f"allow entry {entry!r} must be a string like '203.0.113.0/24:443'")
    raw = entry.strip()
    address, port_text, bracketed = raw, None, False
    if m := _PORTED_V6.match(raw):
        (address, port_text), bracketed = m.groups(), True
    elif m := _PORTED_V4.match(raw):
        address, port_text = m.groups()
    port = None
    if port_text is not None:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"allow entry {entry!r}: port {port} is outside 1-65535")
    bad = ValueError(
        f"allow entry {entry!r} is not an IPv4/IPv6 address or CIDR with an optional port "
        "(examples: '203.0.113.7', '10.0.0.0/8:443', '[2001:db8::1]:443')"
    )
    # ipaddress accepts IPv6 scope ids ("fe80::1%eth0") with almost any text after the '%';
    # that text would be copied into the nft ruleset, so no '%' may pass.
    if "%" in address:
        raise bad
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise bad from None
    if bracketed and network.version != 6:
        raise bad  # "[v4]:port" is not a documented spelling
    return AllowRule(network, port)


# One DNS label: letters, digits, inner hyphens; 1-63 characters (RFC 1035, LDH rule).
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_ENTRY = re.compile(rf"^(\*\.)?((?:{_LABEL}\.)+{_LABEL}):([0-9]{{1,5}})\Z", re.ASCII)


@dataclass(frozen=True)
class NameRule:
    """One parsed host-name ``network.allow`` entry: ``name:port`` or ``*.domain:port``.

    ``*.domain`` means the domain and every name below it (the filtering resolver's suffix
    match); a plain name means that name only. TCP and UDP on ``port``."""

    name: str  # lower case, no trailing dot, without the "*."
    port: int
    wildcard: bool = False

    def __str__(self) -> str:
        return f"{'*.' if self.wildcard else ''}{self.name}:{self.port}"

    def matches(self, name: str) -> bool:
        """Whether this entry lets the resolver answer for ``name``."""
        return name == self.name or (self.wildcard and name.endswith("." + self.name))

    def covers(self, other: "NameRule") -> bool:
        """True if every name and port ``other`` allows is also allowed by ``self``."""
        if self.port != other.port:
            return False
        if other.wildcard:
            return self.wildcard and self.matches(other.name)
        return self.matches(other.name)


def parse_name_entry(entry: str) -> NameRule:
    """Parse ``host.name:port`` or ``*.domain:port``. The name becomes resolver
    configuration, so only LDH labels pass (no ``/``, ``#``, ``,``, spaces, IDN U-labels)."""
    raw = entry.strip().lower().replace(".:", ":") if isinstance(entry, str) else ""  # "pypi.org.:443"
    m = _NAME_ENTRY.match(raw)
    if not m or len(m.group(2)) > 253 or m.group(2).split(".")[-1].isdigit():
        raise ValueError(
            f"allow entry {entry!r} is neither an IPv4/IPv6 address or CIDR with an optional port "
            "nor a host name or '*.'-wildcard domain with a port "
            "(examples: '203.0.113.7', '10.0.0.0/8:443', 'pypi.org:443', '*.githubusercontent.com:443')")
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise ValueError(f"allow entry {entry!r}: port {port} is outside 1-65535")
    return NameRule(m.group(2), port, wildcard=bool(m.group(1)))


def parse_entry(entry: str) -> AllowRule | NameRule:
    """An address entry (:func:`parse_allow_entry`) or, failing that, a name entry."""
    try:
        return parse_allow_entry(entry)
    except ValueError as address_error:
        if not isinstance(entry, str) or "[" in entry or "/" in entry:
            raise address_error from None
        return parse_name_entry(entry)


def _normalise_allow_entry(entry: str) -> str:
    return str(parse_entry(entry))


AllowEntry = Annotated[str, AfterValidator(_normalise_allow_entry)]


def _absolute_path(p: str) -> str:
    if not p.startswith("/"):
        raise ValueError(f"{p!r} is not an absolute path")
    if "\0" in p or any(part == ".." for part in p.split("/")):
        raise ValueError(f"{p!r} must not contain '..' or NUL")
    # normpath keeps a leading "//" (POSIX allows it to be special); Linux does not care, but
    # the tighten() subset check compares strings, so spell every path one way.
    return "/" + os.path.normpath(p).lstrip("/")


AbsPath = Annotated[str, AfterValidator(_absolute_path)]


# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


def _cgroup_parent(value: str) -> str:
    parts = value.strip("/").split("/")
    if not value.strip("/") or any(p in ("", ".", "..") or not re.fullmatch(r"[A-Za-z0-9._@-]+", p) for p in parts):
        raise ValueError(f"{value!r}: a relative cgroup path of names made of letters, digits and . _ @ -")
    return "/".join(parts)


class ResourcesPolicy(_Strict):
    cpu_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] | None = Field(
        60, description="CPU time per process tree member (RLIMIT_CPU), seconds"
    )
    memory_bytes: _size_field(16 * MiB, 1 * TiB) | None = Field(  # type: ignore[valid-type]
        512 * MiB, description="memory for the whole sandbox (cgroup) or per process (RLIMIT_AS)"
    )
    max_processes: Annotated[int, Field(ge=1, le=65536)] | None = Field(
        256, description="processes/threads the sandbox may hold at once"
    )
    max_open_files: Annotated[int, Field(ge=16, le=1048576)] | None = Field(
        1024, description="open file descriptors per process (RLIMIT_NOFILE)"
    )
    max_file_size_bytes: _size_field(1, 1 * TiB) | None = Field(  # type: ignore[valid-type]
        256 * MiB, description="largest file a process may write (RLIMIT_FSIZE)"
    )
    max_output_bytes: _size_field(1, 1 * GiB) | None = Field(  # type: ignore[valid-type]
        5 * MiB, description="stdout+stderr bytes kept per run before the run is cut off"
    )
    # Per run: a cell sandbox's whole run, or (delegated to the executing client) each cell of
    # a kernel. A secure default needs one: sleeping code must not hold a batch forever.
    wall_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600, allow_inf_nan=False)] | None = Field(
        600.0, description="wall-clock limit per run (per cell in a kernel), seconds"
    )
    # Not a cap but where the caps live: the operator's alone (like the sandbox uid).
    cgroup_parent: Annotated[str, AfterValidator(_cgroup_parent)] | None = Field(
        None, description="the cgroup runs are created below, relative to each hierarchy's root "
                          "(e.g. 'sandbox-kernel/user-alice'); unset: detected (see docs/operators.md)"
    )


def _results_dir_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", value) or value in (".", ".."):
        raise ValueError(f"{value!r} must be one plain directory name (letters, digits, '_', '.', '-'), "
                         "not a path; it is made inside the scratch dir")
    return value


class OutputsPolicy(_Strict):
    """Results the supervisor copies out of the scratch dir (regular files only, capped)."""

    enabled: bool = True
    dir: Annotated[str, AfterValidator(_results_dir_name)] = Field(
        "outputs", description="directory inside the scratch dir whose files are copied out")
    max_files: Annotated[int, Field(ge=1, le=10000)] = Field(100, description="files copied per kernel")
    max_file_bytes: _size_field(1, 16 * GiB) = Field(  # type: ignore[valid-type]
        64 * MiB, description="largest file copied out")
    max_total_bytes: _size_field(1, 64 * GiB) = Field(  # type: ignore[valid-type]
        256 * MiB, description="bytes copied per kernel")


class FilesystemPolicy(_Strict):
    mode: Literal["off", "scratch-only", "scratch-plus-ro"] = "scratch-plus-ro"
    read_only_paths: list[AbsPath] = Field(default_factory=list)
    scratch_bytes: _size_field(1 * MiB, 1 * TiB) | None = Field(  # type: ignore[valid-type]
        1 * GiB, description="size of the private scratch dir and of /tmp (each a sized tmpfs)"
    )
    node_modules: AbsPath | None = Field(
        None, description="a host node_modules dir shown read-only to %%node cells, with NODE_PATH set to it"
    )
    outputs: OutputsPolicy = OutputsPolicy()


class NetworkPolicy(_Strict):
    mode: Literal["deny", "allowlist", "unrestricted"] = "deny"
    allow: list[AllowEntry] = Field(default_factory=list)
    block_metadata: bool = True

    def rules(self) -> list[AllowRule]:
        """The address entries (host-name entries are in :meth:`names`)."""
        return [r for r in map(parse_entry, self.allow) if isinstance(r, AllowRule)]

    def names(self) -> list[NameRule]:
        """The host-name entries, answered by the filtering resolver."""
        return [r for r in map(parse_entry, self.allow) if isinstance(r, NameRule)]


# Where a root supervisor leases one transient uid (= gid) per kernel from, by default: 64 Ki
# uids above the ranges systemd hands out (regular users, dynamic service users, nspawn
# containers up to 1879048191) and above login.defs' default subordinate ids (<= 600100000).
DEFAULT_UID_RANGE = (1879048192, 1879113727)
MIN_RANGE_UID = 1000  # below: system accounts, whether or not they have a passwd entry


def _uid_range(value: list[int]) -> list[int]:
    first, last = value
    if first > last:
        raise ValueError(f"uid_range [{first}, {last}]: the first uid is above the last")
    return value


class PrivilegePolicy(_Strict):
    mode: Literal["inherit", "drop-to-uid"] = "drop-to-uid"
    # None = one transient uid per kernel (per run) leased from uid_range under a root
    # supervisor. Set, every sandbox of this policy shares that uid. uid/gid 0 is refused:
    # "dropping" to root is not a drop.
    uid: Annotated[int, Field(ge=1, le=2**31 - 2)] | None = None
    gid: Annotated[int, Field(ge=1, le=2**31 - 2)] | None = None
    uid_range: Annotated[
        list[Annotated[int, Field(ge=MIN_RANGE_UID, le=2**31 - 2)]], Field(min_length=2, max_length=2),
        AfterValidator(_uid_range),
    ] = Field(default_factory=lambda: list(DEFAULT_UID_RANGE),
              description="[first, last] uids (inclusive) a root supervisor leases per-kernel uids from")


class SandboxPolicy(_Strict):
    """The whole policy. Field defaults *are* the secure default, so a partial policy can
    never fall back to something permissive."""

    version: Literal[1] = 1
    enabled: bool = True
    on_unavailable: Literal["fail", "degrade"] = "fail"
    resources: ResourcesPolicy = ResourcesPolicy()
    filesystem: FilesystemPolicy = FilesystemPolicy()
    network: NetworkPolicy = NetworkPolicy()
    privilege: PrivilegePolicy = PrivilegePolicy()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_toml(self) -> str:
        import tomli_w

        # TOML has no null: an absent cap would read back as the secure default, so an
        # explicitly unlimited cap is written as the string "unlimited".
        def unlimited(d):
            return {
                k: unlimited(v) if isinstance(v, dict) else ("unlimited" if v is None else v)
                for k, v in d.items()
            }

        return tomli_w.dumps(unlimited(drop_none_keep_caps(self.to_dict())))


def drop_none_keep_caps(d: dict) -> dict:
    # privilege.uid/gid None means "a leased uid per kernel": omit them instead of writing
    # "unlimited", which would be nonsense there.
    out = copy.deepcopy(d)
    for key in ("uid", "gid"):
        if out.get("privilege", {}).get(key) is None:
            out.get("privilege", {}).pop(key, None)
    if out.get("filesystem", {}).get("node_modules") is None:  # none: the default, not "unlimited"
        out.get("filesystem", {}).pop("node_modules", None)
    if out.get("resources", {}).get("cgroup_parent", "") is None:  # unset: detected
        out["resources"].pop("cgroup_parent")
    return out


def secure_default() -> SandboxPolicy:
    """Enabled, fail-closed, scratch-plus-ro, network deny, non-root, capped."""
    return SandboxPolicy()


# --------------------------------------------------------------------------- validation helpers


def _problems_from(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic reports union branches as e.g. ('resources','cpu_seconds','int'): drop the
        # branch label so the operator sees the field path only.
        loc = tuple(p for p in loc if p not in ("int", "float", "none", "str", "is-instance[int]"))
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append((field or "<policy>", msg))
    # A bad value in a "X | None" field is reported once per union branch: keep one per field.
    seen, unique = set(), []
    for f, m in problems:
        if f not in seen:
            seen.add(f)
            unique.append((f, m))
    return unique


_UNLIMITED = "unlimited"


# Fields where None means "no cap", so "unlimited" (TOML has no null) may stand for it.
_UNLIMITED_OK = {"resources": set(ResourcesPolicy.model_fields) - {"cgroup_parent"}, "filesystem": {"scratch_bytes"}}


def _normalise_input(data: dict) -> dict:
    """Map the TOML spelling of an unlimited cap ("unlimited") to None, on cap fields only
    (elsewhere it stays a string and fails validation: ``privilege.uid = "unlimited"`` must
    not quietly become "the default account")."""
    out = dict(data)
    for section, fields in _UNLIMITED_OK.items():
        sub = out.get(section)
        if isinstance(sub, Mapping):
            out[section] = {k: (None if k in fields and v == _UNLIMITED else v) for k, v in sub.items()}
    return out


def _check_version(data: Mapping[str, Any]) -> None:
    version = data.get("version", POLICY_VERSION)
    if type(version) is not int or version != POLICY_VERSION:  # not True, 1.0 or "1"
        raise PolicyError("version", f"unsupported policy version {version!r}; this release reads version 1")


def deep_merge(base: dict, overlay: Mapping) -> dict:
    """Overlay keys onto base recursively; lists are replaced, never concatenated."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def policy_from_dict(data: Mapping[str, Any], base: SandboxPolicy | None = None) -> SandboxPolicy:
    """Validate a (possibly partial) policy dict and merge it over ``base`` (default: the
    secure default). Raises :class:`PolicyError` listing every bad field."""
    if not isinstance(data, Mapping):
        raise PolicyError("<policy>", f"a policy must be a table/object, got {type(data).__name__}")
    _check_version(data)
    data = _normalise_input(dict(data))
    merged = deep_merge((base or secure_default()).to_dict(), data)
    # Switching network.mode away from allowlist without naming entries drops the base's
    # entries (they would be meaningless, and _check_consistency would refuse them): an
    # allowlist base tightened to {"network": {"mode": "deny"}} is simply deny.
    net = data.get("network")
    if isinstance(net, Mapping) and "allow" not in net and net.get("mode") != "allowlist" and "mode" in net:
        if isinstance(merged.get("network"), dict):
            merged["network"]["allow"] = []
    try:
        policy = SandboxPolicy.model_validate(merged)
    except ValidationError as err:
        raise PolicyError(_problems_from(err)) from None
    _check_consistency(policy)
    return policy


def _check_consistency(policy: SandboxPolicy) -> None:
    net = policy.network
    if net.allow and net.mode != "allowlist":
        raise PolicyError(
            "network.allow", f"allow entries are only used with network.mode 'allowlist' (mode is {net.mode!r})"
        )
    priv = policy.privilege
    if priv.gid is not None and priv.uid is None:
        raise PolicyError("privilege.gid", "a gid needs a uid: set privilege.uid as well")


def read_policy_data(path: str | os.PathLike) -> Any:
    """The keys of a JSON (``.json``, any case) or TOML (anything else, typically ``.toml``)
    policy file, unvalidated and unmerged: a base for :func:`policy_from_dict`, or an override
    for :func:`tighten`. The one reader of policy files: every failure is a
    :class:`PolicyError` on ``<file>`` that says whether the file is missing, unreadable or
    unparsable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError("<file>", f"cannot read policy file {str(p)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PolicyError("<file>", f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError("<file>", f"{p}: not valid JSON: {e.msg} (line {e.lineno})") from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError("<file>", f"{p}: not valid TOML: {e}") from None
    return data  # not a table/object: policy_from_dict names it


def load_policy_file(path: str | os.PathLike, base: SandboxPolicy | None = None) -> SandboxPolicy:
    """Read and validate a policy file (see :func:`read_policy_data`) over ``base``."""
    return policy_from_dict(read_policy_data(path), base)


# --------------------------------------------------------------------------- tighten

_FS_STRICTNESS = {"off": 0, "scratch-plus-ro": 1, "scratch-only": 2}
_NET_STRICTNESS = {"unrestricted": 0, "allowlist": 1, "deny": 2}
_CAP_FIELDS = tuple(f for f in ResourcesPolicy.model_fields if f != "cgroup_parent")


def _path_within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def tighten(base: SandboxPolicy, override: Mapping[str, Any] | SandboxPolicy | None) -> SandboxPolicy:
    """Apply an untrusted override (kernelspec config, notebook or cell options) to ``base``.

    The result is never looser than ``base`` on any axis. An override that would loosen one
    raises :class:`PolicyError` naming each offending field; nothing is half-applied.
    """
    if override is None:
        return base
    if isinstance(override, SandboxPolicy):
        override = override.to_dict()
    result = policy_from_dict(override, base)
    problems = looser_fields(base, result)
    if problems:
        raise PolicyError(problems)
    return result


def looser_fields(base: SandboxPolicy, candidate: SandboxPolicy) -> list[tuple[str, str]]:
    """Every axis on which ``candidate`` is looser than ``base``, as (field, reason)."""
    problems: list[tuple[str, str]] = []
    if base.enabled and not candidate.enabled:
        problems.append(("enabled", "cannot disable a sandbox the operator enabled"))
    if base.on_unavailable == "fail" and candidate.on_unavailable == "degrade":
        problems.append(("on_unavailable", "cannot relax 'fail' to 'degrade'"))
    for name in _CAP_FIELDS:
        b, c = getattr(base.resources, name), getattr(candidate.resources, name)
        if b is not None and (c is None or c > b):
            size = name.endswith("_bytes")
            problems.append((f"resources.{name}", f"{_show(c, size)} is looser than the allowed {_show(b, size)}"))
    bf, cf = base.filesystem, candidate.filesystem
    if _FS_STRICTNESS[cf.mode] < _FS_STRICTNESS[bf.mode]:
        problems.append(("filesystem.mode", f"{cf.mode!r} is looser than {bf.mode!r}"))
    if cf.node_modules is not None and cf.node_modules != bf.node_modules and bf.mode != "off":
        problems.append(("filesystem.node_modules", f"{cf.node_modules!r} is not the operator's node_modules root"))
    # Extra read-only paths only matter under scratch-plus-ro; a base of "off" exposes everything.
    if cf.mode == "scratch-plus-ro" and bf.mode != "off":
        for p in cf.read_only_paths:
            if not _path_within(p, bf.read_only_paths):
                problems.append(("filesystem.read_only_paths", f"{p!r} is not within the allowed read-only paths"))
    if bf.scratch_bytes is not None and (cf.scratch_bytes is None or cf.scratch_bytes > bf.scratch_bytes):
        problems.append(
            ("filesystem.scratch_bytes", f"{_show(cf.scratch_bytes, True)} is looser than the allowed {_show(bf.scratch_bytes, True)}")
        )
    bo, co = bf.outputs, cf.outputs
    if co.enabled and not bo.enabled:
        problems.append(("filesystem.outputs.enabled", "cannot copy out results the operator does not allow"))
    if co.dir != bo.dir:
        problems.append(("filesystem.outputs.dir", "the results directory is set by the operator and cannot be overridden"))
    for name in ("max_files", "max_file_bytes", "max_total_bytes"):
        b, c = getattr(bo, name), getattr(co, name)
        if c > b:
            size = name.endswith("_bytes")
            problems.append((f"filesystem.outputs.{name}", f"{_show(c, size)} is looser than the allowed {_show(b, size)}"))
    bn, cn = base.network, candidate.network
    if _NET_STRICTNESS[cn.mode] < _NET_STRICTNESS[bn.mode] and not (cn.mode == "allowlist" and not cn.allow):
        problems.append(("network.mode", f"{cn.mode!r} is looser than {bn.mode!r}"))
    elif cn.mode == "allowlist" and bn.mode == "allowlist":
        base_rules = bn.rules()
        for rule in cn.rules():
            if not any(b.covers(rule) for b in base_rules):
                problems.append(("network.allow", f"{str(rule)!r} is not within the allowed destinations"))
        base_names = bn.names()
        for name in cn.names():
            if not any(b.covers(name) for b in base_names):
                problems.append(("network.allow", f"{str(name)!r} is not within the allowed host names"))
    if bn.block_metadata and not cn.block_metadata:
        problems.append(("network.block_metadata", "cannot turn off the metadata block"))
    bp, cp = base.privilege, candidate.privilege
    if bp.mode == "drop-to-uid" and cp.mode == "inherit":
        problems.append(("privilege.mode", "cannot relax 'drop-to-uid' to 'inherit'"))
    if candidate.resources.cgroup_parent != base.resources.cgroup_parent:
        problems.append(("resources.cgroup_parent", "the cgroup parent is set by the operator and cannot be overridden"))
    for key in ("uid", "gid", "uid_range"):
        if getattr(cp, key) != getattr(bp, key):
            problems.append((f"privilege.{key}", "the sandbox uid/gid is set by the operator and cannot be overridden"))
    return problems


def _show(v: Any, size: bool = False) -> str:
    if v is None:
        return "unlimited"
    return format_size(v) if size else str(v)
