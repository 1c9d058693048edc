"""The prepared /etc (launch/etc.py) on the real host filesystem: what is copied, how, and when
a copy is made again. What the sandbox sees of it: test_launch_filesystem."""

from __future__ import annotations

import os
import shutil
import stat
import uuid

import pytest

from sandbox_kernel.launch.etc import EtcCache

pytestmark = pytest.mark.integration

STAGED = {"passwd": "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"}


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
    copy = cache.acquire((name, "sandbox-test-absent"), STAGED, os.getegid())
    try:
        here = os.path.join(copy.path, name)
        assert sorted(os.listdir(here)) == ["bundle.pem", "link"]
        assert os.readlink(os.path.join(here, "link")) == "/usr/share/zoneinfo/Etc/UTC"
        assert open(os.path.join(here, "bundle.pem")).read() == "old\n"
        assert open(os.path.join(copy.path, "passwd")).read() == STAGED["passwd"]
        for dirpath, dirnames, filenames in os.walk(copy.path):
            for entry in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                st = os.lstat(entry)
                if stat.S_ISLNK(st.st_mode):
                    continue  # a symlink's own mode means nothing
                assert st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), entry
        assert stat.S_IMODE(os.stat(copy.path).st_mode) == (0o750 if os.geteuid() == 0 else 0o700)
    finally:
        cache.release(copy)


def test_reused_while_the_host_is_unchanged_and_made_again_after_an_update(cache, host_entry):
    name, path = host_entry
    first = cache.acquire((name,), STAGED, os.getegid())
    assert cache.acquire((name,), STAGED, os.getegid()) is first  # same content: reused
    cache.release(first)
    # An update the way package managers and update-ca-certificates do it: new file, rename.
    with open(os.path.join(path, "bundle.pem.new"), "w") as f:
        f.write("new\n")
    os.rename(os.path.join(path, "bundle.pem.new"), os.path.join(path, "bundle.pem"))
    second = cache.acquire((name,), STAGED, os.getegid())
    try:
        assert second.path != first.path
        assert open(os.path.join(second.path, name, "bundle.pem")).read() == "new\n"
        # The old copy stays while a run holds it, and goes with its last release.
        assert os.path.isdir(first.path)
        cache.release(first)
        assert not os.path.exists(first.path)
        other = cache.acquire((name,), {"passwd": "other\n"}, os.getegid())
        assert other.path != second.path  # different staged content, different copy
        cache.release(other)
    finally:
        cache.release(second)
    root = cache.root
    cache.close()
    assert not os.path.exists(root)
