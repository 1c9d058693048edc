"""Throughput of `sandbox-kernel run --jobs N` over plain nbclient (N threads, the stock
python3 kernel) on the same 20 small notebooks, at N = 1, 2 and 4, measured in the same run:
rounds interleaved (the order of the variants rotates each round), the ratio of plain
nbclient's wall time to ours per round, and the median of those ratios. ``--ahead 0 1``
also runs ours with that many kernels started ahead at most (``run_batch(ahead=N)``; 0: none)
to show what the default saves or costs.

    .venv/bin/python bench/batch.py [--notebooks 20] [--jobs 1 2 4] [--rounds 3] [--ahead N ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def sandboxed_run(paths: list[Path], jobs: int, out: Path, ahead: int | None = None) -> float:
    from sandbox_kernel.executor import run_batch
    from sandbox_kernel.policy import secure_default

    t0 = time.perf_counter()
    results = run_batch([str(p) for p in paths], policy=secure_default(), output_dir=str(out), jobs=jobs, ahead=ahead)
    elapsed = time.perf_counter() - t0
    bad = [r for r in results if r.status != "ok"]
    assert not bad, bad
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--notebooks", type=int, default=20)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ahead", type=int, nargs="*", default=[], help="also run ours with at most N kernels started ahead")
    args = parser.parse_args()
    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.kernelspec import kernelspec

    detect()
    variants = {"plain": plain_run, "sandboxed": sandboxed_run}
    for n in args.ahead:
        variants[f"ahead={n}"] = lambda paths, jobs, out, n=n: sandboxed_run(paths, jobs, out, ahead=n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = {k: v for k, v in kernelspec().items() if k != "metadata"}
        (tmp / "kernels" / "bench-plain").mkdir(parents=True)
        (tmp / "kernels" / "bench-plain" / "kernel.json").write_text(json.dumps(spec))
        os.environ.update(JUPYTER_PATH=str(tmp), JUPYTER_CONFIG_DIR=str(tmp / "cfg"))
        (tmp / "in").mkdir()
        paths = make_notebooks(tmp / "in", args.notebooks)
        times: dict[tuple[str, int], list[float]] = {}
        loads = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for jobs in args.jobs:
                names = list(variants)
                names = names[r % len(names):] + names[:r % len(names)]  # rotate: drift hits each alike
                for name in names:
                    out = tmp / f"{name.replace('=', '-')}{r}-{jobs}"
                    out.mkdir()
                    times.setdefault((name, jobs), []).append(variants[name](paths, jobs, out))
            loads.append(os.getloadavg()[0])
    n = args.notebooks
    print(f"{n} notebooks, {args.rounds} interleaved rounds; load average {min(loads):.2f}-{max(loads):.2f} "
          f"on {os.cpu_count()} CPUs")
    print("throughput ratio = plain nbclient wall time / ours (> 1: ours is faster); per round, then the median")
    for jobs in args.jobs:
        plain = times[("plain", jobs)]
        for name in variants:
            if name == "plain":
                continue
            ours = times[(name, jobs)]
            ratios = [p / s for p, s in zip(plain, ours)]
            print(f"jobs {jobs:<2} {name:10} plain {statistics.median(plain):6.2f} s  ours {statistics.median(ours):6.2f} s  "
                  f"ratio per round {' '.join(f'{x:.2f}' for x in ratios)}  median {statistics.median(ratios):.2f}x")
    print("goal: --jobs 2 throughput >= 1.2x plain nbclient")


if __name__ == "__main__":
    main()
