"""Faithfulness tests for tests/fake_hf_hub.py, using plain huggingface_hub calls only."""

from __future__ import annotations

from pathlib import Path

import httpx2  # huggingface_hub 2.4 talks HTTP through `httpx2`, not `httpx`
import pytest
from fake_hf_hub import GITATTRIBUTES, FakeHub
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

TOKEN = "hf_test_token_alice"
BINARY = bytes(range(256)) * 17 + b"\x00\xff\x00"

V1 = {
    "config.json": b'{"hidden_size": 8}\n',
    "weights/model.bin": BINARY,
    "nested/deep/notes.txt": "unicode ✓ notes\n".encode(),
    "empty.txt": b"",
}
V2 = {
    "config.json": b'{"hidden_size": 16}\n',
    "weights/model.bin": BINARY,  # unchanged
    "weights/extra.bin": BINARY[::-1],
}


@pytest.fixture
def hub(monkeypatch):
    # Constants read at import: CI often sets HF_HUB_OFFLINE=1, which would block even 127.0.0.1.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # tests always pass token= explicitly anyway
    with FakeHub(tokens={TOKEN: "alice"}) as fake:
        yield fake


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_tree(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def with_gitattributes(files: dict[str, bytes]) -> dict[str, bytes]:
    return {".gitattributes": GITATTRIBUTES, **files}


def test_model_upload_tags_history_and_downloads(hub, api, tmp_path):
    url = api.create_repo("alice/vit-tiny")
    assert url.repo_id == "alice/vit-tiny" and url.repo_type == "model"
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("alice/vit-tiny")
    assert exc.value.response.status_code == 409
    assert api.create_repo("alice/vit-tiny", exist_ok=True).repo_id == "alice/vit-tiny"

    first = api.upload_folder(
        repo_id="alice/vit-tiny", folder_path=write_tree(tmp_path / "v1", V1), commit_message="first"
    )
    api.create_tag("alice/vit-tiny", tag="v1", revision=first.oid)
    second = api.upload_folder(
        repo_id="alice/vit-tiny",
        folder_path=write_tree(tmp_path / "v2", V2),
        commit_message="second",
        delete_patterns=["nested/*", "empty.txt"],
    )
    assert len(first.oid) == len(second.oid) == 40 and first.oid != second.oid

    info = api.repo_info("alice/vit-tiny", files_metadata=True)
    assert info.sha == second.oid
    assert sorted(s.rfilename for s in info.siblings) == sorted(with_gitattributes(V2))
    assert {s.rfilename: s.size for s in info.siblings}["weights/extra.bin"] == len(BINARY)
    assert api.model_info("alice/vit-tiny", revision="v1").sha == first.oid

    refs = api.list_repo_refs("alice/vit-tiny")
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", second.oid)]
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)]

    commits = api.list_repo_commits("alice/vit-tiny")
    assert [c.title for c in commits] == ["second", "first", "initial commit"]
    assert [c.commit_id for c in commits[:2]] == [second.oid, first.oid]
    assert commits[0].created_at >= commits[1].created_at
    assert [c.commit_id for c in api.list_repo_commits("alice/vit-tiny", revision="v1")][0] == first.oid
    assert sorted(api.list_repo_files("alice/vit-tiny", revision="v1")) == sorted(with_gitattributes(V1))

    cache = tmp_path / "cache"
    kwargs = {"endpoint": hub.endpoint, "token": TOKEN, "cache_dir": cache}
    assert read_tree(snapshot_download("alice/vit-tiny", **kwargs)) == with_gitattributes(V2)
    assert read_tree(snapshot_download("alice/vit-tiny", revision="v1", **kwargs)) == with_gitattributes(V1)
    at_sha = snapshot_download("alice/vit-tiny", revision=first.oid, **kwargs)
    assert Path(at_sha).name == first.oid and read_tree(at_sha) == with_gitattributes(V1)
    path = hf_hub_download("alice/vit-tiny", "nested/deep/notes.txt", revision="v1", **kwargs)
    assert Path(path).read_bytes() == V1["nested/deep/notes.txt"]
    assert ("HEAD", f"/alice/vit-tiny/resolve/{first.oid}/weights/model.bin") in hub.requests


def test_unchanged_upload_makes_no_commit_and_create_commit_ops(hub, api, tmp_path):
    api.create_repo("alice/unchanged")
    folder = write_tree(tmp_path / "v1", V1)
    first = api.upload_folder(repo_id="alice/unchanged", folder_path=folder)
    assert api.upload_folder(repo_id="alice/unchanged", folder_path=folder).oid == first.oid  # preupload oid match
    assert len(api.list_repo_commits("alice/unchanged")) == 2

    commit = api.create_commit(
        "alice/unchanged",
        operations=[
            CommitOperationAdd("weights/new.bin", BINARY[:10]),
            CommitOperationDelete("nested/", is_folder=True),
            CommitOperationDelete("empty.txt"),
        ],
        commit_message="edit",
        parent_commit=first.oid,
    )
    files = api.list_repo_files("alice/unchanged")
    assert sorted(files) == [".gitattributes", "config.json", "weights/model.bin", "weights/new.bin"]
    with pytest.raises(HfHubHTTPError) as exc:  # stale parent_commit
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/unchanged", parent_commit=first.oid)
    assert exc.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id="alice/unchanged")
    assert api.repo_info("alice/unchanged").sha == commit.oid


def test_dataset_and_space_repos(hub, api, tmp_path):
    url = api.create_repo("alice/images", repo_type="dataset")
    assert url.repo_type == "dataset" and url.repo_id == "alice/images"
    api.upload_file(path_or_fileobj=BINARY, path_in_repo="data/train.bin", repo_id="alice/images", repo_type="dataset")
    info = api.dataset_info("alice/images")
    assert sorted(s.rfilename for s in info.siblings) == [".gitattributes", "data/train.bin"]
    api.create_tag("alice/images", tag="v0", repo_type="dataset")
    assert [t.target_commit for t in api.list_repo_refs("alice/images", repo_type="dataset").tags] == [info.sha]
    kwargs = {"repo_type": "dataset", "endpoint": hub.endpoint, "token": TOKEN, "cache_dir": tmp_path / "c"}
    path = hf_hub_download("alice/images", "data/train.bin", revision="v0", **kwargs)
    assert Path(path).read_bytes() == BINARY
    assert read_tree(snapshot_download("alice/images", **kwargs)) == {
        ".gitattributes": GITATTRIBUTES,
        "data/train.bin": BINARY,
    }
    assert ("GET", "/datasets/alice/images/resolve/v0/data/train.bin") in hub.requests

    api.create_repo("alice/demo", repo_type="space", space_sdk="static")
    api.upload_file(path_or_fileobj=b"<html/>", path_in_repo="index.html", repo_id="alice/demo", repo_type="space")
    space = api.space_info("alice/demo")
    assert space.sdk == "static" and "index.html" in {s.rfilename for s in space.siblings}
    # Same name, different types: separate repos.
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/images")
    api.delete_repo("alice/demo", repo_type="space")
    with pytest.raises(RepositoryNotFoundError):
        api.space_info("alice/demo")


def test_not_found_errors(hub, api, tmp_path):
    api.create_repo("alice/exists")
    kwargs = {"endpoint": hub.endpoint, "token": TOKEN, "cache_dir": tmp_path / "c"}
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("alice/nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/nope", "config.json", **kwargs)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/nope", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("alice/exists", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/exists", ".gitattributes", revision="no-such-branch", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("alice/exists", revision="no-such-branch", **kwargs)
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_commits("alice/exists", revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/exists", "missing.txt", **kwargs)


def test_auth(hub, api, tmp_path):
    assert api.whoami()["name"] == "alice"
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as exc:
        anonymous.create_repo("alice/secret")
    assert exc.value.response.status_code == 401

    api.create_repo("alice/secret", private=True)
    api.create_repo("alice/public")
    for write in (
        lambda: anonymous.upload_folder(repo_id="alice/public", folder_path=write_tree(tmp_path / "f", V2)),
        lambda: anonymous.create_tag("alice/public", tag="v1"),
        lambda: HfApi(endpoint=hub.endpoint, token="hf_wrong").create_commit(
            "alice/public", operations=[CommitOperationAdd("a.txt", b"a")], commit_message="m"
        ),
    ):
        with pytest.raises(HfHubHTTPError) as exc:
            write()
        assert exc.value.response.status_code == 401
    assert [b.target_commit for b in anonymous.list_repo_refs("alice/public").branches]  # public reads are fine
    with pytest.raises(RepositoryNotFoundError):  # private repos are invisible without a token
        anonymous.repo_info("alice/secret")
    assert api.repo_info("alice/secret").private is True
    assert f"Bearer {TOKEN}" in hub.authorization_headers
    assert "Bearer hf_wrong" in hub.authorization_headers
    assert ("POST", "/api/repos/create") in hub.requests


def test_fault_knobs(hub, api):
    api.create_repo("alice/flaky")
    hub.fail_next(503)
    with pytest.raises(HfHubHTTPError) as exc:
        api.repo_info("alice/flaky")
    assert exc.value.response.status_code == 503
    assert api.repo_info("alice/flaky").sha

    hub.delay_seconds = 0.5
    with pytest.raises(httpx2.TimeoutException):
        api.repo_info("alice/flaky", timeout=0.1)
    hub.delay_seconds = 0
    assert api.repo_info("alice/flaky", timeout=5).id == "alice/flaky"


def test_upload_folder_without_hf_xet(hub, api, tmp_path, monkeypatch):
    # With hf_xet installed, upload_folder goes through the pipelined uploader; without it, through create_commit.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api.create_repo("alice/legacy", repo_type="dataset")
    commit = api.upload_folder(repo_id="alice/legacy", repo_type="dataset", folder_path=write_tree(tmp_path / "f", V1))
    snapshot = snapshot_download(
        "alice/legacy", repo_type="dataset", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c"
    )
    assert Path(snapshot).name == commit.oid and read_tree(snapshot) == with_gitattributes(V1)
