"""What every probe shares: running a command with a deadline and describing its failure."""

from __future__ import annotations

import subprocess

PROBE_TIMEOUT = 10.0  # seconds any one probe command may take


def run(argv: list[str], timeout: float = PROBE_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=timeout, **kw)


def describe_failure(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or b"").decode(errors="replace").strip() or (proc.stdout or b"").decode(errors="replace").strip()
    return f"exit {proc.returncode}: {text[-400:]}" if text else f"exit {proc.returncode}"
