"""sandbox-kernel: run untrusted notebooks inside an OS-level sandbox, and say what was enforced."""

from __future__ import annotations

import logging

# Silent unless the application listens (see ``logs``): no "No handlers" output from a library.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["SandboxPolicy", "PolicyError", "SandboxUnavailable", "EffectiveSandbox", "secure_default",
           "tighten", "load_policy_file", "read_policy_data", "policy_from_dict", "SandboxKernelError",
           "LaunchError", "RuntimeMissing", "__version__"]

_LAZY = {
    "SandboxPolicy": "policy", "secure_default": "policy", "tighten": "policy",
    "load_policy_file": "policy", "read_policy_data": "policy", "policy_from_dict": "policy",
    "EffectiveSandbox": "report",
    "PolicyError": "errors", "SandboxUnavailable": "errors", "SandboxKernelError": "errors",
    "LaunchError": "errors", "RuntimeMissing": "errors",
}


def __getattr__(name: str):
    # Lazy: the in-kernel extension imports this package at every kernel start, and the policy
    # model (pydantic) would add ~100 ms there for nothing.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_labextension_paths():
    """Where the built JupyterLab extension is (``jupyter labextension develop`` links it)."""
    return [{"src": "labextension", "dest": "sandbox-kernel"}]
