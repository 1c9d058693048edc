"""%%sh, %%node, %%sandbox through a real sandboxed kernel: each cell in its own sandbox,
planned by the supervisor, never looser than the kernel."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid

import pytest
from jupyter_client.manager import KernelManager

from sandbox_kernel import cells
from sandbox_kernel.kernelspec import KERNEL_NAME

from .kernels import execute, reply_to, run_in_outer_netns, running_kernel, write_kernelspec, write_operator_config
from .procs import cmdline, processes_with

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("jupyter_dirs")]


@pytest.fixture
def kernel(jupyter_dirs):
    # One kernel per test: the leak check after each test must find nothing of it running.
    with running_kernel() as (km, kc):
        yield km, kc


def cell(kc, code, timeout=60):
    out, reply = execute(kc, code, timeout=timeout)
    return out, reply["content"]["status"], reply["metadata"].get("sandbox", {})


def test_each_magic_runs_in_its_own_sandbox(kernel):
    km, kc = kernel
    kernel_pid_view, _, _ = cell(kc, "import os; print(os.getpid())")
    # Cells run as the kernel's own uid (leased for it by the root supervisor).
    uid = km.provisioner.effective_sandbox["layers"]["privilege"]["uid"]
    assert cell(kc, "import os; print(os.getuid())")[0].strip() == str(uid)
    for code, expect in (("%%sh\necho shell $(id -u)", f"shell {uid}"),
                         ("%%node\nconsole.log('node', process.getuid())", f"node {uid}"),
                         ("%%sandbox\nimport os\nprint('python', os.getuid(), os.getpid())", f"python {uid}")):
        out, status, report = cell(kc, code)
        assert status == "ok" and expect in out, (code, out)
        assert report["scope"] == "cell" and report["reported_by"] == "kernel"
        assert report["kernel"]["scope"] == "kernel"  # the cell report nests the kernel's
        assert all(report["enforced"].values()) and report["outcome"]["exit_code"] == 0
    # A fresh pid namespace per cell: the cell does not see the kernel's processes.
    out, _, _ = cell(kc, "%%sh\nls /proc | grep -c '^[0-9]'")
    assert int(out.strip()) <= 4


def test_a_cold_cell_is_unprivileged_whoever_switched_its_uid(kernel):
    """A cell joins the kernel's session through nsenter; under a root supervisor that nsenter
    also switches the uid (no setpriv). Inside: the kernel's uid and gid and nothing else (a
    supplementary group left behind would show as the overflow gid), no capabilities at all,
    no_new_privs; and the report names what switched it."""
    km, kc = kernel
    privilege = km.provisioner.effective_sandbox["layers"]["privilege"]
    uid, gid = privilege["uid"], privilege["gid"]
    out, status, report = cell(kc, "%%sh --memory 96M\n"  # options no warm sandbox has: a cold launch
                                   "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status")
    assert status == "ok", out
    fields = {k: v.split() for k, v in (line.split(":", 1) for line in out.strip().splitlines())}
    assert fields["Uid"] == [str(uid)] * 4 and fields["Gid"] == [str(gid)] * 4
    assert set(fields["Groups"]) <= {str(gid)}, fields["Groups"]
    assert all(int(fields[c][0], 16) == 0 for c in ("CapEff", "CapPrm", "CapBnd", "CapAmb")) and fields["NoNewPrivs"] == ["1"]
    layer = report["layers"]["privilege"]
    assert layer["state"] == "enforced" and layer["uid"] == uid
    assert layer["mechanism"] == ("nsenter" if os.geteuid() == 0 else "non-root supervisor")


def test_sh_write_outside_scratch_fails(kernel):
    _, kc = kernel
    out, status, report = cell(kc, "%%sh\necho x > /usr/evil && echo WROTE\necho y > /etc/evil && echo WROTE\n"
                                   "echo ok > $HOME/f && cat $HOME/f")
    assert "WROTE" not in out and "Read-only file system" in out and out.strip().endswith("ok")
    assert status == "ok" and report["layers"]["filesystem"]["state"] == "enforced"


def test_sandbox_memory_cap_kills_cell_not_kernel(kernel):
    _, kc = kernel
    out, status, report = cell(kc, "%%sandbox --memory 64M\nx = bytearray(256 * 1024 * 1024)\nprint('allocated')")
    assert status == "error" and "allocated" not in out
    assert report["requested"]["resources"]["memory_bytes"] == 64 * 1024 * 1024
    assert report["outcome"]["killed_reason"] == "oom" or "MemoryError" in out
    assert cell(kc, "print('kernel alive')")[0].strip() == "kernel alive"


def test_timeout_kills_the_cell_tree(kernel):
    _, kc = kernel
    token = _token()
    t0 = time.monotonic()
    out, status, report = cell(kc, f"%%sh --timeout 1\nsh -c 'sleep 30' {token} &\nsh -c 'sleep 30' {token}")
    elapsed = time.monotonic() - t0
    assert status == "error" and "timed out" in out and report["outcome"]["timed_out"] is True
    assert elapsed < 10  # 1 s timeout plus kill grace, far from the 30 s sleep
    assert _Vanishing(token).wait(1.0), processes_with(token)


def _token() -> str:
    """A word to put in a cell's process names (as a shell's $0): other test sessions on the
    same host run the same cells, so a host-wide search must look for this run's own word."""
    return f"cell-{uuid.uuid4().hex[:12]}"


def _wait_for_process(token: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not processes_with(token):
        assert time.monotonic() < deadline, f"no process with {token} started"
        time.sleep(0.02)


class _Vanishing:
    """Notes when the last process carrying ``token`` is gone (sampled every 20 ms)."""

    def __init__(self, token: str):
        self.at: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._watch, args=(token,), daemon=True).start()

    def _watch(self, token: str) -> None:
        while processes_with(token):
            time.sleep(0.02)
        self.at = time.monotonic()
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def _kill_all_with(token: str) -> None:
    """SIGKILL the processes carrying ``token`` and the cell shells (``sh -s``) running them,
    which would otherwise start new ones."""
    for line in processes_with(token):
        pid = line.split(":")[0]
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        for victim in (ppid, pid) if cmdline(ppid) == b"/bin/sh\0-s\0" else (pid,):
            try:
                os.kill(int(victim), 9)
            except ProcessLookupError:
                pass


def test_output_flood_capped_with_marker(kernel):
    _, kc = kernel
    out, status, report = cell(kc, "%%sh --max-output 1M\nhead -c 100000000 /dev/zero | tr '\\0' x", timeout=120)
    assert status == "error" and report["outcome"]["output_truncated"] is True
    assert "[sandbox-kernel: output truncated at 1048576 bytes" in out
    assert len(out) < 2 * 1024 * 1024


def test_cell_cap_inside_a_character_keeps_it_whole(kernel):
    """1 + 511 * 2 bytes fit in 1K; the cap falls in the middle of the next 'é'."""
    _, kc = kernel
    out, status, report = cell(kc, "%%sh --max-output 1K\nprintf a; yes é | head -n 2000 | tr -d '\\n'")
    assert status == "error" and report["outcome"]["output_truncated"] is True
    assert "\ufffd" not in out
    assert out.startswith("a" + "é" * 511 + "\n[sandbox-kernel: output truncated at 1024 bytes"), out[:40]


def test_env_option_reaches_the_cell_and_denied_names_are_refused(jupyter_dirs):
    """The kernelspec's env (the operator's) reaches cells through the same denylist as the
    kernel's; --env adds to it, and a denied name refuses the cell before anything runs."""
    spec_dir = write_kernelspec(jupyter_dirs[0], name="sandbox-env")
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["env"] = {"OPERATOR_SETTING": "from-kernelspec", "LD_AUDIT": "/tmp/not-loaded.so"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with running_kernel("sandbox-env") as (_, kc):
        out, status, report = cell(kc, '%%sh --env GREETING="hello world" --env OPERATOR_SETTING=mine\n'
                                       'echo "[$GREETING] [$OPERATOR_SETTING] [${LD_AUDIT-unset}]"')
        assert status == "ok" and "[hello world] [mine] [unset]" in out, out
        env_layer = report["layers"]["env"]
        assert "GREETING" in env_layer["keys"] and "LD_AUDIT" in env_layer["dropped_keys"]
        out, status, _ = cell(kc, '%%sh\necho "[$OPERATOR_SETTING]"')
        assert status == "ok" and "[from-kernelspec]" in out, out
        out, status, _ = cell(kc, "%%sh --env LD_PRELOAD=/tmp/x.so --env OK=1\ntouch /scratch/env-ran")
        assert status == "error" and "--env" in out and "LD_PRELOAD" in out, out
        out, _, _ = cell(kc, "%%sh\nls /scratch/env-ran 2>&1 || echo absent")
        assert "absent" in out


@pytest.fixture
def node_prefix():
    """A node installed outside /usr, as nvm or /opt would: the real binary in <prefix>/bin
    (a hard link, or a copy across file systems). World-traversable, as such prefixes are."""
    import shutil
    import tempfile

    prefix = tempfile.mkdtemp(prefix="sbx-node-prefix-")
    try:
        os.chmod(prefix, 0o755)
        os.mkdir(os.path.join(prefix, "bin"), 0o755)
        node = os.path.join(prefix, "bin", "node")
        try:
            os.link(os.path.realpath(shutil.which("node")), node)
        except OSError:
            shutil.copy2(os.path.realpath(shutil.which("node")), node)
        yield prefix
    finally:
        shutil.rmtree(prefix)


def test_node_from_a_prefix_outside_usr_runs(jupyter_dirs, node_prefix, monkeypatch):
    monkeypatch.setenv("PATH", f"{node_prefix}/bin:{os.environ['PATH']}")
    with running_kernel() as (_, kc):
        out, status, report = cell(kc, "%%node\nconsole.log('argv0', process.execPath)")
        assert status == "ok", out
        assert f"argv0 {node_prefix}/bin/node" in out
        # Only that directory was added, read-only: the cell cannot write next to the binary.
        out, status, _ = cell(kc, "%%node\nconst fs = require('fs');\n"
                                  f"try {{ fs.writeFileSync('{node_prefix}/bin/planted', 'x'); console.log('wrote'); }}\n"
                                  "catch (e) { console.log('refused', e.code); }")
        assert "refused EROFS" in out, out
    assert not os.path.exists(os.path.join(node_prefix, "bin", "planted"))


def test_node_cells_require_packages_from_the_operator_node_modules(jupyter_dirs):
    import shutil
    import tempfile

    base = tempfile.mkdtemp(prefix="sbx-node-modules-")
    try:
        root = os.path.join(base, "node_modules")
        os.makedirs(os.path.join(root, "tinypkg"))
        with open(os.path.join(root, "tinypkg", "package.json"), "w") as f:
            json.dump({"name": "tinypkg", "version": "1.0.0", "main": "index.js"}, f)
        with open(os.path.join(root, "tinypkg", "index.js"), "w") as f:
            f.write("exports.hello = () => 'hello from tinypkg';\n")
        for d, _, files in os.walk(base):  # world-readable, as an operator's package dir is
            os.chmod(d, 0o755)
            for name in files:
                os.chmod(os.path.join(d, name), 0o644)
        write_operator_config(jupyter_dirs[1], node_modules=root)
        with running_kernel() as (_, kc):
            out, status, report = cell(kc, "%%node\nconsole.log(require('tinypkg').hello(), process.env.NODE_PATH);\n"
                                           "const fs = require('fs');\n"
                                           f"try {{ fs.writeFileSync('{root}/tinypkg/index.js', 'x'); console.log('wrote'); }}\n"
                                           "catch (e) { console.log('refused', e.code); }")
            assert status == "ok", out
            assert f"hello from tinypkg {root}" in out and "refused EROFS" in out, out
            assert "NODE_PATH" in report["layers"]["env"]["keys"]
            out, status, _ = cell(kc, f"%%sh --env NODE_PATH={base}\necho ran")
            assert status == "error" and "NODE_PATH" in out and "ran" not in out
            out, _, _ = cell(kc, "%%sh\necho \"[${NODE_PATH-unset}]\"")
            assert "[unset]" in out  # only node runs get it
    finally:
        shutil.rmtree(base)


def test_loosening_option_errors_and_does_not_run(kernel, tmp_path):
    _, kc = kernel
    out, status, _ = cell(kc, "%%sh --memory 4G\ntouch /scratch/ran-marker")
    assert status == "error" and "--memory" in out and "looser" in out
    out, status, _ = cell(kc, "%%sh --allow 10.0.2.2:80\ntouch /scratch/ran-marker")
    assert status == "error" and "--allow" in out
    out, status, _ = cell(kc, "%%sh --bogus 1\ntouch /scratch/ran-marker")
    assert status == "error" and "unrecognized arguments" in out
    out, _, _ = cell(kc, "%%sh\nls /scratch/ran-marker 2>&1 || echo absent")
    assert "absent" in out


def test_interrupt_kills_cell_and_kernel_answers(kernel):
    km, kc = kernel
    token = _token()
    msg_id = kc.execute(f"%%sh\necho started {token}\nsh -c 'sleep 60' {token}", stop_on_error=False)
    _wait_for_output(kc, f"started {token}")
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply = reply_to(kc, msg_id, timeout=20)
    assert reply["content"]["status"] == "error"
    assert time.monotonic() - t0 < 5
    assert cell(kc, "print('still here')")[0].strip() == "still here"
    assert _Vanishing(token).wait(1.0), processes_with(token)


def _wait_for_output(kc, needle: str, timeout: float = 60) -> None:
    """Block until a stream message of the running cell contains ``needle``."""
    seen, deadline = "", time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        try:
            msg = kc.get_iopub_msg(timeout=max(0.1, left))
        except queue.Empty:
            msg = None
        if left <= 0 or msg is None:
            raise AssertionError(f"{needle!r} not printed within {timeout} s; output so far: {seen[-2000:]!r}")
        if msg["msg_type"] == "stream":
            seen += msg["content"]["text"]


# A shell loop that burns CPU forever and respawns its child when RLIMIT_CPU kills it, followed
# by 200 KB the shell never reads: a supervisor that feeds a cell's stdin with a blocking write
# hangs on it, before its deadline starts and deaf to cancels.
PADDING = "# padding the shell never reads: a blocking stdin writer would hang here\n" * 2800


def _burner(token: str, options: str = "") -> str:
    return (f"%%sh {options}\necho started {token}\n"
            f"while :; do sh -c 'while :; do :; done' {token}; done\n{PADDING}")


@pytest.mark.parametrize("stop", ["deadline", "interrupt", "restart", "shutdown"])
def test_runaway_cell_dies_at_deadline_interrupt_restart_and_shutdown(jupyter_dirs, stop):
    token = _token()
    km = KernelManager(kernel_name=KERNEL_NAME)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute(_burner(token, "--timeout 3" if stop == "deadline" else ""), stop_on_error=False)
        _wait_for_output(kc, f"started {token}")
        _wait_for_process(token)
        gone = _Vanishing(token)
        stopped = time.monotonic()
        if stop == "deadline":
            reply = reply_to(kc, msg_id)
            assert reply["content"]["status"] == "error"
            outcome = reply["metadata"]["sandbox"]["outcome"]
            assert outcome["timed_out"] is True
            # The run's clock (from the first byte fed) stops once its tree is dead.
            latency = outcome["durations"]["run"] - 3
            assert gone.wait(1), f"the cell still runs after its reply: {processes_with(token)}"
        else:
            if stop == "interrupt":
                km.interrupt_kernel()
                assert reply_to(kc, msg_id)["content"]["status"] == "error"
            elif stop == "restart":
                km.restart_kernel(now=True)
            else:
                km.shutdown_kernel(now=True)
            assert gone.wait(5), f"{stop}: the cell still runs: {processes_with(token)}"
            latency = gone.at - stopped
        print(f"{stop}: the cell's processes were gone {latency:.2f} s after the {stop}")
        assert latency < 1.0
        if stop == "restart":
            kc.wait_for_ready(timeout=60)
            assert cell(kc, "%%sh\necho after restart")[0].strip() == "after restart"
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        _kill_all_with(token)  # never leave a burner behind, even when failing


def test_nonzero_exit_marks_cell_failed(kernel):
    _, kc = kernel
    out, status, report = cell(kc, "%%sh\necho partial; exit 3")
    assert status == "error" and "partial" in out and "status 3" in out
    assert report["outcome"]["exit_code"] == 3


NETWORK = r"""
import json, os, pathlib, socket, threading, sys
sys.path.insert(0, os.getcwd())
from tests.integration.kernels import execute, running_kernel
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
port = s.getsockname()[1]
def loop():
    while True:
        c, _ = s.accept(); c.sendall(b"hi"); c.close()
threading.Thread(target=loop, daemon=True).start()
cfg = pathlib.Path(os.environ["JUPYTER_CONFIG_DIR"]) / "jupyter_sandbox_kernel_config.py"
cfg.write_text(f"c.SandboxPolicyConfig.network_mode = 'allowlist'\nc.SandboxPolicyConfig.network_allow = ['10.0.2.2:{port}']\n")
probe = (f"import socket\ntry:\n    print(socket.create_connection(('10.0.2.2', {port}), timeout=5).recv(2).decode())\n"
         "except OSError as e:\n    print(type(e).__name__)")
res = {}
with running_kernel() as (km, kc):
    res["kernel"] = execute(kc, probe)[0].strip()
    res["cell_deny"] = execute(kc, "%%sh --network deny\npython3 - <<'EOF'\n" + probe + "\nEOF")[0].strip()
    res["cell_inherit"] = execute(kc, "%%sandbox\n" + probe)[0].strip()
print(json.dumps(res))
"""


def test_cell_network_deny_under_kernel_allowlist(tmp_path):
    res = run_in_outer_netns(NETWORK, env={k: os.environ[k] for k in ("JUPYTER_PATH", "JUPYTER_CONFIG_DIR")})
    assert res["kernel"] == "hi"  # the kernel's allowlist reaches the server
    assert res["cell_deny"] in ("OSError", "ConnectionRefusedError")  # the tighter cell cannot
    assert res["cell_inherit"] == "hi"  # a cell without options gets the kernel's allowlist


def test_cells_share_the_kernels_scratch_which_survives_restart(kernel):
    km, kc = kernel
    assert cell(kc, "open('/scratch/from-kernel.txt', 'w').write('python wrote this')")[1] == "ok"
    out, status, report = cell(kc, "%%sh\ncat /scratch/from-kernel.txt; echo\necho 'shell wrote this' > /scratch/from-sh.txt")
    assert status == "ok" and out.strip() == "python wrote this"
    assert "shared" in report["layers"]["filesystem"]["scratch"]
    assert cell(kc, "print(open('/scratch/from-sh.txt').read())")[0].strip() == "shell wrote this"
    km.restart_kernel(now=True)
    kc.wait_for_ready(timeout=60)
    # (Beside the supervisor's working dir, exposed read-only as a plain kernel would see it.)
    assert cell(kc, "import os\nprint(sorted(n for n in os.listdir('/scratch') if n.startswith('from-')))")[0].strip() \
        == "['from-kernel.txt', 'from-sh.txt']"


NON_ROOT = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
from tests.integration.kernels import execute, running_kernel
res = {}
with running_kernel() as (km, kc):
    res["uid"] = execute(kc, "import os; print(os.getuid())")[0].strip()
    execute(kc, "open('/scratch/k.txt', 'w').write('shared')")
    out, reply = execute(kc, "%%sh --memory 128M\nid -u; cat /scratch/k.txt")
    res["cell"] = out.split()
    res["cell_memory"] = reply["metadata"]["sandbox"]["layers"]["resources"]["controls"]["memory_bytes"]
    res["kernel_memory"] = km.provisioner.effective_sandbox["layers"]["resources"]["controls"]["memory_bytes"]
    # Its working dir (the repository) mounted into the session by the user namespace's root.
    res["input"] = execute(kc, "%%sh\nhead -n 1 README.md; touch README.md 2>/dev/null || echo refused")[0].split()
    res["inputs"] = km.provisioner.effective_sandbox["layers"]["filesystem"]["inputs"]["entries"]
print(json.dumps(res))
"""


def test_kernel_and_cells_under_a_non_root_supervisor():
    """The rootless path end to end: the kernel runs as the supervisor's own uid, in a cgroup
    below the supervisor's delegated one, cells share its scratch through the session's user
    namespace."""
    import json
    import subprocess
    import sys

    from .kernels import REPO
    from .supervisors import as_supervisor_account, supervisor_uid

    import shutil
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp())  # in the session's 1777 TMPDIR: the supervisor can reach it
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    write_kernelspec(data)
    for d in (data, data / "kernels", data / "kernels" / "python3-sandboxed"):
        os.chmod(d, 0o755)
    uid = supervisor_uid()
    env = {**os.environ, "JUPYTER_PATH": str(data), "JUPYTER_CONFIG_DIR": str(tmp_path / "nocfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    os.makedirs(tmp_path / "rt", exist_ok=True)
    os.chown(tmp_path / "rt", uid, uid)
    try:
        proc = subprocess.run(as_supervisor_account([sys.executable, "-c", NON_ROOT]),
                              capture_output=True, text=True, env=env, cwd=str(REPO), timeout=180)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["uid"] == str(uid) and res["cell"] == [str(uid), "shared"]
    assert res["kernel_memory"]["mechanism"] == "cgroup-v1-memory" and res["cell_memory"]["limit"] == 128 * 2**20
    assert res["input"] == ["#", "sandbox-kernel", "refused"] and res["inputs"] > 5, res


def test_back_to_back_cells_never_see_busy(kernel):
    """The next cell's request can arrive while the previous cell's handler is still tearing
    down: it must wait, not fail with "still running"."""
    _, kc = kernel
    out, status, _ = cell(kc, """
        m = get_ipython().magics_manager.registry['SandboxMagics']
        for i in range(15):
            m.sh('', 'true\\n')
        print('all ran')
        """)
    assert status == "ok" and out.strip() == "all ran", out


# ---------------------------------------------------------------- the cell socket under attack
# The kernel is hostile: every byte it sends to the supervisor's cell socket is an attack. The
# supervisor here is this test process (the kernel manager runs in it), so its own threads and
# memory are what the attacks must not blow up.

HOSTILE = r'''
import json, os, socket, threading, time
PATH = os.environ["SANDBOX_KERNEL_CELL_SOCKET"]

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(PATH)
    return s

def send(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass  # refused before it was all read: the reply says why

def reply(s, timeout=60.0):
    """The supervisor's first reply line, parsed, or what happened instead."""
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        if b"\n" not in buf:
            return type(e).__name__
    return json.loads(buf.split(b"\n")[0]) if b"\n" in buf else ("EOF" if not buf else "partial line")
'''


def _result(out: str):
    """What the hostile cell printed after "RESULT " (its stderr may be mixed in)."""
    assert "RESULT " in out, out[-3000:]
    return json.loads(out.rsplit("RESULT ", 1)[1].splitlines()[0])


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


class SupervisorWatch:
    """Peak thread count and peak RSS of this process (the supervisor) while the block runs."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        self._stop = False
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.max_threads = 0
        self._sampler.start()  # before the baseline: it is no thread of the supervisor's
        self.threads_before, self.rss_before_kib = _status("Threads"), _status("VmRSS")
        return self

    def _sample(self):
        while not self._stop:
            self.max_threads = max(self.max_threads, _status("Threads"))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop = True
        self._sampler.join()
        self.peak_rss_kib = _status("VmHWM")
        print(f"supervisor: threads {self.threads_before} -> peak {self.max_threads}, "
              f"RSS {self.rss_before_kib // 1024} MiB -> peak {self.peak_rss_kib // 1024} MiB")


def test_cell_socket_flood_of_large_requests_keeps_supervisor_memory_bounded(kernel):
    _, kc = kernel
    code = HOSTILE + r'''
blob = b"x" * (8 << 20)  # 8 MiB, no newline
results = []
def attack():
    try:
        s = connect()
    except OSError as e:
        results.append(type(e).__name__)
        return
    send(s, blob)
    results.append(reply(s))
    s.close()
threads = [threading.Thread(target=attack) for _ in range(40)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("RESULT", json.dumps(results))
'''
    with SupervisorWatch() as watch:
        out, status, _ = cell(kc, code, timeout=300)
    assert status == "ok", out
    results = _result(out)
    assert len(results) == 40 and all(isinstance(r, dict) and r["t"] == "error" for r in results), results
    assert watch.peak_rss_kib - watch.rss_before_kib < 64 * 1024  # was +339 MiB: 40 buffered 8 MiB requests
    assert watch.max_threads - watch.threads_before <= 2  # no thread per connection
    assert cell(kc, "%%sh\necho still serving")[0].strip() == "still serving"


def test_cell_socket_idle_connections_are_refused_without_threads(kernel, monkeypatch):
    monkeypatch.setattr(cells, "READ_TIMEOUT", 2.0)
    _, kc = kernel
    with SupervisorWatch() as watch:
        out, status, _ = cell(kc, HOSTILE + "held = [connect() for _ in range(960)]\nprint(len(held))", timeout=120)
        assert status == "ok" and out.strip() == "960", out
        time.sleep(0.5)  # let the sampler see the supervisor while all 960 are open
    out, status, _ = cell(kc, r'''
replies = [reply(s, timeout=30) for s in held]
for s in held:
    s.close()
print("RESULT", json.dumps(replies))
''', timeout=120)
    replies = _result(out)
    # One at a time is served (and times out at the read deadline); the rest are refused.
    assert len(replies) == 960 and all(isinstance(r, dict) and r["t"] == "error" for r in replies), replies[:5]
    assert sum("another" in r["problems"][0][1] for r in replies) >= 900
    assert watch.max_threads - watch.threads_before <= 2  # was one thread per connection (+960)
    assert cell(kc, "%%sh\necho still serving")[0].strip() == "still serving"


def test_cell_request_without_end_times_out_and_others_are_refused_meanwhile(kernel, monkeypatch):
    monkeypatch.setattr(cells, "READ_TIMEOUT", 2.0)
    _, kc = kernel
    out, status, _ = cell(kc, HOSTILE + r'''
slow = connect()
send(slow, b'{"kind": "sh"')  # and never a newline
t0 = time.monotonic()
other = connect()
send(other, b'{"kind": "sh", "options": {}, "source_bytes": 5}\necho\n')
second = reply(other, timeout=30)
first = reply(slow, timeout=60)
print("RESULT", json.dumps({"first": first, "after": time.monotonic() - t0, "second": second}))
''', timeout=120)
    res = _result(out)
    assert res["first"]["t"] == "error" and "2.0 s" in res["first"]["problems"][0][1], res
    assert res["after"] < 2.0 + 10  # the read deadline, plus generous slack
    assert res["second"]["t"] == "error" and "another" in res["second"]["problems"][0][1], res
    assert cell(kc, "%%sh\necho still serving")[0].strip() == "still serving"


# Each gets an error reply; none may crash the serving thread or leave the kernel without one.
CRAFTED = r'''[
    b'{"kind": "sh", "source": "true", "options": "x"}\n',
    b'{"kind": "sh", "options": "x", "source_bytes": 4}\ntrue',
    b'[1]\n',
    b'{"kind": "sh", "source": "true", "options": [1]}\n',
    b'{"kind": "sh", "options": [1], "source_bytes": 0}\n',
    b'[' * 100_000 + b'\n',
    b'[' * 30_000 + b'\n',
    b'{"a": ' * 10_000 + b'\n',
    b'\n',
    b'\xff\xfe\n',
    b'null\n',
    b'{"kind": 1, "options": {}, "source_bytes": 0}\n',
    b'{"kind": "bash", "options": {}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": -1}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": 1e400}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": true}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": 99999999999}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": 9' + b'9' * 5000 + b'}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": 0, "more": 1}\n',
    b'{"kind": "sh", "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"resources": []}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"privilege": {"mode": "inherit"}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"resources": {"memory_bytes": "lots"}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"resources": {"memory_bytes": true}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"resources": {"wall_seconds": NaN}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"resources": {"memory_bytes": 4294967296000}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"network": {"allow": [[[[1]]]]}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"network": {"allow": ["a"]}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {"network": {"mode": "unrestricted"}}, "source_bytes": 0}\n',
    b'{"kind": "sh", "options": {}, "source_bytes": 100}\nshort',
]'''


def test_crafted_cell_requests_each_get_an_error_reply(kernel):
    _, kc = kernel
    threads_before = _status("Threads")
    out, status, _ = cell(kc, HOSTILE + f"results = []\nfor p in {CRAFTED}:\n" + r'''
    s = connect()
    send(s, p)
    if p.endswith(b"short"):
        s.shutdown(socket.SHUT_WR)  # the promised body never comes
    results.append(reply(s, timeout=30))
    s.close()
print("RESULT", json.dumps(results))
''', timeout=120)
    assert status == "ok", out
    results = _result(out)
    print("\n".join(json.dumps(r) for r in results))
    assert len(results) == CRAFTED.count("\n    b'")
    for payload, result in zip(CRAFTED.split("\n    b'")[1:], results):
        assert isinstance(result, dict) and result["t"] == "error" and result["problems"], (payload[:80], result)
    assert _status("Threads") <= threads_before
    assert cell(kc, "%%sh\necho still serving")[0].strip() == "still serving"


def test_a_kernel_that_stops_reading_its_cells_output_gets_the_cell_cancelled(kernel, monkeypatch):
    monkeypatch.setattr(cells, "SEND_TIMEOUT", 1.0)
    _, kc = kernel
    token = _token()
    body = f"sh -c 'while :; do echo flood; done' {token}\n".encode()
    try:
        out, status, _ = cell(kc, HOSTILE + f"""
stalled = connect()
send(stalled, b'{{"kind": "sh", "options": {{}}, "source_bytes": {len(body)}}}\\n' + {body!r})
print("sent")
""")
        assert status == "ok" and "sent" in out, out
        _wait_for_process(token)
        # The supervisor's reply blocks on the kernel that does not read: after SEND_TIMEOUT it
        # gives up on the connection and kills the cell.
        gone = _Vanishing(token)
        assert gone.wait(1.0 + 10), f"the cell still runs: {processes_with(token)}"
        cell(kc, "stalled.close()")
        assert cell(kc, "%%sh\necho still serving")[0].strip() == "still serving"
    finally:
        _kill_all_with(token)


def _ready_sandboxes(service, kind: str = "sh") -> list:
    """The sandboxes started ahead for option-less cells of ``kind``, once all of them wait."""
    deadline = time.monotonic() + 60
    while service.warm_count(kind) < cells.WARM_POOL[kind]:
        assert time.monotonic() < deadline, f"fewer than {cells.WARM_POOL[kind]} %%{kind} sandboxes started ahead"
        time.sleep(0.05)
    with service._warm_lock:
        return list(service._warm[(kind, "")])


def test_option_less_sh_cells_run_in_the_sandbox_started_ahead(kernel):
    km, kc = kernel
    service = km.provisioner.sandbox.cells
    first, second = _ready_sandboxes(service)
    assert cell(kc, "%%sh\necho hi")[0].strip() == "hi"
    assert first.poll() is not None and second.poll() is None  # the longest-waiting one ran it
    # A cold cell (with options) leaves the ready ones alone: none is killed and respawned.
    ready = _ready_sandboxes(service)
    assert first not in ready and cell(kc, "%%sh --timeout 9\necho cold")[0].strip() == "cold"
    assert all(p.poll() is None for p in ready) and ready == _ready_sandboxes(service)


def test_back_to_back_sh_cells_each_get_a_confined_ready_sandbox(kernel):
    """A replacement starts when a ready sandbox is taken, so cells sent back to back keep
    finding ready ones; each is confined and reported like a cold one; at shutdown none is
    left (the leak check after every test)."""
    km, kc = kernel
    service = km.provisioner.sandbox.cells
    uid = km.provisioner.effective_sandbox["layers"]["privilege"]["uid"]
    _, _, cold = cell(kc, "%%sh --timeout 30\ntrue")
    ready = _ready_sandboxes(service)
    body = "%%sh\necho id $(id -u)\necho x > /usr/evil && echo WROTE\necho procs $(ls /proc | grep -c '^[0-9]')"
    msg_ids = [kc.execute(body, stop_on_error=False) for _ in range(4)]  # the kernel runs them back to back
    outputs = {msg_id: "" for msg_id in msg_ids}
    idle, deadline = set(), time.monotonic() + 120
    while idle != set(msg_ids):
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        parent = msg["parent_header"].get("msg_id")
        if parent in outputs and msg["msg_type"] == "stream":
            outputs[parent] += msg["content"]["text"]
        elif parent in outputs and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle.add(parent)
    for msg_id in msg_ids:
        reply = reply_to(kc, msg_id, timeout=60)
        out, report = outputs[msg_id], reply["metadata"]["sandbox"]
        assert reply["content"]["status"] == "ok", (reply["content"], out)
        assert f"id {uid}\n" in out and "WROTE" not in out and "Read-only file system" in out, out
        assert int(out.split("procs ")[1]) <= 6, out  # its own pid namespace: just its shell, ls, grep
        assert report["scope"] == "cell" and report["outcome"]["exit_code"] == 0
        assert report["enforced"] == cold["enforced"] and all(report["enforced"].values())
        assert {k: v["state"] for k, v in report["layers"].items()} == {k: v["state"] for k, v in cold["layers"].items()}
    assert all(p.poll() is not None for p in ready)  # both ready sandboxes ran a cell
    assert len(_ready_sandboxes(service)) == cells.WARM_POOL["sh"]  # bounded: refilled, never more


def test_sandbox_and_node_cells_get_an_interpreter_started_ahead_once_used(kernel):
    """After a first %%sandbox (%%node) cell, one sandbox with its interpreter already started
    waits for the next: confined and reported like the cold one."""
    km, kc = kernel
    service = km.provisioner.sandbox.cells
    uid = km.provisioner.effective_sandbox["layers"]["privilege"]["uid"]
    assert service.warm_count("python") == service.warm_count("node") == 0  # not before the kernel uses them
    for kind, code in (("python", "%%sandbox\nimport os\nprint('uid', os.getuid())\n"
                                  "try:\n    open('/usr/evil', 'w')\nexcept OSError as e:\n    print(e.strerror)"),
                       ("node", "%%node\nconsole.log('uid', process.getuid())\n"
                                "try { require('fs').writeFileSync('/usr/evil', 'x') } catch (e) { console.log(e.code) }")):
        out, status, cold = cell(kc, code)
        assert status == "ok" and f"uid {uid}" in out, out
        (ready,) = _ready_sandboxes(service, kind)
        out, status, report = cell(kc, code)
        assert ready.poll() is not None, f"the %%{kind} cell did not run in the sandbox started ahead"
        assert status == "ok" and f"uid {uid}" in out and ("Read-only file system" in out or "EROFS" in out), out
        assert report["enforced"] == cold["enforced"] and all(report["enforced"].values())
        assert {k: v["state"] for k, v in report["layers"].items()} == {k: v["state"] for k, v in cold["layers"].items()}
        assert len(_ready_sandboxes(service, kind)) == cells.WARM_POOL[kind]


def test_options_that_recur_get_a_sandbox_started_ahead_with_exactly_those_options(kernel):
    """The same options again: from then on one sandbox with them waits, confined and
    reported like the cold ones (its memory cap kills a hog from inside); another recurring
    option set replaces it; option-less cells never take it."""
    km, kc = kernel
    service = km.provisioner.sandbox.cells
    tight = {"resources": {"memory_bytes": 64 * 2**20}}
    hog = "%%sandbox --memory 64M\nx = bytearray(256 * 1024 * 1024)\nprint('allocated')"
    out, status, cold = cell(kc, hog)
    assert status == "error" and "allocated" not in out, out
    assert service.warm_count("python", tight) == 0  # once is not a pattern
    cell(kc, hog)
    deadline = time.monotonic() + 60
    while service.warm_count("python", tight) < cells.WARM_FOR_OPTIONS:
        assert time.monotonic() < deadline, "no sandbox started ahead for the recurring options"
        time.sleep(0.05)
    with service._warm_lock:
        (ready,) = service._warm[cells.warm_key("python", tight, {})]
    assert cell(kc, "%%sandbox\nprint('plain')")[0].strip() == "plain" and ready.poll() is None
    out, status, report = cell(kc, hog)
    assert ready.poll() is not None, "the recurring options did not use the sandbox started ahead"
    assert status == "error" and "allocated" not in out, out
    assert report["outcome"]["killed_reason"] == cold["outcome"]["killed_reason"]
    assert report["requested"] == cold["requested"] and report["enforced"] == cold["enforced"]
    # Another option set, twice: it is kept ready instead, and the first one's sandbox is closed.
    for _ in range(2):
        assert cell(kc, "%%sh --timeout 20\necho other")[0].strip() == "other"
    deadline = time.monotonic() + 60
    while service.warm_count("sh", {"resources": {"wall_seconds": 20.0}}) < 1:
        assert time.monotonic() < deadline, "no sandbox started ahead for the second option set"
        time.sleep(0.05)
    assert service.warm_count("python", tight) == 0
