"""SandboxProvisioner with real kernels: KernelManager/KernelClient, jupyter server, papermill,
nbconvert. Every confinement claim is checked by code running inside the kernel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from sandbox_kernel.kernel_sandbox import KernelDirs
from sandbox_kernel.launch.signals import command_pids

from .kernels import (REPO, execute, leased_uid, path_without, reply_to, run_in_outer_netns, running_kernel,
                      write_kernelspec, write_operator_config)
from .probes import WRITE_PROBE
from .procs import alive, wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("jupyter_dirs")]


def _listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def accept_until_closed() -> None:
        while True:
            try:
                srv.accept()[0].close()
            except OSError:  # the test closed the listener
                return

    threading.Thread(target=accept_until_closed, daemon=True).start()
    return srv, srv.getsockname()[1]


PROBE = r"""
import errno, json, os, socket
""" + WRITE_PROBE + r"""
res = {"uid": os.getuid()}
status = open("/proc/self/status").read()
res["capeff"] = status.split("CapEff:")[1].split()[0]
res["nnp"] = status.split("NoNewPrivs:")[1].split()[0]
res["write_usr"] = write("/usr/lib/sbx-probe")
res["write_etc"] = write("/etc/sbx-probe")
res["write_scratch"] = write(os.path.join(os.getcwd(), "probe.txt"))
res["visible"] = {p: os.path.exists(p) for p in ("/home", "/root", "/srv", "/opt", "/var", "/run")}
res["secret"] = os.environ.get("SBX_TEST_SECRET")
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=5).close()
    res["net"] = "connected"
except OSError as e:
    res["net"] = type(e).__name__
pids = [p for p in os.listdir("/proc") if p.isdigit()]
res["proc"] = [open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[0].decode() for p in pids]
res["other"] = [os.path.exists(p) for p in OTHER]
print(json.dumps(res))
"""


def test_kernel_runs_confined(monkeypatch):
    monkeypatch.setenv("SBX_TEST_SECRET", "hunter2")
    srv, port = _listener()
    with running_kernel() as (km_b, _), running_kernel() as (km, kc):
        other = [km_b.provisioner.sandbox.dirs.run_dir, km_b.connection_file]
        assert all(os.path.exists(p) for p in other)  # the other kernel's files exist on the host
        out, reply = execute(kc, PROBE.replace("PORT", str(port)).replace("OTHER", repr(other)))
        res = json.loads(out)
        trusted = km.provisioner.effective_sandbox
    srv.close()
    assert res["uid"] != 0 and res["capeff"] == "0000000000000000" and res["nnp"] == "1"
    assert res["write_usr"] in ("EROFS", "EACCES") and res["write_etc"] in ("EROFS", "EACCES")
    assert res["write_scratch"] == "ok"
    assert not any(res["visible"].values()), res["visible"]
    assert res["secret"] is None
    assert res["net"] == "ConnectionRefusedError"  # the sandbox's own loopback, not the host's
    # Only the sandbox's own processes: bwrap's pid 1 and the kernel (and nothing of the host).
    assert len(res["proc"]) <= 3 and not any("pytest" in c for c in res["proc"]), res["proc"]
    assert res["other"] == [False, False]
    assert all(trusted["enforced"].values()) and trusted["scope"] == "kernel" and not trusted["downgrades"]
    # Plain clients see the report too, labelled as coming from the (untrusted) kernel.
    assert reply["metadata"]["sandbox"]["reported_by"] == "kernel"
    assert reply["metadata"]["sandbox"]["enforced"] == trusted["enforced"]


def test_interrupt_restart_and_shutdown_leave_nothing():
    with running_kernel() as (km, kc):
        msg_id = kc.execute("while True: pass", stop_on_error=False)  # the next cell must not be aborted
        time.sleep(0.5)
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=20)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert execute(kc, "print(6 * 7)")[0].strip() == "42"
        first = [km.provisioner.pid, *command_pids(km.provisioner.sandbox.process)]
        run_dir = km.provisioner.sandbox.dirs.run_dir
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        assert wait_gone(first) == []
        assert km.provisioner.sandbox.dirs.run_dir == run_dir and os.path.isdir(run_dir)  # survives restart
        assert execute(kc, "print('again')")[0].strip() == "again"
        second = [km.provisioner.pid, *command_pids(km.provisioner.sandbox.process)]
    assert wait_gone(second) == []
    assert not os.path.exists(run_dir)


SUPERVISOR = r"""
import json, sys, time
from jupyter_client.manager import KernelManager
from sandbox_kernel.launch.signals import command_pids
km = KernelManager(kernel_name="python3-sandboxed")
km.start_kernel()
kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
print(json.dumps({"pids": [km.provisioner.pid, *command_pids(km.provisioner.sandbox.process)],
                  "run_dir": km.provisioner.sandbox.dirs.run_dir}), flush=True)
time.sleep(600)
"""


def test_supervisor_crash_leaves_no_kernel():
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        info = json.loads(proc.stdout.readline())
        pids = info["pids"]
        assert len(pids) == 2 and all(alive(p) for p in pids) and os.path.isdir(info["run_dir"])
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
    assert wait_gone(pids) == []
    deadline = time.monotonic() + 10  # the run dir holds the connection file's HMAC key
    while os.path.exists(info["run_dir"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(info["run_dir"])


FAIL_CLOSED = r"""
import json, os, glob, tempfile
from jupyter_client.manager import KernelManager
from sandbox_kernel.report import SandboxUnavailable
before = set(glob.glob(os.path.join(tempfile.gettempdir(), "sandbox-kernel-*")))
km = KernelManager(kernel_name="python3-sandboxed")
try:
    km.start_kernel()
    result = {"started": True, "downgrades": km.provisioner.effective_sandbox["downgrades"]}
    kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
    out = []
    kc.execute_interactive("print('ran')", timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
    result["output"] = "".join(out)
    kc.stop_channels(); km.shutdown_kernel(now=True)
except SandboxUnavailable as e:
    result = {"started": False, "error": str(e), "layers": [d.layer for d in e.downgrades]}
after = set(glob.glob(os.path.join(tempfile.gettempdir(), "sandbox-kernel-*")))
# This supervisor's prepared /etc stays while it lives (the autouse check sees it go after).
from sandbox_kernel.launch.etc import CACHE
result["leftover"] = sorted(after - before - {CACHE.root})
print(json.dumps(result))
"""


def test_fail_closed_without_bwrap_starts_nothing(tmp_path):
    env = {**os.environ, "PATH": path_without(tmp_path / "bin", "bwrap")}
    out = subprocess.run([sys.executable, "-c", FAIL_CLOSED],
                         env=env, capture_output=True, text=True, cwd=str(REPO), timeout=120)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["started"] is False, res
    assert res["error"].startswith("sandbox unavailable") and "bwrap" in res["error"]
    assert {"filesystem", "network", "seccomp"} <= set(res["layers"])
    assert res["leftover"] == [] and "output" not in res


def test_degrade_starts_and_reports(tmp_path, jupyter_dirs):
    _, config = jupyter_dirs
    write_operator_config(config, on_unavailable="degrade", network_mode="allowlist", network_allow=["10.0.2.2:9"])
    env = {**os.environ, "PATH": path_without(tmp_path / "bin", "slirp4netns")}
    out = subprocess.run([sys.executable, "-c", FAIL_CLOSED],
                         env=env, capture_output=True, text=True, cwd=str(REPO), timeout=120)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["started"] is True, (res, out.stderr[-2000:])
    assert [d["layer"] for d in res["downgrades"]] == ["network"]
    assert "slirp4netns" in res["downgrades"][0]["reason"] and "unreachable" in res["downgrades"][0]["reason"]
    assert res["output"].strip() == "ran" and res["leftover"] == []


ALLOWLIST = r"""
import json, socket, threading
from jupyter_client.manager import KernelManager
def serve():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
    def loop():
        while True:
            c, _ = s.accept(); c.sendall(b"hi"); c.close()
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1]
allowed, other = serve(), serve()
import os, pathlib
cfg = pathlib.Path(os.environ["JUPYTER_CONFIG_DIR"]) / "jupyter_sandbox_kernel_config.py"
cfg.write_text(f"c.SandboxPolicyConfig.network_mode = 'allowlist'\nc.SandboxPolicyConfig.network_allow = ['10.0.2.2:{allowed}']\n")
km = KernelManager(kernel_name="python3-sandboxed"); km.start_kernel()
kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
code = f'''
import socket, json
res = {{}}
for name, port in (("allowed", {allowed}), ("other", {other})):
    try:
        s = socket.create_connection(("10.0.2.2", port), timeout=5); res[name] = s.recv(2).decode(); s.close()
    except OSError as e:
        res[name] = type(e).__name__
print(json.dumps(res))
'''
out = []
kc.execute_interactive(code, timeout=30,
                       output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
report = km.provisioner.effective_sandbox["layers"]["network"]
kc.stop_channels(); km.shutdown_kernel(now=True)
print(json.dumps({"kernel": json.loads("".join(out)), "network": report}))
"""


def test_allowlist_kernel_reaches_only_allowed_destination(jupyter_dirs):
    res = run_in_outer_netns(ALLOWLIST, env={k: os.environ[k] for k in ("JUPYTER_PATH", "JUPYTER_CONFIG_DIR")})
    assert res["kernel"] == {"allowed": "hi", "other": "ConnectionRefusedError"}
    assert res["network"]["state"] == "enforced" and res["network"]["mechanism"] == "nft+slirp4netns"


# ----------------------------------------------------------------- real clients


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_server_rest_and_websocket(tmp_path):
    import websocket

    port, token = _free_port(), uuid.uuid4().hex
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
         "--no-browser", "--allow-root", f"--ServerApp.root_dir={tmp_path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(tmp_path),
    )
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{base}/api/status", headers=headers), timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(f"{base}/api/kernels", data=json.dumps({"name": "python3-sandboxed"}).encode(),
                                     headers={**headers, "Content-Type": "application/json"}, method="POST")
        kernel = json.load(urllib.request.urlopen(req, timeout=60))
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}", timeout=60)

        def send(msg_type: str, content: dict) -> str:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": msg_type, "username": "t", "session": "s", "version": "5.3"},
                                "parent_header": {}, "metadata": {}, "channel": "shell", "content": content}))
            return msg_id

        # iopub is a ZMQ subscription: what the kernel publishes before it is live is dropped
        # (on a loaded machine, the execute's whole output). An iopub message answering a
        # kernel_info request proves it is live.
        iopub_live, deadline = False, time.monotonic() + 60
        while not iopub_live and time.monotonic() < deadline:
            info_id = send("kernel_info_request", {})
            ws.settimeout(2)
            try:
                while not iopub_live:
                    msg = json.loads(ws.recv())
                    iopub_live = msg["channel"] == "iopub" and msg.get("parent_header", {}).get("msg_id") == info_id
            except websocket.WebSocketTimeoutException:
                continue
        assert iopub_live, "iopub never answered a kernel_info request"
        ws.settimeout(60)
        code = (f"import os, socket\nprint(os.getuid())\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5); "
                "print('reached')\nexcept OSError as e:\n    print(type(e).__name__)")
        msg_id = send("execute_request", {"code": code, "silent": False, "store_history": False,
                                          "user_expressions": {}, "allow_stdin": False})
        # The reply (shell) may overtake the output (iopub): read until iopub says idle too.
        text, reply, idle = "", None, False
        while reply is None or not idle:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                text += msg["content"]["text"]
            elif msg["msg_type"] == "execute_reply":
                reply = msg
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        ws.close()
        assert len(text.split()) == 2, (text, reply["content"])
        uid, net = text.split()
        assert int(uid) != 0
        assert net == "ConnectionRefusedError"  # the server itself is unreachable from the kernel
        assert reply["metadata"]["sandbox"]["enforced"]["network"] is True
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", headers=headers, method="DELETE"), timeout=30)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # The provisioner's log lines are in the server's log: what started, with which mechanisms.
    log = server.stderr.read().decode(errors="replace")
    assert "sandboxed kernel started" in log and "filesystem=bwrap" in log, log[-3000:]
    assert "sandboxed kernel pid" in log and "ended" in log, log[-3000:]


def _probe_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nprint('uid', os.getuid())\n"
        "try:\n    open('/etc/sbx-probe', 'w')\nexcept OSError as e:\n    print('etc', type(e).__name__)\n"
        "print('home', os.path.exists('/home'))")]
    nbformat.write(nb, path)


def _cell_text(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for o in nb.cells[0].outputs)


def test_papermill_runs_notebook_confined(tmp_path):
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    _probe_notebook(src)
    subprocess.run([sys.executable, "-m", "papermill", str(src), str(out), "-k", "python3-sandboxed"],
                   check=True, capture_output=True, timeout=180)
    text = _cell_text(out)
    assert leased_uid(text) and "etc OSError" in text and "home False" in text


def test_nbconvert_execute_runs_notebook_confined(tmp_path):
    src = tmp_path / "in.ipynb"
    _probe_notebook(src)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                    "--ExecutePreprocessor.kernel_name=python3-sandboxed", "--output", "out", str(src)],
                   check=True, capture_output=True, timeout=180)
    text = _cell_text(tmp_path / "out.ipynb")
    assert leased_uid(text) and "etc OSError" in text and "home False" in text


def test_signal_mode_interrupt_reaches_the_kernel_inside_the_namespace(jupyter_dirs):
    """bwrap forwards no signal: with interrupt_mode "signal" the provisioner delivers SIGINT to
    the kernel process inside the pid namespace itself (killpg would kill the whole sandbox)."""
    data, _ = jupyter_dirs
    spec_dir = write_kernelspec(data, name="python3-sandboxed-signal")
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["interrupt_mode"] = "signal"
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with running_kernel("python3-sandboxed-signal") as (km, kc):
        msg_id = kc.execute("import time\nwhile True:\n    time.sleep(0.01)", stop_on_error=False)
        time.sleep(0.5)
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert execute(kc, "print('alive')")[0].strip() == "alive"


def test_supervisor_never_follows_links_the_kernel_plants(tmp_path):
    """The run dir is the supervisor's: the kernel cannot put a symlink where its connection
    file is (a restart chmods that path), nor anything into the cell socket's directory. What
    it can write, its own kernel/ dir, the supervisor never touches but to remove it."""
    victim = tmp_path / "victim"
    victim.write_text("host file")
    os.chmod(victim, 0o600)
    with running_kernel() as (km, kc):
        socket_dir = km.provisioner.sandbox.dirs.socket_dir
        out, _ = execute(kc, f"""
            import os
            def plant(path):
                try:
                    os.symlink({str(victim)!r}, path)
                    return 'planted'
                except OSError as e:
                    return e.strerror
            print('run dir', plant({km.connection_file!r} + '.new'))
            print('own dir', plant({km.provisioner.sandbox.dirs.kernel_dir!r} + '/link'))
            try:
                open(os.path.join({socket_dir!r}, 'planted'), 'w')
                print('wrote into the socket dir')
            except OSError as e:
                print('socket dir', e.strerror)
            """)
        assert out.strip().splitlines() == ["run dir Permission denied", "own dir planted",
                                            "socket dir Read-only file system"]
        try:
            km.restart_kernel(now=True)  # the kernel may not come back: its connection file is gone
        except Exception:
            pass
    st = victim.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600) and victim.read_text() == "host file"


@pytest.mark.parametrize("config, field", [
    ({"netwrok": {"mode": "deny"}}, "kernel_provisioner.config.netwrok"),
    ({"network": {"mode": "unrestricted"}}, "network.mode"),
    ({"resources": {"memory_bytes": "4G"}}, "resources.memory_bytes"),
    # Read with the one policy-file reader: a PolicyError naming the key, not a raw OSError.
    ({"kernel_policy_file": "/nonexistent/policy.toml"}, "kernel_provisioner.config.kernel_policy_file"),
])
def test_kernelspec_config_can_only_tighten_and_typos_fail(jupyter_dirs, config, field):
    from jupyter_client.manager import KernelManager

    from sandbox_kernel.policy import PolicyError

    data, _ = jupyter_dirs
    write_kernelspec(data, name="python3-sandboxed-bad", **config)
    km = KernelManager(kernel_name="python3-sandboxed-bad")
    with pytest.raises(PolicyError) as err:
        km.start_kernel()
    assert field in err.value.fields
    assert km.provisioner is None or km.provisioner.sandbox.dirs is None  # nothing left behind


def test_kernelspec_config_tightens(jupyter_dirs):
    data, _ = jupyter_dirs
    write_kernelspec(data, name="python3-sandboxed-tight", resources={"memory_bytes": "128M"}, filesystem={"mode": "scratch-only"})
    with running_kernel("python3-sandboxed-tight") as (km, kc):
        requested = km.provisioner.effective_sandbox["requested"]
        out, _ = execute(kc, "import os\nprint(os.path.exists('/etc/ssl'))")
    assert requested["resources"]["memory_bytes"] == 128 * 2**20 and requested["filesystem"]["mode"] == "scratch-only"
    assert out.strip() == "False"  # scratch-only: no curated /etc beyond the loader's files


RAW_FLOOD = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
from tests.integration.kernels import execute, running_kernel
with running_kernel() as (km, kc):
    # ipykernel forwards fd 1 to the cell; it keeps the process's real stdout as this copy:
    code = "import os, sys\nfd = sys.stdout._original_stdstream_copy\nfor _ in range(20):\n    os.write(fd, b'x' * 2**20)\nprint('flooded')"
    out, reply = execute(kc, code, timeout=120)
print(json.dumps({"cell": out.strip(), "status": reply["content"]["status"]}))
"""


def test_kernel_raw_output_flood_is_capped_in_the_supervisor_log(jupyter_dirs):
    _, config = jupyter_dirs
    write_operator_config(config, max_output_bytes="1M")
    proc = subprocess.run([sys.executable, "-c", RAW_FLOOD], capture_output=True, text=True, cwd=str(REPO),
                          timeout=180, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"cell": "flooded", "status": "ok"}
    assert "[sandbox-kernel: kernel process output beyond 1048576 bytes dropped]" in proc.stderr
    assert proc.stderr.count("x") <= 2**20 + 10_000  # 20 MiB written, at most the cap reached the log


def test_session_scratch_is_capped_at_scratch_bytes(jupyter_dirs):
    """The kernel session's shared /scratch is a tmpfs of scratch_bytes: a larger write fails
    with ENOSPC in the kernel and in its cells alike, and /tmp has the same cap."""
    _, config = jupyter_dirs
    write_operator_config(config, scratch_bytes="8M")
    with running_kernel() as (km, kc):
        code = """
            import errno
            import os
            def fill(path):
                try:
                    with open(path, 'wb') as f:
                        f.write(b'x' * 16 * 2**20)
                    return 'wrote 16M'
                except OSError as e:
                    return errno.errorcode[e.errno]
                finally:
                    os.remove(path)  # a full /tmp would also stop IPython's history database
            print('fills:', fill('/scratch/big'), fill('/tmp/big'))
            """
        out, _ = execute(kc, code)
        cell_out, _ = execute(kc, "%%sh\nhead -c 16777216 /dev/zero > /scratch/big 2>/dev/null || echo ENOSPC\nrm -f /scratch/big")
        detail = km.provisioner.effective_sandbox["layers"]["filesystem"]
    # IPython's history thread may say on stdout that it met the full disk meanwhile: our line only.
    assert [line.split()[1:] for line in out.splitlines() if line.startswith("fills:")] == [["ENOSPC", "ENOSPC"]], out
    assert cell_out.strip() == "ENOSPC"
    assert detail["scratch_bytes"] == 8 * 2**20 and "shared" in detail["scratch"]


def test_doctor_plans_the_kernel_that_starts(jupyter_dirs, tmp_path, monkeypatch):
    """``doctor --json`` for the default kernelspec reports the very sandbox a started kernel
    gets: the same layers, mechanisms, binds, environment keys and notes. Only what is made per
    kernel differs: the names of its run and cell-socket dirs, its leased uid, and the files of
    its working dir (none here: started from the host root, whose files are never exposed)."""
    _, config = jupyter_dirs
    monkeypatch.chdir("/")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config)}
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "doctor", "--json"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    planned = json.loads(proc.stdout)["report"]
    with running_kernel() as (km, _):
        started = km.provisioner.effective_sandbox
        dirs = km.provisioner.sandbox.dirs
        per_kernel = {dirs.run_dir: "<run dir>", dirs.socket_dir: "<socket dir>"}
    placeholder = KernelDirs.placeholder()
    per_doctor = {placeholder.run_dir: "<run dir>", placeholder.socket_dir: "<socket dir>"}
    assert started["scope"] == planned["scope"] == "kernel"
    assert normalised(started, per_kernel) == normalised(planned, per_doctor)


def normalised(report: dict, names: dict[str, str]) -> dict:
    """The report with per-kernel dir names replaced and the leased uid left out."""
    text = json.dumps(report, sort_keys=True)
    for path, name in names.items():
        text = text.replace(path, name)
    out = json.loads(text)
    privilege = out["layers"]["privilege"]
    for key in ("uid", "gid"):
        if privilege.get("uid_per_kernel"):
            privilege[key] = "<leased>"
    return out


def test_a_clients_cwd_at_the_host_root_exposes_nothing(jupyter_dirs):
    """A client passing cwd="/" (a server rooted at /, a notebook at its top) gets no inputs
    listed from the host root and no results dir there; the report says so."""
    from jupyter_client.manager import KernelManager

    from sandbox_kernel.kernelspec import KERNEL_NAME

    km = KernelManager(kernel_name=KERNEL_NAME)
    km.start_kernel(cwd="/")
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out, _ = execute(kc, "import os\nprint(sorted(os.listdir('/scratch')))")
        report = km.provisioner.effective_sandbox
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert out.strip() == "[]", out
    assert "inputs" not in report["layers"]["filesystem"]
    assert any("working directory / (the host root) not exposed" in n["note"] for n in report["notes"]), report["notes"]
