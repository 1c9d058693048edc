"""Throwaway system accounts for a test: created, then removed with everything of theirs."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess


@contextlib.contextmanager
def system_user(prefix: str, home: bool = False):
    """A fresh account ``<prefix><pid>`` (a home dir 0700 under /home if ``home``); yields its
    passwd entry and removes it (and the home) afterwards."""
    name = f"{prefix}{os.getpid()}"  # the pid: traces.py tells our delegated cgroups by it
    assert len(name) <= 32, name
    args = ["useradd", "--user-group", "--shell", "/usr/sbin/nologin"]
    args += ["--create-home", "--home-dir", f"/home/{name}"] if home else ["--no-create-home", "--home-dir", "/nonexistent"]
    subprocess.run([*args, name], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        if home:
            os.chmod(entry.pw_dir, 0o700)
        yield entry
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        if home:
            shutil.rmtree(f"/home/{name}", ignore_errors=True)
