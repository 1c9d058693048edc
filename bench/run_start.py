"""End to end: `sandbox-kernel run` of one trivial notebook vs papermill running it with the
stock python3 kernel, each a fresh process, interleaved, medians; plus how long the runner's
imports take on their own (`import sandbox_kernel.cli` + the executor, in a fresh process).

    .venv/bin/python bench/run_start.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SKIP = "from sandbox_kernel.startup import skip_unused_format_checkers as s; s(); "


def write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(nb, path)


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, (argv, proc.stderr[-2000:])
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not (BIN / "papermill").exists():
        sys.exit("papermill is not installed in this environment (pip install papermill)")
    with tempfile.TemporaryDirectory() as tmp:
        nb = Path(tmp) / "trivial.ipynb"
        write_notebook(nb)
        commands = {
            "sandbox-kernel run": [str(BIN / "sandbox-kernel"), "run", str(nb), "--output-dir", str(Path(tmp) / "out")],
            "papermill": [str(BIN / "papermill"), "-k", "python3", str(nb), str(Path(tmp) / "pm.ipynb")],
            "runner imports": [sys.executable, "-c", SKIP + "import sandbox_kernel.cli, sandbox_kernel.executor"],
            "runner imports, all format checkers": [sys.executable, "-c", "import sandbox_kernel.cli, sandbox_kernel.executor"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        load = os.getloadavg()[0]
        for argv in commands.values():  # warm-up: page cache
            timed(argv)
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv))
                shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"one trivial notebook end to end, medians of {args.runs} (interleaved, fresh processes); "
          f"load average at start {load:.2f} on {os.cpu_count()} CPUs")
    run = med["sandbox-kernel run"]
    print(f"sandbox-kernel run     {run:6.2f} s   {run / med['papermill']:.2f}x papermill (goal <= 0.8x)")
    print(f"papermill              {med['papermill']:6.2f} s")
    print(f"runner imports alone   {med['runner imports']:6.2f} s   {med['runner imports'] / med['python -c pass']:.1f}x `python -c pass` "
          f"({med['python -c pass'] * 1000:.0f} ms)")
    print(f"  same, format checkers  {med['runner imports, all format checkers']:6.2f} s   "
          f"{med['runner imports, all format checkers'] / med['python -c pass']:.1f}x `python -c pass` (as before the skip)")


if __name__ == "__main__":
    main()
