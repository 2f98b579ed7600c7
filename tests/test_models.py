"""The model registry: every builder gives a uint8 (28, 28) -> 10 probabilities model."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_pipeline.errors import ConfigError, UnknownModelError
from mnist_pipeline.models import MODEL_NAMES, build_model, get_model_spec


def test_registry_holds_the_three_model_families() -> None:
    assert MODEL_NAMES == ("linear", "dnn", "cnn")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builder_maps_raw_images_to_probabilities(name: str) -> None:
    model = build_model(name)
    assert model.input_shape == (None, 28, 28)
    assert model.output_shape == (None, 10)
    probabilities = model.predict(np.zeros((3, 28, 28), np.uint8), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_designs_match_their_families() -> None:
    layer_types = {name: {type(layer).__name__ for layer in build_model(name).layers} for name in MODEL_NAMES}
    assert "Dense" in layer_types["linear"] and "Dropout" not in layer_types["linear"]
    assert {"Dense", "Dropout"} <= layer_types["dnn"] and "Conv2D" not in layer_types["dnn"]
    assert {"Conv2D", "MaxPooling2D", "Dropout"} <= layer_types["cnn"]


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet'; valid models: linear, dnn, cnn"):
        get_model_spec("resnet")


def test_config_overrides_are_checked() -> None:
    assert get_model_spec("dnn").config(epochs=3).epochs == 3
    with pytest.raises(ConfigError, match=r"model 'cnn' has no setting\(s\) \['depth'\]"):
        get_model_spec("cnn").config(depth=50)


def test_cnn_augmentation_moves_digits_in_training_only(mnist) -> None:
    augmentation = build_model("cnn").get_layer("augmentation")
    digits = mnist.x_test[:8, :, :, None].astype("float32")
    np.testing.assert_array_equal(np.asarray(augmentation(digits, training=False)), digits)
    assert not np.allclose(np.asarray(augmentation(digits, training=True)), digits)


def test_the_exported_cnn_serves_with_augmentation_off(mnist, tmp_path) -> None:
    from mnist_pipeline.model_io import export_saved_model
    from mnist_pipeline.serving import check_serving

    model = build_model("cnn")
    probe = mnist.x_test[:32]
    check_serving(export_saved_model(model, tmp_path / "saved_model"), probe, model.predict(probe, verbose=0))
