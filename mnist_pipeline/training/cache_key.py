"""What decides a training's weights, named by one key: the step cache's (`mnist_pipeline.cache`),
and what `mnist-pipeline verify` compares a retraining's circumstances with.

The key is the sha256 of the training's fingerprint (the one its checkpoint is written for: the
snapshot's content hash, the run's training configuration with its seed, how the weights began
and a sweep trial's settings), the model's resolved configuration, and the environment it trains
in (`TrainingEnvironment`): the hash of the training code, the TensorFlow, Keras and NumPy
versions, and the device (CPU model or GPU names, precision, oneDNN's settings, op determinism).
Two trainings with one key train the same weights: bit for bit on a CPU, where training runs with
op determinism (`trainer.use_op_determinism`).

TensorFlow is imported when a key is made, never when this module is.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.records import Record

__all__ = [
    "TRAINING_CODE",
    "TrainingEnvironment",
    "TrainingKey",
    "code_hash",
    "current_environment",
    "describe_device",
    "device_kind",
    "training_key",
]

_PACKAGE = Path(__file__).resolve().parent.parent
# The code that decides a model's weights, hashed into every key. Files, relative to the package:
# - training/ (all of it): the architectures, the trainer (schedule, callbacks, precision, op
#   determinism), the loss, warm starts, resuming from a checkpoint, how a sweep trial's settings
#   apply, and model_io, which writes the bytes that are stored;
# - data/tf_data.py: the input pipeline's shuffling, batching and augmentation.
# And one function of a file that holds much else: `split_validation`, which picks the images that
# train and those that validate.
# Not hashed, on purpose: steps.py only wires these together, and what it decides (the snapshot,
# the configuration, the seed, the start) enters the key as values; config.py holds every setting
# of the pipeline, and those training reads enter as values too (TrainConfig's fields, oneDNN's
# variables in the device). Hashing either would retrain every model after any unrelated edit.
TRAINING_CODE: tuple[str, ...] = ("training", "data/tf_data.py", "data.mnist:split_validation")


@functools.cache
def code_hash() -> str:
    """sha256 over the sources of `TRAINING_CODE`, each named (a file moved changes it too)."""
    digest = hashlib.sha256()
    for name, text in _training_sources():
        digest.update(f"{name}\0{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    return digest.hexdigest()


def _training_sources() -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    for entry in TRAINING_CODE:
        if ":" in entry:
            module, _, function = entry.partition(":")
            imported = __import__(f"mnist_pipeline.{module}", fromlist=[function])
            sources.append((entry, inspect.getsource(getattr(imported, function))))
            continue
        path = _PACKAGE / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        sources += [(file.relative_to(_PACKAGE).as_posix(), file.read_text()) for file in files]
    return sources


@dataclass(frozen=True)
class TrainingEnvironment(Record):
    """Where and with what a model trained: the code's hash, the library versions, the device."""

    code_hash: str
    versions: dict[str, str]  # tensorflow, keras, numpy
    device: dict[str, Any]  # kind (cpu, gpu), model, precision, op_determinism; cores and oneDNN on a CPU

    def differences(self, now: TrainingEnvironment) -> list[str]:
        """What differs from `now`, in words: the code, a library's version, the device."""
        found = []
        if self.code_hash != now.code_hash:
            found.append(
                f"the training code differs (code hash {self.code_hash[:12]} then, {now.code_hash[:12]} now)"
            )
        for name in sorted(set(self.versions) | set(now.versions)):
            then, current = self.versions.get(name, "?"), now.versions.get(name, "?")
            if then != current:
                found.append(f"{name} differs ({then} then, {current} now)")
        if self.device != now.device:
            found.append(
                f"the device differs ({describe_device(self.device)} then, {describe_device(now.device)} now)"
            )
        return found


def describe_device(device: Mapping[str, Any]) -> str:
    """A device as `device_kind` records it, in words."""
    determinism = "op determinism on" if device.get("op_determinism") else "op determinism off"
    cores = f"{device['cores']} cores" if device.get("cores") else ""
    parts = [
        device.get("kind", "?"),
        f"'{device.get('model', '?')}'",
        cores,
        device.get("precision", "?"),
        determinism,
    ]
    if device.get("onednn"):
        parts.append("oneDNN " + ", ".join(f"{k}={v}" for k, v in sorted(device["onednn"].items()) if v))
    return " ".join(str(part) for part in parts if part)


@dataclass(frozen=True)
class TrainingKey(Record):
    """Everything that decides a training's weights; `digest` names it in the cache."""

    model: str
    fingerprint: dict[str, Any]  # data_hash, train_config (the seed among it), start, trial
    model_config: dict[str, Any]  # resolved from the model's defaults, the run's and a trial's settings
    environment: TrainingEnvironment = field(default_factory=lambda: TrainingEnvironment("", {}, {}))

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def training_key(
    model: str,
    fingerprint: Mapping[str, Any],
    train_config: TrainConfig,
    model_settings: Mapping[str, Any] | None = None,
    onednn_env: Mapping[str, str] | None = None,
) -> TrainingKey:
    """The key of training `model` as `fingerprint` says (`steps.train`'s checkpoint fingerprint).

    The model's configuration is resolved as the trainer resolves it, before fitting the batch to
    the data: that fit depends only on the snapshot and the replica count, which the key holds."""
    from mnist_pipeline.training.trainer import resolve_model_config, resolve_precision

    config = resolve_model_config(model, train_config, model_settings)
    precision = resolve_precision(train_config.precision, config, onednn_env)
    return TrainingKey(
        model=model,
        fingerprint=json.loads(json.dumps(dict(fingerprint), default=str)),
        model_config=json.loads(json.dumps(asdict(config), default=str)),
        environment=current_environment(precision, onednn_env),
    )


def current_environment(precision: str, onednn_env: Mapping[str, str] | None = None) -> TrainingEnvironment:
    """This process's environment for a training in `precision` (a resolved Keras dtype policy)."""
    import keras
    import numpy as np
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    return TrainingEnvironment(code_hash(), versions, device_kind(precision, onednn_env))


def device_kind(precision: str, onednn_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The device a training here runs on: every GPU's name, or the CPU's model, the cores
    TensorFlow may use and the oneDNN settings that choose its kernels; the precision; whether ops
    run deterministically (on a CPU, `trainer.use_op_determinism`). The cores count because they
    split the sums: the DNN trained on 1 core and on 2 ends with weights a rounding apart."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        return {"kind": "gpu", "model": ", ".join(names), "precision": precision, "op_determinism": False}
    from mnist_pipeline.training.trainer import cpuinfo_field

    model = cpuinfo_field("model name") or platform.processor() or platform.machine()
    onednn = {key: value for key, value in sorted((onednn_env or {}).items())}
    return {
        "kind": "cpu",
        "model": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "precision": precision,
        "op_determinism": True,
        "onednn": onednn,
    }
