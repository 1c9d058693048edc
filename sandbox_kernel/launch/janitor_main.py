"""The supervisor's janitor: one process per supervisor that removes what the supervisor's runs
leave behind if the supervisor dies without cleaning up (SIGKILL, OOM kill, crash).

Run as ``python -I -S janitor_main.py FD``, FD one end of a SOCK_SEQPACKET socketpair whose
other end only the supervisor holds (launch/janitor.py). Each message is one JSON object:

- ``{"op": "watch", "id": ID, "cgroups": [...], "paths": [...]}``, with at most one descriptor
  attached (a uid lease's: holding a copy keeps the lease's lock until the cleanup is done);
- ``{"op": "forget", "id": ID}``: the supervisor cleaned up itself; the copy is closed;
- ``{"op": "clean", "id": ID}``: something was still busy; remove it now, in the background.

On EOF (the supervisor is gone, however it went) it removes everything it still watches:
SIGKILL whatever is left in each cgroup and remove it, retrying for up to a minute (a process
can take a moment to leave), then remove the paths (dirs, or files such as a lease file,
while the lease's lock is still held), then close the descriptors, and exit.
"""

import array
import json
import os
import shutil
import signal
import socket
import stat
import sys
import threading
import time

MAX_MESSAGE = 65536
CGROUP_TRIES_SECONDS = 60.0


def clean(cgroups, paths, fds):
    deadline = time.monotonic() + CGROUP_TRIES_SECONDS
    left = list(cgroups)
    while left:
        for cg in list(left):
            try:
                with open(os.path.join(cg, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.rmdir(cg)
                left.remove(cg)
            except FileNotFoundError:
                left.remove(cg)
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for path in paths:
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass
    for fd in fds:
        os.close(fd)


def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    watched = {}
    workers = []
    while True:
        try:
            msg, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4))
        except InterruptedError:
            continue
        except OSError:
            break
        received = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(data[:len(data) - len(data) % received.itemsize])
        fds = list(received)
        if not msg:
            for fd in fds:
                os.close(fd)
            break
        try:
            req = json.loads(msg)
            op, key = req["op"], str(req["id"])
        except (ValueError, KeyError, TypeError):
            for fd in fds:
                os.close(fd)
            continue
        if op == "watch":
            old = watched.pop(key, None)
            if old is not None:
                for fd in old[2]:
                    os.close(fd)
            watched[key] = ([str(c) for c in req.get("cgroups", [])], [str(p) for p in req.get("paths", [])], fds)
            continue
        for fd in fds:
            os.close(fd)
        entry = watched.pop(key, None)
        if entry is None:
            continue
        if op == "clean":
            worker = threading.Thread(target=clean, args=entry)
            worker.start()
            workers.append(worker)
        else:  # forget
            for fd in entry[2]:
                os.close(fd)
        workers = [w for w in workers if w.is_alive()]
    for entry in watched.values():
        worker = threading.Thread(target=clean, args=entry)
        worker.start()
        workers.append(worker)
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
