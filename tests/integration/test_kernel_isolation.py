"""One uid per kernel under a root supervisor: two kernels cannot reach each other's key,
sockets or processes even with ``filesystem: off`` (the host root visible), and the uid
leases behind it are exclusive, host-wide, die with their holder and are never handed out
while anything of the uid remains."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from sandbox_kernel.launch.uids import LEASE_DIR, UidLeaseError, lease_uid, processes_of
from sandbox_kernel.policy import DEFAULT_UID_RANGE

from .kernels import execute, running_kernel, write_kernelspec, write_operator_config

pytestmark = pytest.mark.integration


@pytest.fixture
def jupyter_off(tmp_path, monkeypatch):
    """The operator policy: the secure default with ``filesystem: off``."""
    data, config = tmp_path / "data", tmp_path / "config"
    write_kernelspec(data)
    write_operator_config(config, filesystem_mode="off")
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))


ATTACK = r"""
import errno, json, os, socket
def attempt(fn):
    try:
        return fn() or "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def connect(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    finally:
        s.close()
res = {
    "own_key": attempt(lambda: open(OWN_CONN).read() and None),
    "key": attempt(lambda: open(TARGET["conn"]).read() and None),
    "run_dir": attempt(lambda: os.listdir(TARGET["run_dir"]) and None),
    "shell_socket": attempt(lambda: connect(TARGET["shell"])),
    "cell_socket_dir": attempt(lambda: os.listdir(TARGET["socket_dir"]) and None),
    "kill": {str(pid): attempt(lambda pid=pid: os.kill(pid, 9)) for pid in TARGET["pids"]},
    "root_visible": os.path.isdir("/usr/lib") and os.path.isdir(os.path.dirname(TARGET["run_dir"])),
}
print(json.dumps(res))
"""


def _as_uid(uid: int, code: str) -> str:
    """Run Python ``code`` on the host as ``uid`` (no namespaces): what the uid alone allows."""
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).strip()


def test_two_kernels_cannot_reach_each_other_under_filesystem_off(jupyter_off):
    """Under one shared uid, kernel A read B's connection file (its HMAC key) and could run
    code inside B. Now: each its own uid, B's run dir the supervisor's, B's key group-read
    for B only, B's sockets in B's own 0700 dir."""
    from sandbox_kernel.launch.signals import command_pids

    with running_kernel() as (km_b, kc_b), running_kernel() as (km_a, kc_a):
        a, b = km_a.provisioner, km_b.provisioner
        a_priv = a.effective_sandbox["layers"]["privilege"]
        b_priv = b.effective_sandbox["layers"]["privilege"]
        assert a.effective_sandbox["requested"]["filesystem"]["mode"] == "off"
        assert a_priv["uid_per_kernel"] is b_priv["uid_per_kernel"] is True
        assert a_priv["uid"] != b_priv["uid"] and a_priv["gid"] != b_priv["gid"]
        for uid in (a_priv["uid"], b_priv["uid"]):
            assert DEFAULT_UID_RANGE[0] <= uid <= DEFAULT_UID_RANGE[1]
        info = km_b.get_connection_info()
        b_pids = [b.pid, *command_pids(b.sandbox.process)]
        target = {"conn": km_b.connection_file, "run_dir": b.sandbox.dirs.run_dir, "socket_dir": b.sandbox.dirs.socket_dir,
                  "shell": f"{info['ip']}-{info['shell_port']}", "pids": b_pids}
        code = f"TARGET = {target!r}\n" + ATTACK.replace("OWN_CONN", repr(km_a.connection_file))
        out, _ = execute(kc_a, code)
        res = json.loads(out.strip().splitlines()[-1])

        # The host root is visible (filesystem off) and A reads its own key: the reads work.
        assert res["root_visible"] is True and res["own_key"] == "ok"
        assert res["key"] == res["run_dir"] == res["shell_socket"] == res["cell_socket_dir"] == "EACCES", res
        # B's processes are not in A's pid namespace at all...
        assert all(v == "ESRCH" for v in res["kill"].values()), res["kill"]
        # ...and A's uid could neither signal nor trace them if it could name them.
        signal_b = _as_uid(a_priv["uid"], f"import os\ntry:\n os.kill({b.pid}, 0); print('signalled')\n"
                                          "except OSError as e: print(e.strerror)")
        assert signal_b == "Operation not permitted"
        trace_b = _as_uid(a_priv["uid"], "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                                         f"print('traced' if libc.ptrace(16, {b_pids[-1]}, 0, 0) == 0 "
                                         "else os.strerror(ctypes.get_errno()))")  # PTRACE_ATTACH
        assert trace_b == "Operation not permitted"
        # B is untouched and still answers.
        assert execute(kc_b, "print('b alive')")[0].strip() == "b alive"
        # B's cells run as B's uid, not A's.
        assert execute(kc_b, "%%sh\nid -u")[0].strip() == str(b_priv["uid"])
        b_uid, b_lease = b_priv["uid"], b.sandbox.lease.path
        assert os.path.exists(b_lease)
    # Released after cleanup: no process of B's uid, no lease file.
    assert not processes_of({b_uid}) and not os.path.exists(b_lease)


def test_run_dir_hands_the_kernel_only_what_it_must_open(jupyter_off):
    with running_kernel() as (km, kc):
        prov = km.provisioner
        gid = prov.effective_sandbox["layers"]["privilege"]["gid"]
        uid = prov.effective_sandbox["layers"]["privilege"]["uid"]

        def owner_mode(path):
            st = os.lstat(path)
            return st.st_uid, st.st_gid, st.st_mode & 0o777  # jupyter_client adds a sticky bit

        assert owner_mode(prov.sandbox.dirs.run_dir) == (0, gid, 0o710)
        assert owner_mode(km.connection_file) == (0, gid, 0o640)
        assert owner_mode(prov.sandbox.dirs.kernel_dir) == (uid, gid, 0o700)
        assert owner_mode(prov.sandbox.dirs.socket_dir) == (0, gid, 0o710)


# --------------------------------------------------------------------------- leases

def _test_uid() -> int:
    """A uid outside the default range (no kernel of a concurrent test leases it)."""
    return DEFAULT_UID_RANGE[1] + 1000 + random.randrange(100000)


HOLDER = r"""
import sys, time
from sandbox_kernel.launch.uids import lease_uid
lease = lease_uid(UID, UID)
print(lease.uid, flush=True)
time.sleep(600)
"""


def test_a_lease_is_exclusive_host_wide_and_dies_with_its_holder():
    uid = _test_uid()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.replace("UID", str(uid))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == str(uid)
        st = os.stat(LEASE_DIR)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
        with pytest.raises(UidLeaseError):  # another supervisor holds it
            lease_uid(uid, uid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    lease = lease_uid(uid, uid)  # the flock died with the holder
    assert lease.uid == lease.gid == uid
    lease.release()


def test_a_uid_is_not_handed_out_while_a_process_of_it_runs(tmp_path):
    uid = _test_uid()
    sleeper = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"])
    try:
        deadline = time.monotonic() + 10
        while not processes_of({uid}) and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(UidLeaseError):
            lease_uid(uid, uid)
    finally:
        sleeper.kill()
        sleeper.wait()
    lease_uid(uid, uid).release()


def test_a_uid_is_not_handed_out_while_a_file_of_it_is_in_tmp():
    """What a kernel under filesystem 'off' may leave in the host's /tmp."""
    uid = _test_uid()
    path = f"/tmp/sandbox-kernel-test-left-{uid}"
    with open(path, "w") as f:
        f.write("left behind")
    os.chown(path, uid, uid)
    try:
        with pytest.raises(UidLeaseError):
            lease_uid(uid, uid)
    finally:
        os.unlink(path)
    lease_uid(uid, uid).release()


def test_release_kills_what_still_runs_as_the_uid():
    uid = _test_uid()
    lease = lease_uid(uid, uid)
    # A leftover that escaped its sandbox's cleanup.
    code = "import time; print('up', flush=True); time.sleep(600)"
    leftover = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", code],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert leftover.stdout.readline().strip() == "up"
        lease.release()
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not os.path.exists(lease.path)
    finally:
        lease.release()
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        leftover.stdout.close()


def test_a_lease_dir_that_is_not_roots_alone_is_refused(tmp_path):
    """Whoever can write the lease dir can fake or steal leases: only root's 0700 dir will do."""
    uid, parent = _test_uid(), tmp_path / "leases"
    parent.mkdir(mode=0o755)
    with pytest.raises(UidLeaseError, match="mode 0700"):
        lease_uid(uid, uid, lease_dir=str(parent / "uids"))
    parent.chmod(0o700)
    os.chown(parent, 65534, 65534)
    with pytest.raises(UidLeaseError, match="owned by root"):
        lease_uid(uid, uid, lease_dir=str(parent / "uids"))


def test_stale_lease_files_are_swept_and_held_ones_kept(tmp_path):
    """A supervisor and its janitor both SIGKILLed leave an unlocked lease file: the next lease
    removes it. A held one (a live kernel's) stays."""
    parent = tmp_path / "leases"
    parent.mkdir(mode=0o700)
    lease_dir = parent / "uids"
    uid = _test_uid()
    held = lease_uid(uid, uid, lease_dir=str(lease_dir))
    stale = lease_dir / str(uid + 1)
    stale.write_text("")
    try:
        other = lease_uid(uid + 2, uid + 2, lease_dir=str(lease_dir))
        other.release()
        assert not stale.exists() and (lease_dir / str(uid)).exists()
    finally:
        held.release()
    assert os.listdir(lease_dir) == []
