"""sandbox-kernel: run untrusted notebooks inside an OS-level sandbox, and say what was enforced."""

from .policy import PolicyError, SandboxPolicy, load_policy_file, policy_from_dict, secure_default, tighten
from .report import EffectiveSandbox, SandboxUnavailable

__version__ = "0.1.0"
__all__ = ["SandboxPolicy", "PolicyError", "SandboxUnavailable", "EffectiveSandbox", "secure_default",
           "tighten", "load_policy_file", "policy_from_dict", "__version__"]
