"""Datasets beyond the loaders: what each model sees (views), and generated edge-case sets (registry)."""
from experiments.datasets.registry import generator, generator_names
from experiments.datasets.views import model_views, split_instructions

__all__ = ["generator", "generator_names", "model_views", "split_instructions"]
