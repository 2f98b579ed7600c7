"""Train one registered model under a `tf.distribute` strategy.

Follows keras-io's distributed-training guide: variables are created inside `strategy.scope()`,
and datasets are batched with the global batch (per-replica batch x replicas in sync).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_pipeline.config import TrainConfig, onednn_process_env
from mnist_pipeline.data.tf_data import make_eval_dataset, make_train_dataset
from mnist_pipeline.training.architectures import ModelConfig, get_model_spec

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from mnist_pipeline.training.checkpoint import ArtifactCheckpoint

__all__ = [
    "BFLOAT16_CPU_FLAGS",
    "TrainResult",
    "cpu_flags",
    "cpu_multiplies_bfloat16",
    "cpuinfo_field",
    "fit_batch_to_data",
    "make_strategy",
    "onednn_may_use_bfloat16",
    "resolve_model_config",
    "resolve_precision",
    "train_model",
    "use_op_determinism",
]

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of the instructions oneDNN multiplies bfloat16 with.
BFLOAT16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) from AVX512_CORE_BF16 on; AVX2, AVX512_CORE and
# AVX512_CORE_VNNI have no bfloat16 dot products.
BFLOAT16_ISA_PREFIXES = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")


def make_strategy() -> tf.distribute.Strategy:
    """`MirroredStrategy` over every visible GPU; over the one CPU device when there is none."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Grow GPU memory on demand, so a second process on the same GPU is not starved.
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=["/cpu:0"])


def resolve_precision(
    requested: str, model_config: ModelConfig | None = None, onednn_env: Mapping[str, str] | None = None
) -> str:
    """The Keras dtype policy for `requested`; "auto" is mixed_float16 on GPUs, mixed_bfloat16 on
    CPUs that multiply bfloat16 in hardware for models whose config asks for it, float32
    otherwise. `onednn_env`: TensorFlow's oneDNN variables as the settings read them at start."""
    import tensorflow as tf

    if requested != "auto":
        return requested
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    wanted = model_config is not None and model_config.bfloat16_on_cpu
    return "mixed_bfloat16" if wanted and cpu_multiplies_bfloat16(env=onednn_env) else "float32"


def cpu_multiplies_bfloat16(
    cpuinfo: Path = Path("/proc/cpuinfo"), env: Mapping[str, str] | None = None
) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware: AMX-BF16 tiles (Intel Sapphire Rapids and
    later) or AVX-512 BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake), on which oneDNN
    runs the convolutions and dense layers faster than in float32. Elsewhere bfloat16 is
    emulated, and slower: so it is where oneDNN is off or limited to an older instruction set
    (`TF_ENABLE_ONEDNN_OPTS=0`, `ONEDNN_MAX_CPU_ISA=AVX2` in `env`, as the settings read them)."""
    return not BFLOAT16_CPU_FLAGS.isdisjoint(cpu_flags(cpuinfo)) and onednn_may_use_bfloat16(env)


def onednn_may_use_bfloat16(env: Mapping[str, str] | None = None) -> bool:
    """Whether oneDNN's variables in `env` (`PipelineSettings.onednn_env`; None: this process's)
    let it use the CPU's bfloat16 instructions: it is not turned off, and its ISA limit, if any,
    names a bfloat16-capable set (AVX512_CORE_BF16 or later)."""
    env = onednn_process_env() if env is None else env
    if env.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() in ("0", "false"):
        return False
    limit = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return limit in ("", "ALL", "DEFAULT") or limit.startswith(BFLOAT16_ISA_PREFIXES)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags; none where `cpuinfo` cannot be read (not Linux: no way to tell)."""
    return frozenset(cpuinfo_field("flags", cpuinfo).split())


def cpuinfo_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The value of the first CPU's `name` field ("flags", "model name"); "" where it has none or
    `cpuinfo` cannot be read."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


@contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Build layers under the policy `name`, then put the process-wide policy back: a worker
    process trains several models, and the next one must not inherit this one's precision."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def resolve_model_config(
    name: str, train: TrainConfig, model_settings: Mapping[str, Any] | None = None
) -> ModelConfig:
    """The model's default config with the run's epochs / batch size / learning rate applied, and
    a sweep trial's other `model_settings` (dropout, say); a warm start takes the model's own short
    schedule where the run sets none."""
    if train.warm_start:
        default = get_model_spec(name).config()
        train = replace(
            train,
            epochs=train.epochs or default.warm_start_epochs,
            learning_rate=train.learning_rate or default.learning_rate * default.warm_start_rate_scale,
        )
    overrides = {
        key: value
        for key, value in (
            ("epochs", train.epochs),
            ("batch_size", train.batch_size),
            ("learning_rate", train.learning_rate),
        )
        if value is not None
    }
    return get_model_spec(name).config(**(overrides | dict(model_settings or {})))


def fit_batch_to_data(config: ModelConfig, train_images: int, replicas: int = 1) -> ModelConfig:
    """`config` with its batch halved until an epoch over `train_images` has at least
    `config.min_steps_per_epoch` steps (never below 32 per replica), and its rate scaled by the
    square root of the shrink, as Adam's normalised steps want; `config` itself when it fits."""
    batch = config.batch_size
    while batch >= 64 and math.ceil(train_images / (batch * replicas)) < config.min_steps_per_epoch:
        batch //= 2
    if batch == config.batch_size:
        return config
    rate = config.learning_rate * math.sqrt(batch / config.batch_size)
    log.info(
        "batch %d per replica instead of %d (rate %.2g) so an epoch over %d images has %d steps or more",
        batch, config.batch_size, rate, train_images, config.min_steps_per_epoch,
    )
    return replace(config, batch_size=batch, learning_rate=rate)


@dataclass
class TrainResult:
    model: keras.Model
    model_config: ModelConfig
    history: dict[str, list[float]]  # every epoch, those before a resume included
    epochs_run: int  # every epoch the model has trained, those before a resume included
    train_seconds: float
    global_batch_size: int
    replicas: int
    devices: list[str] = field(default_factory=list)
    precision: str = "float32"  # the Keras dtype policy the model was built with
    resumed_from_epoch: int = 0  # epochs restored from a checkpoint (0: trained from scratch)

    @property
    def epochs_after_resume(self) -> int:
        return self.epochs_run - self.resumed_from_epoch


def train_model(
    name: str,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    train_config: TrainConfig | None = None,
    extra_callbacks: list[Any] | None = None,
    checkpoint: ArtifactCheckpoint | None = None,
    initial_weights: list[np.ndarray] | None = None,
    model_settings: Mapping[str, Any] | None = None,
    onednn_env: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train `name`; `extra_callbacks` (e.g. a benchmark's per-epoch probe) run after the built-in ones.

    With a `checkpoint`, the training state is backed up to it after every epoch and, when it holds
    one from an interrupted attempt, training resumes from there. `initial_weights` (the champion's,
    for a warm start) replace the random initialisation. `model_settings`: a sweep trial's settings
    of the model's config beyond those `train_config` holds. `onednn_env`: TensorFlow's oneDNN
    variables as read at start (`PipelineSettings.onednn_env`), for precision "auto".
    """
    import keras

    train_config = train_config or TrainConfig()
    model_config = resolve_model_config(name, train_config, model_settings)
    keras.utils.set_random_seed(train_config.seed)
    use_op_determinism()
    strategy = make_strategy()
    if train_config.batch_size is None and "batch_size" not in (model_settings or {}):
        model_config = fit_batch_to_data(model_config, len(train_data[1]), strategy.num_replicas_in_sync)
    global_batch = model_config.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = math.ceil(len(train_data[1]) / global_batch)
    precision = resolve_precision(train_config.precision, model_config, onednn_env)
    momentum = _ema_momentum(model_config.ema_horizon_steps, steps_per_epoch * model_config.epochs)
    with strategy.scope(), _dtype_policy(precision):
        model = _compiled_model(name, model_config, steps_per_epoch, momentum)
        if initial_weights is not None:
            model.set_weights(initial_weights)  # before fit: the weight average starts from them too
    callbacks = _callbacks(train_config, model_config.epochs, len(train_data[1]), averaged=momentum > 0)
    callbacks += extra_callbacks or []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist-backup-") as backup_dir:
        resumed = _resume_callbacks(checkpoint, Path(backup_dir), callbacks)
        history = model.fit(
            make_train_dataset(*train_data, global_batch, train_config.seed, model_config.augmentation),
            validation_data=make_eval_dataset(*val_data, global_batch),
            epochs=model_config.epochs,
            shuffle=False,  # the dataset reshuffles itself every epoch, seeded
            callbacks=callbacks,
            # Keras leaves `verbose` unannotated, so its default "auto" reads as str; 0 is one of its values.
            verbose=0,  # pyright: ignore[reportArgumentType]
        )
    return TrainResult(
        model=model,
        model_config=model_config,
        history=_full_history(history.history, checkpoint),
        epochs_run=resumed + len(history.epoch),
        train_seconds=time.perf_counter() - started,
        global_batch_size=global_batch,
        replicas=strategy.num_replicas_in_sync,
        devices=list(strategy.extended.worker_devices),
        precision=precision,
        resumed_from_epoch=resumed,
    )


def use_op_determinism() -> bool:
    """Turn TensorFlow's op determinism on where there is no GPU; returns whether it is on.

    On a CPU it costs nothing measurable (two epochs of the CNN or the DNN on 5,400 images took
    5-7 s either way on 2 cores), and it is what lets `mnist-pipeline verify` retrain a version
    bit for bit. Its kernels round differently from the default ones (after those two epochs the
    CNN's weights differ by up to 3e-3), so every CPU training runs one way, this one. On a GPU it
    slows cuDNN and refuses some ops: GPU trainings stay fast and are not bitwise reproducible,
    which their records say (`training.cache_key.device_kind`). Process-wide, as TensorFlow has it.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    tf.config.experimental.enable_op_determinism()
    return True


def _full_history(fitted: dict[str, list], checkpoint: ArtifactCheckpoint | None) -> dict[str, list[float]]:
    """This attempt's per-epoch metrics; with a checkpoint, those of the epochs before a resume too
    (the checkpoint has recorded every epoch it saved, this attempt's included)."""
    if checkpoint is not None and checkpoint.history:
        return {key: list(values) for key, values in checkpoint.history.items()}
    return {key: [float(v) for v in values] for key, values in fitted.items()}


def _compiled_model(
    name: str, model_config: ModelConfig, steps_per_epoch: int, ema_momentum: float
) -> keras.Model:
    """Build and compile the model; call inside the strategy's scope, so variables are mirrored.

    Under mixed_float16, `compile` wraps the optimizer in a `LossScaleOptimizer` by itself.
    """
    import keras

    from mnist_pipeline.training.losses import training_loss

    model = get_model_spec(name).builder(model_config)
    model.compile(
        optimizer=keras.optimizers.Adam(
            _schedule(model_config, steps_per_epoch),
            use_ema=ema_momentum > 0,
            ema_momentum=ema_momentum or 0.99,  # Keras checks the value even when averaging is off
        ),
        loss=training_loss(model_config.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def _ema_momentum(horizon_steps: int, planned_steps: int) -> float:
    """The moving-average momentum for a horizon of `horizon_steps`, 0 for no averaging.

    The horizon is capped at a twentieth of the planned steps: Keras' average starts at the
    initial weights, and a short run (a small slice, one epoch) must not be dragged back to them.
    """
    horizon = min(horizon_steps, planned_steps // 20)
    return 1 - 1 / horizon if horizon >= 2 else 0.0


def _resume_callbacks(checkpoint: ArtifactCheckpoint | None, backup_dir: Path, callbacks: list[Any]) -> int:
    """Put the backup/restore pair first in `callbacks`; returns the epoch training resumes after.

    `BackupAndRestore` restores weights, optimizer state (so the learning-rate schedule continues)
    and the epoch counter from `backup_dir`, which `checkpoint.restore` filled from the artifacts
    store; it works under `MirroredStrategy`.
    """
    import keras

    from mnist_pipeline.training.checkpoint import CheckpointUploader

    if checkpoint is None:
        return 0
    resumed = checkpoint.restore(backup_dir)
    callbacks[:0] = [
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
        CheckpointUploader(checkpoint, backup_dir),
    ]
    return resumed


def _schedule(config: ModelConfig, steps_per_epoch: int) -> Any:
    """Half an epoch of linear warm-up, then cosine decay to zero over the planned epochs.

    Warm-up keeps Adam's first, badly scaled steps small; the decay settles the weights at the
    end instead of letting them jitter at a constant rate (worth a few tenths of a point).
    """
    import keras

    warmup = max(1, steps_per_epoch // 2)
    total = max(warmup + 1, steps_per_epoch * config.epochs)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10,
        decay_steps=total - warmup,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def _callbacks(train_config: TrainConfig, epochs: int, train_images: int, averaged: bool) -> list[Any]:
    import keras

    from mnist_pipeline.training.callbacks import EpochLogger

    # With averaged weights, swap them into the model at every epoch's end (and out again before
    # the next), so validation, early stopping's best weights, the epoch log and any probe after
    # these callbacks all see the weights that ship. A checkpoint backup, put before this list,
    # still saves the raw weights training resumes from.
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if averaged else []
    return [
        *averaging,
        # Watch the validation loss (smoother than accuracy), and only in the second half: the
        # cosine schedule makes its largest gains in the last, low-rate epochs, which an early
        # plateau at a high rate must not cut off.
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=train_config.early_stopping_patience,
            start_from_epoch=epochs // 2,
            restore_best_weights=True,
        ),
        EpochLogger(epochs, train_images),
    ]
