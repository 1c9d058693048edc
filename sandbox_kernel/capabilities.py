"""What this host can really enforce, found by running each mechanism once per process.

A tool on PATH proves nothing (a masked /proc, a seccomp profile that forbids user
namespaces, a netns without CAP_NET_ADMIN all pass a PATH check and fail at spawn). So each
probe runs the real thing: bwrap with the planner's own flags as the sandbox uid, a seccomp
filter loaded by bwrap, prlimit, a namespace with an nft ruleset and slirp4netns attached (no
packet is sent), a cgroup created, limited and removed. Probes run in parallel; the result is
cached for the life of the process.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

CGROUP_PARENT = "sandbox-kernel"
PROBE_TIMEOUT = 10.0
TOOLS = ("bwrap", "setpriv", "prlimit", "unshare", "nsenter", "nft", "slirp4netns", "pasta")
APT_PACKAGE = {"bwrap": "bubblewrap", "nft": "nftables", "slirp4netns": "slirp4netns", "pasta": "passt",
               "setpriv": "util-linux", "prlimit": "util-linux", "unshare": "util-linux", "nsenter": "util-linux"}


@dataclass(frozen=True)
class Capability:
    ok: bool
    evidence: str = ""
    error: str | None = None
    hint: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "evidence": self.evidence, "error": self.error, "hint": self.hint, **self.detail}


def _missing(tool: str) -> Capability:
    return Capability(False, error=f"{tool} not found on PATH", hint=f"apt-get install {APT_PACKAGE.get(tool, tool)}")


@dataclass(frozen=True)
class HostCapabilities:
    platform: str
    euid: int
    egid: int
    user_name: str
    tools: dict[str, str | None]
    host_layout: dict[str, str | None]  # /bin etc.: "dir", a symlink target, or None
    bwrap: Capability
    setpriv: Capability
    prlimit: Capability
    seccomp: Capability
    egress: Capability
    cgroup_memory: Capability
    cgroup_pids: Capability
    landlock: Capability
    uid_range: Capability  # root: per-kernel uids can be leased; non-root: the one uid of all sandboxes
    interpreter: Capability
    # A kernel session's shared scratch (launch/session.py). Not a security layer: without it
    # each sandbox gets a private scratch and cells do not see the kernel's files.
    session: Capability = Capability(False, error="not probed")
    # The host's own addresses (its network namespace's local routes, loopback aside): what
    # slirp4netns would reach on a sandbox's behalf. A fact, re-read before each run.
    host_addresses: tuple[str, ...] = ()
    hidden_dirs: tuple[str, ...] = ()  # inside the bound system dirs, masked (see hidden_dirs())
    probe_seconds: float = 0.0

    def tool(self, name: str) -> str:
        return self.tools.get(name) or name

    def items(self) -> dict[str, Capability]:
        return {name: getattr(self, name) for name in (
            "bwrap", "setpriv", "prlimit", "seccomp", "egress", "cgroup_memory", "cgroup_pids",
            "landlock", "uid_range", "interpreter", "session")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform, "euid": self.euid, "user": self.user_name,
            "probe_seconds": round(self.probe_seconds, 3), "tools": self.tools,
            "capabilities": {k: v.to_dict() for k, v in self.items().items()},
        }


# --------------------------------------------------------------------------- helpers

def _run(argv: list[str], timeout: float = PROBE_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=timeout, **kw)


def _err(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or b"").decode(errors="replace").strip() or (proc.stdout or b"").decode(errors="replace").strip()
    return f"exit {proc.returncode}: {text[-400:]}" if text else f"exit {proc.returncode}"


def host_addresses() -> tuple[str, ...]:
    """The networks the host answers on as its own, as CIDR strings, loopback excluded: every
    LOCAL route of /proc/net/fib_trie (interface addresses, and whole prefixes routed
    ``local``) and every address of /proc/net/if_inet6. Read for the network namespace the
    supervisor runs in, which is where slirp4netns opens its connections."""
    import ipaddress

    found: list = []
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    address = None
    for line in lines:
        text = line.strip()
        if text.startswith("|-- "):
            address = text[4:]
        elif text.startswith("/") and address is not None and text.endswith(" host LOCAL"):
            found.append(ipaddress.ip_network(f"{address}{text.split()[0]}", strict=False))
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if fields:
                    found.append(ipaddress.IPv6Network((int(fields[0], 16), 128)))
    except (OSError, ValueError):
        pass
    out: list[str] = []
    for net in found:
        if net.network_address.is_loopback or str(net) in out:
            continue
        out.append(str(net))
    return tuple(out)


def python_runtime_paths() -> tuple[str, ...]:
    """Host paths the sandboxed Python needs read-only: the ``bin/`` and ``lib*/`` trees of its
    prefix (the venv) and of the base interpreter's prefix, the venv's ``pyvenv.cfg``, and this
    package if it is installed outside them (editable). Never a prefix's ``etc/`` or
    ``share/``: ``sys.prefix/etc/jupyter`` holds server config (tokens, passwords) on real
    servers. Paths inside the system dirs are bound with them (see ``hidden_dirs``)."""
    prefixes = []
    for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))):
        if p not in prefixes:
            prefixes.append(p)
    out: list[str] = []
    for prefix in prefixes:
        try:
            names = sorted(os.listdir(prefix))
        except OSError:
            continue
        for name in names:
            if name == "bin" or name.startswith("lib") or name == "pyvenv.cfg":
                out.append(os.path.join(prefix, name))
    pkg = os.path.dirname(os.path.abspath(__file__))
    if not any(pkg.startswith(p.rstrip("/") + "/") for p in out):
        out.append(pkg)
    return tuple(dict.fromkeys(out))


def hidden_dirs() -> tuple[str, ...]:
    """Config dirs of interpreter prefixes that live inside the system dirs the sandbox binds
    whole (``/usr/etc``, ``/usr/local/etc``): hidden behind an empty read-only tmpfs. Jupyter
    reads ``/usr/local/etc/jupyter`` and ``<prefix>/etc/jupyter``; npm keeps its global
    ``npmrc`` (registry tokens) in ``<prefix>/etc``."""
    from .planner.filesystem import SYSTEM_DIRS

    out = []
    for prefix in (sys.prefix, sys.base_prefix, "/usr", "/usr/local"):
        etc = os.path.join(prefix, "etc")
        inside = any(etc.startswith(d + "/") for d in SYSTEM_DIRS)
        if inside and os.path.isdir(etc) and not os.path.islink(etc) and etc not in out:
            out.append(etc)
    return tuple(out)


def _host_layout() -> dict[str, str | None]:
    from .planner.filesystem import SYSTEM_DIRS

    layout: dict[str, str | None] = {}
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            layout[path] = os.readlink(path)
        elif os.path.isdir(path):
            layout[path] = "dir"
        else:
            layout[path] = None
    return layout


def _uid_range(euid: int):
    """Root: lease one uid from the default range, as every kernel start will (the lease dir
    is usable, a uid is free). Returns (capability, lease or None); the caller releases the
    lease once the other probes have run as its uid."""
    if euid != 0:
        name = pwd.getpwuid(euid).pw_name if _has_pw(euid) else str(euid)
        return Capability(True, f"non-root supervisor: every sandbox runs as uid {euid} (no uid per kernel)",
                          detail={"uid": euid, "gid": os.getegid(), "name": name}), None
    from .launch.uids import LEASE_DIR, UidLeaseError, lease_uid
    from .policy import DEFAULT_UID_RANGE

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


# --------------------------------------------------------------------------- probes

def _probe_prlimit(tools) -> Capability:
    if not tools["prlimit"]:
        return _missing("prlimit")
    proc = _run([tools["prlimit"], "--cpu=60", "--nofile=64", "--fsize=1048576", "--as=1073741824", "--", "/bin/sh", "-c", "ulimit -n"])
    if proc.returncode != 0 or proc.stdout.strip() != b"64":
        return Capability(False, error=f"prlimit did not apply limits: {_err(proc)}", hint="apt-get install util-linux")
    return Capability(True, "prlimit --nofile=64 took effect (ulimit -n = 64)", detail={"path": tools["prlimit"]})


def _probe_setpriv(tools, euid, lease) -> Capability:
    if euid != 0:
        return Capability(True, "not needed: the supervisor is not root")
    if not tools["setpriv"]:
        return _missing("setpriv")
    uid = lease.uid if lease is not None else 1  # switching to uid 1 is as good a test
    proc = _run([tools["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "/usr/bin/id", "-u"])
    if proc.returncode != 0 or proc.stdout.strip() != str(uid).encode():
        return Capability(False, error=f"setpriv could not switch to uid {uid}: {_err(proc)}")
    return Capability(True, f"setpriv switched to uid {uid}", detail={"path": tools["setpriv"]})


def _probe_seccomp() -> Capability:
    try:
        from .launch.seccomp_bpf import compile_filter, known_syscalls
        from .planner.seccomp import SeccompPlan

        bpf = compile_filter(SeccompPlan())
    except Exception as e:  # library missing, or it refused the filter
        return Capability(False, error=f"could not build a seccomp filter: {e}", hint="apt-get install libseccomp2; pip install pyseccomp")
    return Capability(True, f"libseccomp built a {len(bpf) // 8}-instruction BPF filter",
                      detail={"bpf_bytes": len(bpf), "known_syscalls": len(known_syscalls())})


def _probe_landlock() -> Capability:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    except Exception as e:  # pragma: no cover
        return Capability(False, error=str(e))
    if abi < 0:
        return Capability(False, error=f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}",
                          hint="kernel built without CONFIG_SECURITY_LANDLOCK or 'landlock' not in lsm=")
    return Capability(True, f"Landlock ABI {abi} (available; not needed by the current planner)", detail={"abi": abi})


def _cgroup_v2_root() -> str | None:
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.isfile(os.path.join(root, "cgroup.controllers")):
            return root
    return None


def _probe_cgroup(controller: str, euid: int) -> Capability:
    """Create a cgroup, set a limit, read it back, remove it. v1 (a per-controller hierarchy)
    first, then a v2 subtree with the controller enabled."""
    v1 = f"/sys/fs/cgroup/{controller}"
    limit_file, value = {"memory": ("memory.limit_in_bytes", "67108864"), "pids": ("pids.max", "64")}[controller]
    if os.path.isfile(os.path.join(v1, "cgroup.procs")) and os.path.isfile(os.path.join(v1, "tasks")):
        root, version = os.path.join(v1, CGROUP_PARENT), 1
    else:
        base = _cgroup_v2_root()
        if base is None:
            return Capability(False, error="no cgroup filesystem mounted", hint="mount cgroup2 at /sys/fs/cgroup")
        with open(os.path.join(base, "cgroup.controllers")) as f:
            if controller not in f.read().split():
                return Capability(False, error=f"cgroup v2 at {base} does not offer the {controller} controller",
                                  hint="in a container: give it a delegated cgroup (Docker --cgroupns=private, systemd Delegate=yes)")
        root, version = os.path.join(base, CGROUP_PARENT), 2
        limit_file, value = {"memory": ("memory.max", "67108864"), "pids": ("pids.max", "64")}[controller]
    probe = os.path.join(root, f"probe-{os.getpid()}-{threading.get_ident()}")
    try:
        os.makedirs(root, exist_ok=True)
        if version == 2:
            with open(os.path.join(os.path.dirname(root), "cgroup.subtree_control"), "w") as f:
                f.write(f"+{controller}")
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{controller}")
        os.mkdir(probe)
        try:
            with open(os.path.join(probe, limit_file), "w") as f:
                f.write(value)
            with open(os.path.join(probe, limit_file)) as f:
                got = f.read().strip()
        finally:
            os.rmdir(probe)
        if got != value:
            return Capability(False, error=f"{limit_file} reads back {got!r}, wrote {value}")
    except OSError as e:
        hint = "run the supervisor as root, or delegate a cgroup subtree to its user" if euid != 0 else "check that the cgroup filesystem is writable (Docker: --cgroupns=private or --privileged)"
        return Capability(False, error=f"cannot create a {controller} cgroup under {root}: {e.strerror}", hint=hint)
    return Capability(True, f"created {probe}, set {limit_file}={value}, removed it",
                      detail={"version": version, "root": root})


def _probe_bwrap(tools, euid, uid_range: Capability, host_layout, seccomp: Capability) -> tuple[Capability, Capability]:
    """Run bwrap exactly as the planner builds it (secure default: deny network, scratch-plus-ro,
    seccomp, as a leased uid) around this interpreter. Returns (bwrap, interpreter)."""
    if not tools["bwrap"]:
        miss = _missing("bwrap")
        return miss, Capability(False, error="not checked: bwrap is unavailable")
    from .launch import run
    from .planner import RunSpec
    from .policy import policy_from_dict

    optimistic = HostCapabilities(
        platform=sys.platform, euid=euid, egid=os.getegid(), user_name="probe", tools=tools,
        host_layout=host_layout, bwrap=Capability(True), setpriv=Capability(True), prlimit=Capability(bool(tools["prlimit"])),
        seccomp=seccomp, egress=Capability(False, error="not probed here"),
        cgroup_memory=Capability(False, error="not probed here"), cgroup_pids=Capability(False, error="not probed here"),
        landlock=Capability(False), uid_range=uid_range, interpreter=Capability(True),
        hidden_dirs=hidden_dirs(),
    )
    probe_policy: dict = {"on_unavailable": "degrade", "resources": {"memory_bytes": None}}
    if euid == 0 and not uid_range.ok:
        probe_policy["privilege"] = {"uid": 65534}  # bwrap is still worth knowing about; nobody will do
    policy = policy_from_dict(probe_policy)

    def attempt(argv, runtime_paths=()):
        spec = RunSpec(argv=tuple(argv), staging_dir="", runtime="other", runtime_paths=runtime_paths)
        return run(policy, spec, caps=optimistic, capture_limit=4096)

    result = attempt(["/bin/sh", "-c", "test \"$(id -u)\" != 0 && grep -q '^CapEff:.0*$' /proc/self/status && echo sandboxed"])
    if result.exit_code != 0 or b"sandboxed" not in result.stdout:
        text = (result.stderr or result.stdout).decode(errors="replace").strip()[-400:]
        hint = ("if this is a container: allow user namespaces (Docker: --security-opt seccomp=unconfined "
                "--security-opt systempaths=unconfined; k8s: procMount Unmasked); on Ubuntu 24.04+: "
                "sysctl kernel.apparmor_restrict_unprivileged_userns=0")
        if "ermission denied" in text and "execvp" in text:
            hint = "a uid that owns nothing cannot execute the probe command"
        return Capability(False, error=f"bwrap failed with the planner's flags: {text or result.exit_code}", hint=hint), \
            Capability(False, error="not checked: bwrap failed")
    bwrap = Capability(True, f"bwrap ran as {'a leased uid' if euid == 0 else f'uid {euid}'} with user/pid/net/ipc/uts namespaces, fresh /proc, sized tmpfs, seccomp, caps dropped",
                       detail={"path": tools["bwrap"]})
    interp = attempt([sys.executable, "-c", "import sys, ipaddress; print('ok')"], runtime_paths=python_runtime_paths())
    if interp.exit_code != 0 or b"ok" not in interp.stdout:
        text = (interp.stderr or interp.stdout).decode(errors="replace").strip()[-400:]
        return bwrap, Capability(False, error=f"{sys.executable} does not run in the sandbox: {text}",
                                 hint="every kernel's uid must be able to read and execute the interpreter: build the venv from /usr/bin/python3 in a world-traversable directory and chmod -R a+rX it",
                                 detail={"path": sys.executable})
    return bwrap, Capability(True, f"{sys.executable} runs inside the sandbox", detail={"path": sys.executable, "runtime_paths": list(python_runtime_paths())})


def _probe_egress(tools, euid) -> Capability:
    missing = [t for t in ("unshare", "nsenter", "nft", "slirp4netns") if not tools[t]]
    if missing:
        return Capability(False, error=f"{', '.join(missing)} not found on PATH",
                          hint="apt-get install " + " ".join(sorted({APT_PACKAGE[t] for t in missing})))
    from .launch.egress import EgressError, bring_up
    from .planner.network import EgressPlan, build_ruleset
    from .policy import parse_allow_entry

    plan = EgressPlan(
        ruleset=build_ruleset([parse_allow_entry("192.0.2.1:9")], True, False), rootless=euid != 0,
        slirp_flags=["--enable-sandbox", "--enable-seccomp", "--disable-host-loopback", "--disable-dns"], dns=False,
        unshare=tools["unshare"], nsenter=tools["nsenter"], nft=tools["nft"], slirp4netns=tools["slirp4netns"],
    )
    try:
        handle = bring_up(plan)
    except EgressError as e:
        hint = ("slirp4netns needs /dev/net/tun (mode 0666 for a non-root supervisor: chmod 0666 /dev/net/tun); "
                "nft needs CONFIG_NF_TABLES; a non-root supervisor needs unprivileged user namespaces")
        return Capability(False, error=str(e), hint=hint)
    try:
        listing = _run(handle.join_prefix + [tools["nft"], "list", "table", "inet", "sandbox_egress"])
        if listing.returncode != 0 or b"reject" not in listing.stdout:
            return Capability(False, error=f"ruleset not in force after loading: {_err(listing)}")
        ms = {k: round(v * 1000, 1) for k, v in handle.timings.items()}
    finally:
        handle.close()
    return Capability(True, f"namespace + nft ruleset + slirp4netns up (ms: {ms}); no packet sent",
                      detail={"backend": "slirp4netns", "rootless": euid != 0})


def _probe_session(tools, euid) -> Capability:
    missing = [t for t in ("unshare", "nsenter") if not tools[t]]
    if missing:
        return Capability(False, error=f"{', '.join(missing)} not found on PATH", hint="apt-get install util-linux")
    import tempfile

    from .launch.session import SessionError, open_session

    scratch = tempfile.mkdtemp(prefix="sandbox-kernel-probe-")
    try:
        session = open_session(scratch, 1024 * 1024, (euid, os.getegid()), unshare=tools["unshare"], nsenter=tools["nsenter"])
    except SessionError as e:
        os.rmdir(scratch)
        return Capability(False, error=str(e), hint="mount namespaces (and user namespaces for a non-root supervisor) must be available")
    session.close()
    return Capability(True, "mounted a sized tmpfs in a private mount namespace and released it",
                      detail={"rootless": euid != 0})


# --------------------------------------------------------------------------- entry points

_cache: HostCapabilities | None = None
_lock = threading.Lock()


def probe() -> HostCapabilities:
    """Run every probe now (uncached)."""
    t0 = time.monotonic()
    euid, egid = os.geteuid(), os.getegid()
    # Tools are looked up on PATH as the operator set it: hiding a tool hides its layer.
    # Resolved to real paths: prlimit runs *inside* the sandbox, where only system dirs exist.
    tools = {t: os.path.realpath(p) if (p := shutil.which(t)) else None for t in TOOLS}
    layout = _host_layout()
    if sys.platform != "linux":
        no = Capability(False, error=f"OS-level isolation needs Linux; this host is {sys.platform}")
        return HostCapabilities(sys.platform, euid, egid, "?", tools, layout, no, no, no, no, no, no, no, no, no, no)
    uid_range, lease = _uid_range(euid)
    try:
        caps = _probe_all(tools, euid, egid, layout, uid_range, lease)
    finally:
        if lease is not None:
            lease.release()
    return replace(caps, probe_seconds=time.monotonic() - t0)


def _probe_all(tools, euid, egid, layout, uid_range: Capability, lease) -> HostCapabilities:
    with ThreadPoolExecutor(max_workers=6) as pool:
        f_prlimit = pool.submit(_probe_prlimit, tools)
        f_setpriv = pool.submit(_probe_setpriv, tools, euid, lease)
        f_egress = pool.submit(_probe_egress, tools, euid)
        f_mem = pool.submit(_probe_cgroup, "memory", euid)
        f_pids = pool.submit(_probe_cgroup, "pids", euid)
        f_session = pool.submit(_probe_session, tools, euid)
        seccomp = _probe_seccomp()
        f_bwrap = pool.submit(_probe_bwrap, tools, euid, uid_range, layout, seccomp)
        landlock = _probe_landlock()
        bwrap, interpreter = f_bwrap.result()
        return HostCapabilities(
            platform=sys.platform, euid=euid, egid=egid,
            user_name=uid_range.detail.get("name", str(euid)) if euid != 0 else "root",
            tools=tools, host_layout=layout, bwrap=bwrap, setpriv=f_setpriv.result(), prlimit=f_prlimit.result(),
            seccomp=seccomp, egress=f_egress.result(), cgroup_memory=f_mem.result(), cgroup_pids=f_pids.result(),
            landlock=landlock, uid_range=uid_range, interpreter=interpreter, session=f_session.result(),
            host_addresses=host_addresses(), hidden_dirs=hidden_dirs(),
        )


def detect() -> HostCapabilities:
    """The cached probe result for this process."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = probe()
        return _cache


def reset_cache() -> None:
    global _cache
    with _lock:
        _cache = None
