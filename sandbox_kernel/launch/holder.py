"""Holder processes: the smallest thing that keeps a namespace alive.

A holder is created by ``unshare`` (or entered through ``nsenter``), runs an optional set-up
step inside the new namespaces, says "ready", then waits on a pipe only the supervisor holds.
When the supervisor closes it, or dies for any reason, the holder exits and the kernel frees
the namespace (and whatever was mounted in it). Used for egress network namespaces and for
kernel sessions' mount namespaces.
"""

from __future__ import annotations

import select
import subprocess

from ..errors import HolderError

__all__ = ["HolderError", "start_holder", "close_streams", "read_line", "READY_TIMEOUT"]


READY_TIMEOUT = 5.0


def read_line(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return ""
    return stream.readline().decode(errors="replace").strip()


def start_holder(prefix: list[str], setup: str = "true", args: tuple[str, ...] = ()) -> subprocess.Popen:
    """Run ``prefix -- sh -c '<setup> && echo ready && exec cat'`` (``args`` are $1...) and
    wait until it is ready. Raises :class:`HolderError` with the holder's stderr."""
    script = f"{setup} && echo ready && exec cat >/dev/null"
    holder = subprocess.Popen([*prefix, "--", "/bin/sh", "-c", script, "sandbox-holder", *args],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              close_fds=True, start_new_session=True)
    if read_line(holder.stdout, READY_TIMEOUT) != "ready":
        holder.kill()
        holder.wait()
        err = holder.stderr.read().decode(errors="replace").strip()
        close_streams(holder)
        raise HolderError(err or "no answer")
    return holder


def close_streams(proc: subprocess.Popen) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream and not stream.closed:
            stream.close()
