"""MNIST training pipeline: ingest, train (linear / DNN / CNN), evaluate, promote.

Importing this package is cheap: TensorFlow loads only inside the steps that train or evaluate.
"""

from __future__ import annotations

from mnist_pipeline.config import PipelineSettings, TrainConfig, prepare_tensorflow_environment
from mnist_pipeline.errors import (
    ConfigError,
    DataError,
    MnistPipelineError,
    RegistryError,
    StorageError,
    UnknownModelError,
)
from mnist_pipeline.training.architectures import MODEL_NAMES, build_model, get_model_spec

prepare_tensorflow_environment()  # before any step imports TensorFlow

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
