"""MNIST training pipeline: ingest, train (linear / DNN / CNN), evaluate, promote.

Importing this package is cheap: TensorFlow loads only inside the steps that train or evaluate.
"""

from __future__ import annotations

from mnist_pipeline.config import PipelineSettings, TrainConfig, quiet_tensorflow_start_up
from mnist_pipeline.errors import (
    ConfigError,
    DataError,
    MnistPipelineError,
    RegistryError,
    StorageError,
    UnknownModelError,
)
from mnist_pipeline.training.architectures import MODEL_NAMES, build_model, get_model_spec

quiet_tensorflow_start_up()  # before any step imports TensorFlow

__all__ = [
    "MODEL_NAMES",
    "ConfigError",
    "DataError",
    "MnistPipelineError",
    "PipelineSettings",
    "RegistryError",
    "StorageError",
    "TrainConfig",
    "UnknownModelError",
    "__version__",
    "build_model",
    "get_model_spec",
]

__version__ = "0.1.0"
