"""Adapters: multi-adapter switching, merge / unmerge, scale, legacy keys, refusals, safety, LoRA plans."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, same
from safetensors.torch import load_file, save_file
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import AdapterConfigError, AdapterMismatchError, UnsafePickleError, UnsafeWeightsError
from hubkit.plan import plan
from hubkit.tasks import LoadOptions, pretrained_kwargs

TASK = "depth-estimation"
IMAGE = data.coffee()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("depth-anything", tmp_path_factory.mktemp("base") / "depth-anything")


@pytest.fixture(scope="module")
def adapter_dirs(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [tiny.random_adapter(TASK, base, root / f"a{i}", seed=i) for i in range(3)]


def depth(predictor, **kw):
    return predictor.predict(IMAGE, **kw).depth


def test_merge_unmerge_scale_and_base(base, adapter_dirs):
    p = hubkit.load(TASK, base, adapters=adapter_dirs)
    plain = depth(p, adapter="base")
    unmerged = depth(p, adapter="a1")
    p.merge("a1")
    assert same(depth(p), unmerged)
    assert p.merged == "a1"
    assert same(depth(p, adapter="base"), plain)  # unmerges for base
    p.unmerge()
    assert same(depth(p, adapter="a1"), unmerged)
    p.set_scale("a1", 0.0)
    assert same(depth(p, adapter="a1"), plain)
    p.set_scale("a1", 0.5)
    half = depth(p, adapter="a1")
    assert not same(half, plain) and not same(half, unmerged)
    compared = p.compare(IMAGE)
    assert list(compared) == ["base", "a0", "a1", "a2"]
    p.remove_adapter("a2")
    assert list(p.adapters) == ["a0", "a1"]
    assert all(info.nbytes > 0 for info in p.adapters.values())


def test_adapter_memory_scales_with_rank(base, tmp_path):
    small = tiny.random_adapter(TASK, base, tmp_path / "r2", r=2)
    big = tiny.random_adapter(TASK, base, tmp_path / "r8", r=8)
    p = hubkit.load(TASK, base, adapters=[small, big])
    assert p.adapters["r8"].nbytes == 4 * p.adapters["r2"].nbytes


def _to_legacy(folder, out):
    """Rewrite an adapter as transformers 4 saved it: attention.attention.query and target names query/key/value."""
    out.mkdir()
    state = load_file(folder / "adapter_model.safetensors")
    renames = {".attention.q_proj.": ".attention.attention.query.", ".attention.k_proj.": ".attention.attention.key."}
    renames[".attention.v_proj."] = ".attention.attention.value."
    legacy = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        legacy[key] = value
    assert legacy.keys() != state.keys()
    save_file(legacy, out / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "key", "value"]
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_legacy_key_names_are_remapped(base, adapter_dirs, tmp_path):
    legacy = _to_legacy(adapter_dirs[0], tmp_path / "legacy")
    expected = depth(hubkit.load(TASK, base, adapters=[adapter_dirs[0]]))
    assert same(depth(hubkit.load(TASK, base, adapters=[legacy])), expected)


def test_unmappable_keys_are_refused_and_base_is_untouched(base, adapter_dirs, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    state = load_file(adapter_dirs[0] / "adapter_model.safetensors")
    first = sorted(state)[0]
    state["base_model.model.nowhere.lora_A.weight"] = state.pop(first)
    save_file(state, bad / "adapter_model.safetensors")
    (bad / "adapter_config.json").write_text((adapter_dirs[0] / "adapter_config.json").read_text())
    p = hubkit.load(TASK, base)
    plain = depth(p)
    with pytest.raises(AdapterMismatchError) as err:
        p.add_adapter(bad)
    assert "missing keys" in str(err.value) and first in str(err.value) and "nowhere" in str(err.value)
    assert same(depth(p), plain)  # nothing half-loaded
    assert not p.adapters


def test_wrong_shapes_are_refused(base, tmp_path):
    other = tiny.build("dpt", tmp_path / "dpt")  # a different architecture, with query/key/value too
    from_other = tiny.random_adapter(TASK, other, tmp_path / "dpt-lora")
    with pytest.raises(AdapterMismatchError, match="does not fit|shapes"):
        hubkit.load(TASK, base, adapters=[from_other])


def test_adapter_for_another_base_is_refused(base, adapter_dirs, tmp_path):
    hubkit.push(base, "hubkit-tiny/depth-anything")
    foreign = tiny.random_adapter(TASK, base, tmp_path / "foreign", base_id="someone/other-model")
    with pytest.raises(AdapterMismatchError, match="someone/other-model"):
        hubkit.load(TASK, "hubkit-tiny/depth-anything", adapters=[foreign])
    p = hubkit.load(TASK, "hubkit-tiny/depth-anything")
    p.add_adapter(foreign, check_base=False)
    assert "foreign" in p.adapters


def test_adapters_load_from_the_store_by_repo_id(base, adapter_dirs):
    hubkit.push(base, "hubkit-tiny/depth-anything")
    hubkit.push(adapter_dirs[2], "me/depth-lora", message="v1")
    from_store = depth(hubkit.load(TASK, "hubkit-tiny/depth-anything", adapters=["me/depth-lora"]))
    assert same(from_store, depth(hubkit.load(TASK, base, adapters=[adapter_dirs[2]])))


def test_pickle_adapters_need_opt_in(base, adapter_dirs, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(load_file(adapter_dirs[0] / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_config.json").write_text((adapter_dirs[0] / "adapter_config.json").read_text())
    with pytest.raises(UnsafeWeightsError, match="weights_only"):
        hubkit.load(TASK, base, adapters=[pickled])
    opted = hubkit.load(TASK, base, adapters=[pickled], allow_pickle=True)
    assert same(depth(opted), depth(hubkit.load(TASK, base, adapters=[adapter_dirs[0]])))


class NotATensor:
    """Any class of the user's: weights_only=True refuses to rebuild it."""


def _pickled_adapter(adapter, folder, state) -> object:
    folder.mkdir()
    (folder / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    torch.save(state, folder / "adapter_model.bin")
    return folder


def test_opted_in_pickle_holding_a_class_is_refused(base, adapter_dirs, tmp_path):
    state = {**load_file(adapter_dirs[0] / "adapter_model.safetensors"), "extra": NotATensor()}
    pickled = _pickled_adapter(adapter_dirs[0], tmp_path / "pickled", state)
    with pytest.raises(UnsafePickleError, match="non-tensor objects.*weights_only=True") as err:
        hubkit.load(TASK, base, adapters=[pickled], allow_pickle=True)
    assert err.value.path == pickled / "adapter_model.bin" and "NotATensor" in err.value.detail
    assert isinstance(err.value, UnsafeWeightsError)


def test_opted_in_pickle_that_is_truncated_or_not_a_state_dict(base, adapter_dirs, tmp_path):
    good = load_file(adapter_dirs[0] / "adapter_model.safetensors")
    truncated = _pickled_adapter(adapter_dirs[0], tmp_path / "truncated", good)
    data_file = truncated / "adapter_model.bin"
    data_file.write_bytes(data_file.read_bytes()[:200])
    with pytest.raises(AdapterMismatchError, match="corrupt or truncated"):
        hubkit.load(TASK, base, adapters=[truncated], allow_pickle=True)
    strings = _pickled_adapter(adapter_dirs[0], tmp_path / "strings", {**good, "note": "hello"})
    with pytest.raises(AdapterMismatchError, match="str at 'note'"):
        hubkit.load(TASK, base, adapters=[strings], allow_pickle=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("r", True),
        ("r", 0),
        ("lora_alpha", "32"),
        ("lora_dropout", "0.1"),
        ("target_modules", ["q_proj", 3]),
        ("modules_to_save", "head"),
        ("bias", "some"),
        ("base_model_name_or_path", 5),
    ],
)
def test_adapter_config_fields_of_the_wrong_type_are_named(base, adapter_dirs, tmp_path, field, value):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapter_dirs[0], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    p = hubkit.load(TASK, base)
    with pytest.raises(AdapterConfigError, match=f"field '{field}' must be") as err:
        p.add_adapter(bad)
    assert (err.value.field, err.value.value) == (field, value) and str(bad / "adapter_config.json") in str(err.value)
    assert not p.adapters


def test_configs_peft_writes_pass_the_check(tmp_path):
    from peft import LoraConfig, get_peft_model

    from hubkit.adapters import check_adapter_config

    settings = {
        "target_modules": "0",
        "lora_alpha": 16.0,
        "lora_dropout": 0.1,
        "init_lora_weights": "gaussian",
        "rank_pattern": {"0": 4},
        "use_rslora": True,
        "modules_to_save": ["1"],
    }
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    get_peft_model(model, LoraConfig(**settings)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert check_adapter_config(config, tmp_path / "adapter_config.json") is config


def test_pickle_only_base_is_refused(base, tmp_path):
    import shutil

    folder = tmp_path / "pickle-base"
    shutil.copytree(base, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UnsafeWeightsError, match="allow_pickle"):
        hubkit.load(TASK, folder)


def test_safe_defaults():
    kwargs = pretrained_kwargs(LoadOptions())
    assert kwargs["trust_remote_code"] is False and kwargs["use_safetensors"] is True


def test_truncated_adapter_file_is_a_clear_error(base, adapter_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapter_dirs[0], broken)
    data_file = broken / "adapter_model.safetensors"
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(AdapterMismatchError, match="corrupt or truncated"):
        hubkit.load(TASK, base, adapters=[broken])


def test_lora_plan_reproduces_the_seed_figure_offline():
    result = plan("depth-anything/Depth-Anything-V2-Small-hf", r=16, alpha=32)
    assert result.line == "trainable params: 442,368 || all params: 25,227,457 || trainable%: 1.7535"
    assert result.targets == ("q_proj", "k_proj", "v_proj") and len(result.modules) == 36
    assert not any("o_proj" in m for m in result.modules)


def test_lora_plan_cli_and_presets():
    proc = run_cli(
        "lora", "plan", "depth-anything/Depth-Anything-V2-Small-hf", "--r", "16", "--alpha", "32", check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == (
        "trainable params: 442,368 || all params: 25,227,457 || trainable%: 1.7535"
    )
    sam = plan("facebook/sam-vit-base")
    assert set(sam.targets) == {"qkv", "proj", "mlp.lin1", "mlp.lin2"} or sam.task != "mask-generation"
    bad = run_cli("lora", "plan", "depth-anything/Depth-Anything-V2-Small-hf", "--targets", "nonexistent")
    assert bad.returncode == 1 and "match no module" in bad.stderr
    missing = run_cli("lora", "plan", "nobody/nothing", "--offline")
    assert missing.returncode == 1 and "Depth-Anything-V2-Small-hf" in missing.stderr


def test_trained_modules_restore_a_tied_weight_saved_under_its_second_name(tmp_path):
    from hubkit.adapters import restore_trained_modules

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(5, 3)
            self.head = torch.nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight  # named_parameters() lists it once, as embed.weight

    model = Tied()
    trained = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    save_file({"head.weight": trained}, tmp_path / "trained_modules.safetensors")
    assert restore_trained_modules(model, tmp_path) == ["head"]
    assert torch.equal(model.head.weight, trained) and torch.equal(model.embed.weight, trained)
