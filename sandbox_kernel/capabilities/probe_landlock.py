"""Probe: is Landlock available (not used by the planner yet; reported for operators)?"""

from __future__ import annotations

import ctypes
import os

from ..host import Capability

LANDLOCK_CREATE_RULESET = 444  # x86_64 and aarch64 syscall number


def probe() -> Capability:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    except (OSError, AttributeError) as e:  # pragma: no cover - no libc to call through
        return Capability(False, error=str(e))
    if abi < 0:
        return Capability(False, error=f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}",
                          hint="kernel built without CONFIG_SECURITY_LANDLOCK or 'landlock' not in lsm=")
    return Capability(True, f"Landlock ABI {abi} (available; not needed by the current planner)", detail={"abi": abi})
