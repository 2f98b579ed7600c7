"""MNIST training pipeline: ingest, train (linear / DNN / CNN), evaluate, promote.

Importing this package is cheap: TensorFlow loads only inside the steps that train or evaluate.
"""

from __future__ import annotations

import os

# Before any TensorFlow import: its C++ start-up notices (CPU features, absl) go to stderr, which
# Airflow's task logs show as errors. Warnings and errors still show; TF_CPP_MIN_LOG_LEVEL=0 restores all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mnist_pipeline.config import PipelineSettings, TrainConfig
from mnist_pipeline.errors import (
    ConfigError,
    DataError,
    MnistPipelineError,
    RegistryError,
    StorageError,
    UnknownModelError,
)
from mnist_pipeline.training.architectures import MODEL_NAMES, build_model, get_model_spec

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
