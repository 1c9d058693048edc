"""The server extension (sandbox_kernel.server) in a real ``jupyter server``: the trusted kernel
and cell reports and the doctor, authenticated like every server API, 404 for what is not
ours; and the installed package enabling both extensions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.servers import REPO, running_server

pytestmark = pytest.mark.integration

SH_CELL = "%%sh\necho cell $(id -u)"


def start_kernel(server, name: str) -> str:
    code, kernel = server.request("POST", "/api/kernels", {"name": name})
    assert code == 201, kernel
    return kernel["id"]


def execute(server, kernel_id: str, code: str, msg_id: str) -> tuple[str, dict]:
    """Run ``code`` over the kernel's websocket as execute request ``msg_id``: (stdout, reply)."""
    import websocket

    ws = websocket.create_connection(
        f"{server.url.replace('http', 'ws')}/api/kernels/{kernel_id}/channels?token={server.token}", timeout=120)
    try:
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": uuid.uuid4().hex,
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False}}))
        # The reply (shell) may overtake the last output (iopub): done when both the reply and
        # the kernel's "idle" for this request have arrived.
        text, reply, idle = "", None, False
        while reply is None or not idle:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                text += msg["content"]["text"]
            elif msg["msg_type"] == "execute_reply":
                reply = msg
            elif msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                idle = True
        return text, reply
    finally:
        ws.close()


def test_endpoints_require_authentication(tmp_path):
    with running_server(tmp_path) as server:
        kernel_id = start_kernel(server, "python3-sandboxed")
        for path in (f"/api/sandbox/kernels/{kernel_id}", f"/api/sandbox/kernels/{kernel_id}/cells/m-1",
                     "/api/sandbox/doctor"):
            assert server.get(path, token=None)[0] == 403, path
            assert server.get(path, token="not-the-token")[0] == 403, path


def test_kernel_and_cell_reports_come_from_the_supervisor(tmp_path):
    with running_server(tmp_path) as server:
        kernel_id = start_kernel(server, "python3-sandboxed")
        code, report = server.get(f"/api/sandbox/kernels/{kernel_id}")
        assert code == 200
        assert report["scope"] == "kernel" and all(report["enforced"].values())
        uid = report["layers"]["privilege"]["uid"]
        low, high = report["layers"]["privilege"]["uid_range"]
        assert low <= uid <= high  # the kernel's own transient uid

        msg_id = f"lab-{uuid.uuid4()}"
        out, reply = execute(server, kernel_id, SH_CELL, msg_id)
        assert out.strip() == f"cell {uid}" and reply["content"]["status"] == "ok"
        # What the kernel put in its reply is the kernel's word; the server has the trusted one.
        kernel_said = reply["metadata"]["sandbox"]
        assert kernel_said["reported_by"] == "kernel"
        code, cell = server.get(f"/api/sandbox/kernels/{kernel_id}/cells/{msg_id}")
        assert code == 200
        assert cell["scope"] == "cell" and cell["reported_by"] == "provisioner"
        assert cell["outcome"]["exit_code"] == 0 and cell["kernel"] == report
        assert {k: v for k, v in kernel_said.items() if k != "reported_by"} == {k: v for k, v in cell.items()
                                                                               if k != "reported_by"}
        # A plain cell runs in the kernel's sandbox: nothing of its own is recorded.
        plain_id = f"lab-{uuid.uuid4()}"
        execute(server, kernel_id, "print(1)", plain_id)
        assert server.get(f"/api/sandbox/kernels/{kernel_id}/cells/{plain_id}")[0] == 404


def test_unknown_and_unsandboxed_kernels_are_404(tmp_path):
    with running_server(tmp_path) as server:
        plain = start_kernel(server, "python3")
        sandboxed = start_kernel(server, "python3-sandboxed")
        msg_id = f"lab-{uuid.uuid4()}"
        execute(server, sandboxed, SH_CELL, msg_id)
        assert server.get(f"/api/sandbox/kernels/{sandboxed}/cells/{msg_id}")[0] == 200
        for path in (f"/api/sandbox/kernels/{plain}", f"/api/sandbox/kernels/{plain}/cells/{msg_id}",
                     f"/api/sandbox/kernels/{uuid.uuid4()}", f"/api/sandbox/kernels/{uuid.uuid4()}/cells/{msg_id}",
                     f"/api/sandbox/kernels/{sandboxed}/cells/{uuid.uuid4()}",
                     f"/api/sandbox/kernels/{sandboxed}/cells/{'x' * 200}", "/api/sandbox/kernels/not-a-kernel-id"):
            code, body = server.get(path)
            assert code == 404, (path, code, body)


def test_doctor_is_a_server_level_read(tmp_path):
    with running_server(tmp_path / "default") as server:
        code, doctor = server.get("/api/sandbox/doctor")
        assert code == 200
        assert doctor["enforceable"] is True and doctor["policy"] == "jupyter-config"
        assert set(doctor["report"]["layers"]) == {"filesystem", "network", "resources", "privilege", "env", "seccomp"}
    # Where the deployment's authorizer keeps server-level reads to operators, a user who may
    # use kernels still gets the kernel reports but not the doctor.
    args = ("--ServerApp.authorizer_class=tests.servers.KernelsOnlyAuthorizer",)
    with running_server(tmp_path / "scoped", args=args, env={"PYTHONPATH": str(REPO)}) as server:
        kernel_id = start_kernel(server, "python3-sandboxed")
        assert server.get(f"/api/sandbox/kernels/{kernel_id}")[0] == 200
        assert server.get("/api/sandbox/doctor")[0] == 403


def test_doctor_names_a_bad_operator_policy(tmp_path):
    with running_server(tmp_path, operator_config="c.SandboxPolicyConfig.memory_bytes = 'lots'\n") as server:
        code, doctor = server.get("/api/sandbox/doctor")
    assert code == 200 and doctor["enforceable"] is False
    assert [field for field, _ in doctor["problems"]] == ["c.SandboxPolicyConfig.memory_bytes"]


def test_installed_package_enables_both_extensions():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
    server = subprocess.run([jupyter, "server", "extension", "list"], capture_output=True, text=True, env=env,
                            timeout=120)
    lines = (server.stdout + server.stderr).splitlines()
    assert any("sandbox_kernel.server" in line and "enabled" in line for line in lines), lines
    assert any("sandbox_kernel.server" in line and "OK" in line for line in lines), lines
    lab = subprocess.run([jupyter, "labextension", "list"], capture_output=True, text=True, env=env, timeout=120)
    lines = (lab.stdout + lab.stderr).splitlines()
    assert any("sandbox-kernel" in line and "enabled" in line and "OK" in line for line in lines), lines


def test_a_degraded_kernel_is_announced_in_the_server_log(tmp_path):
    """Under on_unavailable=degrade with the egress tool missing, the server's own log gets the
    host summary, the banner, and one warning per kernel start naming the downgrade."""
    import time

    from .kernels import path_without

    operator = ("c.SandboxPolicyConfig.on_unavailable = 'degrade'\n"
                "c.SandboxPolicyConfig.network_mode = 'allowlist'\n"
                "c.SandboxPolicyConfig.network_allow = ['10.0.2.2:9']\n")
    env = {"PATH": path_without(tmp_path / "bin", "slirp4netns")}
    with running_server(tmp_path / "srv", env=env, operator_config=operator) as server:
        for _ in range(2):
            kernel_id = start_kernel(server, "python3-sandboxed")
            code, report = server.get(f"/api/sandbox/kernels/{kernel_id}")
            assert code == 200 and [d["layer"] for d in report["downgrades"]] == ["network"]
            assert server.request("DELETE", f"/api/kernels/{kernel_id}")[0] == 204
        deadline = time.monotonic() + 60
        while True:  # the records are written as they happen; the log file may lag a little
            log = server.log.read_text()
            warnings = [line for line in log.splitlines() if "runs with a degraded sandbox" in line]
            if len(warnings) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert len(warnings) == 2, log[-4000:]
    assert all(line.startswith("[W") and "network: " in line and "slirp4netns" in line for line in warnings), warnings
    assert log.count("sandbox-kernel on this host: ") == 1, log[-4000:]
    assert log.count("SANDBOX DEGRADED on this host") == 1 and "not a security boundary" in log
def test_a_refused_kernel_says_why(tmp_path):
    from .kernels import path_without

    path = path_without(tmp_path / "path-without-bwrap", "bwrap")
    with running_server(tmp_path / "server", env={"PATH": path}) as server:
        code, body = server.request("POST", "/api/kernels", {"name": "python3-sandboxed"})
    assert code == 503, body
    assert body["reason"] == "Sandbox unavailable" and "filesystem confinement needs bwrap" in body["message"], body
