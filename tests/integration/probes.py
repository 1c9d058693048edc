"""Snippets of Python run *inside* sandboxes by several tests: one copy of each."""

from __future__ import annotations

# write(path) -> "ok", or the errno name of the failure ("EROFS", "EACCES", ...). Needs
# ``import errno`` in the code it is pasted into.
WRITE_PROBE = r"""
def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
"""
