"""Mount a kernel's inputs into its session scratch, once, inside the session's namespace.

Run as ``python -I -S mount_inputs.py`` under ``nsenter`` into a session's mount namespace
(never on the host's mounts), before anything untrusted has run in that session. Reads one
JSON request on stdin: ``{"scratch": dir, "identity": [uid, gid] | null, "binds": [[host
path, path under scratch], ...]}``; answers ``{"mounted": [...], "skipped": [[dest, why],
...]}`` on stdout.

Why not bwrap binds per run: bwrap re-reads the whole mount table for every mount it makes,
so N input binds cost O(N^2) at *every* kernel and cell start (measured: 100 binds +15 ms,
400 binds +450 ms, 800 binds +1.5 s). Mounted here once, the session's scratch carries them
and each sandbox binds the scratch (recursively) with one bwrap mount.

The tree is hostile (a batch tenant's notebook dir) and this runs as root: each source is
opened with every symlink refused on the way (openat2 RESOLVE_NO_SYMLINKS), as the sandbox's
uid and gid with no supplementary groups (what bwrap, running as that uid, could reach), and
the open file, not the path, is mounted. Targets are created by us in a tmpfs nothing else has
written to yet. Each mount is read-only, nosuid, nodev, not recursive (a host mount below an
input dir is not carried along). Stdlib only, no site-packages: this starts in ~20 ms.
"""

import ctypes
import json
import os
import stat
import sys

SYS_OPENAT2 = 437  # the same on x86_64 and aarch64
AT_FDCWD = -100
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS = 0x02, 0x04
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 8, 1024, 2048, 4096

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_no_symlinks(path: str) -> int:
    how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(SYS_OPENAT2, AT_FDCWD, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def mount(source, target: str, flags: int) -> None:
    if libc.mount(source and os.fsencode(source), os.fsencode(target), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def make_target(scratch: str, dest: str, is_dir: bool, identity) -> str:
    """Create the mount point (and its parents) under ``scratch``, owned by the sandbox."""
    parts = dest.rstrip("/").split("/")
    path = scratch
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        last = i == len(parts) - 1
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if last and not is_dir:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o444))
            else:
                os.mkdir(path, 0o755)
            if identity is not None:
                os.chown(path, *identity, follow_symlinks=False)
            continue
        if not stat.S_ISDIR(st.st_mode) and not (last and not is_dir and stat.S_ISREG(st.st_mode)):
            raise OSError(f"{path} exists and is not a directory")
    return path


def remount_flags(fd: int) -> int:
    """Read-only, nosuid, nodev, plus the source mount's noexec and atime flags (in a user
    namespace they are locked: a remount that clears them fails)."""
    f = os.fstatvfs(fd).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    flags |= MS_NOEXEC if f & ST_NOEXEC else 0
    flags |= MS_NOATIME if f & ST_NOATIME else 0
    flags |= MS_NODIRATIME if f & ST_NODIRATIME else 0
    flags |= MS_RELATIME if f & ST_RELATIME else 0
    return flags


def main() -> None:
    request = json.load(sys.stdin)
    scratch, identity = request["scratch"], request["identity"]
    if identity is not None:
        os.setgroups([])
    mounted, skipped = [], []
    for source, dest in request["binds"]:
        is_dir = dest.endswith("/")
        try:
            if identity is not None:  # open as the sandbox would: its uid, its group, no others
                os.setegid(identity[1])
                os.seteuid(identity[0])
            try:
                fd = open_no_symlinks(source)
            finally:
                if identity is not None:
                    os.seteuid(0)
                    os.setegid(0)
            try:
                mode = os.fstat(fd).st_mode
                if not (stat.S_ISDIR(mode) if is_dir else stat.S_ISREG(mode)):
                    raise OSError("it changed type since it was listed")
                target = make_target(scratch, dest, is_dir, identity)
                mount(f"/proc/self/fd/{fd}", target, MS_BIND)
                try:
                    mount(None, target, remount_flags(fd))
                except OSError:
                    libc.umount2(os.fsencode(target), MNT_DETACH)  # never leave it writable
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            skipped.append([dest, e.strerror or str(e)])
            continue
        mounted.append([source, dest])
    json.dump({"mounted": mounted, "skipped": skipped}, sys.stdout)


if __name__ == "__main__":
    main()
