"""Allowlisted egress: a network namespace the supervisor owns, filtered, then plumbed.

Order matters (rule "filter before link"): the holder process creates the namespace, the nft
ruleset is loaded into it from outside, and only then does slirp4netns attach ``tap0``. The
untrusted process joins last, inside a nested user namespace with no capabilities, so it can
neither change the rules nor leave the namespace. Every step fails closed: an error here means
the run does not start.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from ..errors import EgressError, HolderError
from ..planner.network import EgressPlan
from .holder import READY_TIMEOUT, close_streams, start_holder


def contain_mounts(egress: EgressPlan, argv: list[str]) -> list[str]:
    """``argv`` (slirp4netns) started so that its own sandbox cannot touch the host's mounts.

    ``--enable-sandbox`` makes a mount namespace, marks only ``/`` private (not recursively),
    mounts a tmpfs on /tmp, pivots into it and detaches the old root. Made as root straight
    from the host's namespace on a host with shared propagation (systemd's default), that
    detach reaches the host's peer groups and unmounts the host's own mounts. So a root
    supervisor starts it in a fresh mount namespace whose every mount is private (``unshare
    --propagation private`` is recursive): whatever it mounts or detaches there stays there.
    A non-root slirp4netns joins the holder's user namespace before it unshares, and a mount
    namespace made from a less privileged user namespace gets slave copies of shared mounts,
    so the kernel already stops propagation back to the host."""
    if egress.rootless:
        return argv
    return [egress.unshare, "--mount", "--propagation", "private", "--", *argv]


# The resolver runs under a shell that waits on a pipe only the supervisor holds, so it goes
# when the supervisor closes the pipe or dies (the namespace would otherwise outlive the run
# while the resolver sits in it); dnsmasq logs to stderr, never to the host's syslog.
_RESOLVER_WRAPPER = '"$@" & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid; exit 0'
_RESOLVER_STARTED = "started, version"


def start_resolver(argv: list[str], enter: list[str], unshare: str) -> subprocess.Popen:
    """Start the filtering resolver inside the namespace ``enter`` puts a command in, in a
    fresh mount namespace whose mounts are all private (it mounts nothing, and nothing it
    could do reaches the host's). Returns once it answers; raises :class:`EgressError`."""
    cmd = [*enter, unshare, "--mount", "--propagation", "private", "--",
           "/bin/sh", "-c", _RESOLVER_WRAPPER, "sandbox-resolver", *argv]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            close_fds=True, start_new_session=True)
    fd, log = proc.stderr.fileno(), b""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and len(log) < 65536:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        log += chunk
        if _RESOLVER_STARTED.encode() in log:
            # Keep draining its (rare) log lines so a full pipe never stalls it.
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return proc
    stop_resolver(proc)
    proc.stderr.close()
    lines = log.decode(errors="replace").strip().splitlines()
    raise EgressError("the filtering resolver (dnsmasq) did not start: " + (" | ".join(lines[-3:]) or "timed out"))


def _drain(stream) -> None:
    """Read the resolver's log until it exits (its end of the pipe closes), then close ours."""
    try:
        while os.read(stream.fileno(), 4096):
            pass
    except OSError:
        pass
    finally:
        stream.close()


def stop_resolver(proc: subprocess.Popen) -> None:
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()  # the wrapper kills dnsmasq and waits for it
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - the wrapper ignores nothing
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the wrapper and dnsmasq
        proc.wait()


@dataclass
class EgressHandle:
    holder: subprocess.Popen
    resolver: subprocess.Popen | None = None
    slirp: subprocess.Popen | None = None
    exit_fd: int | None = None  # write end: closing it (or our death) stops slirp4netns
    join_prefix: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        if self.resolver is not None:
            stop_resolver(self.resolver)
            self.resolver = None
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None
        for proc in (self.slirp, self.holder):
            if proc is None or proc.poll() is not None:
                continue
            proc.kill()
        for proc in (self.slirp, self.holder):
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover - kill cannot be ignored
                    pass
                close_streams(proc)


def _ns_enter(egress: EgressPlan, holder_pid: int, session=None) -> list[str]:
    net = f"/proc/{holder_pid}/ns/net"
    if egress.rootless:
        # Enter the owning user namespace too: that is where CAP_NET_ADMIN over the netns lives.
        user = session.ns_paths()["user"] if session is not None else f"/proc/{holder_pid}/ns/user"
        return [egress.nsenter, "--preserve-credentials", f"--user={user}", f"--net={net}", "--"]
    return [egress.nsenter, f"--net={net}", "--"]


def bring_up(egress: EgressPlan, session=None) -> EgressHandle:
    """Create the namespace, load the ruleset, attach slirp4netns. Returns a handle whose
    ``join_prefix`` puts a command into the namespace (and into ``session``, a kernel
    session whose scratch it shares, if given). Raises :class:`EgressError`."""
    t0 = time.monotonic()
    if session is not None:
        # Made inside the session (its user namespace, when rootless), so one command can
        # join both the session's mount namespace and this network namespace.
        holder_cmd = session.join_prefix() + [egress.unshare, "--net"]
    else:
        holder_cmd = [egress.unshare, "--net"]
        if egress.rootless:
            holder_cmd += ["--user", "--map-root-user"]
    # The holder lives until its stdin closes: when the supervisor exits for any reason the
    # namespace goes away with it.
    try:
        holder = start_holder(holder_cmd)
    except HolderError as e:
        raise EgressError(f"could not create the network namespace: {e}") from None
    handle = EgressHandle(holder=holder)
    try:
        handle.timings["namespace"] = time.monotonic() - t0
        enter = _ns_enter(egress, holder.pid, session)
        load = subprocess.run(enter + [egress.nft, "-f", "-"], input=egress.ruleset.encode(), capture_output=True)
        if load.returncode != 0:
            raise EgressError(f"nft could not load the egress ruleset: {load.stderr.decode(errors='replace').strip()}")
        handle.timings["ruleset"] = time.monotonic() - t0
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        slirp_cmd = [egress.slirp4netns, "--configure", "--mtu=65520", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}"]
        slirp_cmd = contain_mounts(egress, slirp_cmd + egress.slirp_flags + [str(holder.pid), "tap0"])
        try:
            slirp = subprocess.Popen(
                slirp_cmd, pass_fds=(ready_w, exit_r), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        handle.slirp, handle.exit_fd = slirp, exit_w
        try:
            ready, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
            ok = bool(ready) and os.read(ready_r, 1) == b"1"
        finally:
            os.close(ready_r)
        if not ok:
            slirp.kill()
            err = slirp.stderr.read().decode(errors="replace").strip()
            raise EgressError(f"slirp4netns did not come up: {err or 'timed out'}")
        handle.timings["plumbed"] = time.monotonic() - t0
        if egress.resolver is not None:
            handle.resolver = start_resolver(egress.resolver.argv, enter, egress.unshare)
            handle.timings["resolver"] = time.monotonic() - t0
        handle.join_prefix = session.join_prefix(net=f"/proc/{holder.pid}/ns/net") if session is not None else enter
        return handle
    except BaseException:
        handle.close()
        raise
