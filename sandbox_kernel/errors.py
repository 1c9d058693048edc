"""Every error sandbox-kernel raises on purpose, under one base.

Callers catch the narrowest class that says what they can handle, never ``Exception``: a
programming error must surface as one (logged, "internal error"), not be reported as "the
sandbox could not be set up". The tree::

    SandboxKernelError
    ├── PolicyError (also ValueError)       a policy is invalid, or an override would loosen it
    ├── SandboxUnavailable (RuntimeError)    on_unavailable 'fail' and a layer cannot be enforced
    ├── LaunchError (RuntimeError)           setting up a run failed; nothing untrusted started
    │   ├── EgressError                      network namespace, nft ruleset or slirp4netns
    │   ├── CgroupError                      the run's cgroups
    │   ├── SessionError                     a kernel session's scratch tmpfs
    │   ├── HolderError                      a namespace holder process
    │   ├── UidLeaseError                    no uid of its own could be leased
    │   └── RuntimeMissing                   the cell's interpreter (node) is not installed
    └── UntrustedInputError (ValueError)     base of the refusals of hostile input: bad
                                             notebooks, cell requests, saved forms, result paths

The classes keep their historical homes as re-exports (``sandbox_kernel.PolicyError``,
``sandbox_kernel.policy.PolicyError``, ``sandbox_kernel.report.SandboxUnavailable``,
``sandbox_kernel.launch.egress.EgressError``...). This module imports nothing of the package:
the kernel side may load it.
"""

from __future__ import annotations

__all__ = ["SandboxKernelError", "PolicyError", "SandboxUnavailable", "LaunchError", "EgressError", "CgroupError",
           "SessionError", "HolderError", "UidLeaseError", "RuntimeMissing", "UntrustedInputError"]


class SandboxKernelError(Exception):
    """Base of every error sandbox-kernel raises on purpose."""


class PolicyError(SandboxKernelError, ValueError):
    """A policy is invalid, or an override would loosen it. ``problems`` is a list of
    ``(field, message)`` pairs; ``str()`` renders them as ``field: message`` lines."""

    def __init__(self, problems: list[tuple[str, str]] | str, message: str | None = None):
        if isinstance(problems, str):
            problems = [(problems, message or "invalid")]
        self.problems = problems
        super().__init__("\n".join(f"{f}: {m}" for f, m in problems))

    @property
    def fields(self) -> list[str]:
        return [f for f, _ in self.problems]


class SandboxUnavailable(SandboxKernelError, RuntimeError):
    """The policy cannot be enforced on this host and ``on_unavailable`` is ``fail``.
    Raised before anything untrusted starts; lists every downgrade (``report.Downgrade``)."""

    def __init__(self, downgrades: list, report=None):
        self.downgrades = list(downgrades)
        self.report = report
        lines = "; ".join(f"{d.layer}: {d.reason}" for d in self.downgrades)
        super().__init__(f"sandbox unavailable: {lines}")


class LaunchError(SandboxKernelError, RuntimeError):
    """The launch shell could not set up a run (a mechanism failed at set-up time although the
    probe found it working); everything set up so far was torn down and nothing untrusted ran."""


class EgressError(LaunchError):
    """Egress plumbing could not be brought up; nothing untrusted was started."""


class CgroupError(LaunchError):
    """The run's cgroups could not be created or limited."""


class SessionError(LaunchError):
    """A kernel session's namespace (its scratch tmpfs) could not be set up."""


class HolderError(LaunchError):
    """A namespace holder process did not come up."""


class UidLeaseError(LaunchError):
    """No uid could be leased (range exhausted or lease dir unusable); nothing was started."""


class RuntimeMissing(LaunchError):
    """The interpreter a cell asks for (``%%node``) is not installed on this host."""


class UntrustedInputError(SandboxKernelError, ValueError):
    """Input from the untrusted side (a notebook, a cell request, a saved form, a path a
    result would be written through) was refused; the message says why."""
