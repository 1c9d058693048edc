"""Peak RSS of the `sandbox-kernel run` process under a 1 GB mixed output flood, against the same
runner executing a quiet notebook of the same shape, measured in the same run. Each runner runs
inside a memory cgroup (a runner that held the flood would be killed there, not take the host
down) and reports its own ru_maxrss; kernels and cells are separate processes, not counted.

    .venv/bin/python bench/output_flood.py [--rounds 2] [--large-cap]

The flood (secure default policy: 5 MiB per cell, 20 MiB per notebook), about 1 GB sent by the
kernel in total: stream floods of short lines and of long prints, displays with 1 MiB of
metadata, forged error messages with 2 MiB tracebacks, display updates rewriting 200 outputs,
multipart messages of 1 MiB frames, and `%%sh yes`. ``--large-cap`` adds `%%sh yes` under the
largest cap the policy accepts (max_output_bytes = 1G), then an endless print of short lines under
the same cap, each against the goal of at most 2 x cap + 100 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.runner_memory import run_measured  # noqa: E402

MiB = 2**20

SEND = "k = get_ipython().kernel\nparent = k.get_parent('shell')\n"
FLOOD = [
    # ~200 MB of short lines, ~100 MB of long prints
    "for i in range(2_000_000):\n    print('y' * 99)",
    "for i in range(100):\n    print('L' * 2**20)",
    # ~200 MB of display metadata
    "from IPython.display import display\nfor i in range(200):\n"
    "    display({'text/plain': 'x'}, metadata={'pad': 'A' * 2**20}, raw=True)",
    # ~200 MB of forged error messages
    SEND + "for i in range(100):\n    k.session.send(k.iopub_socket, 'error', "
    "{'ename': 'E', 'evalue': 'v', 'traceback': ['T' * 2 * 2**20]}, parent=parent, ident=b'error')",
    # ~200 MB of display updates: 200 outputs share one display id, then 1 MiB updates
    "from IPython.display import display, update_display\nh = display('x', display_id=True)\n"
    "for i in range(200):\n    display('y', display_id=h.display_id)\n"
    "for i in range(200):\n    update_display({'text/plain': 'U' * 2**20}, display_id=h.display_id, raw=True)",
    # ~100 MB of multipart messages
    "k = get_ipython().kernel\nframe = b'x' * 2**20\nfor i in range(5):\n"
    "    k.iopub_socket.send_multipart([frame] * 20, copy=False)",
    "%%sh\nyes",
]
QUIET = ["print('y')"] * (len(FLOOD) - 1) + ["%%sh\necho y"]


def write_notebook(path: Path, sources: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def measure(book: Path, tmp: Path, *extra) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc, peak, killed = run_measured(["run", book, "--allow-errors", "--output-dir", tmp / "out", *extra],
                                      limit_bytes=4096 * MiB, timeout=1800)
    if killed or proc.returncode not in (0, 1):
        raise SystemExit(f"{book.name}: runner failed (killed={killed}, rc={proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    return peak, time.perf_counter() - t0, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large-cap", action="store_true", help="also %%%%sh yes under max_output_bytes = 1G")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        quiet, flood = write_notebook(tmp / "quiet.ipynb", QUIET), write_notebook(tmp / "flood.ipynb", FLOOD)
        base, peak = [], []
        for _ in range(args.rounds):  # alternate, so drift hits both alike
            base.append(measure(quiet, tmp)[0])
            rss, seconds, table = measure(flood, tmp)
            peak.append(rss)
        b, p = min(base), max(peak)
        print(f"1 GB mixed output flood, secure default caps (5 MiB per cell, 20 MiB per notebook), {args.rounds} rounds")
        print(f"runner peak RSS, quiet notebook   {b / MiB:7.1f} MiB")
        print(f"runner peak RSS, flood            {p / MiB:7.1f} MiB   ({seconds:.0f} s)")
        print(f"growth                            {(p - b) / MiB:7.1f} MiB   (goal < 100 MiB)")
        print(f"ratio flood / quiet               {p / b:7.2f}")
        print(f"saved notebook                    {(tmp / 'out' / 'flood.ipynb').stat().st_size / MiB:7.1f} MiB")
        if args.large_cap:
            policy = tmp / "cap.toml"
            policy.write_text('[resources]\nmax_output_bytes = "1G"\nmemory_bytes = "3G"\n')
            b1 = measure(write_notebook(tmp / "yes-quiet.ipynb", ["%%sh\necho y"]), tmp, "--policy", policy)[0]
            print("\nfloods under max_output_bytes = 1G (the largest cap the policy accepts)")
            print(f"runner peak RSS, quiet            {b1 / MiB:7.1f} MiB")
            for name, source in (("%%sh yes", "%%sh\nyes"), ("print flood", "while True:\n    print('y' * 20)")):
                book = write_notebook(tmp / "large.ipynb", [source])
                rss, seconds, _ = measure(book, tmp, "--policy", policy)
                print(f"{name:12} peak RSS {rss / MiB:7.1f} MiB   growth {(rss - b1) / MiB:7.1f} MiB   x quiet {rss / b1:5.2f}   "
                      f"({seconds:.0f} s; goal <= 2 x cap + 100 MB = 2148 MiB); saved "
                      f"{(tmp / 'out' / 'large.ipynb').stat().st_size / MiB:.1f} MiB")


if __name__ == "__main__":
    main()
