"""Probe: can a kernel session's holder mount a sized scratch tmpfs in a private namespace?"""

from __future__ import annotations

import os
import tempfile

from ..errors import SessionError
from ..host import Capability
from ..launch.session import open_session


def probe(tools, euid: int) -> Capability:
    missing = [t for t in ("unshare", "nsenter") if not tools[t]]
    if missing:
        return Capability(False, error=f"{', '.join(missing)} not found on PATH", hint="apt-get install util-linux")
    scratch = tempfile.mkdtemp(prefix="sandbox-kernel-probe-")
    try:
        session = open_session(scratch, 1024 * 1024, (euid, os.getegid()), unshare=tools["unshare"], nsenter=tools["nsenter"])
    except SessionError as e:
        os.rmdir(scratch)
        return Capability(False, error=str(e), hint="mount namespaces (and user namespaces for a non-root supervisor) must be available")
    session.close()
    return Capability(True, "mounted a sized tmpfs in a private mount namespace and released it",
                      detail={"rootless": euid != 0})
