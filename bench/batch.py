"""Throughput of `sandbox-kernel run --jobs N` over plain nbclient (N threads, the stock
python3 kernel) on the same 20 small notebooks, at N = 1, 2 and 4, measured in the same run.

    .venv/bin/python bench/batch.py [--notebooks 20] [--jobs 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_notebooks(directory: Path, count: int) -> list[Path]:
    import nbformat

    paths = []
    for i in range(count):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "bench-plain", "display_name": "plain", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(f"import math\nprint(sum(math.sqrt(k) for k in range({i} * 1000)))"),
                    nbformat.v4.new_code_cell("x = [n * n for n in range(10000)]\nprint(len(x))")]
        path = directory / f"nb{i:02d}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def plain_run(paths: list[Path], jobs: int, out: Path) -> float:
    import nbformat
    from nbclient import NotebookClient

    def one(path: Path) -> None:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, kernel_name="bench-plain", resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, out / path.name)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - t0


def sandboxed_run(paths: list[Path], jobs: int, out: Path) -> float:
    from sandbox_kernel.executor import run_batch
    from sandbox_kernel.policy import secure_default

    t0 = time.perf_counter()
    results = run_batch([str(p) for p in paths], policy=secure_default(), output_dir=str(out), jobs=jobs)
    elapsed = time.perf_counter() - t0
    bad = [r for r in results if r.status != "ok"]
    assert not bad, bad
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notebooks", type=int, default=20)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.kernelspec import kernelspec

    detect()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = {k: v for k, v in kernelspec().items() if k != "metadata"}
        (tmp / "kernels" / "bench-plain").mkdir(parents=True)
        (tmp / "kernels" / "bench-plain" / "kernel.json").write_text(json.dumps(spec))
        os.environ.update(JUPYTER_PATH=str(tmp), JUPYTER_CONFIG_DIR=str(tmp / "cfg"))
        (tmp / "in").mkdir()
        paths = make_notebooks(tmp / "in", args.notebooks)
        times: dict[tuple[str, int], list[float]] = {}
        load = os.getloadavg()[0]
        for r in range(args.rounds):  # alternate, so drift hits both alike
            for jobs in args.jobs:
                for name, fn in (("plain", plain_run), ("sandboxed", sandboxed_run)):
                    out = tmp / f"{name}{r}-{jobs}"
                    out.mkdir()
                    times.setdefault((name, jobs), []).append(fn(paths, jobs, out))
    n = args.notebooks
    print(f"{n} notebooks, best of {args.rounds} rounds (alternating); load average at start {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':8} {'plain nbclient':>22} {'sandbox-kernel run':>22} {'throughput ratio':>17}")
    for jobs in args.jobs:
        p, s = min(times[("plain", jobs)]), min(times[("sandboxed", jobs)])
        print(f"jobs {jobs:<3} {p:7.2f} s {n / p:6.2f} nb/s   {s:7.2f} s {n / s:6.2f} nb/s   {p / s:16.2f}")
    print("goal: --jobs 2 throughput >= 1.2x plain nbclient")


if __name__ == "__main__":
    main()
