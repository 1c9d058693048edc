"""The ``python3-sandboxed`` kernelspec: ipykernel started by the sandbox provisioner."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from .policy import SandboxPolicy, load_policy_file, read_policy_data, tighten

KERNEL_NAME = "python3-sandboxed"
DISPLAY_NAME = "Python 3 (sandboxed)"
PROVISIONER_NAME = "sandbox-provisioner"
LOGOS = ("logo-svg.svg", "logo-32x32.png", "logo-64x64.png")  # drawn by resources/make_logos.py


def kernelspec(python: str = sys.executable, policy_file: str | None = None, display_name: str = DISPLAY_NAME,
               env: dict[str, str] | None = None, operator: SandboxPolicy | None = None) -> dict:
    """The kernel.json. ``policy_file``'s keys become the provisioner's (tighten-only) config;
    they are checked now against ``operator`` (the operator's policy) with the same
    ``tighten`` a kernel start runs, so a loosening file fails here with the same message."""
    config: dict = {}
    if policy_file:
        load_policy_file(policy_file)  # validate now: a bad file must fail at install, not at start
        config = read_policy_data(policy_file)
        if operator is not None:
            tighten(operator, config)
    spec = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        # bwrap does not forward SIGINT: interrupts travel as control messages.
        "interrupt_mode": "message",
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
        },
    }
    if env:
        spec["env"] = dict(env)
    return spec


def install(name: str = KERNEL_NAME, user: bool = False, sys_prefix: bool = False,
            policy_file: str | None = None, prefix: str | None = None, display_name: str = DISPLAY_NAME,
            env: dict[str, str] | None = None, operator: SandboxPolicy | None = None) -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = kernelspec(policy_file=policy_file, display_name=display_name, env=env, operator=operator)
    resources = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=2)
        for logo in LOGOS:
            shutil.copyfile(os.path.join(resources, logo), os.path.join(tmp, logo))
        return KernelSpecManager().install_kernel_spec(
            tmp, kernel_name=name, user=user, prefix=sys.prefix if sys_prefix else prefix, replace=True
        )

