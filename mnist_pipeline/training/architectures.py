"""The table of model architectures: a name -> (typed config, builder) table.

Builders import Keras when called, never at import time, so the DAG file can read `MODEL_NAMES`
without loading TensorFlow. Every model takes uint8 images of shape (28, 28) and rescales them
itself, so datasets and serving clients pass raw pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from mnist_pipeline.data.tf_data import Augmentation
from mnist_pipeline.errors import ConfigError, UnknownModelError

if TYPE_CHECKING:
    import keras

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "CnnConfig",
    "DnnConfig",
    "LinearConfig",
    "ModelConfig",
    "ModelSpec",
    "build_model",
    "get_model_spec",
]


@dataclass(frozen=True)
class ModelConfig:
    """Training defaults every model carries; run parameters may override them."""

    epochs: int = 10
    batch_size: int = 128  # per replica
    learning_rate: float = 1e-3  # peak rate, for `batch_size`
    # A large batch makes an epoch cheap on full MNIST but leaves a small slice's short run too
    # few steps to learn: unless the run sets the batch, it is halved (the rate with it, by the
    # square root) until an epoch has at least this many steps. 0: the batch is always kept.
    min_steps_per_epoch: int = 0
    # Steps the weights are averaged over (an exponential moving average the model is validated
    # and exported with); 0 trains and ships the raw weights.
    ema_horizon_steps: int = 0
    # Training targets put this much of each label's weight evenly on all ten classes: the net
    # stops pushing its confident answers further and keeps learning from the hard ones.
    label_smoothing: float = 0.0
    # Started from the champion's weights, a model refines rather than learns: a short schedule
    # at a lower peak rate keeps what the champion knew while it takes in the new data.
    warm_start_epochs: int = 3
    warm_start_rate_scale: float = 0.3
    # Random shifts (a fraction of the image) and rotations (a fraction of a full turn) of the
    # training images, applied by the input pipeline (data/tf_data.py); 0 and 0: none.
    max_shift: float = 0.0
    max_rotation: float = 0.0
    # Whether precision "auto" trains it in bfloat16 on a CPU that multiplies bfloat16 in hardware.
    # It pays where convolutions dominate the step; a dense model's step is mostly fixed cost, and
    # bfloat16's short mantissa costs it accuracy. Not a setting: sweeps and runs cannot set it.
    bfloat16_on_cpu: ClassVar[bool] = False

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.max_shift, self.max_rotation)


@dataclass(frozen=True)
class LinearConfig(ModelConfig):
    """Softmax regression: one dense layer on raw pixels."""

    epochs: int = 10
    # A convex model takes a large step size: 92.8% test accuracy on full MNIST vs 92.7% at 3e-3.
    learning_rate: float = 1e-2


@dataclass(frozen=True)
class DnnConfig(ModelConfig):
    """Fully connected hidden layers, each followed by dropout."""

    # Few, cheap steps: on a CPU a dense step's fixed cost outweighs a small batch's arithmetic,
    # so a large batch at a higher rate, averaged weights, smoothed labels and a short schedule
    # train it in about half the time at the same accuracy (benchmarks/dnn_schedule.py).
    batch_size: int = 512
    learning_rate: float = 3e-3
    min_steps_per_epoch: int = 50
    ema_horizon_steps: int = 100
    label_smoothing: float = 0.1
    # Wider layers cost little more per large step and learn more per epoch; more dropout keeps
    # them from memorising.
    hidden_units: tuple[int, ...] = (1024, 1024)
    dropout: float = 0.3
    # A dense net sees a digit moved by one pixel as new pixels: shifts of up to a pixel, with two
    # more epochs to learn from them, gave the best validation accuracy of the candidates that
    # train in two minutes on the AVX2 path (benchmarks/dnn_front.py).
    epochs: int = 8
    max_shift: float = 0.04


@dataclass(frozen=True)
class CnnConfig(ModelConfig):
    """Blocks of Conv(3x3, same) -> ReLU convolutions and a max-pool, then dense + dropout."""

    # Chosen on validation accuracy among the candidates of benchmarks/cnn_front.py, measured on
    # the AVX2 path (2 cores, float32) that most users' CPUs take: the best of those that train
    # within a 10-minute demo there. Two stacked 3x3 convolutions per block, as before, at half
    # the channels (16 and 32): a quarter of the arithmetic, and the second convolution still
    # sees 5x5 with a non-linearity between.
    epochs: int = 15
    # Warm-up then cosine decay (trainer.py) let Adam start high and settle the weights at the end.
    learning_rate: float = 2e-3
    bfloat16_on_cpu: ClassVar[bool] = True
    filters: tuple[int, ...] = (16, 32)  # one block per entry, each halving the image
    convs_per_block: int = 2
    # Blocks after the first use depthwise-separable convolutions: a 3x3 per channel, then a 1x1
    # across channels. Less arithmetic, yet slower on TensorFlow's CPU kernels and less accurate
    # here (benchmarks/cnn_front.py); kept for sweeps.
    separable: bool = False
    dense_units: int = 128
    dropout: float = 0.3
    # Light augmentation in the input pipeline: handwriting shifts by a few pixels and leans by a
    # few degrees, so the net learns that instead of memorising positions.
    max_shift: float = 0.08  # fraction of the image: about 2 pixels
    max_rotation: float = 0.03  # fraction of a full turn: about 11 degrees
    # Averaging the last ~100 steps' weights smooths out the high-rate jitter of the early epochs.
    ema_horizon_steps: int = 100
    # Keeps the validation loss falling to the end of the schedule, so early stopping returns the
    # last, best-settled weights.
    label_smoothing: float = 0.1


def _inputs() -> tuple[Any, Any]:
    import keras

    inputs = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    return inputs, keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)


def _softmax(x: Any) -> Any:
    import keras

    # float32 output even under mixed precision: softmax in float16 loses calibration.
    return keras.layers.Dense(10, activation="softmax", dtype="float32", name="probabilities")(x)


def build_linear(config: LinearConfig) -> keras.Model:
    import keras

    inputs, x = _inputs()
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, _softmax(x), name="linear")


def build_dnn(config: DnnConfig) -> keras.Model:
    import keras

    inputs, x = _inputs()
    x = keras.layers.Flatten()(x)
    for units in config.hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(config.dropout)(x)
    return keras.Model(inputs, _softmax(x), name="dnn")


def build_cnn(config: CnnConfig) -> keras.Model:
    import keras

    inputs, x = _inputs()
    x = keras.layers.Reshape((28, 28, 1))(x)
    for block, filters in enumerate(config.filters):
        # No batch norm: Keras' BatchNormalization is not fused on TensorFlow's CPU path, which
        # makes an epoch much slower for no accuracy once the weights are averaged.
        conv = keras.layers.SeparableConv2D if config.separable and block > 0 else keras.layers.Conv2D
        for _ in range(config.convs_per_block):
            x = conv(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(config.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    return keras.Model(inputs, _softmax(x), name="cnn")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_type: type[ModelConfig]
    builder: Callable[[Any], keras.Model]

    def config(self, **overrides: Any) -> ModelConfig:
        """The default config with `overrides` applied; unknown fields raise `ConfigError`."""
        known = {f.name for f in fields(self.config_type)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"model {self.name!r} has no setting(s) {unknown}; known: {sorted(known)}")
        return self.config_type(**overrides)


MODELS: dict[str, ModelSpec] = {
    "linear": ModelSpec("linear", LinearConfig, build_linear),
    "dnn": ModelSpec("dnn", DnnConfig, build_dnn),
    "cnn": ModelSpec("cnn", CnnConfig, build_cnn),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}") from None


def build_model(name: str, config: ModelConfig | None = None) -> keras.Model:
    spec = get_model_spec(name)
    return spec.builder(config or spec.config())
