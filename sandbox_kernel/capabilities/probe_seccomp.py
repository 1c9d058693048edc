"""Probe: libseccomp builds the planner's filter (bwrap loads it; the bwrap probe proves that)."""

from __future__ import annotations

from ..host import Capability
from ..launch.seccomp_bpf import compile_filter, known_syscalls
from ..planner.seccomp import SeccompPlan


def probe() -> Capability:
    try:
        bpf = compile_filter(SeccompPlan())
    except (ImportError, OSError, ValueError, RuntimeError) as e:  # library missing, or it refused the filter
        return Capability(False, error=f"could not build a seccomp filter: {e}", hint="apt-get install libseccomp2; pip install pyseccomp")
    return Capability(True, f"libseccomp built a {len(bpf) // 8}-instruction BPF filter",
                      detail={"bpf_bytes": len(bpf), "known_syscalls": len(known_syscalls())})
