"""Helpers for tests that start sandboxed kernels through jupyter_client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from jupyter_client.manager import KernelManager

from sandbox_kernel.kernelspec import KERNEL_NAME, kernelspec
from sandbox_kernel.policy import DEFAULT_UID_RANGE

from .supervisors import in_outer_netns

REPO = Path(__file__).resolve().parents[2]


def write_kernelspec(data_dir: Path, name: str = KERNEL_NAME, **overrides) -> Path:
    spec = kernelspec()
    spec["metadata"]["kernel_provisioner"]["config"].update(overrides)
    d = data_dir / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps(spec))
    return d


def write_operator_config(config_dir: Path, **traits) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"c.SandboxPolicyConfig.{k} = {v!r}" for k, v in traits.items()]
    (config_dir / "jupyter_sandbox_kernel_config.py").write_text("\n".join(lines) + "\n")


def execute(kc, code: str, timeout: float = 30) -> tuple[str, dict]:
    """Run code, return (stdout+stderr text, execute_reply)."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    # stop_on_error=False: after a failing cell the kernel would otherwise abort requests that
    # reach it before it is done aborting, and on a loaded machine that can be the next cell.
    reply = kc.execute_interactive(textwrap.dedent(code), timeout=timeout, output_hook=hook, stop_on_error=False)
    return "".join(out), reply


def reply_to(kc, msg_id: str, timeout: float = 30) -> dict:
    """The shell reply to ``msg_id``. Skips earlier replies: ``wait_for_ready`` re-sends
    kernel_info every second until one is answered, so on a loaded machine a stray
    kernel_info_reply may still be queued ahead of the one a test waits for."""
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


@contextmanager
def running_kernel(name: str = KERNEL_NAME, **km_kwargs):
    km = KernelManager(kernel_name=name, **km_kwargs)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        settle_shell(kc)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def settle_shell(kc, timeout: float = 30) -> None:
    """Consume the shell replies wait_for_ready left behind. On a loaded machine it sends
    kernel_info more than once (it retries after 1 s), and a late extra reply would be taken
    for the answer to a test's next request. The kernel answers in order: once the reply to a
    fresh request is in, nothing older is pending."""
    msg_id = kc.kernel_info()
    while kc.get_shell_msg(timeout=timeout)["parent_header"].get("msg_id") != msg_id:
        pass


def run_in_outer_netns(script: str, *, env: dict | None = None, timeout: float = 120) -> dict:
    """Run a Python script as a separate supervisor inside a test-made network namespace (see
    supervisors.in_outer_netns): whatever the sandbox's egress does, nothing can reach the
    machine's real network. The script prints one JSON object on its last stdout line."""
    cmd = in_outer_netns([sys.executable, "-c", textwrap.dedent(script)])
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = full_env.get("PATH", "") + ":/usr/sbin:/sbin"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(REPO))
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"scenario failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


SYSTEM_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def path_without(tmp_dir: Path, *hidden: str) -> str:
    """A PATH made of one dir, ``tmp_dir``, of symlinks to every executable on the current
    PATH and in the system bin dirs except ``hidden``: this host as it would look to the
    capability probe without those tools."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for d in [*os.environ.get("PATH", "").split(os.pathsep), *SYSTEM_BIN_DIRS]:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target, link = os.path.join(d, name), tmp_dir / name
            if name in hidden or link.exists() or link.is_symlink():
                continue
            if os.path.isfile(target) and os.access(target, os.X_OK):
                link.symlink_to(target)
    for tool in hidden:
        assert shutil.which(tool, path=str(tmp_dir)) is None
        assert shutil.which(tool) is not None, f"{tool} is not installed on this host (make setup installs it)"
    for tool in {"sh", "unshare", "setpriv", "prlimit"} - set(hidden):
        assert shutil.which(tool, path=str(tmp_dir)), tool
    return str(tmp_dir)


def leased_uid(text: str) -> bool:
    """The text says "uid N" with N from the default range a root supervisor leases one uid
    per kernel from."""
    m = re.search(r"uid (\d+)", text)
    return bool(m) and DEFAULT_UID_RANGE[0] <= int(m.group(1)) <= DEFAULT_UID_RANGE[1]
