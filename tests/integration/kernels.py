"""Helpers for tests that start sandboxed kernels through jupyter_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from jupyter_client.manager import KernelManager

from sandbox_kernel.kernelspec import KERNEL_NAME, kernelspec

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

    # ipykernel aborts execute requests that reach it while it is still winding down after an
    # error (the previous cell's KeyboardInterrupt, say): on a loaded machine the next request
    # can land in that window. Such a request never ran; send it again.
    for _ in range(5):
        reply = kc.execute_interactive(textwrap.dedent(code), timeout=timeout, output_hook=hook)
        if reply["content"]["status"] != "aborted":
            break
    return "".join(out), reply


def shell_reply(kc, msg_id: str, timeout: float = 20) -> dict:
    """The shell reply to ``msg_id``. On a loaded machine ``wait_for_ready`` may have sent a
    second kernel_info request before the first reply came; its late reply is skipped here."""
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id or reply["msg_type"] != "kernel_info_reply":
            return reply


@contextmanager
def running_kernel(name: str = KERNEL_NAME, **km_kwargs):
    km = KernelManager(kernel_name=name, **km_kwargs)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


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


def path_without(tmp_dir: Path, *hidden: str) -> str:
    """A PATH made of symlinks to every tool on the current PATH (plus sbin) except ``hidden``:
    what a host without those tools looks like to the capability probe."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    dirs = os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = tmp_dir / name
            if name in hidden or link.exists():
                continue
            target = os.path.join(d, name)
            if os.path.isfile(target) and os.access(target, os.X_OK):
                link.symlink_to(target)
    return str(tmp_dir)


def sandbox_processes(uid: int = 65532) -> list[int]:
    """PIDs currently owned by the sandbox account."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                continue
    return pids
