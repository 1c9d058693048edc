"""The prepared /etc (launch/etc.py) on the real host filesystem: what is copied, how, and when
a copy is made again. What the sandbox sees of it: test_launch_filesystem."""

from __future__ import annotations

import os
import shutil
import stat
import uuid

import pytest

from sandbox_kernel.launch.etc import EtcCache
from sandbox_kernel.planner.filesystem import STAGED_SUBDIR

pytestmark = pytest.mark.integration

STAGED = ("passwd", "group")


@pytest.fixture
def host_entry():
    """A directory in the host's /etc standing in for a curated entry (ssl, fonts)."""
    name = f"sandbox-test-etc-{uuid.uuid4().hex[:12]}"
    path = os.path.join("/etc", name)
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)
    with open(os.path.join(path, "bundle.pem"), "w") as f:
        f.write("old\n")
    os.chmod(os.path.join(path, "bundle.pem"), 0o644)
    try:
        yield name, path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def cache():
    made = EtcCache()
    yield made
    made.close()


def test_copies_readable_files_dirs_and_symlinks_only(cache, host_entry):
    name, path = host_entry
    os.symlink("/usr/share/zoneinfo/Etc/UTC", os.path.join(path, "link"))
    os.mkfifo(os.path.join(path, "fifo"))  # never opened: a copy would block on it
    with open(os.path.join(path, "private.key"), "w") as f:
        f.write("secret\n")
    os.chmod(os.path.join(path, "private.key"), 0o600)
    copy = cache.acquire((name, "sandbox-test-absent"), STAGED)
    try:
        here = os.path.join(copy.path, name)
        assert sorted(os.listdir(here)) == ["bundle.pem", "link"]
        assert os.readlink(os.path.join(here, "link")) == "/usr/share/zoneinfo/Etc/UTC"
        assert open(os.path.join(here, "bundle.pem")).read() == "old\n"
        # The staged files: links into the dir the run's staging dir is bound on.
        assert sorted(os.listdir(copy.path)) == sorted([name, STAGED_SUBDIR, *STAGED])
        assert os.listdir(os.path.join(copy.path, STAGED_SUBDIR)) == []
        assert os.readlink(os.path.join(copy.path, "passwd")) == f"{STAGED_SUBDIR}/passwd"
        for dirpath, dirnames, filenames in os.walk(copy.path):
            for entry in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                st = os.lstat(entry)
                if stat.S_ISLNK(st.st_mode):
                    continue  # a symlink's own mode means nothing
                assert st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), entry
        assert stat.S_IMODE(os.stat(copy.path).st_mode) == 0o755  # shared by every sandbox uid
    finally:
        cache.release(copy)


def test_reused_while_the_host_is_unchanged_and_made_again_after_an_update(cache, host_entry):
    name, path = host_entry
    first = cache.acquire((name,), STAGED)
    assert cache.acquire((name,), STAGED) is first  # same content: reused
    cache.release(first)
    # An update the way package managers and update-ca-certificates do it: new file, rename.
    with open(os.path.join(path, "bundle.pem.new"), "w") as f:
        f.write("new\n")
    os.rename(os.path.join(path, "bundle.pem.new"), os.path.join(path, "bundle.pem"))
    second = cache.acquire((name,), STAGED)
    try:
        assert second.path != first.path
        assert open(os.path.join(second.path, name, "bundle.pem")).read() == "new\n"
        # The old copy stays while a run holds it, and goes with its last release.
        assert os.path.isdir(first.path)
        cache.release(first)
        assert not os.path.exists(first.path)
        other = cache.acquire((name, "sandbox-test-absent"), STAGED)
        assert other.path != second.path  # other entries (another filesystem mode), other copy
        cache.release(other)
    finally:
        cache.release(second)
    root = cache.root
    cache.close()
    assert not os.path.exists(root)


def test_staged_files_dir_per_identity_only_its_group_enters(cache, monkeypatch):
    files = {"passwd": "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n", "hostname": "sandbox\n"}
    gid = 4242 if os.geteuid() == 0 else os.getegid()
    first = cache.acquire_staged(files, gid)
    try:
        assert cache.acquire_staged(files, gid) is first  # a kernel's cells share their kernel's
        cache.release(first)
        assert {n: open(os.path.join(first.path, n)).read() for n in os.listdir(first.path)} == files
        st = os.stat(first.path)
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o750)
        else:
            assert stat.S_IMODE(st.st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(first.path, name)).st_mode) == 0o444
        other = cache.acquire_staged({**files, "hostname": "other\n"}, gid)
        assert other.path != first.path
        cache.release(other)
    finally:
        cache.release(first)
    # Unused ones go at the next launch once idle long enough; held ones stay.
    held = cache.acquire_staged({"passwd": "held\n"}, gid)
    monkeypatch.setattr("sandbox_kernel.launch.etc.IDLE", 0.0)
    cache.release(cache.acquire_staged({"passwd": "next\n"}, gid))
    assert not os.path.exists(first.path) and not os.path.exists(other.path)
    assert os.path.isdir(held.path)
    cache.release(held)
