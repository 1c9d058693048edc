"""Hand-built hosts and plan helpers for the planner's unit tests (no probing, no subprocess,
no file I/O): a fully capable root host, variants made with ``dataclasses.replace``, and
readers of a plan's argv and report."""

from __future__ import annotations

from dataclasses import replace

from sandbox_kernel.host import TOOLS as TOOL_NAMES
from sandbox_kernel.host import Capability, HostCapabilities
from sandbox_kernel.planner import RunSpec, plan
from sandbox_kernel.policy import deep_merge, policy_from_dict

# --------------------------------------------------------------------------- host factory

TOOLS = {t: f"/usr/bin/{t}" for t in TOOL_NAMES}
BWRAP, SETPRIV, PRLIMIT = TOOLS["bwrap"], TOOLS["setpriv"], TOOLS["prlimit"]
MERGED_USR = {"/usr": "dir", "/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib",
              "/lib32": None, "/lib64": "usr/lib64", "/libx32": None}
SPLIT_USR = {"/usr": "dir", "/bin": "dir", "/sbin": "dir", "/lib": "dir",
             "/lib32": None, "/lib64": "dir", "/libx32": None}
SANDBOX_UID = 1879050000  # the uid the launch shell leased for the run (RunSpec.identity)
CMD = ("python3", "-c", "print(1)")


def _missing(what: str) -> Capability:
    return Capability(False, error=f"{what} not found on PATH", hint="apt-get install it")


def _cgroup(controller: str) -> Capability:
    return Capability(True, "created and removed a probe cgroup",
                      detail={"version": 1, "root": f"/sys/fs/cgroup/{controller}/sandbox-kernel"})


ROOT_HOST = HostCapabilities(
    platform="linux", euid=0, egid=0, user_name="root", tools=dict(TOOLS), host_layout=dict(MERGED_USR),
    bwrap=Capability(True, "bwrap ran"), setpriv=Capability(True, "setpriv switched"),
    prlimit=Capability(True, "prlimit took effect"), seccomp=Capability(True, "filter built"),
    egress=Capability(True, "namespace + nft + slirp4netns up", detail={"backend": "slirp4netns", "rootless": False}),
    resolver=Capability(True, "dnsmasq answered NXDOMAIN for an unlisted name"),
    cgroup_memory=_cgroup("memory"), cgroup_pids=_cgroup("pids"), landlock=Capability(True, "ABI 7"),
    uid_range=Capability(True, "leased a uid", detail={"lease_dir": "/run/sandbox-kernel/uids", "probe_uid": 1879050001}),
    interpreter=Capability(True, "python runs"),
)

_DARWIN_NO = Capability(False, error="OS-level isolation needs Linux; this host is darwin")
VARIANTS: dict[str, dict] = {
    "non-root": dict(euid=1000, egid=1000, user_name="alice", setpriv=Capability(True, "not needed: the supervisor is not root"),
                     uid_range=Capability(True, "non-root supervisor", detail={"name": "alice", "uid": 1000, "gid": 1000})),
    "no-bwrap": dict(bwrap=_missing("bwrap")),
    "no-setpriv": dict(setpriv=_missing("setpriv")),
    "no-prlimit": dict(prlimit=_missing("prlimit")),
    "no-seccomp": dict(seccomp=Capability(False, error="could not build a seccomp filter: libseccomp missing")),
    "no-egress": dict(egress=_missing("slirp4netns")),
    "no-resolver": dict(resolver=_missing("dnsmasq")),
    "no-cgroups": dict(cgroup_memory=Capability(False, error="no cgroup filesystem mounted"),
                       cgroup_pids=Capability(False, error="no cgroup filesystem mounted")),
    "no-uid-leases": dict(uid_range=Capability(False, error="cannot lease a uid: /run/sandbox-kernel must be owned by root")),
    "split-usr": dict(host_layout=dict(SPLIT_USR)),
    "darwin": dict(platform="darwin", euid=501, egid=20, user_name="alice",
                   host_layout={d: None for d in MERGED_USR} | {"/usr": "dir", "/bin": "dir", "/sbin": "dir"},
                   bwrap=_DARWIN_NO, setpriv=_DARWIN_NO, prlimit=_DARWIN_NO, seccomp=_DARWIN_NO, egress=_DARWIN_NO,
                   cgroup_memory=_DARWIN_NO, cgroup_pids=_DARWIN_NO, landlock=_DARWIN_NO, interpreter=_DARWIN_NO,
                   uid_range=Capability(True, detail={"name": "alice", "uid": 501, "gid": 20})),
}


def host(*variants: str) -> HostCapabilities:
    """The fully capable root host with the named variants applied, left to right."""
    caps = ROOT_HOST
    for name in variants:
        caps = replace(caps, **VARIANTS[name])
    return caps


def policy(overrides: dict | None = None, **top):
    """The secure default with overrides; ``degrade`` unless asked otherwise, so a plan with
    downgrades can be inspected. ``top`` keys are top-level (on_unavailable=..., enabled=...)."""
    data = deep_merge({"on_unavailable": "degrade"}, overrides or {})
    return policy_from_dict({**data, **top})


def spec(**kw) -> RunSpec:
    kw.setdefault("argv", CMD)
    kw.setdefault("runtime", "python")
    kw.setdefault("identity", (SANDBOX_UID, SANDBOX_UID))
    return RunSpec(**kw)


def run_plan(caps=None, pol=None, **spec_kw):
    return plan(pol or policy(), caps or host(), spec(**spec_kw))


# --------------------------------------------------------------------------- argv / report helpers

def bwrap_args(p) -> list[str]:
    """bwrap's own arguments: between the bwrap binary and its ``--`` separator."""
    argv = list(p.argv)
    start = argv.index(BWRAP)
    return argv[start + 1: argv.index("--", start)]


def after_bwrap(p) -> list[str]:
    argv = list(p.argv)
    start = argv.index(BWRAP)
    return argv[argv.index("--", start) + 1:]


def triples(args: list[str], flag: str) -> list[tuple[str, str]]:
    """(a, b) for each ``flag a b`` in args."""
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def has_seq(seq, sub) -> bool:
    seq, sub = list(seq), list(sub)
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def index_of_seq(seq, sub) -> int:
    seq, sub = list(seq), list(sub)
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    raise AssertionError(f"{sub} not in argv")


def downgrades(p, layer: str | None = None) -> list[str]:
    return [d.reason for d in p.report.downgrades if layer is None or d.layer == layer]


def notes(p, layer: str | None = None) -> list[str]:
    return [n.note for n in p.report.notes if layer is None or n.layer == layer]


def layer(p, name: str) -> dict:
    return p.report.to_dict()["layers"][name]


def enforced(p, name: str) -> bool:
    return p.report.to_dict()["enforced"][name]


def prlimit_args(p) -> list[str]:
    """The prlimit prelude's flags (between prlimit and its ``--``), or [] when absent."""
    argv = list(p.argv)
    if PRLIMIT not in argv:
        return []
    i = argv.index(PRLIMIT)
    return argv[i + 1: argv.index("--", i)]


def ruleset_lines(p) -> list[str]:
    return [line.strip() for line in p.egress.ruleset.splitlines() if line.strip()]
