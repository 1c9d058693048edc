"""Round trip of sandboxed cells in a sandboxed kernel vs the same cell unsandboxed (a plain
subprocess from the same kernel), medians over N runs, same kernel, same run, interleaved.

    .venv/bin/python bench/cell_overhead.py [--runs N] [--gap SECONDS] [--input-files N]

Rows:
- spaced: each cell after a pause of --gap seconds (a person running cells one by one);
- back to back: blocks of cells sent one after the other, as "Run all" does;
- cold with options: `%%sh --memory <M> true`, M different each time (never started ahead);
- recurring options: `%%sh --memory 256M true` again and again (one sandbox started ahead);
- `%%sandbox pass` / `%%node 1` against a plain subprocess of the same interpreter;
these last rows also after a --gap pause, so no row pays for the start of the sandbox that
replaces one used by the row before.
Every row prints its ratio to the plain cell measured in the same pattern, interleaved.
The kernel's working dir is an empty dir, or with --input-files N one holding N files beside a
dotfile (so each is an input of its own, mounted into the kernel session's scratch).
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

PLAIN = "import subprocess\nsubprocess.run(['true'], check=True)"
PLAIN_PY = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)"
PLAIN_NODE = "import subprocess\nsubprocess.run(['node', '-e', '1'], check=True)"
SH = "%%sh\ntrue"
SH_COLD = "%%sh --memory 256M\ntrue"
BLOCK = 5  # cells per back-to-back block


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.5, help="pause before each spaced cell")
    parser.add_argument("--input-files", type=int, default=0, help="files in the kernel's working dir")
    args = parser.parse_args()
    from jupyter_client.manager import KernelManager

    from sandbox_kernel.kernelspec import kernelspec

    with tempfile.TemporaryDirectory() as tmp:
        kdir = Path(tmp) / "kernels" / "bench-sandboxed"
        kdir.mkdir(parents=True)
        (kdir / "kernel.json").write_text(json.dumps(kernelspec()))
        os.environ.update(JUPYTER_PATH=tmp, JUPYTER_CONFIG_DIR=str(Path(tmp) / "cfg"))
        work = Path(tmp) / "work"
        (work / "data").mkdir(parents=True)
        os.chmod(tmp, 0o755)
        (work / "data" / ".hidden").write_text("x")
        for i in range(args.input_files):
            (work / "data" / f"f{i:04d}.csv").write_text("a,b\n")
        km = KernelManager(kernel_name="bench-sandboxed")
        km.start_kernel(cwd=str(work))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)

        def timed(code: str) -> float:
            t0 = time.perf_counter()
            reply = kc.execute_interactive(code, timeout=60, output_hook=lambda m: None)
            took = time.perf_counter() - t0
            assert reply["content"]["status"] == "ok", (code, reply["content"])
            return took

        times: dict[str, list[float]] = {}

        def add(name: str, took: float) -> None:
            times.setdefault(name, []).append(took)

        try:
            for code in (PLAIN, PLAIN_PY, PLAIN_NODE, SH, SH_COLD, "%%sandbox\npass", "%%node\n1"):  # warm-up
                timed(code)
            load = os.getloadavg()[0]
            for _ in range(args.runs):
                for name, code in (("plain spaced", PLAIN), ("sh spaced", SH)):
                    time.sleep(args.gap)
                    add(name, timed(code))
                for name, code in (("plain b2b", PLAIN), ("sh b2b", SH)):
                    for _ in range(BLOCK):
                        add(name, timed(code))
                cold = f"%%sh --memory {200 + len(times.get('plain', []))}M\ntrue"
                for name, code in (("plain", PLAIN), ("sh cold --memory", cold), ("sh recurring --memory", SH_COLD),
                                   ("plain python", PLAIN_PY),
                                   ("sandbox pass", "%%sandbox\npass"), ("plain node", PLAIN_NODE), ("node 1", "%%node\n1")):
                    time.sleep(args.gap)  # the previous cell's replacement sandbox is not measured here
                    add(name, timed(code))
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"cell round trip, medians of {args.runs} rounds (interleaved, one sandboxed kernel, "
          f"{args.input_files} input files); load average at start {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':44} {'median ms':>10} {'peer ms':>9} {'+ms':>7} {'ratio':>6}")
    for name, peer, label in (
            ("sh spaced", "plain spaced", f"%%sh true, spaced {args.gap} s"),
            ("sh b2b", "plain b2b", f"%%sh true, back to back ({BLOCK} a block)"),
            ("sh cold --memory", "plain", "%%sh --memory <M> true (cold)"),
            ("sh recurring --memory", "plain", "%%sh --memory 256M true (recurring)"),
            ("sandbox pass", "plain python", "%%sandbox pass"),
            ("node 1", "plain node", "%%node 1")):
        ms, peer_ms = med[name], med[peer]
        print(f"{label:44} {ms:>10.1f} {peer_ms:>9.1f} {ms - peer_ms:>7.1f} {ms / peer_ms:>6.2f}")
    print("goals: %%sh true +10 ms at most; %%sandbox pass 1.5x at most")


if __name__ == "__main__":
    main()
