"""Probe: can a root supervisor lease a uid of its own for each kernel (``launch/uids.py``)?"""

from __future__ import annotations

import os
import pwd

from ..errors import UidLeaseError
from ..host import Capability
from ..launch.uids import LEASE_DIR, UidLease, lease_uid
from ..policy import DEFAULT_UID_RANGE


def probe(euid: int) -> tuple[Capability, UidLease | None]:
    """Root: lease one uid from the default range, as every kernel start will (the lease dir
    is usable, a uid is free). Returns (capability, lease or None); the caller releases the
    lease once the other probes have run as its uid."""
    if euid != 0:
        name = pwd.getpwuid(euid).pw_name if _has_pw(euid) else str(euid)
        return Capability(True, f"non-root supervisor: every sandbox runs as uid {euid} (no uid per kernel)",
                          detail={"uid": euid, "gid": os.getegid(), "name": name}), None
    try:
        lease = lease_uid(*DEFAULT_UID_RANGE)
    except (UidLeaseError, OSError) as e:
        return Capability(False, error=f"cannot lease a uid from {DEFAULT_UID_RANGE[0]}-{DEFAULT_UID_RANGE[1]}: {e}",
                          hint=f"{os.path.dirname(LEASE_DIR)} must be creatable by root (mode 0700); "
                               "or set privilege.uid_range to uids no account, process or file uses"), None
    return Capability(True, f"leased uid {lease.uid} (one per kernel) under {LEASE_DIR}",
                      detail={"lease_dir": LEASE_DIR, "probe_uid": lease.uid}), lease


def _has_pw(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False
