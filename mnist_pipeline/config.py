"""Typed settings with defaults, read from the environment where the issue names a variable.

`PipelineSettings` says where things live (data source, registry, artifacts); `TrainConfig` says how
one model trains. Model architectures have their own configs in `models.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mnist_pipeline.errors import ConfigError

__all__ = [
    "CANONICAL_MNIST_SHA256",
    "CANONICAL_MNIST_URL",
    "PRECISIONS",
    "REPO_ROOT",
    "PipelineSettings",
    "TrainConfig",
    "positive_seconds_from_env",
]

CANONICAL_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
CANONICAL_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _local_default(name: str) -> str:
    return str(REPO_ROOT / ".local" / name)


@dataclass(frozen=True)
class PipelineSettings:
    """Where the pipeline reads data and writes models; every field has an environment variable."""

    source: str = CANONICAL_MNIST_URL  # MNIST_SOURCE: https:// URL, local path or gs:// URI
    registry_uri: str = field(default_factory=lambda: _local_default("registry"))  # MNIST_REGISTRY_URI
    artifacts_uri: str = field(default_factory=lambda: _local_default("artifacts"))  # MNIST_ARTIFACTS_URI
    max_train_images: int = 0  # MNIST_MAX_TRAIN_IMAGES: 0 keeps all 60k; small slices for tests

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineSettings:
        env = os.environ if env is None else env
        defaults = cls()
        settings = cls(
            source=env.get("MNIST_SOURCE") or defaults.source,
            registry_uri=env.get("MNIST_REGISTRY_URI") or defaults.registry_uri,
            artifacts_uri=env.get("MNIST_ARTIFACTS_URI") or defaults.artifacts_uri,
            max_train_images=_int_from_env(env, "MNIST_MAX_TRAIN_IMAGES", defaults.max_train_images),
        )
        settings.validate()
        return settings

    def with_overrides(self, **changes: object) -> PipelineSettings:
        """A copy with the non-empty `changes` applied (run parameters override the environment)."""
        kept = {key: value for key, value in changes.items() if value not in (None, "")}
        updated = replace(self, **kept)
        updated.validate()
        return updated

    def validate(self) -> None:
        if self.max_train_images < 0:
            raise ConfigError(f"max_train_images must be 0 (all) or positive, got {self.max_train_images}")


def positive_seconds_from_env(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """A positive duration in seconds from environment variable `name`, `default` when unset."""
    raw = (os.environ if env is None else env).get(name) or str(default)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"environment variable {name} must be a positive number, got {raw!r}")
    return seconds


def _int_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """How one model trains. `epochs`/`batch_size` of None mean "the model's own default"."""

    epochs: int | None = None
    batch_size: int | None = None  # per replica; the global batch is this times the replica count
    learning_rate: float | None = None
    validation_fraction: float = 0.1  # carved from train, never from the fixed 10k test set
    early_stopping_patience: int = 3
    seed: int = 42
    # A Keras dtype policy, or "auto": mixed_float16 where TensorFlow sees a GPU (tensor cores
    # multiply float16 several times faster), float32 on CPUs (which emulate float16).
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _require_positive_or_none("epochs", self.epochs)
        _require_positive_or_none("batch_size", self.batch_size)
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ConfigError(
                f"validation_fraction must be between 0 and 0.5, got {self.validation_fraction!r}"
            )
        if self.early_stopping_patience < 1:
            raise ConfigError(
                f"early_stopping_patience must be at least 1, got {self.early_stopping_patience!r}"
            )


def _require_positive_or_none(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
