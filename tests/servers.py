"""A real ``jupyter server`` / ``jupyter lab`` for tests: on 127.0.0.1, with a token, in its
own Jupyter dirs (the sandboxed kernelspec written there, the operator config empty unless a
test writes one), stopped (kernels and all) when the test ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jupyter_server.auth import Authorizer

from sandbox_kernel.kernelspec import KERNEL_NAME, kernelspec

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0  # seconds: two shared cores, other sessions' tests beside ours


@dataclass
class Server:
    url: str
    token: str
    root: Path
    config_dir: Path
    log: Path

    def request(self, method: str, path: str, body: dict | None = None, token: str | None = "",
                timeout: float = 120) -> tuple[int, dict | None]:
        """(status, JSON body) of ``method path``; ``token=None`` sends no credentials."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"token {token or self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, None

    def get(self, path: str, **kw) -> tuple[int, dict | None]:
        return self.request("GET", path, **kw)

    def shutdown_kernels(self) -> None:
        status, kernels = self.get("/api/kernels")
        for k in kernels or []:
            self.request("DELETE", f"/api/kernels/{k['id']}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_sandboxed_kernelspec(data_dir: Path) -> None:
    d = data_dir / "kernels" / KERNEL_NAME
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps(kernelspec()))


@contextmanager
def running_server(base: Path, app: str = "jupyter_server", *, env: dict | None = None, args: tuple = (),
                   operator_config: str = ""):
    """Start ``python -m <app>`` with its own Jupyter dirs under ``base``; yield a Server."""
    root, data, config = base / "root", base / "data", base / "config"
    for d in (root, data, config):
        d.mkdir(parents=True, exist_ok=True)
    write_sandboxed_kernelspec(data)
    if operator_config:
        (config / "jupyter_sandbox_kernel_config.py").write_text(operator_config)
    # No update or news checks: the browser and the server talk to 127.0.0.1 only.
    (config / "jupyter_server_config.py").write_text(
        "c.LabApp.news_url = None\n"
        "c.LabApp.check_for_updates_class = 'jupyterlab.NeverCheckForUpdate'\n")
    (config / "labconfig").mkdir(exist_ok=True)
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = free_port(), uuid.uuid4().hex
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    full_env.update(JUPYTER_PATH=str(data), JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
                    **(env or {}))
    log = base / f"{app}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", app, f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
             "--no-browser", "--allow-root", f"--ServerApp.root_dir={root}", *args],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(root), env=full_env)
    server = Server(f"http://127.0.0.1:{port}", token, root, config, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"{app} exited:\n{log.read_text()[-4000:]}"
            try:
                if server.get("/api/status", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{app} did not answer in {START_TIMEOUT} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            try:
                server.shutdown_kernels()
            except OSError:
                pass
            proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down, then exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class KernelsOnlyAuthorizer(Authorizer):
    """A deployment's granular authorizer (say JupyterHub scopes): this user may use kernels
    and read the server's APIs, but not read server-level (operator) resources."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        return resource != "server"
