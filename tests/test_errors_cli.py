"""The README's promise, through the real `hubkit` command: exit 0, or 1 with one line on stderr saying what is wrong.

Each case here used to end in a traceback (or a raw library message, or `[Errno 32] Broken pipe`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import run_cli
from PIL import Image

from hubkit import cli, hub, tiny
from hubkit.errors import AdapterConfigError, MissingModelFileError, UnsafePickleError

TASK = "depth-estimation"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("depth-anything", tmp_path_factory.mktemp("base") / "depth-anything")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return tiny.random_adapter(TASK, base, tmp_path_factory.mktemp("adapter") / "lora", seed=0)


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (32, 24), (120, 80, 40)).save(path)
    return path


def one_line_failure(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed run (exit 1, no traceback, nothing else on stderr)."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def predict(image, base, *more: str, out) -> subprocess.CompletedProcess:
    return run_cli("predict", TASK, str(image), "--base", str(base), "--out", str(out), *more)


class Shell:
    """Unpickling this runs a shell command: what a malicious adapter_model.bin carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def evil_adapter(adapter, folder, marker):
    folder.mkdir()
    shutil.copy(adapter / "adapter_config.json", folder)
    torch.save({"base_model.model.x.lora_A.weight": Shell(f"touch {marker}")}, folder / "adapter_model.bin")
    return folder


# -- 1: an opted-in pickle that weights_only refuses ---------------------------------------------------------------
def test_pickle_with_code_is_a_one_line_refusal_even_with_allow_pickle(base, adapter, image, tmp_path):
    marker = tmp_path / "pwned"
    evil = evil_adapter(adapter, tmp_path / "evil", marker)
    line = one_line_failure(predict(image, base, "--adapter", str(evil), "--allow-pickle", out=tmp_path / "out"))
    assert line.startswith("hubkit predict: ")
    assert str(evil / "adapter_model.bin") in line
    assert "non-tensor objects" in line and "weights_only=True" in line and "posix.system" in line
    assert not marker.exists()  # refused before anything ran


def test_pickled_base_with_code_is_a_one_line_refusal(base, image, tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "pickle-base"
    shutil.copytree(base, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"backbone.weight": Shell(f"touch {marker}")}, folder / "pytorch_model.bin")
    line = one_line_failure(predict(image, folder, "--allow-pickle", out=tmp_path / "out"))
    assert str(folder / "pytorch_model.bin") in line and "non-tensor objects" in line
    assert not marker.exists()


# -- 2: adapter_config.json that parses but has the wrong shape ---------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "field", "shown"),
    [
        (lambda config: [1, 2, 3], None, "got list [1, 2, 3]"),
        (lambda config: {**config, "r": "sixteen"}, "r", "got 'sixteen' (str)"),
        (lambda config: {**config, "target_modules": 5}, "target_modules", "got 5 (int)"),
    ],
    ids=["list", "r-string", "target-modules-int"],
)
def test_adapter_config_of_the_wrong_shape_is_one_line(base, adapter, image, tmp_path, edit, field, shown):
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(edit(config)))
    line = one_line_failure(predict(image, base, "--adapter", str(bad), out=tmp_path / "out"))
    assert str(bad / "adapter_config.json") in line and shown in line
    if field:
        assert f"field {field!r} must be" in line
    else:
        assert "must hold a JSON object" in line


# -- 3: a base folder without the processor file its task needs ---------------------------------------------------
def test_base_without_preprocessor_config_names_folder_file_and_task(base, image, tmp_path):
    folder = tmp_path / "no-processor"
    shutil.copytree(base, folder)
    (folder / "preprocessor_config.json").unlink()
    line = one_line_failure(predict(image, folder, out=tmp_path / "out"))
    assert str(folder) in line and "preprocessor_config.json" in line and repr(TASK) in line
    assert "Can't load image processor" not in line  # ours, not transformers' generic message


def test_debug_logging_still_shows_the_traceback(base, image, tmp_path):
    folder = tmp_path / "no-processor"
    shutil.copytree(base, folder)
    (folder / "preprocessor_config.json").unlink()
    proc = run_cli("-vv", "predict", TASK, str(image), "--base", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "MissingModelFileError" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("hubkit predict: ")


def run_ls_as(monkeypatch, run) -> None:
    """Make `hubkit ls` run `run` (its arguments and help stay those of the registered command)."""
    monkeypatch.setitem(cli.COMMANDS, "ls", dataclasses.replace(cli.COMMANDS["ls"], run=run))


# -- 4: a closed stdout -------------------------------------------------------------------------------------------
def test_ls_into_a_reader_that_stops_after_one_line_exits_quietly(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    for i in range(300):  # ~300 kB of `ls` output: far more than a pipe buffers, so hubkit writes after the close
        (content / "n.txt").write_text(str(i))
        hub.push(content, "me/many", message=f"revision {i} " + "x" * 1000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubkit", "ls", "me/many"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert stderr == ""
    assert "revision 299" in first


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(monkeypatch, capsys):
    def upload(args):
        raise BrokenPipeError(32, "Broken pipe (the upload connection closed)")

    run_ls_as(monkeypatch, upload)
    assert cli.main(["ls"]) == 1
    assert capsys.readouterr().err.splitlines() == ["hubkit ls: [Errno 32] Broken pipe (the upload connection closed)"]


# -- the edge: library errors that are not ours --------------------------------------------------------------------
def test_a_library_value_error_is_one_line(monkeypatch, capsys):
    def command(args):
        raise ValueError("Couldn't instantiate the backend tokenizer from one of:\n(1) a serialization file,\n(2) ...")

    run_ls_as(monkeypatch, command)
    assert cli.main(["ls"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "hubkit ls: Couldn't instantiate the backend tokenizer from one of: (1) a serialization file, (2) ..."
    ]


def test_programming_errors_keep_their_traceback(monkeypatch):
    """Only errors a user can act on become one line; a bug (TypeError) must still surface with its traceback."""

    def command(args):
        raise TypeError("a bug")

    run_ls_as(monkeypatch, command)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["ls"])


def test_the_typed_errors_carry_their_context(base, adapter, tmp_path):
    import hubkit

    evil = evil_adapter(adapter, tmp_path / "evil", tmp_path / "pwned")
    with pytest.raises(UnsafePickleError) as refused:
        hubkit.load(TASK, base, adapters=[evil], allow_pickle=True)
    assert isinstance(refused.value, PermissionError) and refused.value.path == evil / "adapter_model.bin"
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    (bad / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": "big"}))
    with pytest.raises(AdapterConfigError) as wrong:
        hubkit.load(TASK, base, adapters=[bad])
    assert isinstance(wrong.value, ValueError)
    assert (wrong.value.field, wrong.value.value) == ("lora_alpha", "big")
    assert wrong.value.path == bad / "adapter_config.json"
    folder = tmp_path / "no-processor"
    shutil.copytree(base, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(MissingModelFileError) as missing:
        hubkit.load(TASK, folder)
    assert isinstance(missing.value, FileNotFoundError)
    assert (missing.value.folder, missing.value.task) == (folder, TASK)
    assert missing.value.names[0] == "preprocessor_config.json"
