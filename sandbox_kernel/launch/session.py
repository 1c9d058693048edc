"""A kernel session's namespaces: the sized scratch tmpfs that the kernel and its cell
sandboxes share, and, under a non-root supervisor, the user namespace they are all made in.

The holder is a tiny process in a fresh mount namespace (plus a user namespace when we are not
root) that mounts the tmpfs and then waits on a pipe only the supervisor holds. Every sandbox
of the session joins that mount namespace before bwrap starts, so bwrap can bind the tmpfs.
Nothing of it is visible on the host, and when the supervisor goes away for any reason the
holder exits and the kernel frees the tmpfs: no mount is ever left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ..errors import HolderError, SessionError
from .holder import close_streams, start_holder

__all__ = ["SessionError", "Session", "open_session"]

MOUNTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mount_inputs.py")
MOUNT_TIMEOUT = 60.0  # seconds for all of a kernel's input mounts (at most MAX_INPUT_BINDS)


@dataclass
class Session:
    holder: subprocess.Popen
    scratch: str  # mount point (an empty dir on the host; the tmpfs in the holder's namespace)
    rootless: bool
    nsenter: str

    @property
    def pid(self) -> int:
        return self.holder.pid

    def ns_paths(self) -> dict[str, str]:
        paths = {"mount": f"/proc/{self.pid}/ns/mnt"}
        if self.rootless:
            paths["user"] = f"/proc/{self.pid}/ns/user"
        return paths

    def join_prefix(self, net: str | None = None) -> list[str]:
        """nsenter argv that puts a command into the session (and the given netns)."""
        args = [self.nsenter]
        paths = self.ns_paths()
        if self.rootless:
            # The user namespace first: it owns the mount (and egress net) namespaces.
            args += ["--preserve-credentials", f"--user={paths['user']}"]
        args.append(f"--mount={paths['mount']}")
        if net:
            args.append(f"--net={net}")
        return args + ["--"]

    def mount_inputs(self, binds: tuple[tuple[str, str], ...], identity: tuple[int, int] | None
                     ) -> tuple[tuple[tuple[str, str], ...], list[tuple[str, str]]]:
        """Mount ``binds`` (host path, path under the scratch) read-only into the session's
        scratch, in its namespace, once: call before anything untrusted has run in the session.
        ``identity``: the sandbox's (uid, gid) whose access is checked (root supervisor).
        Returns the binds mounted and (dest, why) for each skipped one (changed since listed)."""
        if not binds:
            return (), []
        request = {"scratch": self.scratch, "identity": list(identity) if identity and not self.rootless else None,
                   "binds": [list(b) for b in binds]}
        try:
            done = subprocess.run([*self.join_prefix(), sys.executable, "-I", "-S", MOUNTER], input=json.dumps(request).encode(),
                                  capture_output=True, timeout=MOUNT_TIMEOUT, cwd="/", env={})
            answer = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, ValueError) as e:
            raise SessionError(f"could not mount the kernel's inputs into its scratch: {e}") from None
        if done.returncode != 0:
            raise SessionError(f"could not mount the kernel's inputs into its scratch: {done.stderr.decode(errors='replace')[-500:]}")
        return tuple((s, d) for s, d in answer["mounted"]), [(d, why) for d, why in answer["skipped"]]

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.stdin.close()
            try:
                self.holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()
        close_streams(self.holder)
        shutil.rmtree(self.scratch, ignore_errors=True)  # the empty host-side mount point


def open_session(scratch: str, size_bytes: int | None, owner: tuple[int, int], *,
                 unshare: str = "unshare", nsenter: str = "nsenter") -> Session:
    """Create the holder and mount the scratch tmpfs at ``scratch`` (an existing empty dir)
    in its namespace, owned by ``owner`` and private to it (mode 0700)."""
    rootless = os.geteuid() != 0
    options = ["mode=0700"]
    if size_bytes is not None:
        options.append(f"size={size_bytes}")
    if not rootless:
        options += [f"uid={owner[0]}", f"gid={owner[1]}"]
    cmd = [unshare, "--mount", "--propagation", "private"]
    if rootless:
        cmd += ["--user", "--map-root-user"]
    try:
        holder = start_holder(cmd, 'mount -t tmpfs -o "$1" sandbox-scratch "$2"', (",".join(options), scratch))
    except HolderError as e:
        raise SessionError(f"could not mount the session's scratch tmpfs: {e}") from None
    return Session(holder, scratch, rootless, nsenter)
