"""Recipe YAML -> CLI overrides -> frozen config; what is written back never holds a secret."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from hubkit.errors import ConfigError
from hubkit.training import TrainConfig, dump_yaml, option, parse_config


@dataclasses.dataclass(frozen=True)
class Recipe(TrainConfig):
    input_size: int = option("side", 518)
    hub_token: str | None = option("a secret that must never be written", None)


def test_yaml_then_cli_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nbatch_size: 8\nlora_targets: [query, value]\naugment_unused: 1\n")
    with pytest.raises(ConfigError, match="augment_unused"):
        parse_config(Recipe, ["--config", str(recipe)])
    recipe.write_text("learning_rate: 1.0e-4\nbatch_size: 8\nlora_targets: [query, value]\n")
    config = parse_config(Recipe, ["--config", str(recipe), "--batch-size", "2", "--gradient_checkpointing", "true"])
    assert config.learning_rate == 1e-4 and config.batch_size == 2 and config.gradient_checkpointing is True
    assert config.lora_targets == ["query", "value"] and config.input_size == 518
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 3
    assert parse_config(Recipe, ["--lora_targets", "q_proj,v_proj"]).lora_targets == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "argv, field",
    [(["--batch_size", "two"], "batch_size"), (["--lora_dropout", "1.5"], "lora_dropout"),
     (["--mixed_precision", "fp8"], "mixed_precision"), (["--epochs", "0"], "epochs")],
)  # fmt: skip
def test_bad_values_name_the_field(argv, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(Recipe, argv)


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(Recipe, ["--config", str(tmp_path / "nope.yaml")])
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(Recipe, ["--config", str(tmp_path / "bad.yaml")])


def test_dumped_config_has_no_secret(tmp_path):
    config = parse_config(Recipe, ["--hub_token", "hf_abcdefghijklmnopqrstuvwxyz"])
    text = dump_yaml(config, tmp_path / "c.yaml").read_text()
    assert "hf_abcdefghijklmnopqrstuvwxyz" not in text
    assert yaml.safe_load(text)["hub_token"] == "***"
