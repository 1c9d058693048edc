"""Env layer: the sandbox gets a fresh environment, never the supervisor's.

The base is built here (a fixed PATH, HOME in scratch, locale from the host). Caller overrides
(kernelspec ``env``, per-run variables) pass through a denylist that covers the dynamic loader,
interpreters' startup hooks, shells, proxies and TLS trust overrides; dropped keys are
reported. Values the sandbox itself sets (HOME, TMPDIR, ...) bypass the denylist on purpose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from ..report import LayerState

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
HOST_PASSTHROUGH = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "TZ")

DENIED_KEYS = frozenset({
    # shells: code run at startup, or word splitting / lookup tricks
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "CDPATH", "GLOBIGNORE",
    # name resolution and TLS trust
    "HOSTALIASES", "LOCALDOMAIN", "RES_OPTIONS", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS",
    # other interpreters' startup hooks
    "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
    "GCONV_PATH", "LOCPATH", "NLSPATH", "TMPDIR", "HOME", "PATH", "SHELL", "USER", "LOGNAME",
})
DENIED_PREFIXES = (
    "LD_", "DYLD_", "MALLOC_", "GLIBC_", "RESOLV_", "BASH_FUNC_",  # loader, libc, exported functions
    "PYTHON", "IPYTHON", "JUPYTER", "JPY_", "NODE_", "NPM_CONFIG_", "BUN_", "DENO_", "GIT_",
)
ALLOWED_DESPITE_PREFIX = frozenset({
    "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
    # The notebook's path (jupyter_server sets it; ipykernel makes it ``__session__``): a path,
    # not a secret, and no startup hook.
    "JPY_SESSION_NAME",
})
PROXY_KEYS = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy", "socks_proxy"})
_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_denied(key: str) -> bool:
    if not _VALID_NAME.match(key):
        return True
    if key in ALLOWED_DESPITE_PREFIX:
        return False
    return key in DENIED_KEYS or key.startswith(DENIED_PREFIXES) or key.lower() in PROXY_KEYS


@dataclass
class EnvDecision:
    env: dict[str, str]
    dropped: list[str]
    layer: LayerState = field(default_factory=lambda: LayerState("enforced", "allowlist"))


def plan_env(host_env: Mapping[str, str], overrides: Mapping[str, str], sandbox_set: Mapping[str, str]) -> EnvDecision:
    env = {k: host_env[k] for k in HOST_PASSTHROUGH if k in host_env and "\0" not in host_env[k]}
    env["PATH"] = BASE_PATH
    dropped = []
    for key, value in overrides.items():
        if is_denied(key) or "\0" in str(value):
            dropped.append(key)
        else:
            env[key] = str(value)
    env.update(sandbox_set)
    layer = LayerState("enforced", "allowlist", {"dropped_keys": sorted(dropped), "keys": sorted(env)})
    return EnvDecision(env, sorted(dropped), layer)
