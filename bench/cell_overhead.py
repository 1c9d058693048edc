"""Round trip of a `%%sh true` cell in a sandboxed kernel vs the same cell run unsandboxed
(a plain subprocess from the same kernel), medians over N runs, same kernel, same run.

    .venv/bin/python bench/cell_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PLAIN = "import subprocess\nsubprocess.run(['/bin/sh', '-s'], input=b'true\\n', check=True)"
SANDBOXED = "%%sh\ntrue"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    from jupyter_client.manager import KernelManager

    from sandbox_kernel.kernelspec import kernelspec

    with tempfile.TemporaryDirectory() as tmp:
        kdir = Path(tmp) / "kernels" / "bench-sandboxed"
        kdir.mkdir(parents=True)
        (kdir / "kernel.json").write_text(json.dumps(kernelspec()))
        os.environ.update(JUPYTER_PATH=tmp, JUPYTER_CONFIG_DIR=str(Path(tmp) / "cfg"))
        km = KernelManager(kernel_name="bench-sandboxed")
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        try:
            times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
            for code in (PLAIN, SANDBOXED):  # warm-up
                kc.execute_interactive(code, timeout=30)
            for _ in range(args.runs):  # interleaved
                for name, code in (("plain", PLAIN), ("sandboxed", SANDBOXED)):
                    t0 = time.perf_counter()
                    reply = kc.execute_interactive(code, timeout=30, output_hook=lambda m: None)
                    times[name].append(time.perf_counter() - t0)
                    assert reply["content"]["status"] == "ok", reply["content"]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    plain, sandboxed = statistics.median(times["plain"]), statistics.median(times["sandboxed"])
    print(f"cell round trip, median of {args.runs} (interleaved, one sandboxed kernel)")
    print(f"plain subprocess cell   {plain * 1000:8.1f} ms")
    print(f"%%sh true (sandboxed)   {sandboxed * 1000:8.1f} ms")
    print(f"overhead                {(sandboxed - plain) * 1000:8.1f} ms   ratio {sandboxed / plain:.2f}   (goal: overhead <= 15 ms)")


if __name__ == "__main__":
    main()
