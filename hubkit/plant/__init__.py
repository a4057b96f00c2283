"""Plantset: the plant-disease vision-language classifier (leaf photo + optional symptom text -> disease class and
description) and its data tools."""

from .model import PlantVLM, PlantVLMConfig, PlantVLMOutput

__all__ = ["PlantVLM", "PlantVLMConfig", "PlantVLMOutput"]
