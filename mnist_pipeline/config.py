"""Every setting of the pipeline, read from the environment and validated in one place.

`PipelineSettings` holds every `MNIST_*` variable (where data lives, how the DAGs are scheduled and
routed, how long storage and the registry page may take); `TrainConfig` says how one model trains.
Model architectures have their own configs in `training/architectures.py`.

Each entry point (a CLI command, an Airflow task, the registry page's app) reads the settings once,
as it starts, and passes them down; nothing below it reads the environment. A bad value is refused
there, once, with the variable, the value and what is allowed named, before any step runs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeGuard

from mnist_pipeline.errors import ConfigError

__all__ = [
    "APPROVAL_MODES",
    "CANONICAL_MNIST_SHA256",
    "CANONICAL_MNIST_URL",
    "ENVIRONMENT_VARIABLES",
    "PRECISIONS",
    "REPO_ROOT",
    "PipelineSettings",
    "TrainConfig",
    "onednn_process_env",
    "prepare_tensorflow_environment",
    "settings",
]

CANONICAL_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
CANONICAL_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
REPO_ROOT = Path(__file__).resolve().parent.parent
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
APPROVAL_MODES = ("none", "required")  # does a promotion wait for a person's approval?


def prepare_tensorflow_environment(env: dict[str, str] | None = None) -> None:
    """TensorFlow's start-up settings, which it reads once as it loads (the package's import sets
    them, before any step imports TensorFlow); a value already set wins.

    - TF_CPP_MIN_LOG_LEVEL=2 keeps its C++ start-up notices (CPU features, absl) off stderr, which
      Airflow's task logs show as errors; its warnings and errors still show.
    - TF_ENABLE_ONEDNN_OPTS=1 runs convolutions and matrix products on oneDNN's kernels on every
      x86 CPU. TensorFlow turns them on by itself only where the CPU has VNNI, bfloat16 or AMX
      units, and uses its slower Eigen kernels on the AVX2-only CPUs most people have
      (benchmarks/cnn_front.py measures both).
    """
    target = os.environ if env is None else env
    target.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    target.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _local_default(name: str) -> str:
    return str(REPO_ROOT / ".local" / name)


# field -> environment variable; every field of PipelineSettings has one.
ENVIRONMENT_VARIABLES: dict[str, str] = {
    "source": "MNIST_SOURCE",
    "registry_uri": "MNIST_REGISTRY_URI",
    "artifacts_uri": "MNIST_ARTIFACTS_URI",
    "max_train_images": "MNIST_MAX_TRAIN_IMAGES",
    "schedule": "MNIST_SCHEDULE",
    "min_new_images": "MNIST_MIN_NEW_IMAGES",
    "max_shard_bytes": "MNIST_MAX_SHARD_BYTES",
    "max_shard_images": "MNIST_MAX_SHARD_IMAGES",
    "claim_lease_seconds": "MNIST_CLAIM_LEASE_SECONDS",
    "train_queue": "MNIST_TRAIN_QUEUE",
    "train_pool": "MNIST_TRAIN_POOL",
    "worker_name": "MNIST_WORKER_NAME",
    "storage_retry_deadline": "MNIST_STORAGE_RETRY_DEADLINE",
    "stale_upload_seconds": "MNIST_STALE_UPLOAD_SECONDS",
    "registry_page_timeout": "MNIST_REGISTRY_PAGE_TIMEOUT",
    "approval": "MNIST_APPROVAL",
    "max_trials": "MNIST_MAX_TRIALS",
    # google-cloud-storage's own variable; read here too, so storage is pointed at it explicitly.
    "storage_emulator_host": "STORAGE_EMULATOR_HOST",
    # Keras' own variable; read here too, so the canonical MNIST is cached where Keras keeps it.
    "keras_home": "KERAS_HOME",
    # TensorFlow's and oneDNN's own variables; read here too, so precision "auto" knows whether
    # oneDNN may multiply bfloat16 (`training.trainer.onednn_may_use_bfloat16`).
    "onednn_opts": "TF_ENABLE_ONEDNN_OPTS",
    "onednn_max_cpu_isa": "ONEDNN_MAX_CPU_ISA",
}


@dataclass(frozen=True)
class PipelineSettings:
    """The pipeline's settings; `from_env` reads each field from its `MNIST_*` variable."""

    source: str = CANONICAL_MNIST_URL  # https:// URL, local path or gs:// URI
    registry_uri: str = field(default_factory=lambda: _local_default("registry"))
    artifacts_uri: str = field(default_factory=lambda: _local_default("artifacts"))
    max_train_images: int = 0  # 0 keeps all 60k; small slices for tests
    schedule: str = "0 3 * * 1"  # cron of the scheduled runs (UTC); "none": data trigger only
    min_new_images: int = 1000  # accepted new images that must wait before a retrain is announced
    max_shard_bytes: int = 200_000_000  # an incoming shard, compressed and uncompressed
    max_shard_images: int = 1_000_000  # images in one incoming shard
    claim_lease_seconds: float = 1800.0  # a claimed shard still waiting after this is taken over
    train_queue: str = "default"  # Celery queue of the train tasks (Airflow's default queue)
    train_pool: str = "default_pool"  # Airflow pool of the train tasks (exists everywhere)
    worker_name: str = ""  # a worker's name in its task instances' host name ("gpu@host")
    storage_retry_deadline: float = 120.0  # seconds a GCS call keeps retrying transient failures
    # An uncommitted version untouched this long is a crashed publish's leftover.
    stale_upload_seconds: float = 3600.0
    registry_page_timeout: float = 20.0  # seconds the registry page waits before answering 503
    # The trigger form's default: "required" makes a person approve each promotion the gate allows.
    approval: str = "none"
    # Trials one model may train in one run (the `sweep` parameter), explicit or a grid's product.
    max_trials: int = 16
    storage_emulator_host: str = ""  # a GCS emulator (fake-gcs-server) instead of Google
    keras_home: str = ""  # Keras' folder (its datasets/ caches MNIST); empty: ~/.keras
    onednn_opts: str = "1"  # "0" or "false" turns oneDNN off (the package's import sets "1")
    onednn_max_cpu_isa: str = ""  # oneDNN's instruction-set limit ("AVX2", ...); empty: none

    def __post_init__(self) -> None:
        for name, (check, wanted) in _RULES.items():
            value = getattr(self, name)
            if not check(value):
                raise ConfigError(
                    f"setting {name} ({ENVIRONMENT_VARIABLES[name]}) must be {wanted}, got {value!r}"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineSettings:
        """Every field from its environment variable; unset or empty keeps the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}  # each as its field's type (`_parsed`)
        for spec in fields(cls):
            variable = ENVIRONMENT_VARIABLES[spec.name]
            raw = env.get(variable)
            if raw not in (None, ""):
                values[spec.name] = _parsed(spec.name, variable, raw)
        return cls(**values)

    def onednn_env(self) -> dict[str, str]:
        """TensorFlow's oneDNN variables as they bind this process, for `training.trainer`'s
        precision: oneDNN reads them from the process's environment, so a value set there wins
        over these settings' (settings built by hand must not choose bfloat16 where the process
        limits oneDNN to AVX2)."""
        own = {"TF_ENABLE_ONEDNN_OPTS": self.onednn_opts, "ONEDNN_MAX_CPU_ISA": self.onednn_max_cpu_isa}
        return own | {name: value for name, value in onednn_process_env().items() if value}

    def with_overrides(self, **changes: object) -> PipelineSettings:
        """A copy with the non-empty `changes` applied (run parameters override the environment)."""
        return replace(self, **{key: value for key, value in changes.items() if value not in (None, "")})


def onednn_process_env() -> dict[str, str]:
    """oneDNN's variables in this process's environment, which TensorFlow's oneDNN obeys whatever
    a `PipelineSettings` says (unset: "")."""
    names = (ENVIRONMENT_VARIABLES["onednn_opts"], ENVIRONMENT_VARIABLES["onednn_max_cpu_isa"])
    return {name: os.environ.get(name, "").strip() for name in names}


def settings(env: Mapping[str, str] | None = None) -> PipelineSettings:
    """The settings, read from the environment now: for entry points only (a task's body, a CLI
    command, the web app's creation), which pass them down."""
    return PipelineSettings.from_env(env)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def _is_plain_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(_PLAIN_NAME.match(value))


_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "max_train_images": (lambda v: _is_int(v) and v >= 0, "0 (all) or a positive integer"),
    "min_new_images": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "max_shard_bytes": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "max_shard_images": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "claim_lease_seconds": (_is_positive_number, "a positive number"),
    "schedule": (lambda v: isinstance(v, str) and bool(v.strip()), "a cron expression or 'none'"),
    "train_queue": (_is_plain_name, "a plain name"),
    "train_pool": (_is_plain_name, "a plain name"),
    "worker_name": (lambda v: v == "" or _is_plain_name(v), "a plain name"),
    "storage_retry_deadline": (_is_positive_number, "a positive number"),
    "stale_upload_seconds": (_is_positive_number, "a positive number"),
    "registry_page_timeout": (_is_positive_number, "a positive number"),
    "approval": (lambda v: v in APPROVAL_MODES, " or ".join(repr(mode) for mode in APPROVAL_MODES)),
    "max_trials": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
}


def _parsed(name: str, variable: str, raw: str) -> object:
    """`raw` as the field's type, checked by its rule; a bad value names the variable."""
    default = getattr(PipelineSettings(), name)
    check, wanted = _RULES.get(name, (lambda _: True, ""))
    try:
        value = type(default)(raw)
    except ValueError:
        value = None
    if value is None or not check(value):
        raise ConfigError(f"environment variable {variable} must be {wanted}, got {raw!r}")
    return value


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
    # Starting from the champion's weights: the model's short warm-start schedule applies where
    # `epochs` and `learning_rate` are left empty.
    warm_start: bool = False

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
