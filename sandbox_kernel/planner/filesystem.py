"""Filesystem layer: the mount table of the sandbox, as bwrap arguments.

``scratch-plus-ro``: system paths read-only, a curated ``/etc`` (host files programs need plus
staged passwd/group/hosts/resolv.conf, two directories the launch shell prepares: see
``ETC_PLACEHOLDER``), the caller's runtime paths and the policy's
``read_only_paths`` read-only, a private sized tmpfs for ``/tmp`` and for the scratch dir.
Never ``/home``, ``/root``, ``/srv``, ``/opt``, ``/var``, ``/run`` of the host.
``scratch-only``: the same minus ``read_only_paths`` and the curated host ``/etc`` files.
``off``: the host root is bound read-write (nothing confined; still a fresh /proc and /dev).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..host import SYSTEM_DIRS, HostCapabilities
from ..policy import FilesystemPolicy
from ..report import Downgrade, LayerState, Note

# Host /etc entries a program may legitimately need. Everything else in /etc (shadow, ssh
# keys, mounted secrets, the host's passwd) stays invisible.
CURATED_ETC = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "ssl",  # commands, TLS trust
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d",  # the dynamic loader
    "localtime", "protocols", "services", "mime.types", "os-release",  # libc and stdlib lookups
    "python3.11", "fonts",  # Debian's sitecustomize, fontconfig (plots)
)
# Always needed to run anything at all (dynamic loader cache).
MINIMAL_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives")
# Written by the launch shell from plan data: never the host's copies.
STAGED_ETC = ("passwd", "group", "hosts", "hostname", "nsswitch.conf", "resolv.conf")
# Stand in the argv for host paths the launch shell fills in (launch/etc.py), both read-only
# and reused by the supervisor's runs: the prepared /etc, holding copies of the curated host
# entries (``FilesystemDecision.etc_entries``), an empty STAGED_SUBDIR and, for each staged
# file, a symlink into it; and the staged files (``FilesystemDecision.staged``), bound on
# STAGED_SUBDIR. Two binds instead of one per entry and file save a third of bwrap's own
# start-up; the shared copy holds nothing of a run's own, so a new uid costs no new copy.
ETC_PLACEHOLDER = "{prepared-etc}"
STAGED_PLACEHOLDER = "{staged-etc}"
STAGED_SUBDIR = "sandbox-kernel"
# The sandbox's own layout: a read-only path equal to one of these (or to "/"), or inside
# /etc, /proc or /dev, would replace it (host /etc over the staged passwd, shadow exposed...).
RESERVED_DIRS = ("/etc", "/proc", "/dev", "/tmp")


def _reserved(path: str) -> bool:
    return path == "/" or path in RESERVED_DIRS or path.startswith(("/etc/", "/proc/", "/dev/"))


@dataclass
class FilesystemDecision:
    mounts: list[str]
    cwd: str
    layer: LayerState
    staged: dict[str, str] = field(default_factory=dict)
    etc_entries: tuple[str, ...] = ()  # host /etc entries copied into the prepared /etc
    downgrades: list[Downgrade] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def _system_mounts(caps: HostCapabilities) -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        kind = caps.host_layout.get(path)
        if kind is None:
            continue
        if kind == "dir":
            args += ["--ro-bind", path, path]
        else:  # a merged-/usr symlink such as /bin -> usr/bin
            args += ["--symlink", kind, path]
    return args


def _staged_files(user: str, uid: int, gid: int, home: str, nameserver: str | None) -> dict[str, str]:
    return {
        "passwd": (
            "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
            + (f"{user}:x:{uid}:{gid}:sandboxed code:{home}:/bin/sh\n" if uid != 0 else "")
            + "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": "root:x:0:\n" + (f"{user}:x:{gid}:\n" if gid != 0 else "") + "nogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n",
        "hostname": "sandbox\n",
        "nsswitch.conf": ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\n"
                          "protocols: files\n"),
        "resolv.conf": f"nameserver {nameserver}\n" if nameserver else "# name resolution is not available in this sandbox\n",
    }


MAX_INPUT_BINDS = 1000
MAX_REPORTED_INPUTS = 100


def _input_binds(inputs: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The caller's (host path, path under scratch) pairs that cannot escape the scratch dir:
    relative, no '.'/'..' or empty components, no NUL; sorted so parents come first."""
    ok = []
    for source, dest in inputs:
        parts = dest.rstrip("/").split("/")
        if (source.startswith("/") and "\0" not in source and "\0" not in dest
                and all(p not in ("", ".", "..") for p in parts)):
            ok.append((source, dest))
    return sorted(ok, key=lambda b: b[1])[:MAX_INPUT_BINDS]


def plan_filesystem(
    fs: FilesystemPolicy,
    caps: HostCapabilities,
    *,
    scratch_dir: str,
    runtime_paths: tuple[str, ...],
    rw_paths: tuple[str, ...],
    cwd: str | None,
    run_as: tuple[str, int, int],
    nameserver: str | None,
    inputs: tuple[tuple[str, str], ...] = (),
    scratch_source: str | None = None,
    inputs_in_scratch: bool = False,
) -> FilesystemDecision:
    if not caps.bwrap.ok:
        reason = f"filesystem confinement needs bwrap, which is unavailable: {caps.bwrap.error}"
        state = "not-requested" if fs.mode == "off" else "degraded"
        downgrades = [] if fs.mode == "off" else [Downgrade("filesystem", reason + "; host filesystem fully visible")]
        return FilesystemDecision([], cwd or "/", LayerState(state, None), downgrades=downgrades)

    if fs.mode == "off":
        mounts = ["--bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        mounts += [a for p in rw_paths for a in ("--bind", p, p)]
        return FilesystemDecision(mounts, cwd or "/tmp", LayerState("not-requested", "host root (read-write)"))

    user, uid, gid = run_as
    staged = _staged_files(user, uid, gid, scratch_dir, nameserver)
    etc = CURATED_ETC if fs.mode == "scratch-plus-ro" else MINIMAL_ETC
    mounts = _system_mounts(caps)
    # Config dirs inside the system dirs (/usr/local/etc/jupyter, npm's /usr/etc/npmrc): empty.
    mounts += [a for d in caps.hidden_dirs for a in ("--tmpfs", d, "--remount-ro", d)]
    mounts += ["--ro-bind", ETC_PLACEHOLDER, "/etc", "--ro-bind", STAGED_PLACEHOLDER, f"/etc/{STAGED_SUBDIR}"]
    # /tmp first: runtime, rw and scratch paths may live under /tmp and must land on top of it.
    size = [] if fs.scratch_bytes is None else ["--size", str(fs.scratch_bytes)]
    mounts += size + ["--tmpfs", "/tmp"]
    ro_paths = tuple(runtime_paths) + (tuple(fs.read_only_paths) if fs.mode == "scratch-plus-ro" else ())
    refused = [p for p in ro_paths if _reserved(p)]
    ro_paths = tuple(p for p in ro_paths if p not in refused)
    for p in ro_paths:
        if not any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS):
            mounts += ["--ro-bind-try", p, p]
    # bwrap's /dev is a writable tmpfs sized at half the RAM: make it read-only (the device
    # nodes still work) and give POSIX shared memory its own tmpfs within the scratch budget.
    mounts += ["--proc", "/proc", "--dev", "/dev", *size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    # The scratch (with a session's inputs below it) after the rest: bwrap reads the whole
    # mount table again for each mount it makes, and the session's inputs double its size.
    if scratch_source:
        # A kernel session's scratch: a sized tmpfs the supervisor mounted in the session's
        # mount namespace, shared by the kernel and its cells, gone with the session.
        mounts += ["--bind", scratch_source, scratch_dir]
    else:
        mounts += size + ["--tmpfs", scratch_dir, "--chmod", "0700", scratch_dir]
    # The inputs (a notebook's siblings, data paths; listed by the caller) appear read-only
    # inside scratch, so relative reads work while every write lands in scratch.
    binds = _input_binds(inputs) if fs.mode == "scratch-plus-ro" else []
    premounted = bool(scratch_source and inputs_in_scratch)  # the session's scratch carries them
    for source, dest in [] if premounted else binds:
        mounts += ["--ro-bind-try", source, f"{scratch_dir}/{dest.rstrip('/')}"]
    for p in rw_paths:
        mounts += ["--bind", p, p]
    # bwrap's own root is a writable tmpfs: once every mount point exists, make it read-only
    # so nothing can be created next to the binds (/etc/x, /newdir).
    mounts += ["--remount-ro", "/", "--chdir", cwd or scratch_dir]
    detail = {
        "mode": fs.mode,
        "read_only": [d for d in SYSTEM_DIRS if caps.host_layout.get(d)]
        + ["/etc (curated)" if fs.mode == "scratch-plus-ro" else "/etc (minimal)"] + list(ro_paths),
        "hidden": list(caps.hidden_dirs),
        "writable": [scratch_dir, "/tmp"] + list(rw_paths),
        "scratch_bytes": fs.scratch_bytes,
        "scratch": "tmpfs of the kernel session (shared with its cells)" if scratch_source else "private tmpfs",
        "proc": "private (own pid namespace)",
    }
    if binds:
        exposed = [dest for _, dest in binds]
        detail["inputs"] = {"entries": len(exposed), "exposed": exposed[:MAX_REPORTED_INPUTS],
                            "access": "read-only, inside scratch",
                            "mounted": "once per kernel session" if premounted else "per run"}
    notes = [Note("filesystem", f"read-only path {p} not bound: it would replace the sandbox's own / /etc /proc /dev or /tmp "
                                "(host /etc holds shadow and secrets)") for p in refused]
    return FilesystemDecision(mounts, cwd or scratch_dir, LayerState("enforced", "bwrap", detail), staged=staged,
                             etc_entries=etc, notes=notes)
