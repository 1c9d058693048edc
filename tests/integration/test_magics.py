"""%%sh, %%node, %%sandbox through a real sandboxed kernel: each cell in its own sandbox,
planned by the supervisor, never looser than the kernel."""

from __future__ import annotations

import os
import time

import pytest

from .kernels import execute, run_in_outer_netns, running_kernel, shell_reply, write_kernelspec

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def jupyter_dirs(tmp_path, monkeypatch):
    write_kernelspec(tmp_path / "data")
    (tmp_path / "config").mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))


@pytest.fixture
def kernel(jupyter_dirs):
    # One kernel per test: the leak check after each test must find nothing of it running.
    with running_kernel() as (km, kc):
        yield km, kc


def cell(kc, code, timeout=60):
    out, reply = execute(kc, code, timeout=timeout)
    return out, reply["content"]["status"], reply["metadata"].get("sandbox", {})


def test_each_magic_runs_in_its_own_sandbox(kernel):
    _, kc = kernel
    kernel_pid_view, _, _ = cell(kc, "import os; print(os.getpid())")
    for code, expect in (("%%sh\necho shell $(id -u)", "shell 65532"),
                         ("%%node\nconsole.log('node', process.getuid())", "node 65532"),
                         ("%%sandbox\nimport os\nprint('python', os.getuid(), os.getpid())", "python 65532")):
        out, status, report = cell(kc, code)
        assert status == "ok" and expect in out, (code, out)
        assert report["scope"] == "cell" and report["reported_by"] == "kernel"
        assert report["kernel"]["scope"] == "kernel"  # the cell report nests the kernel's
        assert all(report["enforced"].values()) and report["outcome"]["exit_code"] == 0
    # A fresh pid namespace per cell: the cell does not see the kernel's processes.
    out, _, _ = cell(kc, "%%sh\nls /proc | grep -c '^[0-9]'")
    assert int(out.strip()) <= 4


def test_sh_write_outside_scratch_fails(kernel):
    _, kc = kernel
    out, status, report = cell(kc, "%%sh\necho x > /usr/evil && echo WROTE\necho y > /etc/evil && echo WROTE\necho ok > $HOME/f && cat $HOME/f")
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
    t0 = time.monotonic()
    out, status, report = cell(kc, "%%sh --timeout 1\nsleep 30 &\nsleep 30")
    elapsed = time.monotonic() - t0
    assert status == "error" and "timed out" in out and report["outcome"]["timed_out"] is True
    assert elapsed < 10  # 1 s timeout plus kill grace, far from the 30 s sleep
    assert _no_sleepers("30")


def _no_sleepers(seconds: str, wait: float = 5.0) -> bool:
    """True once no ``sleep <seconds>`` process is left anywhere on the host."""
    needle = b"sleep\x00" + seconds.encode()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not any(_cmdline(e).startswith(needle) for e in os.listdir("/proc") if e.isdigit()):
            return True
        time.sleep(0.1)
    return False


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_output_flood_capped_with_marker(kernel):
    _, kc = kernel
    out, status, report = cell(kc, "%%sh --max-output 1M\nhead -c 100000000 /dev/zero | tr '\\0' x", timeout=120)
    assert status == "error" and report["outcome"]["output_truncated"] is True
    assert "[sandbox-kernel: output truncated at 1048576 bytes" in out
    assert len(out) < 2 * 1024 * 1024


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
    msg_id = kc.execute("%%sh\nsleep 60")
    time.sleep(1.0)
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply = shell_reply(kc, msg_id)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "error"
    assert time.monotonic() - t0 < 5
    assert cell(kc, "print('still here')")[0].strip() == "still here"
    assert _no_sleepers("60")


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
probe = f"import socket\ntry:\n    print(socket.create_connection(('10.0.2.2', {port}), timeout=5).recv(2).decode())\nexcept OSError as e:\n    print(type(e).__name__)"
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
    assert cell(kc, "import os\nprint(sorted(os.listdir('/scratch')))")[0].strip() == "['from-kernel.txt', 'from-sh.txt']"


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
print(json.dumps(res))
"""


def test_kernel_and_cells_under_a_non_root_supervisor():
    """The rootless path end to end: the kernel runs as the supervisor's own uid with
    RLIMIT_AS for memory, cells share its scratch through the session's user namespace."""
    import json
    import subprocess
    import sys

    from .kernels import REPO
    from .supervisors import supervisor_uid

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
        proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", NON_ROOT],
                              capture_output=True, text=True, env=env, cwd=str(REPO), timeout=180)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["uid"] == str(uid) and res["cell"] == [str(uid), "shared"]
    assert res["kernel_memory"]["mechanism"] == "rlimit-as" and res["cell_memory"]["limit"] == 128 * 2**20


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
