"""Host-name allow entries through a real sandboxed kernel: the kernel's allowlist names
hosts, a ``%%sh`` cell may narrow the names but never add one. Runs as a separate supervisor
inside the test's outer network namespace with the test upstream resolver and services of
``name_scenarios``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .kernels import REPO, run_in_outer_netns, write_kernelspec
from .supervisors import as_supervisor_account, in_outer_netns, supervisor_uid

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("jupyter_dirs")]

CELLS = r"""
import json, os, pathlib, sys
sys.path.insert(0, os.getcwd())
from tests.integration.kernels import execute, running_kernel
from tests.integration.name_scenarios import RECORDS, UpstreamResolver
from tests.integration.scenarios import Server
from tests.integration.supervisors import RESOLVER_TEST_ADDRESS, SERVICES_TEST_ADDRESS
upstream = UpstreamResolver(RESOLVER_TEST_ADDRESS, RECORDS)
server = Server(SERVICES_TEST_ADDRESS)
port = server.port
cfg = pathlib.Path(os.environ["JUPYTER_CONFIG_DIR"]) / "jupyter_sandbox_kernel_config.py"
cfg.write_text("c.SandboxPolicyConfig.network_mode = 'allowlist'\n"
               f"c.SandboxPolicyConfig.network_allow = ['allowed.test:{port}', 'other.test:{port}']\n")
probe = ("import socket\n"
         "for name in ('allowed.test', 'other.test'):\n"
         "    try:\n"
         f"        print(name, socket.create_connection((name, {port}), timeout=5).recv(5).decode())\n"
         "    except OSError as e:\n"
         "        print(name, type(e).__name__)\n")
res = {}
try:
    with running_kernel() as (km, kc):
        res["kernel_layer"] = km.provisioner.effective_sandbox["layers"]["network"]
        res["kernel"] = execute(kc, probe)[0].split("\n")
        out, reply = execute(kc, f"%%sh --allow allowed.test:{port}\npython3 - <<'EOF'\n" + probe + "\nEOF")
        res["narrowed"] = out.split("\n")
        res["narrowed_names"] = reply["metadata"]["sandbox"]["layers"]["network"].get("names")
        out, reply = execute(kc, f"%%sh --allow blocked.test:{port}\necho RAN")
        res["widened"] = {"out": out, "status": reply["content"]["status"]}
finally:
    upstream.stop()
print(json.dumps(res))
"""


def check_narrowing(res: dict) -> None:
    assert res["kernel_layer"]["state"] == "enforced" and len(res["kernel_layer"]["names"]) == 2
    assert "allowed.test hello" in res["kernel"] and "other.test hello" in res["kernel"]
    assert "allowed.test hello" in res["narrowed"]
    assert "other.test gaierror" in res["narrowed"]  # the cell's resolver no longer answers it
    assert res["narrowed_names"] == [n for n in res["kernel_layer"]["names"] if n.startswith("allowed.test:")]
    widened = res["widened"]
    assert widened["status"] == "error" and "RAN" not in widened["out"] and "blocked.test" in widened["out"]


def test_a_sh_cell_narrows_but_cannot_widen_the_names():
    check_narrowing(run_in_outer_netns(CELLS, env={k: os.environ[k] for k in ("JUPYTER_PATH", "JUPYTER_CONFIG_DIR")}))


def test_a_sh_cell_narrows_names_under_a_non_root_supervisor():
    """The rootless path: the kernel's session owns the user namespace the egress namespace
    and its resolver live in."""
    tmp_path = Path(tempfile.mkdtemp())  # in the 1777 TMPDIR: the supervisor account can reach it
    os.chmod(tmp_path, 0o755)
    uid = supervisor_uid()
    data, config, runtime = tmp_path / "data", tmp_path / "config", tmp_path / "rt"
    write_kernelspec(data)
    for d in (data, data / "kernels", data / "kernels" / "python3-sandboxed"):
        os.chmod(d, 0o755)
    for d in (config, runtime):
        d.mkdir()
        os.chown(d, uid, uid)
    env = {**os.environ, "JUPYTER_PATH": str(data), "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(runtime),
           "HOME": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    cmd = in_outer_netns(as_supervisor_account([sys.executable, "-c", CELLS]))  # in its delegated cgroup
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=180)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_narrowing(json.loads(proc.stdout.strip().splitlines()[-1]))
