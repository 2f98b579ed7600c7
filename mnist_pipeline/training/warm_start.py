"""Whether a champion's weights can start a new training of a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.training.architectures import build_model
from mnist_pipeline.training.trainer import resolve_model_config

__all__ = ["weights_mismatch"]


def weights_mismatch(
    name: str,
    train_config: TrainConfig,
    weights: list[np.ndarray],
    model_settings: Mapping[str, Any] | None = None,
) -> str | None:
    """Why `weights` cannot initialise model `name` as `train_config` (and a sweep trial's
    `model_settings`) build it; None when they can (the same layers, holding arrays of the same
    shapes)."""
    config = resolve_model_config(name, train_config, model_settings)
    expected = [tuple(array.shape) for array in build_model(name, config).get_weights()]
    given = [tuple(np.shape(array)) for array in weights]
    if len(given) != len(expected):
        return f"it has {len(given)} weight arrays where this {name} has {len(expected)}"
    for index, (ours, theirs) in enumerate(zip(expected, given, strict=True)):
        if ours != theirs:
            return f"its weight array {index} has shape {theirs} where this {name} needs {ours}"
    return None
