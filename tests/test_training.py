"""Training under a distribution strategy learns, and evaluation metrics are consistent."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data.mnist import MnistData, split_validation
from mnist_pipeline.errors import ConfigError
from mnist_pipeline.evaluation.metrics import evaluate_model, metrics_from_probabilities
from mnist_pipeline.training.trainer import make_strategy, train_model
from tests.trained_runs import assert_ships_the_weights_validation_scored


def test_strategy_is_mirrored_over_the_visible_devices() -> None:
    import tensorflow as tf

    strategy = make_strategy()
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == max(1, len(tf.config.list_physical_devices("GPU")))


@pytest.mark.slow
def test_a_tiny_training_run_learns(mnist: MnistData, caplog: pytest.LogCaptureFixture) -> None:
    train, val = split_validation(mnist.x_train[:4000], mnist.y_train[:4000], 0.1, seed=1)
    with caplog.at_level(logging.INFO, logger="mnist_pipeline.training.trainer"):
        result = train_model("linear", train, val, TrainConfig(epochs=3, batch_size=64))
    metrics = evaluate_model(result.model, mnist.x_test[:2000], mnist.y_test[:2000])
    assert metrics["accuracy"] > 0.8  # chance is 0.1
    assert result.epochs_run == 3 and result.global_batch_size == 64 * result.replicas
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epoch_lines) == 3 and "val_accuracy=" in epoch_lines[0] and "images/s" in epoch_lines[0]


def test_metrics_are_consistent() -> None:
    labels = np.array([0, 1, 2, 2])
    probabilities = np.eye(10)[[0, 1, 2, 1]] * 0.9 + 0.01
    metrics = metrics_from_probabilities(probabilities, labels)
    confusion = np.array(metrics["confusion_matrix"])
    assert metrics["accuracy"] == 0.75 and metrics["errors"] == 1
    assert confusion.sum() == 4 and confusion[2, 1] == 1
    assert metrics["per_class"]["1"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert metrics["per_class"]["2"]["recall"] == 0.5
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.91, 0.91, 0.91, 0.01])))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", -1),
        ("batch_size", 1.5),
        ("learning_rate", 0.0),
        ("precision", "float16"),
    ],
)
def test_train_config_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.slow
def test_the_cnn_ships_the_averaged_weights_its_validation_scored(mnist: MnistData) -> None:
    train, val = split_validation(mnist.x_train[:3000], mnist.y_train[:3000], 0.1, seed=1)
    result = train_model("cnn", train, val, TrainConfig(epochs=3, batch_size=32))
    assert result.model.optimizer.use_ema  # the CNN averages its weights; see CnnConfig
    assert_ships_the_weights_validation_scored(result, val, batch_size=32)
    metrics = evaluate_model(result.model, mnist.x_test[:2000], mnist.y_test[:2000])
    assert metrics["accuracy"] > 0.9  # a short run is not dragged back to its initial weights


@pytest.mark.parametrize(
    ("horizon", "planned", "momentum"), [(100, 6330, 0.99), (100, 200, 0.9), (100, 30, 0.0)]
)
def test_weight_averaging_never_outlasts_a_twentieth_of_the_run(
    horizon: int, planned: int, momentum: float
) -> None:
    from mnist_pipeline.training.trainer import _ema_momentum

    assert _ema_momentum(horizon, planned) == pytest.approx(momentum)


def test_auto_precision_follows_the_hardware() -> None:
    import tensorflow as tf

    from mnist_pipeline.training.architectures import get_model_spec
    from mnist_pipeline.training.trainer import cpu_has_bfloat16_matrix_units, resolve_precision

    cnn, dnn = get_model_spec("cnn").config(), get_model_spec("dnn").config()
    if tf.config.list_physical_devices("GPU"):
        assert resolve_precision("auto", cnn) == resolve_precision("auto", dnn) == "mixed_float16"
    else:
        expected = "mixed_bfloat16" if cpu_has_bfloat16_matrix_units() else "float32"
        assert resolve_precision("auto", cnn) == expected
        assert resolve_precision("auto", dnn) == resolve_precision("auto") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert resolve_precision("float32") == "float32"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n", False),  # bfloat16 emulated
        ("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16x\n", False),  # a whole flag, not a prefix
        ("processor\t: 0\n", False),
        (None, False),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_bfloat16_only_where_the_cpu_multiplies_it_in_hardware(
    tmp_path: Path, cpuinfo: str | None, expected: bool
) -> None:
    from mnist_pipeline.training.trainer import cpu_has_bfloat16_matrix_units

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_has_bfloat16_matrix_units(path) is expected


@pytest.mark.slow
def test_mixed_precision_trains_in_float16_and_answers_in_float32(mnist: MnistData) -> None:
    import keras

    train, val = split_validation(mnist.x_train[:2000], mnist.y_train[:2000], 0.1, seed=1)
    result = train_model("cnn", train, val, TrainConfig(epochs=2, batch_size=32, precision="mixed_float16"))
    conv = next(layer for layer in result.model.layers if isinstance(layer, keras.layers.Conv2D))
    assert result.precision == "mixed_float16" and conv.compute_dtype == "float16"
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    probabilities = result.model.predict(mnist.x_test[:500], verbose=0)
    assert probabilities.dtype == np.float32  # the softmax stays float32 (models._softmax)
    assert evaluate_model(result.model, mnist.x_test[:2000], mnist.y_test[:2000])["accuracy"] > 0.8
    # The process-wide policy is back, so the next model trained in this worker is float32.
    assert keras.config.dtype_policy().name == "float32"
