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


@pytest.mark.parametrize(
    ("train_images", "replicas", "batch"),
    [(54_000, 1, 512), (27_000, 2, 256), (4_500, 1, 64), (1_000, 1, 32), (10, 1, 32)],
)
def test_the_dnn_batch_halves_until_an_epoch_has_enough_steps(
    train_images: int, replicas: int, batch: int
) -> None:
    from mnist_pipeline.training.architectures import DnnConfig
    from mnist_pipeline.training.trainer import fit_batch_to_data

    default = DnnConfig()
    fitted = fit_batch_to_data(default, train_images, replicas)
    assert fitted.batch_size == batch
    assert fitted.learning_rate == pytest.approx(default.learning_rate * (batch / default.batch_size) ** 0.5)
    if batch > 32:
        assert -(-train_images // (batch * replicas)) >= default.min_steps_per_epoch
    assert fitted.hidden_units == default.hidden_units and fitted.epochs == default.epochs


def test_a_model_without_a_step_floor_keeps_its_batch_on_any_slice() -> None:
    from mnist_pipeline.training.architectures import CnnConfig
    from mnist_pipeline.training.trainer import fit_batch_to_data

    assert fit_batch_to_data(CnnConfig(), 100) == CnnConfig()


@pytest.mark.slow
def test_a_batch_the_run_sets_is_kept_on_a_small_slice(mnist: MnistData) -> None:
    from mnist_pipeline.training.architectures import DnnConfig

    train, val = split_validation(mnist.x_train[:1000], mnist.y_train[:1000], 0.1, seed=1)
    chosen = train_model("dnn", train, val, TrainConfig(epochs=1, batch_size=256))
    fitted = train_model("dnn", train, val, TrainConfig(epochs=1))
    assert chosen.global_batch_size == 256 * chosen.replicas
    assert chosen.model_config.learning_rate == DnnConfig().learning_rate
    assert fitted.global_batch_size == 32 * fitted.replicas and fitted.model_config.batch_size == 32


def test_auto_precision_follows_the_hardware() -> None:
    import tensorflow as tf

    from mnist_pipeline.training.architectures import get_model_spec
    from mnist_pipeline.training.trainer import cpu_multiplies_bfloat16, resolve_precision

    cnn, dnn = get_model_spec("cnn").config(), get_model_spec("dnn").config()
    if tf.config.list_physical_devices("GPU"):
        assert resolve_precision("auto", cnn) == resolve_precision("auto", dnn) == "mixed_float16"
    else:
        expected = "mixed_bfloat16" if cpu_multiplies_bfloat16() else "float32"
        assert resolve_precision("auto", cnn) == expected
        assert resolve_precision("auto", dnn) == resolve_precision("auto") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert resolve_precision("float32") == "float32"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # Zen 4
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", False),  # bfloat16 emulated
        ("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16x avx512_bf16_\n", False),  # whole flags, not prefixes
        ("processor\t: 0\nvmx flags\t: avx512_bf16\nflags\t\t: fpu\n", False),  # the "flags" field only
        ("processor\t: 0\n", False),
        (None, False),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_bfloat16_only_where_the_cpu_multiplies_it_in_hardware(
    tmp_path: Path, cpuinfo: str | None, expected: bool
) -> None:
    from mnist_pipeline.training.trainer import cpu_multiplies_bfloat16

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_multiplies_bfloat16(path, env={}) is expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, True),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),  # an AVX2-only CPU, as the benchmarks run it
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False),  # TensorFlow's own kernels emulate bfloat16
        ({"TF_ENABLE_ONEDNN_OPTS": "false", "ONEDNN_MAX_CPU_ISA": "ALL"}, False),
    ],
)
def test_auto_precision_is_float32_where_onednn_may_not_multiply_bfloat16(
    tmp_path: Path, env: dict[str, str], expected: bool
) -> None:
    from mnist_pipeline.training.trainer import cpu_multiplies_bfloat16

    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")  # Zen 4
    assert cpu_multiplies_bfloat16(path, env=env) is expected


def test_the_processes_own_onednn_limit_binds_settings_built_by_hand_and_direct_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oneDNN obeys the process's environment: `ONEDNN_MAX_CPU_ISA=AVX2` there means float32, even
    for settings that do not name it and for a trainer called without settings."""
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.training.trainer import cpu_multiplies_bfloat16, onednn_may_use_bfloat16

    zen4 = tmp_path / "cpuinfo"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert onednn_may_use_bfloat16() and cpu_multiplies_bfloat16(zen4, PipelineSettings().onednn_env())
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    by_hand = PipelineSettings(onednn_max_cpu_isa="")
    assert by_hand.onednn_env()["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert not cpu_multiplies_bfloat16(zen4, by_hand.onednn_env()) and not onednn_may_use_bfloat16()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert not cpu_multiplies_bfloat16(zen4, PipelineSettings(onednn_opts="1").onednn_env())


@pytest.mark.slow
def test_mixed_precision_trains_in_float16_and_answers_in_float32(mnist: MnistData) -> None:
    import keras

    train, val = split_validation(mnist.x_train[:2000], mnist.y_train[:2000], 0.1, seed=1)
    # One convolution per block: the CPU emulates float16, and this test is about precision.
    config = TrainConfig(epochs=2, batch_size=32, precision="mixed_float16")
    result = train_model("cnn", train, val, config, model_settings={"convs_per_block": 1})
    conv = next(layer for layer in result.model.layers if isinstance(layer, keras.layers.Conv2D))
    assert result.precision == "mixed_float16" and conv.compute_dtype == "float16"
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    probabilities = result.model.predict(mnist.x_test[:500], verbose=0)
    assert probabilities.dtype == np.float32  # the softmax stays float32 (models._softmax)
    assert evaluate_model(result.model, mnist.x_test[:2000], mnist.y_test[:2000])["accuracy"] > 0.8
    # The process-wide policy is back, so the next model trained in this worker is float32.
    assert keras.config.dtype_policy().name == "float32"


def test_smoothed_loss_is_cross_entropy_against_softened_one_hot_targets() -> None:
    import keras

    from mnist_pipeline.training.losses import SmoothedSparseCrossentropy

    labels = np.array([3, 0, 9])
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), size=3).astype("float32")
    targets = np.full((3, 10), 0.1 / 10) + 0.9 * np.eye(10)[labels]
    expected = -(targets * np.log(probabilities)).sum(axis=1).mean()
    assert float(SmoothedSparseCrossentropy(0.1)(labels, probabilities)) == pytest.approx(expected, rel=1e-5)
    plain = float(keras.losses.SparseCategoricalCrossentropy()(labels, probabilities))
    assert float(SmoothedSparseCrossentropy(0.0)(labels, probabilities)) == pytest.approx(plain, rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        SmoothedSparseCrossentropy(1.0)


def test_the_cnn_trains_on_smoothed_labels_and_its_archive_loads_in_safe_mode() -> None:
    from mnist_pipeline.training.architectures import CnnConfig, LinearConfig
    from mnist_pipeline.training.model_io import load_model_bytes, model_to_bytes
    from mnist_pipeline.training.trainer import _compiled_model

    cnn = _compiled_model("cnn", CnnConfig(), steps_per_epoch=10, ema_momentum=0.0)
    assert cnn.loss.label_smoothing == CnnConfig().label_smoothing > 0
    assert _compiled_model("linear", LinearConfig(), 10, 0.0).loss == "sparse_categorical_crossentropy"
    loaded = load_model_bytes(model_to_bytes(cnn))
    assert loaded.loss == "sparse_categorical_crossentropy"  # Keras' own, so plain Keras loads it


def test_a_trained_models_archive_keeps_weights_and_compile_settings_but_not_the_optimizer_state(
    mnist: MnistData,
) -> None:
    import io
    import zipfile

    import keras

    from mnist_pipeline.training.architectures import DnnConfig
    from mnist_pipeline.training.model_io import load_model_bytes, model_to_bytes
    from mnist_pipeline.training.trainer import _compiled_model

    dnn = _compiled_model("dnn", DnnConfig(), steps_per_epoch=2, ema_momentum=0.9)
    # Adam's moments and the averaged weights, created as the first step of fit would, untrained.
    dnn.optimizer.build(dnn.trainable_variables)
    assert len(dnn.optimizer.variables) > 2 * len(dnn.trainable_variables)
    weights_bytes = sum(w.nbytes for w in dnn.get_weights())

    archive = model_to_bytes(dnn)
    stored = sum(item.file_size for item in zipfile.ZipFile(io.BytesIO(archive)).infolist())
    assert stored < 1.1 * weights_bytes  # Adam's two moments and the averaged weights would triple it

    loaded = load_model_bytes(archive)
    digits = mnist.x_test[:64]
    np.testing.assert_array_equal(loaded.predict(digits, verbose=0), dnn.predict(digits, verbose=0))
    assert loaded.loss == "sparse_categorical_crossentropy" and DnnConfig().label_smoothing > 0
    assert isinstance(loaded.optimizer, keras.optimizers.Adam) and loaded.optimizer.use_ema
    scores = loaded.evaluate(digits, mnist.y_test[:64], verbose=0, return_dict=True)
    assert set(scores) == {"loss", "accuracy"}


def test_a_warm_start_begins_from_the_champions_own_weights_and_otherwise_says_why_not(
    tmp_path: Path,
) -> None:
    from mnist_pipeline.config import PipelineSettings
    from mnist_pipeline.registry.aliases import set_alias
    from mnist_pipeline.registry.client import Registry
    from mnist_pipeline.registry.state import CHAMPION
    from mnist_pipeline.registry.store import VersionRef
    from mnist_pipeline.steps import _initialisation
    from mnist_pipeline.storage import open_storage
    from mnist_pipeline.training.architectures import LinearConfig
    from mnist_pipeline.training.model_io import model_to_bytes
    from mnist_pipeline.training.trainer import _compiled_model

    settings = PipelineSettings(registry_uri=str(tmp_path / "registry"), artifacts_uri=str(tmp_path / "work"))
    assert "no champion yet" in _initialisation("linear", TrainConfig(), settings).note
    champion = _compiled_model("linear", LinearConfig(), steps_per_epoch=2, ema_momentum=0.0)
    folder, ref = tmp_path / "staged", VersionRef("linear", "20260101T000000Z-00000001")
    folder.mkdir()
    (folder / "model.keras").write_bytes(model_to_bytes(champion))
    registry = Registry(open_storage(settings.registry_uri))
    registry.publish(ref, folder, {"metrics": {"accuracy": 0.92}})
    set_alias(registry, CHAMPION, ref, "tester", "the champion")

    start = _initialisation("linear", TrainConfig(), settings)
    assert start.weights is not None and start.origin is not None and start.origin["version"] == ref.version
    for ours, theirs in zip(start.weights, champion.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)  # its very weights, not a fresh initialisation
    other = _initialisation("dnn", TrainConfig(), settings)
    assert other.weights is None and "another architecture" in other.note
