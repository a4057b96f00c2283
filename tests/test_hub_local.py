"""The local store: round trips, revisions, atomicity under kill -9, concurrency, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from conftest import folder_bytes, make_folder

from hubkit import hub
from hubkit.errors import (
    EmptyFolderError,
    FileTooLargeError,
    InvalidRepoIdError,
    NoMatchingFilesError,
    RepoNotFoundError,
    RevisionNotFoundError,
    StoreError,
)

FILES = {"README.md": b"# demo\n", "weights/model.safetensors": os.urandom(50_000), "config.json": b'{"a": 1}'}


def test_push_pull_round_trip_is_byte_identical(tmp_path):
    src = make_folder(tmp_path / "src", FILES)
    info = hub.push(src, "me/demo", message="first")
    assert len(info.id) == 40 and info.message == "first" and "main" in info.refs
    pulled = hub.pull("me/demo")
    assert folder_bytes(pulled) == FILES
    copy = hub.pull("me/demo", to=tmp_path / "copy")
    assert folder_bytes(copy) == FILES


def test_pulling_again_copies_nothing(tmp_path):
    src = make_folder(tmp_path / "src", FILES)
    hub.push(src, "me/demo")
    assert hub.pull("me/demo") == hub.pull("me/demo")  # the same snapshot folder, no copy
    target = hub.pull("me/demo", to=tmp_path / "out")
    stamps = {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()}
    time.sleep(0.01)
    hub.pull("me/demo", to=target)
    assert stamps == {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()}


def test_revisions_pinning_by_id_prefix_tag_and_branch(tmp_path):
    src = make_folder(tmp_path / "src", {"a.txt": b"one"})
    first = hub.push(src, "me/demo", message="one", tag="v1")
    (src / "a.txt").write_bytes(b"two")
    second = hub.push(src, "me/demo", message="two")
    (src / "a.txt").write_bytes(b"exp")
    hub.push(src, "me/demo", message="experiment", branch="exp")
    revs = hub.list_revisions("me/demo")
    assert [r.message for r in revs] == ["experiment", "two", "one"]
    assert "v1" in revs[-1].refs
    assert (hub.pull("me/demo") / "a.txt").read_bytes() == b"two"  # main = newest on main
    assert (hub.pull("me/demo", revision=first.id) / "a.txt").read_bytes() == b"one"
    assert (hub.pull("me/demo", revision=first.id[:8]) / "a.txt").read_bytes() == b"one"
    assert (hub.pull("me/demo", revision="v1") / "a.txt").read_bytes() == b"one"
    assert (hub.pull("me/demo", revision="exp") / "a.txt").read_bytes() == b"exp"
    hub.tag("me/demo", "stable", revision=second.id)
    assert (hub.pull("me/demo", revision="stable") / "a.txt").read_bytes() == b"two"
    with pytest.raises(RevisionNotFoundError) as err:
        hub.pull("me/demo", revision="v9")
    assert "v1" in str(err.value) and "main" in str(err.value)


def test_include_exclude(tmp_path):
    src = make_folder(tmp_path / "src", FILES)
    hub.push(src, "me/demo", exclude=["*.md"])
    assert "README.md" not in folder_bytes(hub.pull("me/demo"))
    only = hub.pull("me/demo", include=["*.json"])
    assert list(folder_bytes(only)) == ["config.json"]


def test_sync_between_two_local_stores_both_ways(tmp_path):
    a, b = hub.LocalStore(tmp_path / "a"), hub.LocalStore(tmp_path / "b")
    src = make_folder(tmp_path / "src", FILES)
    a.push(src, "me/demo", message="one")
    (src / "config.json").write_bytes(b'{"a": 2}')
    a.push(src, "me/demo", message="two")
    copied = hub.sync("me/demo", src=a, dst=b, all_revisions=True)
    assert [r.id for r in copied] == [r.id for r in reversed(a.list_revisions("me/demo"))]  # ids survive
    assert folder_bytes(b.pull("me/demo")) == folder_bytes(a.pull("me/demo"))
    assert hub.sync("me/demo", src=a, dst=b, all_revisions=True)[-1].id == copied[-1].id  # idempotent
    assert len(b.list_revisions("me/demo")) == 2
    (src / "new.txt").write_bytes(b"from b")
    b.push(src, "me/demo", message="three")
    hub.sync("me/demo", src=b, dst=a)
    assert folder_bytes(a.pull("me/demo")) == folder_bytes(src)
    assert [r.message for r in a.list_revisions("me/demo")] == ["three", "two", "one"]


def test_repo_types_are_separate(tmp_path):
    src = make_folder(tmp_path / "src", {"data.jsonl": b"{}\n"})
    hub.push(src, "me/thing", repo_type="dataset")
    with pytest.raises(RepoNotFoundError):
        hub.pull("me/thing")
    assert folder_bytes(hub.pull("me/thing", repo_type="dataset")) == {"data.jsonl": b"{}\n"}
    assert [(r.repo_type, r.repo_id) for r in hub.list_repos()] == [("dataset", "me/thing")]


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/b/c", "noslash", "me/has space", " me/x", "me/" + "x" * 97, "me/x.git", "me/a..b", "-a/b"]
)
def test_bad_repo_ids_are_refused_and_change_nothing(tmp_path, bad, isolated_home):
    src = make_folder(tmp_path / "src", FILES)
    with pytest.raises(InvalidRepoIdError) as err:
        hub.push(src, bad)
    assert repr(bad)[:20].strip("'") in str(err.value)
    assert not isolated_home.exists() or not any(isolated_home.rglob("*.json"))


def test_unknown_repo_and_revision_say_what_exists(tmp_path):
    hub.push(make_folder(tmp_path / "src", FILES), "me/demo")
    with pytest.raises(RepoNotFoundError, match="me/demo") as err:
        hub.pull("me/nothing")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(RevisionNotFoundError, match="main"):
        hub.pull("me/demo", revision="deadbeef")


def test_empty_and_missing_folders_and_size_limit(tmp_path, isolated_home, monkeypatch):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(EmptyFolderError, match="no files"):
        hub.push(tmp_path / "empty", "me/x")
    with pytest.raises(EmptyFolderError, match="does not exist"):
        hub.push(tmp_path / "missing", "me/x")
    src = make_folder(tmp_path / "src", FILES)
    with pytest.raises(FileTooLargeError, match="50,000 bytes"):
        hub.push(src, "me/x", max_file_size=10_000)
    monkeypatch.setenv("HUBKIT_MAX_FILE_SIZE", "100")
    with pytest.raises(FileTooLargeError):
        hub.push(src, "me/x")
    assert hub.list_repos() == []


def test_store_files_are_read_only_and_edits_are_caught(tmp_path):
    hub.push(make_folder(tmp_path / "src", FILES), "me/demo")
    snap = hub.pull("me/demo")
    assert (snap / "config.json").stat().st_mode & 0o222 == 0
    os.utime(snap / "config.json")  # a touch changes nothing that matters
    assert folder_bytes(hub.pull("me/demo")) == FILES
    os.chmod(snap / "config.json", 0o644)  # as root, or after a chmod, the bytes can still be edited in place
    with open(snap / "config.json", "ab") as fh:
        fh.write(b"oops")
    with pytest.raises(StoreError, match="modified in place"):
        hub.pull("me/demo")
    with pytest.raises(StoreError, match="pull --to"):
        hub.pull("me/demo", to=tmp_path / "copy")


def test_include_matching_nothing_is_a_clear_error(tmp_path):
    hub.push(make_folder(tmp_path / "src", FILES), "me/demo")
    with pytest.raises(NoMatchingFilesError, match=r"\*.onnx") as err:
        hub.pull("me/demo", include=["*.onnx"])
    assert "config.json" in str(err.value)
    with pytest.raises(NoMatchingFilesError):
        hub.pull("me/demo", include=["*.onnx"], to=tmp_path / "out")
    assert not (tmp_path / "out").exists()


KILLED_PUSH = textwrap.dedent(
    """
    import os, sys, time
    from hubkit.hub import _local
    stage = sys.argv[3]
    real_write, real_store = _local._atomic_write, _local.LocalStore._store_object
    def slow_store(self, *args, **kwargs):
        out = real_store(self, *args, **kwargs)
        if stage == "objects":
            open(sys.argv[4], "w").close(); time.sleep(60)
        return out
    def slow_write(path, data):
        if stage == "revision" and path.parent.name == "heads":
            open(sys.argv[4], "w").close(); time.sleep(60)
        real_write(path, data)
    _local._atomic_write, _local.LocalStore._store_object = slow_write, slow_store
    _local.LocalStore(sys.argv[1]).push(sys.argv[2], "me/demo", message="killed")
    """
)


@pytest.mark.parametrize("stage", ["objects", "revision"])
def test_kill_9_during_push_leaves_previous_revision(tmp_path, stage):
    store = hub.LocalStore(tmp_path / "store")
    old = make_folder(tmp_path / "old", FILES)
    before = store.push(old, "me/demo", message="good")
    new = make_folder(tmp_path / "new", {"a.bin": os.urandom(1000), "b.bin": os.urandom(1000)})
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUSH, str(store.root), str(new), stage, str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "push ended before reaching the stage"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    revs = store.list_revisions("me/demo")
    assert [r.id for r in revs] == [before.id]  # no half revision visible
    assert folder_bytes(store.pull("me/demo")) == FILES
    after = store.push(new, "me/demo", message="retry")  # the store still works
    assert folder_bytes(store.pull("me/demo")) == folder_bytes(new)
    assert after.parent == before.id


def _push_one(args):
    root, folder, message = args
    return hub.LocalStore(root).push(folder, "me/demo", message=message).id


def test_concurrent_pushes_become_consecutive_revisions(tmp_path):
    root = tmp_path / "store"
    folders = [
        make_folder(tmp_path / f"src{i}", {"n.txt": str(i).encode(), "big.bin": os.urandom(200_000)}) for i in range(6)
    ]
    with ProcessPoolExecutor(max_workers=3) as pool:
        ids = list(pool.map(_push_one, [(root, f, f"push {i}") for i, f in enumerate(folders)]))
    store = hub.LocalStore(root)
    revs = store.list_revisions("me/demo")
    assert sorted(r.id for r in revs) == sorted(ids)
    chain, rev = [], store.resolve_revision("me/demo")
    while rev is not None:  # one linear history: each push saw the one before it
        chain.append(rev.id)
        rev = store.resolve_revision("me/demo", rev.parent) if rev.parent else None
    assert sorted(chain) == sorted(ids)
    for rev in revs:
        n = int(rev.message.split()[-1])
        assert (store.pull("me/demo", revision=rev.id) / "n.txt").read_bytes() == str(n).encode()


def test_resolve_accepts_paths(tmp_path):
    folder = make_folder(tmp_path / "model", {"config.json": b"{}"})
    assert hub.resolve(folder) == Path(folder)
    with pytest.raises(RepoNotFoundError):
        hub.resolve("me/absent")


# -- links and unreadable paths: both stores push what scan_folder returns -------------------------


def _stored_objects(home: Path) -> list[Path]:
    return [p for p in home.rglob("objects/*/*") if p.is_file()] if home.exists() else []


def test_links_that_leave_the_folder_are_refused_by_name(tmp_path, isolated_home):
    (tmp_path / "secret.txt").write_bytes(b"hf_token")
    outside = make_folder(tmp_path / "outside", {"x.txt": b"x"})
    src = make_folder(tmp_path / "src", {"a.txt": b"a"})
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "token").symlink_to("../secret.txt")
    (src / "sub").mkdir()
    (src / "sub" / "ext").symlink_to(outside)
    for store in (hub.LocalStore(isolated_home), hub.HfStore(endpoint="http://127.0.0.1:9", token="hf_x")):
        with pytest.raises(EmptyFolderError) as err:  # the Hub store refuses before contacting anything
            store.push(src, "me/demo")
        for shown in ("passwd -> /etc/passwd", "token -> ../secret.txt", f"sub/ext -> {outside}"):
            assert shown in str(err.value), (store, str(err.value))
        assert "outside the folder" in str(err.value)
    assert hub.list_repos() == [] and _stored_objects(isolated_home) == []
    info = hub.push(src, "me/demo", exclude=["passwd", "token", "sub/ext/*"])  # excluded links are not followed
    assert sorted(info.files) == ["a.txt"]


def test_links_inside_the_folder_are_pushed_as_the_files_they_point_to(tmp_path):
    src = make_folder(tmp_path / "src", {"cfg.json": b"{}", "data/w.bin": b"w" * 100, "data/deep/d.txt": b"d"})
    (src / "alias.json").symlink_to("cfg.json")
    (src / "mirror").symlink_to("data")  # a folder link inside: followed
    (src / "data" / "up.json").symlink_to("../cfg.json")  # leaves data/ but not the pushed folder
    info = hub.push(src, "me/demo")
    expected = {
        "alias.json": b"{}",
        "cfg.json": b"{}",
        "data/deep/d.txt": b"d",
        "data/up.json": b"{}",
        "data/w.bin": b"w" * 100,
        "mirror/deep/d.txt": b"d",
        "mirror/up.json": b"{}",
        "mirror/w.bin": b"w" * 100,
    }
    assert sorted(info.files) == sorted(expected)
    out = hub.pull("me/demo", to=tmp_path / "out")
    assert folder_bytes(out) == expected
    assert not any(p.is_symlink() for p in out.rglob("*"))  # pulled as regular files


def test_the_hub_store_pushes_links_inside_the_folder_the_same_way(tmp_path, monkeypatch):
    from fake_hf_hub import FakeHub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    src = make_folder(tmp_path / "src", {"cfg.json": b"{}", "data/w.bin": b"w" * 100})
    (src / "alias.json").symlink_to("cfg.json")
    (src / "mirror").symlink_to("data")
    token = "hf_fakeWriteToken0123456789"
    with FakeHub(tokens=(token,)) as server:
        hf = hub.HfStore(endpoint=server.endpoint, token=token, cache_dir=tmp_path / "hf-cache")
        hf.push(src, "me/demo")
        out = hf.pull("me/demo", to=tmp_path / "out")
    pulled = {k: v for k, v in folder_bytes(out).items() if k != ".gitattributes"}
    hub.push(src, "me/demo")  # and the local store, to compare
    assert pulled == folder_bytes(hub.pull("me/demo"))
    assert sorted(pulled) == ["alias.json", "cfg.json", "data/w.bin", "mirror/w.bin"]


def test_broken_looping_and_excluded_target_links_are_refused(tmp_path, isolated_home):
    src = make_folder(tmp_path / "src", {"a.txt": b"a", ".git/config": b"url=https://user:tok@host", "s/k": b"k"})
    (src / "gone").symlink_to("missing.txt")
    (src / "self").symlink_to("self")
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..")
    (src / "gitcfg").symlink_to(".git/config")  # .git is never pushed, not even through a link
    (src / "key").symlink_to("s/k")
    with pytest.raises(EmptyFolderError) as err:
        hub.push(src, "me/demo", exclude=["s/*"])
    msg = str(err.value)
    for shown in (
        "gone -> missing.txt (broken",
        "self -> self (",
        "sub/up -> .. (a link loop",
        "gitcfg -> .git/config",
    ):
        assert shown in msg, msg
    assert "key -> s/k (points at an excluded path" in msg
    assert _stored_objects(isolated_home) == []


def _deny(monkeypatch, denied: Path) -> None:
    """Make `denied` unreadable even for root (tests run as root, where chmod 000 blocks nothing)."""
    denied = os.path.realpath(denied)
    real_scandir, real_open = os.scandir, open

    def scandir(path="."):
        if not isinstance(path, int) and os.path.realpath(path) == denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def fake_open(file, *args, **kwargs):
        if not isinstance(file, int) and os.path.realpath(file) == denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr("builtins.open", fake_open)


@pytest.mark.parametrize("what", ["folder", "file"])
def test_unreadable_paths_fail_the_push_and_store_nothing(tmp_path, isolated_home, monkeypatch, what):
    src = make_folder(tmp_path / "src", {"a.txt": b"a", "private/b.txt": b"b", "private/c.txt": b"c"})
    denied = src / "private" if what == "folder" else src / "private" / "b.txt"
    os.chmod(denied, 0)
    try:
        _deny(monkeypatch, denied)
        with pytest.raises(EmptyFolderError) as err:
            hub.push(src, "me/demo")
        shown = "private/ (cannot be read" if what == "folder" else "private/b.txt (cannot be read"
        assert shown in str(err.value) and "Permission denied" in str(err.value)
        assert hub.list_repos() == [] and _stored_objects(isolated_home) == []
        info = hub.push(src, "me/demo", exclude=["private/*"])  # an excluded folder is never read
        assert sorted(info.files) == ["a.txt"]
    finally:
        os.chmod(denied, 0o755)
