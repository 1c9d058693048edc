"""Scenarios for the launch-shell integration tests, run as a *separate supervisor process*.

    python scenarios.py NAME '{"arg": ...}'

The test runs this file as root or as the non-root ``sandbox-supervisor`` account, sometimes
inside an outer network namespace it made (see ``supervisors.start_scenario``). Each scenario plans
and launches real sandboxes through ``sandbox_kernel.launch`` and prints one JSON object on its
last stdout line. The code that runs *inside* a sandbox is the ``*_CODE`` text next to each
scenario: it measures the effect from inside and prints its own JSON line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

from sandbox_kernel.capabilities import detect
from sandbox_kernel.launch import communicate, prepare, start
from sandbox_kernel.launch import run as launch_run
from sandbox_kernel.planner import RunSpec
from sandbox_kernel.policy import policy_from_dict
from sandbox_kernel.report import SandboxUnavailable
from sandbox_kernel.runtime import cell_argv, cell_runtime_paths, python_runtime_paths

if __package__:  # imported by a test module
    from .probes import WRITE_PROBE
    from .procs import processes_with
else:  # run as a supervisor process: python scenarios.py NAME ARGS
    from probes import WRITE_PROBE
    from procs import processes_with


def run(policy, spec, **kw):
    """One sandboxed run on this host as probed (launch.run with ``detect()``)."""
    return launch_run(policy, spec, caps=detect(), **kw)


def spec(code: str) -> RunSpec:
    return RunSpec(argv=(sys.executable, "-c", code), runtime="python",
                   runtime_paths=python_runtime_paths())


def sandboxed(policy: dict, code: str, **kw):
    """Run Python ``code`` in a sandbox planned from ``policy`` (secure default + ``policy``)."""
    return run(policy_from_dict(policy), spec(code), **kw)


def outcome(result) -> dict:
    """The run's outcome plus the last JSON line the sandboxed code printed (if any)."""
    out = result.stdout.decode(errors="replace")
    inside = None
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            try:
                inside = json.loads(line)
                break
            except ValueError:
                pass
    return {
        **result.report["outcome"], "inside": inside, "stdout_tail": out[-300:], "stdout_len": len(result.stdout),
        "stderr_tail": result.stderr.decode(errors="replace")[-1500:],
        "resources": result.report["layers"]["resources"]["controls"], "notes": result.report["notes"],
    }


class Background:
    """A sandbox running in a thread; ``wait_for(text)`` blocks until it printed ``text``.
    Its stdin stays open until :meth:`finish`, so the sandboxed code can block on it."""

    def __init__(self, policy: dict, code: str, identity: tuple[int, int] | None = None):
        """``identity``: run as this (already leased) uid, as a kernel's cells do, without a lease of its own."""
        self.proc = start(prepare(policy_from_dict(policy), replace(spec(code), identity=identity), detect()), stdin=subprocess.PIPE)
        self.seen = bytearray()
        self.cond = threading.Condition()
        self.result = None
        self.thread = threading.Thread(target=self._communicate)
        self.thread.start()

    def _communicate(self):
        def on_output(_name, data):
            with self.cond:
                self.seen += data
                self.cond.notify_all()
        try:
            self.result = communicate(self.proc, timeout=60, on_output=on_output)
        finally:
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, text: bytes, timeout: float = 30) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: text in self.seen or self.result is not None, timeout) and text in self.seen

    def finish(self):
        self.proc.popen.stdin.close()
        self.thread.join()
        return self.result


# --------------------------------------------------------------------------- filesystem

FILESYSTEM_CODE = r"""
import errno, json, os, sys
""" + WRITE_PROBE + r"""
res = {"cwd": os.getcwd(), "home": os.environ.get("HOME")}
res["writes"] = {p: write(p) for p in (
    "/etc/sbx-probe", "/usr/sbx-probe", "/sbx-probe", "/dev/sbx-probe",
    # The interpreter's own dirs, bound from the host (its prefix itself is only a mount point,
    # which lands in the private /tmp when the checkout lives under /tmp).
    os.path.join(sys.prefix, "bin", "sbx-probe"), os.path.join(sys.prefix, "lib", "sbx-probe"),
    "/scratch/probe", "/tmp/probe", os.path.join(os.environ["HOME"], "home-probe"))}
res["visible"] = {p: os.path.exists(p) for p in ("/home", "/root", "/srv", "/opt", "/var", "/run", "/etc/shadow", SECRET)}
# The interpreter's prefix: bin/ and lib*/ only (etc/jupyter holds server tokens on real servers).
res["prefix"] = sorted(os.listdir(sys.prefix))
res["config_dirs"] = {d: os.listdir(d) for d in ("/usr/etc", "/usr/local/etc") if os.path.isdir(d)}
TLS = "/etc/ssl/certs/ca-certificates.crt"
res["etc"] = {"listing": sorted(os.listdir("/etc")), "passwd": open("/etc/passwd").read(),
              "read_only": bool(os.statvfs("/etc").f_flag & os.ST_RDONLY),
              "tls_trust": open(TLS).readline().strip() if os.path.exists(TLS) else None,
              "ld_so_cache": os.path.getsize("/etc/ld.so.cache") if os.path.exists("/etc/ld.so.cache") else None}
print(json.dumps(res))
"""


def filesystem(secret: str) -> dict:
    from sandbox_kernel.launch.etc import CACHE

    res = outcome(sandboxed({}, FILESYSTEM_CODE.replace("SECRET", repr(secret))))
    # Where this supervisor keeps its prepared /etc dirs, and that they are there while it lives.
    return {**res, "prepared_etc": CACHE.root, "prepared_etc_exists": bool(CACHE.root) and os.path.isdir(CACHE.root)}


PRIVATE_WRITER_CODE = r"""
import sys
for d in ("/scratch", "/tmp"):
    open(f"{d}/from-run-a", "w").write("a")
print("written", flush=True)
sys.stdin.read()  # hold the sandbox open until the scenario is done with run B
"""
PRIVATE_READER_CODE = r"""
import json, os
print(json.dumps({"scratch": os.listdir("/scratch"), "tmp": os.listdir("/tmp"),
                  "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}))
"""


def private_scratch() -> dict:
    """Two runs at the same time: B must not see what A wrote, nor A's processes."""
    a = Background({}, PRIVATE_WRITER_CODE)
    a_wrote = a.wait_for(b"written")
    b = sandboxed({}, PRIVATE_READER_CODE)
    a_result = a.finish()
    return {"a_wrote": a_wrote, "a": outcome(a_result), "b": outcome(b)}


# --------------------------------------------------------------------------- network

class Server:
    """A TCP server on (host, 0) that greets and counts every connection it accepts."""

    def __init__(self, host: str):
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            conn, _ = self.sock.accept()
            self.accepted += 1
            conn.sendall(b"hello")
            conn.close()


NETWORK_CODE = r"""
import json, socket, subprocess, time
def attempt(host, port):
    s = socket.socket()
    s.settimeout(10)
    t0 = time.monotonic()
    try:
        s.connect((host, port))
        return {"result": "connected", "data": s.recv(5).decode()}
    except OSError as e:
        return {"result": type(e).__name__, "errno": e.errno, "timeout": isinstance(e, socket.timeout),
                "seconds": round(time.monotonic() - t0, 3)}
    finally:
        s.close()
res = {name: attempt(*target) for name, target in TARGETS.items()}
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
res["who"] = {"uid": status["Uid"].split()[0], "CapEff": status["CapEff"].strip(), "Seccomp": status["Seccomp"].strip()}
if FLUSH:
    nft = subprocess.run(["/usr/sbin/nft", "flush", "ruleset"], capture_output=True, text=True)
    res["flush"] = {"rc": nft.returncode, "stderr": nft.stderr.strip()}
    res["after_flush"] = {name: attempt(*target) for name, target in TARGETS.items()}
print(json.dumps(res))
"""


def network(mode: str) -> dict:
    """Servers on the outer namespace's loopback (reached from the sandbox only through slirp's
    10.0.2.2) and on the test-owned 169.254.1.1 (a "metadata" address)."""
    allowed, other, metadata = Server("127.0.0.1"), Server("127.0.0.1"), Server("169.254.1.1")
    # Control: the servers are up and reachable from the supervisor's namespace.
    for s, host in ((allowed, "127.0.0.1"), (other, "127.0.0.1"), (metadata, "169.254.1.1")):
        socket.create_connection((host, s.port), timeout=5).recv(5)
    time.sleep(0.1)
    before = {"allowed": allowed.accepted, "other": other.accepted, "metadata": metadata.accepted}
    targets = {"allowed": ("10.0.2.2", allowed.port), "other_port": ("10.0.2.2", other.port),
               "metadata": ("169.254.1.1", metadata.port)}
    if mode == "deny":
        policy = {"network": {"mode": "deny"}}
        targets["own_loopback"] = ("127.0.0.1", allowed.port)
    else:
        policy = {"network": {"mode": "allowlist", "allow": [f"10.0.2.2:{allowed.port}", f"169.254.1.1:{metadata.port}"]}}
    code = NETWORK_CODE.replace("TARGETS", repr(targets)).replace("FLUSH", repr(mode != "deny"))
    result = outcome(sandboxed(policy, code))
    time.sleep(0.1)
    result["accepted_from_sandbox"] = {
        "allowed": allowed.accepted - before["allowed"], "other": other.accepted - before["other"],
        "metadata": metadata.accepted - before["metadata"]}
    return result


class Resolver:
    """A UDP "resolver" on (host, 53) that answers every datagram and counts them."""

    def __init__(self, host: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 53))
        self.answered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            data, peer = self.sock.recvfrom(512)
            self.answered += 1
            self.sock.sendto(b"answer:" + data, peer)


EDGES_CODE = r"""
import json, socket, time
def tcp(host, port):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((host, port))
        return {"result": "connected", "data": s.recv(5).decode()}
    except OSError as e:
        return {"result": type(e).__name__, "errno": e.errno, "timeout": isinstance(e, socket.timeout)}
    finally:
        s.close()
def dns(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(b"query", (host, 53))
        return {"result": "answered", "data": s.recv(64).decode()}
    except OSError as e:
        return {"result": type(e).__name__, "errno": e.errno}
    finally:
        s.close()
print(json.dumps({"host": tcp(*HOST), "dns": dns("10.0.2.3"),
                  "resolv_conf": open("/etc/resolv.conf").read()}))
"""


def network_edges(allow: list | None, host_address: str, resolver_address: str) -> dict:
    """A service on the outer namespace's own "LAN address" and a resolver that slirp's DNS
    forwards to (both test-owned). ``allow`` None: unrestricted; else an allowlist, in which
    ``HOST_PORT`` stands for the service's port."""
    service, resolver = Server(host_address), Resolver(resolver_address)
    socket.create_connection((host_address, service.port), timeout=5).recv(5)  # control: it is up
    time.sleep(0.1)
    before = service.accepted
    if allow is None:
        policy = {"network": {"mode": "unrestricted"}}
    else:
        policy = {"network": {"mode": "allowlist", "allow": [a.replace("HOST_PORT", str(service.port)) for a in allow]}}
    code = EDGES_CODE.replace("HOST", repr((host_address, service.port)))
    run_result = sandboxed(policy, code)
    result = outcome(run_result)
    time.sleep(0.1)
    result["accepted_from_sandbox"] = service.accepted - before
    result["resolver_answered"] = resolver.answered
    result["network_layer"] = run_result.report["layers"]["network"]
    return result


# --------------------------------------------------------------------------- resources

FORK_BOMB_CODE = r"""
import os, sys, time
if os.fork() == 0:
    while True:  # every process forks forever: a real fork bomb
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
peak, end = 0, time.monotonic() + 1.5
while time.monotonic() < end:
    peak = max(peak, sum(1 for p in os.listdir("/proc") if p.isdigit()))
    time.sleep(0.05)
print(f"holding {peak}", flush=True)
sys.stdin.read()
"""
SIBLING_FORKS_CODE = r"""
import json, os, time
pids = []
for _ in range(CHILDREN):
    pid = os.fork()
    if pid == 0:
        time.sleep(0.5)
        os._exit(0)
    pids.append(pid)
print(json.dumps({"forked": len(pids), "exits": [os.waitpid(p, 0)[1] for p in pids]}))
"""


def fork_bomb(max_processes: int, sibling_children: int, memory_bytes="512M") -> dict:
    """A fork bomb in run A; while it holds its limit, run B (same sandbox uid) forks."""
    bomb = Background({"resources": {"max_processes": max_processes, "memory_bytes": memory_bytes}}, FORK_BOMB_CODE)
    holding = bomb.wait_for(b"holding")
    sibling = sandboxed({"resources": {"memory_bytes": memory_bytes}}, SIBLING_FORKS_CODE.replace("CHILDREN", str(sibling_children)))
    bomb_result = bomb.finish()
    peak = int(bytes(bomb.seen).split(b"holding ")[1].split()[0]) if holding else None
    return {"holding": holding, "peak": peak, "bomb": outcome(bomb_result), "sibling": outcome(sibling)}


MEMORY_BOMB_CODE = r"""
import sys
chunks = []
try:
    for i in range(64):
        chunks.append(b"\1" * (32 << 20))  # written, so every page is really used
        print(f"allocated {(i + 1) * 32} MiB", flush=True)
except MemoryError:
    print("MemoryError", flush=True)
    sys.exit(3)
print("survived", flush=True)
"""


def memory_bomb(memory_bytes: int, on_unavailable: str = "fail") -> dict:
    try:
        return outcome(sandboxed({"on_unavailable": on_unavailable, "resources": {"memory_bytes": memory_bytes}}, MEMORY_BOMB_CODE))
    except SandboxUnavailable as e:
        return {"refused": str(e)}


NODE_HEAP_CODE = r"""
const kept = [];
for (let i = 1; i <= 4096; i++) {
  kept.push(new Array(1 << 17).fill(i));  // 1 MiB of heap (2^17 small integers, 8 bytes each)
  if (i % 16 === 0) console.log("allocated " + i);
}
console.log("survived");
"""


def node_heap(memory_bytes: int, on_unavailable: str) -> dict:
    """A %%node-style run (node reading its program from stdin) that grows its JavaScript heap."""
    node = cell_argv("node")
    spec = RunSpec(argv=node, runtime="node", runtime_paths=cell_runtime_paths("node", node))
    policy = policy_from_dict({"on_unavailable": on_unavailable, "resources": {"memory_bytes": memory_bytes}})
    try:
        result = run(policy, spec, stdin_data=NODE_HEAP_CODE.encode())
    except SandboxUnavailable as e:
        return {"refused": True, "downgrades": [d.to_dict() for d in e.downgrades]}
    return {"refused": False, **outcome(result), "downgrades": result.report["downgrades"]}


RLIMIT_CODE = {
    "cpu": "while True: pass",
    "nofile": r"""
import errno, json
files = []
try:
    while len(files) < 4096:
        files.append(open("/dev/null"))
    print(json.dumps({"opened": len(files)}))
except OSError as e:
    print(json.dumps({"opened": len(files), "error": errno.errorcode[e.errno]}))
""",
    "fsize": r"""
import errno, json
written = 0
try:
    with open("/scratch/big", "wb", buffering=0) as f:
        for _ in range(LIMIT // 65536 * 2):
            written += f.write(b"x" * 65536)
    print(json.dumps({"written": written}))
except OSError as e:
    print(json.dumps({"written": written, "error": errno.errorcode[e.errno]}))
""",
}


def rlimit(kind: str, limit: int) -> dict:
    field = {"cpu": "cpu_seconds", "nofile": "max_open_files", "fsize": "max_file_size_bytes"}[kind]
    code = RLIMIT_CODE[kind].replace("LIMIT", str(limit))
    return outcome(sandboxed({"resources": {field: limit}}, code, timeout=60))


# --------------------------------------------------------------------------- output and time

FLOOD_CODE = r"""
import os
block = b"x" * (1 << 20)
for _ in range(1024):  # 1 GiB
    os.write(1, block)
print("flood finished")
"""


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def output_flood(max_output_bytes: int) -> dict:
    before = peak_rss_kib()
    result = outcome(sandboxed({"resources": {"max_output_bytes": max_output_bytes}}, FLOOD_CODE))
    return {**result, "hwm_before_kib": before, "hwm_after_kib": peak_rss_kib()}


TIMEOUT_CODE = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited across fork and exec
if os.fork() == 0:
    os.setsid()  # the grandchild leaves our session and process group
    subprocess.Popen(["/bin/sh", "-c", "sleep 600; : TOKEN"])
    os._exit(0)
print("grandchild started", flush=True)
time.sleep(600)
"""


def timeout(via: str, token: str) -> dict:
    code = TIMEOUT_CODE.replace("TOKEN", token)
    if via == "policy":
        result = sandboxed({"resources": {"wall_seconds": 1}}, code)
    else:
        result = sandboxed({}, code, timeout=1)
    # After run() returns nothing of the run may be left: not even the re-parented grandchild.
    time.sleep(0.2)
    return {**outcome(result), "left": processes_with(token)}


UNREAD_INPUT_CODE = r"""
import subprocess
subprocess.Popen(["/bin/sh", "-c", "while :; do :; done; : TOKEN"])
while True:  # never reads its stdin
    pass
"""


def unread_input(token: str) -> dict:
    """A run fed more input than a pipe holds (1 MiB), which it never reads, still meets its
    deadline: feeding the input must not block the supervisor."""
    code = UNREAD_INPUT_CODE.replace("TOKEN", token)
    result = sandboxed({"resources": {"wall_seconds": 1}}, code, stdin_data=b"#" * (1 << 20))
    time.sleep(0.2)
    return {**outcome(result), "left": processes_with(token)}


def killed_supervisor() -> None:
    """Start a run with every moving part (egress, cgroups as root, a staging dir), say so,
    then wait to be SIGKILLed by the test: nothing of the run may survive its supervisor."""
    policy = {"network": {"mode": "allowlist", "allow": ["10.0.2.2:9"]}}
    first = Background(policy, "import time; print('running', flush=True); time.sleep(600)")
    first.wait_for(b"running")
    # And one without a lease of its own, as a kernel's cell runs: the supervisor's one
    # janitor removes the cgroups of both, and the first's lease file while holding its lock.
    cell = Background({}, "import time; print('running', flush=True); time.sleep(600)", identity=first.proc.plan.run_as[1:])
    cell.wait_for(b"running")
    assert cell.proc.cgroups is not None and cell.proc.janitor_key is not None
    print("running", flush=True)
    time.sleep(600)


# --------------------------------------------------------------------------- identity

IDENTITY_CODE = r"""
import ctypes, json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
libc = ctypes.CDLL(None, use_errno=True)
def syscall(fn, *args):
    rc = fn(*args)
    return "ok" if rc != -1 else os.strerror(ctypes.get_errno())
SOCKETS = {  # (family, type, protocol)
    "AF_VSOCK": (40, 1, 0), "AF_PACKET": (17, 3, 0), "AF_BLUETOOTH": (31, 1, 0),
    "AF_VSOCK_high_bits": ((1 << 32) | 40, 1, 0),  # the kernel reads an int: 40 again
    "AF_UNIX": (1, 1, 0), "AF_INET": (2, 1, 0), "AF_INET6": (10, 1, 0),
    "AF_NETLINK_ROUTE": (16, 3, 0), "AF_NETLINK_NETFILTER": (16, 3, 12), "AF_NETLINK_AUDIT": (16, 3, 9),
}
def sock(family, kind, protocol):
    fd = libc.syscall(41, ctypes.c_long(family), kind, protocol)  # raw: all 64 bits reach the filter
    if fd == -1:
        return os.strerror(ctypes.get_errno())
    os.close(fd)
    return "ok"
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    **{k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")},
    "env": dict(os.environ),
    "ptrace": syscall(libc.ptrace, 0, 0, None, None),          # PTRACE_TRACEME: allowed without seccomp
    "personality": syscall(libc.personality, 0xFFFFFFFF),     # query only: harmless without seccomp
    "unshare": syscall(libc.unshare, 0x10000000),             # CLONE_NEWUSER
    # Each of these succeeds for an unconfined process on this host (see the test).
    "io_uring_setup": syscall(libc.syscall, 425, 8, ctypes.byref(ctypes.create_string_buffer(120))),
    "modify_ldt": syscall(libc.syscall, 154, 0, ctypes.byref(ctypes.create_string_buffer(16)), 16),
    "lsm_list_modules": syscall(libc.syscall, 461, ctypes.byref(ctypes.create_string_buffer(256)),
                                ctypes.byref(ctypes.c_uint32(256)), 0),  # newer than libseccomp's table
    "sockets": {name: sock(*args) for name, args in SOCKETS.items()},
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}))
"""


def identity() -> dict:
    return outcome(sandboxed({}, IDENTITY_CODE))


# --------------------------------------------------------------------------- fail closed

def fail_closed(marker: str) -> dict:
    """PATH hides a tool (set by the test): the live probe fails and the run must be refused."""
    spec = RunSpec(argv=("/bin/sh", "-c", f"echo ran > {marker}"))
    try:
        result = run(policy_from_dict({}), spec)
    except SandboxUnavailable as e:
        return {"refused": True, "error": str(e), "layers": sorted({d.layer for d in e.downgrades})}
    return {"refused": False, "exit_code": result.exit_code}


if __name__ == "__main__":
    name, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if name not in globals():  # scenarios kept in their own module
        import name_scenarios
        globals()[name] = getattr(name_scenarios, name)
    result = globals()[name](**args)
    # The supervisor's own peak RSS (VmHWM). Not the parent's ru_maxrss from wait4: that keeps
    # the high-water mark of the process it was forked from (pytest) across exec.
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({**result, "supervisor_peak_rss_kib": peak_kib}))
