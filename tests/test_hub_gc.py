"""Garbage collection of the local store: what killed pushes leave is freed, nothing a ref reaches or a
running push is writing is touched."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import folder_bytes, make_folder, run_cli

from hubkit import hub
from hubkit.errors import HubkitError, PushConflictError, RepoNotFoundError
from hubkit.hub import _local

# A real push in a subprocess, held at one point so the test can kill it there or let it go on:
#   throttle: copies big files slowly (the test kills it mid-write)
#   staged:   pauses after every file is hashed and copied into the store, before its revision exists
#   locked:   pauses holding the repo lock, objects and revision file written, just before moving the ref
PUSH = textwrap.dedent(
    """
    import os, shutil, sys, time
    from hubkit.hub import _local
    root, folder, mode, marker, go = sys.argv[1:6]
    n_files = sum(1 for p in os.scandir(folder) if p.is_file())

    def hold():
        open(marker, "w").close()
        while not os.path.exists(go):
            time.sleep(0.02)

    real_copy, real_store, real_write = shutil.copyfile, _local.LocalStore._store_object, _local._atomic_write
    calls = []

    def slow_copy(src, dst, *args, **kwargs):
        if os.path.getsize(src) < 1 << 20:
            return real_copy(src, dst, *args, **kwargs)
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            while block := fi.read(1 << 18):
                fo.write(block); fo.flush(); time.sleep(0.05)
        return dst

    def store(self, *args, **kwargs):
        out = real_store(self, *args, **kwargs)
        calls.append(1)
        if mode == "staged" and len(calls) == n_files:
            hold()
        return out

    def write(path, data):
        if mode == "locked" and path.parent.name == "heads":
            hold()
        real_write(path, data)

    shutil.copyfile, _local.LocalStore._store_object, _local._atomic_write = slow_copy, store, write
    _local.LocalStore(root).push(folder, "me/demo", message=mode)
    """
)


class HeldPush:
    def __init__(self, tmp_path: Path, root: Path, folder: Path, mode: str):
        self.marker, self.go = tmp_path / f"{mode}.marker", tmp_path / f"{mode}.go"
        args = [str(root), str(folder), mode, str(self.marker), str(self.go)]
        self.proc = subprocess.Popen([sys.executable, "-c", PUSH, *args])

    def wait_for(self, ready) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            assert self.proc.poll() is None and time.monotonic() < deadline, "push ended before the point"
            time.sleep(0.01)

    def held(self) -> None:
        self.wait_for(self.marker.exists)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def release(self) -> None:
        self.go.touch()
        assert self.proc.wait(timeout=60) == 0


def unique_bytes(root: Path) -> int:
    """Bytes the files under root take, each inode once (snapshots are hard links to objects)."""
    seen = {}
    for p in root.rglob("*"):
        st = p.lstat()
        if p.is_file() and not p.is_symlink():
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def reachable_metas(store: hub.LocalStore, repo_dir: Path, repo_id: str, repo_type: str = "model") -> list[dict]:
    revs = store.list_revisions(repo_id, repo_type=repo_type)
    return [json.loads((repo_dir / "revisions" / f"{r.id}.json").read_text()) for r in revs]


def craft_object(repo_dir: Path, data: bytes) -> Path:
    """A complete object no revision references, as a push killed before its revision leaves it."""
    sha = hashlib.sha256(data).hexdigest()
    obj = repo_dir / "objects" / sha[:2] / sha[2:]
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    os.chmod(obj, 0o444)
    return obj


def aged(path: Path, data: bytes = b"partial") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    old = time.time() - 2 * _local._STALE_TMP_S
    os.utime(path, (old, old))
    return path


def freed_bytes(line: str) -> int:
    return int(re.search(r"([\d,]+) bytes", line).group(1).replace(",", ""))


def test_gc_frees_what_killed_pushes_left_and_every_revision_still_pulls(tmp_path):
    root = tmp_path / "store"
    store = hub.LocalStore(root)
    repo = root / "models" / "me" / "demo"
    expected = {}
    src = make_folder(tmp_path / "v", {"README.md": b"# v1\n", "w.bin": os.urandom(300_000)})
    expected[store.push(src, "me/demo", message="one", tag="v1").id] = folder_bytes(src)
    (src / "w.bin").write_bytes(os.urandom(300_000))
    expected[store.push(src, "me/demo", message="two").id] = folder_bytes(src)
    (src / "exp.txt").write_bytes(b"exp")
    expected[store.push(src, "me/demo", message="exp", branch="exp").id] = folder_bytes(src)
    data = make_folder(tmp_path / "ds", {"d.jsonl": b"{}\n"})
    data_rev = store.push(data, "me/data", repo_type="dataset")

    push = HeldPush(tmp_path, root, make_folder(tmp_path / "new", {"n.bin": os.urandom(200_000)}), "locked")
    push.held()  # objects, snapshot and revision file written; killed before its ref moved
    push.kill()
    big = make_folder(tmp_path / "big", {"big.bin": os.urandom(6 << 20), "small.txt": b"s"})
    push = HeldPush(tmp_path, root, big, "throttle")  # killed while a few MB are half copied into the store
    push.wait_for(lambda: any(p.is_file() and 1 << 20 < p.stat().st_size < 6 << 20 for p in root.rglob("*")))
    push.kill()
    craft_object(repo, os.urandom(1000))
    aged(repo / "revisions" / f".{'a' * 40}.json.{uuid.uuid4().hex}.tmp", b'{"parent": ')
    aged(repo / "objects" / "ab" / f".ab{'c' * 62}.{uuid.uuid4().hex}.tmp")  # as older hubkit versions left them

    def listing() -> dict[str, int]:
        return {p.relative_to(root).as_posix(): p.lstat().st_size for p in root.rglob("*")}

    before, bytes_before = listing(), unique_bytes(root)
    dry = run_cli("gc", "--hub", str(root), "--dry-run", check=True)
    assert listing() == before  # a dry run removes nothing
    out = run_cli("gc", "--hub", str(root), check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout  # one summary line per repo
    demo = next(line for line in lines if "me/demo" in line)
    assert demo.startswith("model me/demo: freed 2 object(s), 1 snapshot(s), 1 revision(s), 3 temp file(s); ")
    assert freed_bytes(demo) == bytes_before - unique_bytes(root) > (1 << 20)
    assert dry.stdout.replace("would free", "freed") == out.stdout  # the dry run announced exactly this
    assert next(line for line in lines if "me/data" in line).startswith("dataset me/data: freed 0 object(s)")

    for repo_id, repo_type, folder in (("me/demo", "model", repo), ("me/data", "dataset", root / "datasets/me/data")):
        metas = reachable_metas(store, folder, repo_id, repo_type)
        live = {f["sha256"]: f["size"] for m in metas for f in m["files"].values()}
        objects = [p for p in (folder / "objects").rglob("*") if p.is_file()]
        assert sum(p.stat().st_size for p in objects) == sum(live.values())
        assert sorted(p.parent.name + p.name for p in objects) == sorted(live)
        assert sorted(p.stem for p in (folder / "revisions").iterdir()) == sorted(m["id"] for m in metas)
        assert sorted(p.name for p in (folder / "snapshots").iterdir()) == sorted({m["tree"] for m in metas})
        assert not (folder / "tmp").exists() or not any((folder / "tmp").iterdir())
    assert not [p for p in root.rglob("*") if ".tmp" in p.name or "hubkit-tmp" in p.name]
    for rev in store.list_revisions("me/demo"):
        assert folder_bytes(store.pull("me/demo", revision=rev.id, to=tmp_path / "out" / rev.id)) == expected[rev.id]
        assert folder_bytes(store.pull("me/demo", revision=rev.id)) == expected[rev.id]
    assert sorted(r.id for r in store.list_revisions("me/demo")) == sorted(expected)
    assert folder_bytes(store.pull("me/data", repo_type="dataset", revision=data_rev.id)) == folder_bytes(data)

    again = run_cli("gc", "--hub", str(root), "me/demo", check=True).stdout.strip()
    assert again == "model me/demo: freed 0 object(s), 0 snapshot(s), 0 revision(s), 0 temp file(s); 0 bytes"
    store.push(big, "me/demo", message="after gc")  # the store still works
    assert folder_bytes(store.pull("me/demo")) == folder_bytes(big)


def test_gc_beside_a_push_still_writing_keeps_its_files(tmp_path):
    store = hub.LocalStore(tmp_path / "store")
    repo = store.root / "models" / "me" / "demo"
    first = store.push(make_folder(tmp_path / "v1", {"a.txt": b"a"}), "me/demo")
    reused = os.urandom(5000)
    craft_object(repo, reused)  # unreferenced now; the running push finds it and means to reuse it
    new = make_folder(tmp_path / "new", {"reused.bin": reused, "fresh.bin": os.urandom(500_000)})
    push = HeldPush(tmp_path, store.root, new, "staged")
    push.held()
    [report] = hub.gc(hub=store)
    assert (report.objects, report.revisions) == (1, 0)  # only the crafted object: nothing else is garbage yet
    assert report.temp == 0  # the running push's own files are kept
    push.release()
    info = store.resolve_revision("me/demo")
    assert info.message == "staged" and info.parent == first.id
    assert folder_bytes(store.pull("me/demo", to=tmp_path / "out")) == folder_bytes(new)
    assert folder_bytes(store.pull("me/demo")) == folder_bytes(new)
    [report] = store.gc("me/demo")
    assert (report.objects, report.snapshots, report.revisions, report.temp, report.bytes) == (0, 0, 0, 0, 0)


def test_gc_waits_for_a_push_holding_the_repo_lock(tmp_path, monkeypatch):
    store = hub.LocalStore(tmp_path / "store")
    store.push(make_folder(tmp_path / "v1", {"a.txt": b"a"}), "me/demo")
    new = make_folder(tmp_path / "new", {"n.bin": os.urandom(300_000)})
    push = HeldPush(tmp_path, store.root, new, "locked")
    push.held()  # holds the lock: its objects and revision file exist, no ref reaches them yet
    listing = sorted(store.root.rglob("*"))
    monkeypatch.setattr(_local, "LOCK_TIMEOUT_S", 0.3)
    with pytest.raises(PushConflictError, match="lock"):
        store.gc("me/demo")
    assert sorted(store.root.rglob("*")) == listing
    monkeypatch.setattr(_local, "LOCK_TIMEOUT_S", 60)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(store.gc, "me/demo")
        time.sleep(0.3)
        assert not pending.done()  # waiting for the push, not collecting beside it
        push.release()
        [report] = pending.result(timeout=60)
    assert (report.objects, report.revisions, report.snapshots) == (0, 0, 0)
    assert folder_bytes(store.pull("me/demo")) == folder_bytes(new)


def test_push_drops_what_killed_pushes_left(tmp_path):
    store = hub.LocalStore(tmp_path / "store")
    repo = store.root / "models" / "me" / "demo"
    src = make_folder(tmp_path / "v1", {"a.txt": b"a"})
    store.push(src, "me/demo")
    push = HeldPush(tmp_path, store.root, make_folder(tmp_path / "new", {"n.bin": os.urandom(300_000)}), "staged")
    push.held()
    push.kill()
    assert unique_bytes(repo) > 300_000
    (src / "a.txt").write_bytes(b"b")
    store.push(src, "me/demo")  # sweeps, under the lock, the temp files of the dead push
    assert not (repo / "tmp").exists() or not any((repo / "tmp").iterdir())
    assert unique_bytes(repo / "objects") + unique_bytes(repo / "tmp") < 300_000


def test_gc_keeps_young_temp_files_it_cannot_tell_are_dead(tmp_path):
    store = hub.LocalStore(tmp_path / "store")
    store.push(make_folder(tmp_path / "v1", {"a.txt": b"a"}), "me/demo")
    repo = store.root / "models" / "me" / "demo"
    young = repo / "objects" / "ab" / f".ab{'c' * 62}.{uuid.uuid4().hex}.tmp"
    young.parent.mkdir(parents=True)
    young.write_bytes(b"an older hubkit may be writing this")
    old = aged(repo / "objects" / "ab" / f".ab{'d' * 62}.{uuid.uuid4().hex}.tmp")
    old_dir = aged(repo / "tmp" / uuid.uuid4().hex / "x").parent
    os.utime(old_dir, (time.time() - 2 * _local._STALE_TMP_S,) * 2)
    [dry] = store.gc(dry_run=True)
    assert dry.temp == 2 and old.exists() and old_dir.exists()
    [report] = store.gc()
    assert report.temp == 2 and young.exists() and not old.exists() and not old_dir.exists()


def test_gc_of_a_missing_repo_or_the_hf_hub_is_a_clear_error(tmp_path):
    store = hub.LocalStore(tmp_path / "store")
    with pytest.raises(RepoNotFoundError):
        store.gc("me/absent")
    assert hub.gc(hub=store) == []
    with pytest.raises(HubkitError, match="local store"):
        hub.gc(hub=hub.HfStore(endpoint="http://127.0.0.1:9"))
