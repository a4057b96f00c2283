"""The shared training loop and configuration every trainer uses."""

from .config import TrainConfig, build_config, config_dict, dump_yaml, load_recipe, option, parse_config, run_trainer
from .loop import TrainingSetup, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingSetup",
    "build_config",
    "config_dict",
    "dump_yaml",
    "load_recipe",
    "option",
    "parse_config",
    "run_trainer",
    "train",
]
