"""The ``python3-sandboxed`` kernelspec: ipykernel started by the sandbox provisioner."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from .policy import load_policy_file, read_policy_data

KERNEL_NAME = "python3-sandboxed"
PROVISIONER_NAME = "sandbox-provisioner"


def kernelspec(python: str = sys.executable, policy_file: str | None = None) -> dict:
    config: dict = {}
    if policy_file:
        load_policy_file(policy_file)  # validate now: a bad file must fail at install, not at start
        config = read_policy_data(policy_file)
    return {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (sandboxed)",
        "language": "python",
        # bwrap does not forward SIGINT: interrupts travel as control messages.
        "interrupt_mode": "message",
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
        },
    }


def install(name: str = KERNEL_NAME, user: bool = False, sys_prefix: bool = False,
            policy_file: str | None = None) -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = kernelspec(policy_file=policy_file)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(spec, f, indent=2)
        return KernelSpecManager().install_kernel_spec(
            tmp, kernel_name=name, user=user, prefix=sys.prefix if sys_prefix else None, replace=True
        )

