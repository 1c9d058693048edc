"""Operator configuration the Jupyter way: ``c.SandboxPolicyConfig.<trait>`` in any Jupyter
config file, or a ``policy_file``. Every trait defaults to "not set" (None): the value then
comes from the policy file, else from the secure default. Invalid values raise at startup
with the trait's name.
"""

from __future__ import annotations

import os
import re
from difflib import get_close_matches

from traitlets import Bool, Enum, Float, Int, List, TraitError, Unicode, Union
from traitlets.config import Config, Configurable
from traitlets.config.loader import DeferredConfig, LazyConfigValue

from .policy import DEFAULT_UID_RANGE, PolicyError, SandboxPolicy, load_policy_file, policy_from_dict, secure_default

_D = secure_default()
_SIZE = lambda default, what: Union(  # noqa: E731
    [Int(), Unicode()], default_value=None, allow_none=True,
    help=f"{what}. Bytes, or a string like '512M'/'2G', or 'unlimited'. Secure default: {default}.").tag(config=True)
_COUNT = lambda default, what: Union([Int(), Unicode()], default_value=None, allow_none=True,  # noqa: E731
                                     help=f"{what}, or 'unlimited'. Secure default: {default}.").tag(config=True)

# trait name -> policy path
TRAIT_FIELDS = {
    "enabled": ("enabled",), "on_unavailable": ("on_unavailable",),
    "cpu_seconds": ("resources", "cpu_seconds"), "memory_bytes": ("resources", "memory_bytes"),
    "max_processes": ("resources", "max_processes"), "max_open_files": ("resources", "max_open_files"),
    "max_file_size_bytes": ("resources", "max_file_size_bytes"), "max_output_bytes": ("resources", "max_output_bytes"),
    "wall_seconds": ("resources", "wall_seconds"), "cgroup_parent": ("resources", "cgroup_parent"),
    "filesystem_mode": ("filesystem", "mode"), "read_only_paths": ("filesystem", "read_only_paths"),
    "scratch_bytes": ("filesystem", "scratch_bytes"), "node_modules": ("filesystem", "node_modules"),
    "outputs_enabled": ("filesystem", "outputs", "enabled"), "outputs_dir": ("filesystem", "outputs", "dir"),
    "outputs_max_files": ("filesystem", "outputs", "max_files"),
    "outputs_max_file_bytes": ("filesystem", "outputs", "max_file_bytes"),
    "outputs_max_total_bytes": ("filesystem", "outputs", "max_total_bytes"),
    "network_mode": ("network", "mode"), "network_allow": ("network", "allow"), "block_metadata": ("network", "block_metadata"),
    "privilege_mode": ("privilege", "mode"), "uid": ("privilege", "uid"), "gid": ("privilege", "gid"),
    "uid_range": ("privilege", "uid_range"),
}
FIELD_TRAITS = {".".join(v): k for k, v in TRAIT_FIELDS.items()}


class SandboxPolicyConfig(Configurable):
    """The operator's sandbox policy. Per-kernel (kernelspec) and per-cell options can only
    tighten it."""

    policy_file = Unicode(None, allow_none=True,
                          help="A JSON or TOML policy file (keys: docs/architecture.md, 'Policy keys'). "
                               "Traits set here override its values.").tag(config=True)
    enabled = Bool(None, allow_none=True, help="Sandbox kernels at all. Secure default: True.").tag(config=True)
    on_unavailable = Enum(["fail", "degrade"], default_value=None, allow_none=True,
                          help="'fail': refuse to start when any layer cannot be enforced; 'degrade': start and report "
                               "each gap. Secure default: 'fail'.").tag(config=True)
    cpu_seconds = _COUNT(_D.resources.cpu_seconds, "CPU seconds per process (RLIMIT_CPU)")
    memory_bytes = _SIZE("512M", "Memory for the whole sandbox (cgroup), else per process (RLIMIT_AS)")
    max_processes = _COUNT(_D.resources.max_processes, "Processes/threads the sandbox may hold")
    max_open_files = _COUNT(_D.resources.max_open_files, "Open files per process")
    max_file_size_bytes = _SIZE("256M", "Largest file a process may write")
    max_output_bytes = _SIZE("5M", "Output bytes kept per run or cell before it is cut off")
    wall_seconds = Union([Float(), Unicode()], default_value=None, allow_none=True,
                         help="Wall-clock limit per run (per cell in a kernel), seconds, or 'unlimited'. "
                              "Secure default: 600.").tag(config=True)
    cgroup_parent = Unicode(None, allow_none=True,
                            help="The cgroup kernels' cgroups are created below, relative to each hierarchy's root, "
                                 "e.g. 'sandbox-kernel/user-alice' (`sandbox-kernel delegate --user alice` makes it). "
                                 "Unset: the supervisor's own cgroup if delegated to it, else <root>/sandbox-kernel/"
                                 "user-<name> if that is its, else <root>/sandbox-kernel.").tag(config=True)
    filesystem_mode = Enum(["off", "scratch-only", "scratch-plus-ro"], default_value=None, allow_none=True,
                           help="What the sandbox sees. Secure default: 'scratch-plus-ro'.").tag(config=True)
    read_only_paths = List(Unicode(), default_value=None, allow_none=True,
                           help="Extra absolute host paths visible read-only (scratch-plus-ro).").tag(config=True)
    scratch_bytes = _SIZE("1G", "Size of the private scratch dir and of /tmp")
    node_modules = Unicode(None, allow_none=True,
                           help="A host node_modules dir visible read-only to %%node cells, which get NODE_PATH "
                                "set to it. Secure default: none.").tag(config=True)
    outputs_enabled = Bool(None, allow_none=True, help="Copy the files code writes under the scratch dir's results "
                                                       "dir out of the sandbox. Secure default: True.").tag(config=True)
    outputs_dir = Unicode(None, allow_none=True, help="The results dir: one name inside the scratch dir (and, under "
                                                      "Jupyter, in the notebook's dir). Default: 'outputs'.").tag(config=True)
    outputs_max_files = Int(None, allow_none=True, help="Files copied out per kernel. Secure default: 100.").tag(config=True)
    outputs_max_file_bytes = _SIZE("64M", "Largest result file copied out")
    outputs_max_total_bytes = _SIZE("256M", "Result bytes copied out per kernel")
    network_mode = Enum(["deny", "allowlist", "unrestricted"], default_value=None, allow_none=True,
                        help="Network policy. Secure default: 'deny'.").tag(config=True)
    network_allow = List(Unicode(), default_value=None, allow_none=True,
                         help="Allowed destinations for 'allowlist': 'IP', 'CIDR', 'IP:port', '[v6]:port'.").tag(config=True)
    block_metadata = Bool(None, allow_none=True,
                          help="Always block cloud metadata and link-local ranges. Secure default: True.").tag(config=True)
    privilege_mode = Enum(["inherit", "drop-to-uid"], default_value=None, allow_none=True,
                          help="Secure default: 'drop-to-uid' (one transient uid per kernel when uid is unset).").tag(config=True)
    uid = Int(None, allow_none=True, help="A fixed uid every sandbox runs as under a root supervisor (shared by all "
                                          "kernels). Unset (the secure default): one uid per kernel from uid_range.").tag(config=True)
    gid = Int(None, allow_none=True, help="gid that goes with a fixed uid.").tag(config=True)
    uid_range = List(Int(), default_value=None, allow_none=True, minlen=2, maxlen=2,
                     help="[first, last]: the uids (gid = uid) a root supervisor leases one per kernel from. "
                          f"Secure default: {list(DEFAULT_UID_RANGE)}.").tag(config=True)

    def _load_config(self, cfg, section_names=None, traits=None):
        """Refuse bad operator config with a :class:`PolicyError` naming
        ``c.SandboxPolicyConfig.<trait>``, instead of traitlets' TraitError (wrong type) or a
        mere warning (misspelt option: a typo such as ``memroy_bytes`` would otherwise leave
        the operator believing a cap is set)."""
        known = self.traits(config=True)
        cls = type(self).__name__
        problems: list[tuple[str, str]] = []
        for name, value in self._find_my_config(cfg).items():
            if name in known:
                if isinstance(value, LazyConfigValue) and isinstance(known[name], List) and getattr(self, name) is None:
                    # c.SandboxPolicyConfig.network_allow.append(...) on an unset (None) list
                    # would silently resolve to None: start from an empty list instead.
                    setattr(self, name, [])
                if isinstance(value, LazyConfigValue):
                    continue  # resolved against the current value by traitlets below
                try:
                    if isinstance(value, DeferredConfig):  # a command-line string, typed by the trait
                        value = value.get_value(known[name])
                    known[name]._validate(self, value)
                except (TraitError, ValueError) as e:
                    problems.append((f"c.{cls}.{name}", str(e)))
            elif not isinstance(value, Config) and not name[:1].isupper():
                hint = get_close_matches(name, known, n=1)
                problems.append((f"c.{cls}.{name}", "unknown option" + (f"; did you mean {hint[0]!r}?" if hint else "")))
        if problems:
            raise PolicyError(problems)
        try:
            super()._load_config(cfg, section_names, traits)
        except TraitError as e:
            raise PolicyError(f"c.{cls}", str(e)) from None

    def overrides(self) -> dict:
        """The policy keys set through traits, as a partial policy dict."""
        out: dict = {}
        for trait, path in TRAIT_FIELDS.items():
            value = getattr(self, trait)
            if value is None:
                continue
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        return out

    def policy(self) -> SandboxPolicy:
        """Secure default <- policy_file <- traits. Raises PolicyError naming the trait."""
        cls = type(self).__name__
        base = secure_default()
        if self.policy_file:
            path = os.path.expanduser(self.policy_file)
            try:
                base = load_policy_file(path)
            except PolicyError as e:
                # Problems inside the file keep the file's field names; say which file it was.
                raise PolicyError([(f"c.{cls}.policy_file" if f == "<file>" else f,
                                    m if f == "<file>" else f"{m} (in policy file {path})") for f, m in e.problems]) from None
        try:
            return policy_from_dict(self.overrides(), base)
        except PolicyError as e:
            raise PolicyError([(_trait_name(cls, f), m) for f, m in e.problems]) from None


def _trait_name(cls: str, field: str) -> str:
    """``network.allow[1]`` -> ``c.SandboxPolicyConfig.network_allow[1]``."""
    m = re.fullmatch(r"([^\[]+)(\[.*)?", field)
    path, index = (m.group(1), m.group(2) or "") if m else (field, "")
    return f"c.{cls}.{FIELD_TRAITS[path]}{index}" if path in FIELD_TRAITS else field


CONFIG_BASENAME = "jupyter_sandbox_kernel_config"


def load_jupyter_config(basenames: tuple[str, ...] = (CONFIG_BASENAME,)) -> Config:
    """Read ``<basename>.py``/``.json`` from every Jupyter config dir (lowest priority first)."""
    from jupyter_core.paths import jupyter_config_path
    from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

    config = Config()
    for directory in reversed(jupyter_config_path()):
        for base in basenames:
            # Same order as traitlets' Application: .py first, then .json (which wins).
            for loader_cls, ext in ((PyFileConfigLoader, ".py"), (JSONFileConfigLoader, ".json")):
                path = os.path.join(directory, base + ext)
                if os.path.isfile(path):
                    config.merge(loader_cls(base + ext, path=directory).load_config())
    return config


def operator_policy(config: Config | None = None) -> SandboxPolicy:
    return SandboxPolicyConfig(config=config if config is not None else load_jupyter_config()).policy()


SERVER_CONFIG_BASENAME = "jupyter_server_config"


def _app_class():
    from jupyter_core.application import JupyterApp
    from traitlets.config import Application

    from . import __version__

    class SandboxKernelApp(JupyterApp):
        """The command line's configuration, read as ``jupyter server`` reads its own: the
        same config path (``jupyter --paths``, ``JUPYTER_CONFIG_DIR``), ``jupyter_config``,
        then ``jupyter_sandbox_kernel_config``, then ``jupyter_server_config`` (which wins,
        as it does for the server's kernels), ``.py`` then ``.json`` in each directory."""

        name = "jupyter-sandbox-kernel"
        description = "Run untrusted notebooks in an OS-level sandbox."
        version = __version__
        classes = [SandboxPolicyConfig]
        config_file_name = Unicode(CONFIG_BASENAME)  # what --generate-config writes
        raise_config_file_errors = True  # a broken config file is an error, not a warning

        def load_config_file(self, suppress_errors: bool = False) -> None:
            super().load_config_file(suppress_errors=False)
            Application.load_config_file(self, SERVER_CONFIG_BASENAME, path=self.config_file_paths)

    return SandboxKernelApp


def command_line_app():
    """The ``SandboxKernelApp`` with every Jupyter config file loaded. A config file that
    cannot be run raises PolicyError naming it."""
    app = _app_class()()
    try:
        app.load_config_file()
    except PolicyError:
        raise
    except Exception as e:  # a config file is Python: anything it raises means "fix that file"
        raise PolicyError("config", f"{_short_error(e)} (in {', '.join(_config_names())} on the Jupyter config path)") from None
    return app


def _short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def _config_names() -> list[str]:
    return ["jupyter_config", CONFIG_BASENAME, SERVER_CONFIG_BASENAME]
