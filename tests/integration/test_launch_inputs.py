"""What a sandbox sees of its inputs (``launch.inputs.list_inputs``), on real directory trees."""

from __future__ import annotations

import os

import pytest

from sandbox_kernel.launch import inputs
from sandbox_kernel.launch.inputs import list_inputs

pytestmark = pytest.mark.integration


def tree(root, *files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def listing(root, **kw):
    found = list_inputs(str(root), uid=0, gid=0, **kw)
    return [(os.path.relpath(src, root), dest) for src, dest in found.binds], found


def test_dotfiles_links_and_special_files_are_hidden_at_any_depth(tmp_path):
    tree(tmp_path, "nb.ipynb", "data.csv", ".env", ".git/config", "sub/x.txt", "sub/.env", "sub/deep/.ssh/id",
         "sub/deep/y.txt", "clean/a.txt", "clean/b/c.txt")
    (tmp_path / "link").symlink_to("/etc/passwd")
    (tmp_path / "clean2").mkdir()
    (tmp_path / "clean2" / "inner").symlink_to("/etc")
    os.mkfifo(tmp_path / "fifo")
    binds, found = listing(tmp_path)
    assert binds == [("clean", "clean/"), ("data.csv", "data.csv"), ("nb.ipynb", "nb.ipynb"),
                     ("sub/deep/y.txt", "sub/deep/y.txt"), ("sub/x.txt", "sub/x.txt")]
    assert found.hidden == 7 and "7 entries not exposed" in found.notes[0][1]


def test_excluded_paths_and_their_parents_are_never_bound_whole(tmp_path):
    tree(tmp_path, "mine.ipynb", "other.ipynb", "results/keep.txt", "results/out/other.ipynb", "data/a.csv")
    excluded = [tmp_path / "other.ipynb", tmp_path / "results" / "out", tmp_path / "data" / "summary.json"]  # not written yet
    binds, _ = listing(tmp_path, exclude=excluded)
    assert [dest for _, dest in binds] == ["data/a.csv", "mine.ipynb", "results/keep.txt"]


def test_data_paths_appear_under_their_names_and_win_over_the_directory(tmp_path):
    tree(tmp_path, "dir/labels.txt", "dir/nb.ipynb", "extra/labels.txt", "extra/set/rows.csv", "extra/set/.hidden")
    found = list_inputs(str(tmp_path / "dir"), data=[str(tmp_path / "extra" / "set"), str(tmp_path / "extra" / "labels.txt")],
                        uid=0, gid=0)
    assert found.binds == ((str(tmp_path / "extra" / "labels.txt"), "labels.txt"), (str(tmp_path / "dir" / "nb.ipynb"), "nb.ipynb"),
                           (str(tmp_path / "extra" / "set" / "rows.csv"), "set/rows.csv"))
    assert list_inputs(None, uid=0, gid=0).binds == ()
    out = tmp_path / "dir" / "sandbox-out"
    tree(out, "other.ipynb")
    found = list_inputs(None, data=[str(out), str(out / "other.ipynb")], exclude=[str(out)], uid=0, gid=0)
    assert found.binds == () and all("excluded" in n for _, n in found.notes)


def test_unreachable_roots_are_a_note_not_an_error(tmp_path):
    private = tmp_path / "private"
    tree(private, "a.txt")
    os.chmod(private, 0o700)
    found = list_inputs(str(private), uid=65532, gid=65532)
    assert found.binds == () and "not reachable by uid 65532" in found.notes[0][1]


def test_the_work_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_SCANNED_ENTRIES", 50)
    tree(tmp_path, *[f"f{i:03d}.txt" for i in range(120)])
    found = list_inputs(str(tmp_path), uid=0, gid=0)
    assert len(found.binds) == 50 and any("stopped at its bounds" in n for _, n in found.notes)
    found = list_inputs(str(tmp_path), uid=0, gid=0, max_binds=10)
    assert len(found.binds) == 10
    deep = tmp_path / "deep"
    tree(deep, "/".join(["d"] * 40) + "/x.txt", ".h")
    monkeypatch.setattr(inputs, "MAX_SCANNED_ENTRIES", 10000)
    found = list_inputs(str(deep), uid=0, gid=0)
    assert found.binds == () and any("stopped at its bounds" in n for _, n in found.notes)


# ------------------------------------------- mounted once into a kernel session's scratch

SANDBOX_UID = 65532  # any uid with no account: what a leased kernel uid looks like


@pytest.fixture
def shared_tree(private_tmpdir):
    """A notebook dir the sandbox uid can traverse, with many files beside a dotfile (so the
    listing binds them one by one), a private subdir and a subdir swapped for a link later."""
    import tempfile

    root = tempfile.mkdtemp(prefix="inputs-", dir=private_tmpdir)
    os.chmod(root, 0o755)
    from pathlib import Path

    root = Path(root)
    tree(root, "data.csv", "nb.ipynb", "many/.hidden", "swap/ok.txt", "private/secret.txt", "private/.dot",
         *[f"many/f{i:03d}.txt" for i in range(300)])
    for path in root.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(root / "private", 0o700)  # root's: the sandbox uid cannot traverse it to secret.txt
    return root


def test_a_session_mounts_inputs_once_read_only_and_never_through_links(shared_tree, private_tmpdir):
    import subprocess
    import tempfile

    from sandbox_kernel.capabilities import detect
    from sandbox_kernel.launch import run
    from sandbox_kernel.launch.session import open_session
    from sandbox_kernel.planner import RunSpec
    from sandbox_kernel.policy import secure_default

    found = list_inputs(str(shared_tree), uid=SANDBOX_UID, gid=SANDBOX_UID)
    dests = found.exposed
    assert "many/f007.txt" in dests and "private/secret.txt" in dests and len(dests) > 300  # bound one by one
    # After the listing, the tenant swaps a listed directory for a link to the host's /etc.
    os.rename(shared_tree / "swap", shared_tree / "swapped")
    (shared_tree / "swap").symlink_to("/etc")
    caps = detect()
    scratch = tempfile.mkdtemp(prefix="session-", dir=private_tmpdir)
    session = open_session(scratch, 64 << 20, (SANDBOX_UID, SANDBOX_UID), unshare=caps.tool("unshare"),
                           nsenter=caps.tool("nsenter"))
    try:
        mounted, skipped = session.mount_inputs(found.binds + ((str(shared_tree / "swap" / "passwd"), "passwd"),),
                                                (SANDBOX_UID, SANDBOX_UID))
        why = dict(skipped)
        assert set(why) == {"swap/", "private/secret.txt", "passwd"}, skipped
        assert "symbolic links" in why["swap/"] and "denied" in why["private/secret.txt"]
        spec = RunSpec(argv=("/bin/sh", "-c", "cat many/f007.txt; echo; cat data.csv; echo; ls -a many | grep -c hidden; "
                                              "ls private swap passwd 2>&1 | grep -c 'No such'; "
                                              "echo x > data.csv || echo refused; echo y > many/f001.txt || echo refused"),
                       runtime="shell", scope="cell", scratch_source=scratch, inputs=mounted, inputs_in_scratch=True,
                       identity=(SANDBOX_UID, SANDBOX_UID))
        result = run(secure_default(), spec, caps=caps, session=session)
        out = result.stdout.decode()
        assert result.exit_code == 0, (out, result.stderr)
        assert out.split() == ["many/f007.txt", "data.csv", "0", "3", "refused", "refused"], out
        assert result.report["layers"]["filesystem"]["inputs"]["mounted"] == "once per kernel session"
        # bwrap bound none of them itself: the session's scratch carried them.
        assert (shared_tree / "data.csv").read_text() == "data.csv"
    finally:
        session.close()
    assert subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout.count(scratch) == 0
