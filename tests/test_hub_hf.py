"""The Hugging Face Hub store, against a local server speaking the Hub's API (no network)."""

from __future__ import annotations

import os
import socket
import time

import pytest
from conftest import folder_bytes, make_folder, run_cli
from fake_hf_hub import FakeHub
from huggingface_hub import constants

from hubkit import hub
from hubkit.errors import AuthError, HubUnreachableError, RepoNotFoundError, RevisionNotFoundError

TOKEN = "hf_fakeWriteToken0123456789"
FILES = {
    "README.md": b"---\nlicense: mit\n---\n# x\n",
    "adapter_model.safetensors": os.urandom(3000),
    "a/b.json": b"{}",
}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(tokens=(TOKEN,)) as server:
        yield server


def store(fake, tmp_path):
    return hub.HfStore(endpoint=fake.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")


def without_gitattributes(files: dict) -> dict:
    return {k: v for k, v in files.items() if k != ".gitattributes"}


def test_push_pull_round_trip_and_revisions(fake, tmp_path):
    hf = store(fake, tmp_path)
    src = make_folder(tmp_path / "src", FILES)
    first = hf.push(src, "me/adapter", message="first", tag="v1")
    (src / "a/b.json").write_bytes(b'{"x": 1}')
    second = hf.push(src, "me/adapter", message="second")
    assert first.id != second.id and len(second.id) == 40
    assert without_gitattributes(folder_bytes(hf.pull("me/adapter"))) == folder_bytes(src)
    old = hf.pull("me/adapter", revision="v1", to=tmp_path / "old")
    assert without_gitattributes(folder_bytes(old))["a/b.json"] == b"{}"
    assert hf.pull("me/adapter", revision=first.id) != hf.pull("me/adapter")
    revs = hf.list_revisions("me/adapter")
    assert [r.message for r in revs][:2] == ["second", "first"] and "v1" in revs[1].refs
    only = hf.pull("me/adapter", include=["*.json"], to=tmp_path / "only")
    assert set(without_gitattributes(folder_bytes(only))) == {"a/b.json"}


def test_token_is_sent_but_never_written(fake, tmp_path):
    hf = store(fake, tmp_path)
    hf.push(make_folder(tmp_path / "src", FILES), "me/adapter")
    assert f"Bearer {TOKEN}" in fake.authorization_headers
    assert TOKEN not in repr(hf)
    env = {"HF_ENDPOINT": fake.endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "h")}
    procs = [
        run_cli("-vv", "push", str(tmp_path / "src"), "me/cli", "--hub", "hf", env=env, check=True),
        run_cli("-vv", "pull", "me/cli", "--hub", "hf", "--to", str(tmp_path / "cli"), env=env, check=True),
        run_cli("-vv", "pull", "me/none", "--hub", "hf", env=env),
    ]
    for proc in procs:
        assert TOKEN not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_errors_are_typed(fake, tmp_path):
    hf = store(fake, tmp_path)
    with pytest.raises(RepoNotFoundError, match="me/nothing"):
        hf.pull("me/nothing")
    hf.push(make_folder(tmp_path / "src", FILES), "me/adapter", tag="v1")
    with pytest.raises(RevisionNotFoundError) as err:
        hf.pull("me/adapter", revision="v9")
    assert "v1" in str(err.value) and "main" in str(err.value)
    bad = hub.HfStore(endpoint=fake.endpoint, token="hf_notAValidTokenAtAll1234")
    with pytest.raises(AuthError, match="HF_TOKEN"):
        bad.push(tmp_path / "src", "me/other")
    assert "hf_notAValidTokenAtAll1234" not in str(err.value)


def test_unreachable_hub_is_one_clear_error_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = hub.HfStore(endpoint=f"http://127.0.0.1:{port}", token=TOKEN)
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match="unreachable"):
        dead.pull("me/adapter")
    assert time.monotonic() - start < 10
    proc = run_cli("pull", "me/adapter", "--hub", f"http://127.0.0.1:{port}", env={"HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 1 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr


def test_offline_switch_refuses_the_hub(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="offline"):
        store(fake, tmp_path).pull("me/adapter")
    assert fake.requests == []


def test_reads_fall_back_from_local_to_hub(fake, tmp_path, monkeypatch):
    fake.seed("org/base", {"config.json": b'{"hub": true}'})
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    assert (hub.pull("org/base") / "config.json").read_bytes() == b'{"hub": true}'
    hub.push(make_folder(tmp_path / "local", {"config.json": b'{"hub": false}'}), "org/base")
    assert (hub.pull("org/base") / "config.json").read_bytes() == b'{"hub": false}'  # local first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RepoNotFoundError):
        hub.pull("org/only-on-hub")


def test_sync_local_to_hub_and_back_is_byte_identical(fake, tmp_path):
    hf = store(fake, tmp_path)
    local = hub.LocalStore(tmp_path / "local")
    mirror = hub.LocalStore(tmp_path / "mirror")
    src = make_folder(tmp_path / "src", FILES)
    local.push(src, "me/adapter", message="one")
    (src / "extra.txt").write_bytes(b"two")
    local.push(src, "me/adapter", message="two")
    hub.sync("me/adapter", src=local, dst=hf, all_revisions=True)
    assert [r.message for r in hf.list_revisions("me/adapter")][:2] == ["two", "one"]
    hub.sync("me/adapter", src=hf, dst=mirror)
    assert without_gitattributes(folder_bytes(mirror.pull("me/adapter"))) == folder_bytes(src)
    again = hub.sync("me/adapter", src=hf, dst=mirror)
    assert len(mirror.list_revisions("me/adapter")) == 1 and again[0].id == mirror.list_revisions("me/adapter")[0].id


def test_slow_hub_times_out_instead_of_hanging(fake, tmp_path, monkeypatch):
    from hubkit.hub import _hf

    hf = store(fake, tmp_path)
    hf.push(make_folder(tmp_path / "src", FILES), "me/adapter")
    monkeypatch.setattr(_hf, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(_hf, "METADATA_DEADLINE_S", 2)
    pool = _hf.ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(_hf, "_pool", pool)
    monkeypatch.setattr(_hf, "_timeouts_set", False)
    fake.delay_seconds = 10
    start = time.monotonic()
    try:
        with pytest.raises(HubUnreachableError):
            hf.list_revisions("me/adapter")
    finally:
        elapsed = time.monotonic() - start
        fake.delay_seconds = 0
        pool.shutdown(wait=True)  # the abandoned call's retry now succeeds; let it end while the server lives
        monkeypatch.setattr(_hf, "_timeouts_set", False)
    assert elapsed < 5
