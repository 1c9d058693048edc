"""Run ``sandbox-kernel`` as a separate process and measure its own peak RSS, inside a memory
cgroup, so that a runner that does not bound what it holds is killed in its cgroup instead
of taking the shared machine down with it. Used by the flood tests and ``bench/``.

Peak RSS is the runner's own: ``VmHWM`` of its process (all threads), read at exit. Not
``ru_maxrss``, which keeps the high-water mark of the process it was forked from (a large
pytest process) across exec. Kernels and cells are other processes and are not counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager

from sandbox_kernel.host import CGROUP_PARENT

MEMORY_HIERARCHY = "/sys/fs/cgroup/memory"

_WRAPPER = """
import atexit, runpy, sys
peak_file = sys.argv[1]
def write_peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as f:
        f.write(str(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))))
atexit.register(write_peak)
sys.argv = ["sandbox-kernel", *sys.argv[2:]]
runpy.run_module("sandbox_kernel.cli", run_name="__main__")
"""


@contextmanager
def memory_cgroup(limit_bytes: int):
    """A v1 memory cgroup (a sibling of the run cgroups, not one of them) removed afterwards."""
    parent = os.path.join(MEMORY_HIERARCHY, CGROUP_PARENT)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f"runner-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(limit_bytes))
        yield path
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def oom_killed(cgroup: str) -> bool:
    with open(os.path.join(cgroup, "memory.oom_control")) as f:
        counts = dict(line.split() for line in f if line.strip())
    return int(counts.get("oom_kill", 0)) > 0


def run_measured(args: list[str], *, limit_bytes: int, timeout: float = 600) -> tuple[subprocess.CompletedProcess, int, bool]:
    """(completed process, the runner's peak RSS in bytes, killed by its cgroup's OOM killer)."""
    with memory_cgroup(limit_bytes) as cgroup, tempfile.NamedTemporaryFile("r") as peak:
        def join():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        proc = subprocess.run([sys.executable, "-c", _WRAPPER, peak.name, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, preexec_fn=join)
        killed = oom_killed(cgroup)
        text = peak.read()
    return proc, int(text) if text else 0, killed
