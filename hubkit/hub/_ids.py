"""Repo ids and repo types, validated the way the Hugging Face Hub validates them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidRepoIdError

REPO_TYPES = ("model", "dataset", "space")
_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")
MAX_PART = 96


@dataclass(frozen=True)
class RepoRef:
    """A repo in a store: `namespace/name` plus its type."""

    namespace: str
    name: str
    repo_type: str = "model"

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return self.repo_id if self.repo_type == "model" else f"{self.repo_type}s/{self.repo_id}"


def check_repo_type(repo_type: str | None) -> str:
    repo_type = repo_type or "model"
    if repo_type not in REPO_TYPES:
        raise InvalidRepoIdError(repo_type, f"repo type must be one of {', '.join(REPO_TYPES)}")
    return repo_type


def parse_repo_id(repo_id: object, repo_type: str | None = "model") -> RepoRef:
    """Validate `namespace/name`; raise InvalidRepoIdError saying what is wrong."""
    repo_type = check_repo_type(repo_type)
    if not isinstance(repo_id, str):
        raise InvalidRepoIdError(repo_id, "it must be a string")
    if not repo_id:
        raise InvalidRepoIdError(repo_id, "it is empty")
    if repo_id != repo_id.strip() or any(c.isspace() for c in repo_id):
        raise InvalidRepoIdError(repo_id, "it contains whitespace")
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise InvalidRepoIdError(repo_id, f"it has {len(parts)} part(s) separated by '/', expected exactly 2")
    for part in parts:
        if len(part) > MAX_PART:
            raise InvalidRepoIdError(repo_id, f"{part[:20]!r}... is longer than {MAX_PART} characters")
        if part in (".", "..") or ".." in part or "--" in part:
            raise InvalidRepoIdError(repo_id, f"{part!r} contains '..' or '--'")
        if part.endswith(".git"):
            raise InvalidRepoIdError(repo_id, f"{part!r} ends with '.git'")
        if not _PART.match(part):
            raise InvalidRepoIdError(repo_id, f"{part!r} has characters other than letters, digits, '-', '_', '.'")
    return RepoRef(parts[0], parts[1], repo_type)
