"""Throughput of `sandbox-kernel run --jobs 2` over plain nbclient (two threads, the stock
python3 kernel) on the same 20 small notebooks, measured in the same run.

    .venv/bin/python bench/batch.py [--notebooks 20] [--jobs 2]
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
    parser.add_argument("--jobs", type=int, default=2)
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
        plain, sandboxed = [], []
        for r in range(args.rounds):  # alternate, so drift hits both alike
            for name, fn, acc in (("plain", plain_run, plain), ("sandboxed", sandboxed_run, sandboxed)):
                out = tmp / f"{name}{r}"
                out.mkdir()
                acc.append(fn(paths, args.jobs, out))
    p, s = min(plain), min(sandboxed)
    n = args.notebooks
    print(f"{n} notebooks, --jobs {args.jobs}, best of {args.rounds} rounds (alternating)")
    print(f"plain nbclient      {p:6.2f} s   {n / p:5.2f} notebooks/s")
    print(f"sandbox-kernel run  {s:6.2f} s   {n / s:5.2f} notebooks/s")
    print(f"throughput ratio    {p / s:6.2f}   (goal >= 0.85)")


if __name__ == "__main__":
    main()
