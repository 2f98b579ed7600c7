"""The model registry: every builder gives a uint8 (28, 28) -> 10 probabilities model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.errors import ConfigError, UnknownModelError
from mnist_pipeline.training.architectures import MODEL_NAMES, build_model, get_model_spec


def test_every_name_has_a_spec_whose_defaults_make_a_valid_training_config() -> None:
    assert MODEL_NAMES and len(set(MODEL_NAMES)) == len(MODEL_NAMES)
    for name in MODEL_NAMES:
        config = get_model_spec(name).config()
        TrainConfig(epochs=config.epochs, batch_size=config.batch_size)  # refuses what it cannot train


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builder_maps_raw_images_to_probabilities(name: str, mnist) -> None:
    model = build_model(name)
    assert model.input_shape == (None, 28, 28)
    assert model.output_shape == (None, 10)
    digits = np.concatenate([np.zeros((1, 28, 28), np.uint8), mnist.x_test[:4]])  # blank and real, uint8
    probabilities = model.predict(digits, verbose=0)
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    assert (probabilities >= 0).all() and (probabilities <= 1).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_only_the_deeper_models_regularise_and_none_is_random_when_serving(mnist) -> None:
    digits = mnist.x_test[:16]
    for name in MODEL_NAMES:
        model = build_model(name)
        np.testing.assert_array_equal(model(digits, training=False), model(digits, training=False))
        randomised = not np.allclose(model(digits, training=True), model(digits, training=True))
        assert randomised == (name != "linear"), name  # dropout (and augmentation) only while training
    layers = {name: {type(layer).__name__ for layer in build_model(name).layers} for name in MODEL_NAMES}
    assert "Conv2D" in layers["cnn"] and not {"Conv2D"} & (layers["linear"] | layers["dnn"])


def test_unknown_model_names_the_valid_ones() -> None:
    valid = re.escape(", ".join(MODEL_NAMES))
    with pytest.raises(UnknownModelError, match=rf"unknown model 'resnet'; valid models: {valid}"):
        get_model_spec("resnet")


def test_config_overrides_are_checked() -> None:
    assert get_model_spec("dnn").config(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match=r"model 'cnn' has no setting\(s\) \['depth'\]"):
        get_model_spec("cnn").config(depth=50)


def test_cnn_augmentation_moves_every_digit_in_the_input_pipeline_and_the_model_holds_none(mnist) -> None:
    import tensorflow as tf

    from mnist_pipeline.data.tf_data import Augmentation, augment_batch

    digits = mnist.x_test[:64]
    augmentation = get_model_spec("cnn").config().augmentation
    moved = augment_batch(tf.constant(digits), tf.constant(7, tf.int64), augmentation).numpy()
    assert moved.dtype == np.uint8 and moved.shape == digits.shape
    assert all(not np.array_equal(a, b) for a, b in zip(moved, digits, strict=True))  # each its own move
    # A shift of about 2 pixels and a lean of about 11 degrees keep the digit's ink.
    ink = moved.reshape(64, -1).sum(axis=1) / digits.reshape(64, -1).sum(axis=1)
    assert ink.min() > 0.9 and ink.max() < 1.1
    again = augment_batch(tf.constant(digits), tf.constant(7, tf.int64), augmentation).numpy()
    other = augment_batch(tf.constant(digits), tf.constant(8, tf.int64), augmentation).numpy()
    np.testing.assert_array_equal(moved, again)  # the seed decides every move
    assert not np.array_equal(moved, other)
    still = augment_batch(tf.constant(digits), tf.constant(7, tf.int64), Augmentation()).numpy()
    np.testing.assert_array_equal(still, digits)
    assert not any("Random" in type(layer).__name__ for layer in build_model("cnn").layers)


def test_the_training_pipeline_augments_only_models_that_ask_anew_each_epoch_and_as_seeded(mnist) -> None:
    from mnist_pipeline.data.tf_data import make_train_dataset

    images, labels = mnist.x_train[:256], mnist.y_train[:256]

    def two_epochs(model: str, seed: int) -> list[np.ndarray]:
        augmentation = get_model_spec(model).config().augmentation
        dataset = make_train_dataset(images, labels, 256, seed, augmentation).repeat(2)
        return [batch.numpy() for batch, _ in dataset]

    plain = two_epochs("linear", seed=1)
    assert sorted(map(bytes, plain[0])) == sorted(map(bytes, images))  # shuffled, not moved
    assert sorted(map(bytes, two_epochs("dnn", seed=1)[0])) != sorted(map(bytes, images))
    first, second = two_epochs("cnn", seed=1)
    assert sorted(map(bytes, first)) != sorted(map(bytes, images))
    assert not np.array_equal(first, second)  # each epoch moves the digits anew
    np.testing.assert_array_equal(two_epochs("cnn", seed=1)[1], second)  # and a rerun moves them alike
    assert not np.array_equal(two_epochs("cnn", seed=2)[0], first)


@pytest.mark.slow
def test_the_exported_cnn_serves_what_the_model_predicts(mnist, tmp_path) -> None:
    from mnist_pipeline.evaluation.serving import check_serving
    from mnist_pipeline.training.model_io import export_saved_model

    model = build_model("cnn")
    probe = mnist.x_test[:32]
    check_serving(export_saved_model(model, tmp_path / "saved_model"), probe, model.predict(probe, verbose=0))
