"""Run ``scenarios.py`` as a separate supervisor process: as root, or as the non-root
``sandbox-supervisor`` account, optionally inside an outer network namespace."""

from __future__ import annotations

import json
import os
import pwd
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios.py"
SUPERVISOR_ACCOUNT = "sandbox-supervisor"  # the non-root account `make setup` creates for tests
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
METADATA_TEST_ADDRESS = "169.254.1.1"  # the test puts it on the outer namespace's lo
HOST_TEST_ADDRESS = "198.51.100.7"  # likewise: the outer namespace's "LAN address"
RESOLVER_TEST_ADDRESS = "198.51.100.53"  # likewise, and its resolv.conf names it
# "Remote" addresses: routed to lo and rewritten (nat output) to SERVICES_TEST_ADDRESS, so
# they are not the outer namespace's own addresses yet reach services the test runs there.
REMOTE_TEST_NETWORK = "203.0.113.0/24"
SERVICES_TEST_ADDRESS = "198.51.100.9"


class ScenarioFailed(AssertionError):
    pass


def supervisor_uid() -> int:
    return pwd.getpwnam(SUPERVISOR_ACCOUNT).pw_uid


# The cgroups (one per v1 hierarchy, or one v2) delegated to the supervisor account for this
# test session (conftest makes them): a supervisor started in them finds its own cgroup
# delegated, as under systemd's Delegate=yes, and gives its kernels real memory and pids caps.
DELEGATED_CGROUPS: list[str] = []


def as_supervisor_account(cmd: list[str], *, delegated: bool = True) -> list[str]:
    """``cmd`` run as the non-root supervisor account; ``delegated``: from inside the
    session's delegated cgroups (without: rlimits only, the rootless shape with no cgroup)."""
    uid = supervisor_uid()
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    if delegated and DELEGATED_CGROUPS:
        join = " && ".join(f"echo $$ > {path}/cgroup.procs" for path in DELEGATED_CGROUPS)
        cmd = ["/bin/sh", "-c", join + ' && exec "$@"', "sh", *cmd]
    return cmd


def in_outer_netns(cmd: list[str]) -> list[str]:
    """``cmd`` run inside a network namespace made here: loopback and the test-owned
    169.254.1.1, 198.51.100.7, 198.51.100.9 and 198.51.100.53 only, 203.0.113.0/24 looped
    back to 198.51.100.9, no route out. Its private mount
    namespace gives it a resolv.conf naming 198.51.100.53 (slirp's DNS forwards there)."""
    addresses = " && ".join(f"ip addr add {a}/32 dev lo" for a in (METADATA_TEST_ADDRESS, HOST_TEST_ADDRESS, RESOLVER_TEST_ADDRESS,
                                                                    SERVICES_TEST_ADDRESS))
    addresses += (f" && ip route add {REMOTE_TEST_NETWORK} dev lo && nft 'add table ip test_remote' && nft 'add chain ip test_remote "
                  f"out {{ type nat hook output priority -100; }}' && nft 'add rule ip test_remote out ip daddr {REMOTE_TEST_NETWORK} "
                  f"dnat to {SERVICES_TEST_ADDRESS}'")
    resolv = (f'f=$(mktemp) && echo "nameserver {RESOLVER_TEST_ADDRESS}" > "$f" && chmod 644 "$f" '
              '&& mount --bind "$f" /etc/resolv.conf && rm "$f"')
    # Ports below 1024 for the non-root supervisor too (a per-namespace setting): the resolver.
    setup = f"ip link set lo up && {addresses} && {resolv} && echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start"
    return ["unshare", "--net", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", setup + ' && exec "$@"', "sh", *cmd]


def start_scenario(supervisor: str, name: str, *, outer_netns: bool = False, env: dict | None = None,
                   stderr=None, **args) -> subprocess.Popen:
    """Start ``scenarios.py NAME ARGS`` as its own supervisor process, stdout piped.

    ``outer_netns``: run the supervisor inside a network namespace made here, with only
    loopback and the test-owned 169.254.1.1 on it and no route out. Whatever the sandbox's
    egress does (and slirp4netns forwards anywhere when no ruleset is loaded), it cannot
    reach the machine's real network.
    """
    cmd = [sys.executable, str(SCENARIOS), name, json.dumps(args)]
    if supervisor == "non-root":
        cmd = as_supervisor_account(cmd)
    elif supervisor == "non-root-undelegated":
        cmd = as_supervisor_account(cmd, delegated=False)
    if outer_netns:
        cmd = in_outer_netns(cmd)
    full_env = {"PATH": SYSTEM_PATH, "TMPDIR": tempfile.gettempdir(), "LANG": "C.UTF-8", **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=full_env, cwd="/")


def run_scenario(supervisor: str, name: str, *, timeout: float = 120, **kw) -> dict:
    """Run a scenario to its end; return its JSON result plus ``supervisor_maxrss_kib``, the
    peak RSS of the supervisor process (ru_maxrss from wait4)."""
    with tempfile.TemporaryFile() as stderr:
        proc = start_scenario(supervisor, name, stderr=stderr, **kw)
        try:
            stdout = _read_all(proc, timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        _, status, rusage = os.wait4(proc.pid, 0)  # not Popen.wait: we want the rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    lines = stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ScenarioFailed(f"scenario {name} failed (rc {proc.returncode}):\n{stdout[-2000:]!r}\n{err[-4000:]}")
    return {**json.loads(lines[-1]), "supervisor_maxrss_kib": rusage.ru_maxrss}


def _read_all(proc: subprocess.Popen, timeout: float) -> bytes:
    chunks, deadline = [], time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    proc.stdout.close()
                    return b"".join(chunks)
                chunks.append(chunk)
    raise ScenarioFailed(f"scenario did not finish within {timeout} s")
