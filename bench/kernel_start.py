"""Median start-to-ready time of a sandboxed kernel over a plain LocalProvisioner kernel,
measured in the same run (these machines are noisy: only the ratio means anything).

    .venv/bin/python bench/kernel_start.py [--runs N]

Runs inside a fresh network namespace of its own (loopback only) when started as root, so the
allowlist kernel's egress plumbing has nowhere real to go; no traffic is sent either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _kernelspecs(data: Path) -> None:
    from sandbox_kernel.kernelspec import kernelspec

    sandboxed = kernelspec()
    plain = {k: v for k, v in sandboxed.items() if k != "metadata"}
    plain["display_name"] = "plain"
    allow = json.loads(json.dumps(sandboxed))
    allow["metadata"]["kernel_provisioner"]["config"] = {}
    for name, spec in (("bench-plain", plain), ("bench-deny", sandboxed), ("bench-allowlist", allow)):
        (data / "kernels" / name).mkdir(parents=True)
        (data / "kernels" / name / "kernel.json").write_text(json.dumps(spec))


def _start_to_ready(name: str, config_dir: Path, allowlist: bool) -> float:
    from jupyter_client.manager import KernelManager

    cfg = config_dir / "jupyter_sandbox_kernel_config.py"
    cfg.write_text("c.SandboxPolicyConfig.network_mode = 'allowlist'\nc.SandboxPolicyConfig.network_allow = ['192.0.2.1:443']\n"
                   if allowlist else "")
    km = KernelManager(kernel_name=name)
    t0 = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    elapsed = time.perf_counter() - t0
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() == 0 and not args.inside:
        cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, __file__, "--runs", str(args.runs), "--inside"]
        sys.exit(subprocess.call(cmd))
    with tempfile.TemporaryDirectory() as tmp:
        data, config = Path(tmp) / "data", Path(tmp) / "config"
        config.mkdir()
        _kernelspecs(data)
        os.environ.update(JUPYTER_PATH=str(data), JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(Path(tmp) / "rt"))
        from sandbox_kernel.capabilities import detect

        detect()  # the probe is once per process: keep it out of the timings
        times: dict[str, list[float]] = {"plain": [], "deny": [], "allowlist": []}
        for _ in range(args.runs):  # interleaved, so drift hits every variant alike
            times["plain"].append(_start_to_ready("bench-plain", config, False))
            times["deny"].append(_start_to_ready("bench-deny", config, False))
            times["allowlist"].append(_start_to_ready("bench-allowlist", config, True))
    base = statistics.median(times["plain"])
    print(f"kernel start-to-ready, median of {args.runs} (interleaved)")
    print(f"{'variant':<11} {'median ms':>10} {'ratio':>7}  goal")
    for name, goal in (("plain", ""), ("deny", "<= 1.10"), ("allowlist", "<= 1.20")):
        med = statistics.median(times[name])
        print(f"{name:<11} {med * 1000:>10.0f} {med / base:>7.2f}  {goal}")


if __name__ == "__main__":
    main()
