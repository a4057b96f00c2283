"""Plantset: the plant-disease vision-language classifier (leaf photo + optional symptom text -> disease class and
description) and its data tools."""
