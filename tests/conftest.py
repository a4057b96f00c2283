from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own local store and HF cache, never the Hub, and no real token."""
    home = tmp_path / "hubkit-home"
    monkeypatch.setenv("HUBKIT_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUBKIT_HUB", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    return home


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def run_cli(*args: str, env: dict | None = None, check: bool = False):
    import subprocess

    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "hubkit", *args], capture_output=True, text=True, env=full_env, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hubkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def same(a, b, rtol: float = 1e-4) -> bool:
    """Equal up to float noise, relative to the outputs' own scale (tiny random models give tiny values)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-30)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=rtol * scale))


def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on busy shared cores they lose several times over.
    Recipe tests make it an autouse fixture: `one_thread = pytest.fixture(autouse=True, scope="module")(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
