"""Deploying Spaces: README YAML valid for Hugging Face Spaces, requirements pinned as the repository pins them,
`hubkit space export`, and (slow) each exported folder starting with only its own requirements installed.

Every folder under spaces/ is covered: a new Space is checked without touching this file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import run_cli

from hubkit import hub
from hubkit.errors import CardError, ConfigError
from hubkit.space_export import (
    export_space,
    read_pins,
    read_space_card,
    validate_space_card,
    validate_space_requirements,
)

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
ROOT_REQUIREMENTS = ROOT / "requirements.txt"
SPACES = sorted(p for p in (ROOT / "spaces").iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
# Where the per-Space environments live between runs (as scripts/xla_env.sh keeps its own): keyed by a hash of
# what is installed, so a changed requirements.txt or pin builds a new one.
ENV_CACHE = Path(os.environ.get("HUBKIT_SPACE_ENVS", Path.home() / ".cache" / "hubkit-ci" / "space-venvs"))
VALID = """---
title: demo
emoji: 🔭
colorFrom: indigo
colorTo: blue
sdk: gradio
sdk_version: {gradio}
python_version: '3.11'
app_file: app.py
short_description: A short line
models:
- owner/model
license: apache-2.0
tags:
- demo
---

# demo
"""


def _space_ids(folders):
    return [p.name for p in folders]


def _write_space(folder: Path, readme: str, requirements: str = "numpy==2.4.6\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(readme, encoding="utf-8")
    (folder / "requirements.txt").write_text(requirements, encoding="utf-8")
    (folder / "app.py").write_text("demo = None\n", encoding="utf-8")
    return folder


def _valid_readme() -> str:
    return VALID.format(gradio=read_pins(ROOT_REQUIREMENTS)["gradio"])


# -- every Space in spaces/ -----------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", SPACES, ids=_space_ids(SPACES))
def test_space_card_is_valid_for_hf_spaces(folder):
    assert validate_space_card(folder) == []
    card = read_space_card(folder)
    if card["sdk"] in ("gradio", "streamlit"):  # what HF installs is what the tests ran
        assert card["sdk_version"] == read_pins(ROOT_REQUIREMENTS)[card["sdk"]]


@pytest.mark.parametrize("folder", SPACES, ids=_space_ids(SPACES))
def test_space_requirements_are_pinned_as_the_repository_pins_them(folder):
    assert validate_space_requirements(folder) == []
    pins = read_pins(folder / "requirements.txt")
    assert pins, "a Space lists at least what hubkit needs"
    assert "hubkit" not in pins  # vendored by `hubkit space export`, not on PyPI


GPU_SPACES = {"segma", "pixcell"}  # SAM + BLIP + Mistral-7B + Grounding DINO; PixArt transformer + UNI2-h encoder


@pytest.mark.parametrize("folder", SPACES, ids=_space_ids(SPACES))
def test_space_suggests_hardware_that_fits_its_default_models(folder):
    hardware = read_space_card(folder).get("suggested_hardware")
    if folder.name in GPU_SPACES:
        assert hardware and not hardware.startswith("cpu"), f"{folder.name} needs a GPU flavour, got {hardware}"
    else:
        assert hardware in (None, "cpu-basic", "cpu-upgrade")


def test_docker_space_serves_on_its_app_port():
    for folder in SPACES:
        card = read_space_card(folder)
        if card["sdk"] != "docker":
            continue
        dockerfile = (folder / "Dockerfile").read_text()
        assert f"PORT={card['app_port']}" in dockerfile and "HOST=0.0.0.0" in dockerfile
        assert "requirements.txt" in dockerfile and card["app_file"] in dockerfile


# -- the validators find what is wrong ------------------------------------------------------------------------
def test_validator_accepts_a_valid_card(tmp_path):
    assert validate_space_card(_write_space(tmp_path / "s", _valid_readme())) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("colorFrom: indigo", "colorFrom: orange"), "colorFrom: orange"),
        (("colorTo: blue", "colorTo: Blue"), "colorTo: Blue"),
        (("sdk: gradio", "sdk: flask"), "sdk: flask"),
        (("sdk_version: {v}", "sdk_version: 4.0.0"), "differs from the gradio=="),
        (("sdk_version: {v}\n", ""), "needs `sdk_version`"),
        (("short_description: A short line", "short_description: " + "x" * 61), "at most 60 characters, got 61"),
        (("license: apache-2.0", "license: apache"), "licence identifier"),
        (("title: demo\n", ""), "missing `title`"),
        (("app_file: app.py", "app_file: main.py"), "`app_file: main.py` is not a file"),
        (("- owner/model", "- ./models/depth"), "not a Hub repo id"),
        (("emoji: 🔭", "emoji: ok"), "emoji only"),
        (("python_version: '3.11'", "python_version: 3.11"), "python_version"),
        (("license: apache-2.0", "license: apache-2.0\nsuggested_hardware: gpu-huge"), "gpu-huge"),
        (("license: apache-2.0", "license: apache-2.0\napp_port: 8000"), "`app_port` is used with `sdk: docker` only"),
        (("tags:\n- demo", "tags: demo"), "`tags` must be a list"),
    ],
)
def test_validator_names_each_problem(tmp_path, change, expected):
    readme = _valid_readme()
    old, new = (part.replace("{v}", read_pins(ROOT_REQUIREMENTS)["gradio"]) for part in change)
    assert old in readme
    problems = validate_space_card(_write_space(tmp_path / "s", readme.replace(old, new, 1)))
    assert any(expected in p for p in problems), problems


def test_validator_docker_needs_app_port_and_dockerfile(tmp_path):
    readme = (
        _valid_readme()
        .replace("sdk: gradio", "sdk: docker")
        .replace(f"sdk_version: {read_pins(ROOT_REQUIREMENTS)['gradio']}\n", "")
    )
    problems = validate_space_card(_write_space(tmp_path / "s", readme))
    assert any("needs `app_port`" in p for p in problems) and any("Dockerfile" in p for p in problems)
    folder = _write_space(tmp_path / "t", readme.replace("app_file: app.py", "app_file: app.py\napp_port: 7860"))
    (folder / "Dockerfile").write_text("FROM python:3.11-slim\n")
    assert validate_space_card(folder) == []


def test_validator_refuses_a_readme_without_yaml(tmp_path):
    folder = _write_space(tmp_path / "s", "# just a title\n")
    [problem] = validate_space_card(folder)
    assert "does not start with a '---' YAML block" in problem
    [problem] = validate_space_card(_write_space(tmp_path / "t", "---\ntitle: [unclosed\n---\n"))
    assert "does not parse" in problem


def test_requirements_validator(tmp_path):
    numpy = read_pins(ROOT_REQUIREMENTS)["numpy"]
    ok = _write_space(tmp_path / "ok", _valid_readme(), f"# comment\nnumpy=={numpy}  # why\n")
    assert validate_space_requirements(ok) == []
    bad = _write_space(tmp_path / "bad", _valid_readme(), "torch>=2\nnumpy==1.0.0\nno-such-package-xyz==1.0\n")
    problems = validate_space_requirements(bad)
    assert len(problems) == 3, problems
    assert "'torch>=2' is not pinned" in problems[0]
    assert f"differs from the repository's pin {numpy}" in problems[1]
    assert "no-such-package-xyz==1.0 is not pinned in requirements.txt and it is not installed" in problems[2]
    (ok / "requirements.txt").unlink()
    assert "is missing" in validate_space_requirements(ok)[0]


# -- export ---------------------------------------------------------------------------------------------------
def test_export_copies_the_space_and_vendors_hubkit(tmp_path):
    out = export_space("depth", tmp_path / "out")
    assert (out / "app.py").is_file() and (out / "README.md").is_file() and (out / "requirements.txt").is_file()
    assert (out / "hubkit" / "__init__.py").is_file() and (out / "hubkit" / "space_export.py").is_file()
    assert not list(out.rglob("__pycache__")) and not list(out.rglob("*.pyc"))
    assert sorted(p.name for p in (out / "examples").iterdir()) == sorted(
        p.name for p in (ROOT / "spaces/depth/examples").iterdir()
    )
    assert validate_space_card(out) == []  # the exported card is the Space's own, still valid


def test_export_refuses_an_invalid_card_in_one_line(tmp_path):
    folder = _write_space(tmp_path / "bad", _valid_readme().replace("colorFrom: indigo", "colorFrom: orange"))
    with pytest.raises(CardError, match=r"^Space bad is not valid for Hugging Face Spaces: `colorFrom: orange`"):
        export_space(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    proc = run_cli("space", "export", str(folder), "--to", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "colorFrom: orange" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_export_refuses_unknown_spaces_and_full_targets(tmp_path):
    with pytest.raises(ConfigError, match="No Space 'nope'.*depth"):
        export_space("nope", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        export_space("depth", tmp_path / "full")


def test_cli_exports_a_space(tmp_path):
    proc = run_cli("space", "export", "search", "--to", str(tmp_path / "search"), check=True)
    out = Path(proc.stdout.strip())
    assert out == tmp_path / "search"
    assert (out / "Dockerfile").is_file() and (out / "static").is_dir() and (out / "hubkit" / "search").is_dir()


def test_serve_export_space_is_the_same_function(tmp_path):
    from hubkit.serve import export_space as from_serve

    assert (from_serve("plant", tmp_path / "p") / "hubkit").is_dir()


# -- (slow) each exported Space starts with only its own requirements -------------------------------------------
def _install_set(folder: Path) -> list[str]:
    """What the Space's environment gets: its requirements.txt, plus the SDK package HF installs itself."""
    card = read_space_card(folder)
    extra = [f"{card['sdk']}=={card['sdk_version']}"] if card["sdk"] in ("gradio", "streamlit") else []
    return [line for line in (folder / "requirements.txt").read_text().splitlines()] + extra


def _space_env(folder: Path) -> tuple[Path, float]:
    """A venv with only this Space's requirements (+ its SDK), built once and cached by their hash.
    Returns its python and the seconds spent building it (0 when cached)."""
    wanted = "\n".join([sys.version.split()[0], *_install_set(folder)])
    key = hashlib.sha256(wanted.encode()).hexdigest()[:16]
    env = ENV_CACHE / key
    python = env / "bin" / "python"
    if (env / ".complete").is_file():
        return python, 0.0
    start = time.perf_counter()
    shutil.rmtree(env, ignore_errors=True)  # an unfinished build (no .complete) is started again
    env.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    reqs = env / "requirements.txt"
    reqs.write_text("\n".join(_install_set(folder)) + "\n")
    proc = subprocess.run(
        [str(env / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "-r", str(reqs)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"pip install for {folder.name} failed:\n{proc.stderr[-3000:]}")
    (env / "want.txt").write_text(wanted)
    (env / ".complete").touch()
    return python, time.perf_counter() - start


# Spaces whose main action runs on CPU in seconds with the tiny models: endpoint, and which /menus output feeds
# which parameter (by name). Other parameters: the example image, their API default, else None.
MODEL_CALLS = {"depth": ("/predict", {"base": 0, "adapters": 1}), "plant": ("/predict", {"model_a": 0, "model_b": 1})}


def _model_call(client, folder: Path, menus, info: dict):
    from gradio_client import handle_file

    endpoint, from_menus = MODEL_CALLS[folder.name]
    menus = menus if isinstance(menus, (list, tuple)) else [menus]
    example = sorted((folder / "examples").glob("*.png"))[0]
    kwargs = {}
    for param in info["named_endpoints"][endpoint]["parameters"]:
        name = param["parameter_name"]
        if name == "image":
            kwargs[name] = handle_file(str(example))
        elif name in from_menus:
            kwargs[name] = _chosen(menus[from_menus[name]])
        elif not param.get("parameter_has_default"):
            kwargs[name] = None
    assert "image" in kwargs and set(from_menus) <= set(kwargs), f"{endpoint} parameters changed: {kwargs}"
    return client.predict(**kwargs, api_name=endpoint)


def _chosen(menu):
    """A menu's value as /menus returns it: a dropdown update {"value", "choices"} or the value itself."""
    if not isinstance(menu, dict):
        return menu
    if menu.get("value") not in (None, ""):
        return menu["value"]
    choices = [c[-1] if isinstance(c, (list, tuple)) else c for c in menu.get("choices") or []]
    return choices[0] if choices else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Space exited ({proc.returncode}) before answering:\n{log.read_text()[-4000:]}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.5)
    pytest.fail(f"no answer from {url} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def bootstrapped_store(tmp_path_factory) -> Path:
    from hubkit.bootstrap import bootstrap

    root = tmp_path_factory.mktemp("space-export-store")
    bootstrap(hub.LocalStore(root))
    return root


@pytest.mark.slow
@pytest.mark.space_venv
@pytest.mark.parametrize("folder", SPACES, ids=_space_ids(SPACES))
def test_exported_space_starts_with_only_its_requirements(folder, tmp_path, bootstrapped_store):
    card = read_space_card(folder)
    python, built = _space_env(folder)
    out = export_space(folder, tmp_path / folder.name)
    port = _free_port()
    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HUBKIT_HOME": str(bootstrapped_store),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PYTHONNOUSERSITE": "1",
    }
    sdk = card["sdk"]
    if sdk == "streamlit":
        # The script runs per browser session: AppTest runs it once here (imports, the store read, the layout).
        script = (
            "from streamlit.testing.v1 import AppTest; at = AppTest.from_file('app.py', default_timeout=120).run(); "
        )
        script += "assert not at.exception, [e.value for e in at.exception]; print('ran', len(at.main.children))"
        ran = subprocess.run([str(python), "-c", script], cwd=out, env=env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0 and "ran" in ran.stdout, ran.stderr[-4000:]
        command = [str(python), "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                   "--server.address", "127.0.0.1", "--server.headless", "true"]  # fmt: skip
    else:
        command = [str(python), card.get("app_file", "app.py")]  # gradio: demo.launch(); docker: its CMD runs this
    log = tmp_path / "space.log"
    start = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(command, cwd=out, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        page = _wait_http(base + "/", proc, log)
        assert page.status_code == 200, page.text[:500]
        started = time.perf_counter() - start
        if sdk == "gradio":
            info = httpx.get(f"{base}/gradio_api/info", timeout=30).json()
            assert "/menus" in info["named_endpoints"]
            from gradio_client import Client  # the test's own client, against the Space's clean environment

            client = Client(base + "/", verbose=False, download_files=False)
            menus = client.predict(api_name="/menus")  # reads the bootstrapped store through the vendored hubkit
            assert "hubkit-tiny/" in repr(menus), menus
            if folder.name in MODEL_CALLS:  # one real model call: torch, transformers, peft from the clean venv
                answer = _model_call(client, folder, menus, info)
                assert answer and any(a not in (None, "", [], {}) for a in answer), answer
        elif sdk == "docker":
            health = httpx.get(f"{base}/api/health", timeout=30)
            assert health.status_code in (200, 503) and health.json(), health.text[:500]
        else:
            assert httpx.get(f"{base}/_stcore/health", timeout=30).text == "ok"
        logger.warning("%s: env built in %.0f s (0 = cached), answered HTTP %.1f s after start", folder.name, built,
                       started)  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
