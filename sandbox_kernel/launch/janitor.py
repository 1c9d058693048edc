"""One janitor per supervisor (``janitor_main.py``): told, before they exist, what a run, a
kernel or a cache is about to create (cgroups, dirs, a uid lease's file and a copy of its
lock), it removes them if the supervisor dies without doing so itself.

Telling it is one message on a socketpair. A janitor per run was a shell spawned beside every
sandbox, which on a loaded host competed with the sandbox's own start (3.7-4.4 ms a launch,
bench/launch_chain.py). A lease's lock travels to it as a descriptor (SCM_RIGHTS): while it
holds the copy, the uid is not handed out again, even after the supervisor is gone, until the
cleanup is done.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import socket
import subprocess
import sys
import threading

MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "janitor_main.py")
SEND_TIMEOUT = 10.0  # seconds; the janitor reads at once, a full socket buffer means it is stuck


class Janitor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._owner = 0  # the pid that started it: a forked child needs its own
        self._ids = itertools.count(1)
        self._watched: dict[str, tuple[list[str], list[str], int | None]] = {}

    def watch(self, *, cgroups: list[str] = (), paths: list[str] = (), lease=None) -> str:
        """Watch ``cgroups`` and ``paths`` (and ``lease``: its file is removed and its lock held
        until then). Returns the token for :meth:`forget` or :meth:`clean`."""
        key = str(next(self._ids))
        entry = (list(cgroups), [*paths, *([lease.path] if lease is not None else [])],
                 lease.fd if lease is not None else None)
        with self._lock:
            self._watched[key] = entry
            self._send_watch(key, entry)
        return key

    def forget(self, key: str) -> None:
        """Cleaned up by the supervisor itself: the janitor drops it (and its copy of the lock)."""
        self._finish(key, "forget")

    def clean(self, key: str) -> None:
        """Something of it is still busy: the janitor removes it all now, in the background."""
        self._finish(key, "clean")

    def watching(self) -> int:
        with self._lock:
            return len(self._watched)

    def close(self) -> None:
        """EOF: the janitor removes what it still watches and exits (a supervisor shutting down)."""
        with self._lock:
            proc, sock, self._proc, self._sock = self._proc, self._sock, None, None
            if proc is not None and self._owner == os.getpid():
                sock.close()
                proc.wait()

    def _finish(self, key: str, op: str) -> None:
        with self._lock:
            if self._watched.pop(key, None) is not None and self._alive():
                try:
                    self._send({"op": op, "id": key})
                except OSError:  # it died: the next watch() starts another, told only what is still watched
                    pass

    def _alive(self) -> bool:
        return self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None

    def _send_watch(self, key: str, entry) -> None:
        if self._alive():
            try:
                self._send({"op": "watch", "id": key, "cgroups": entry[0], "paths": entry[1]}, entry[2])
                return
            except OSError:  # it died (or is stuck): a new one
                pass
        self._start()  # tells the new one everything watched, this entry included

    def _start(self) -> None:
        """A janitor (the first, or after one died): told everything watched."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", MAIN, str(theirs.fileno())], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env={},
                                          pass_fds=(theirs.fileno(),), start_new_session=True)  # in no run's process group
        ours.settimeout(SEND_TIMEOUT)
        self._sock, self._owner = ours, os.getpid()
        for key, entry in self._watched.items():
            self._send({"op": "watch", "id": key, "cgroups": entry[0], "paths": entry[1]}, entry[2])

    def _send(self, message: dict, fd: int | None = None) -> None:
        data = json.dumps(message).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())] if fd is not None else []
        self._sock.sendmsg([data], ancillary)


JANITOR = Janitor()
