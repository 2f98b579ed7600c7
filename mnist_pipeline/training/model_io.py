"""Keras models to and from bytes, and the SavedModel export used for serving."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mnist_pipeline.errors import RegistryError

if TYPE_CHECKING:
    import keras

__all__ = ["export_saved_model", "load_model_bytes", "model_to_bytes"]


def model_to_bytes(model: keras.Model) -> bytes:
    """A `.keras` archive of `model`'s architecture, weights and compile settings, without its
    optimizer's state: Adam's moments and the averaged weights are training state, twice to three
    times the weights' size, and evaluation, serving and warm starts read only the weights.

    The archive names only Keras' own classes, so plain `keras.models.load_model(path)` loads it
    in a process that never imported this library (see `_portable_copy`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        _portable_copy(model).save(path)
        return path.read_bytes()


def _portable_copy(model: keras.Model) -> keras.Model:
    """A copy of a compiled `model` with its weights, compiled as it was but with a fresh optimizer
    (one that has not built its variables) and Keras' own loss in place of the library's smoothed
    one; an uncompiled `model` itself. The smoothed loss is for training only: an archive naming it
    would load only where this library is imported ("Could not locate class ...")."""
    import keras

    if not model.compiled:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    settings = keras.saving.deserialize_keras_object(model.get_compile_config())
    copy.compile(**(settings | {"loss": _standard_loss(settings.get("loss"))}))
    return copy


def _standard_loss(loss: Any) -> Any:
    """Keras' sparse cross-entropy for the library's smoothed one (the same loss at smoothing 0);
    any other loss as it is."""
    from mnist_pipeline.training.losses import SmoothedSparseCrossentropy

    return "sparse_categorical_crossentropy" if isinstance(loss, SmoothedSparseCrossentropy) else loss


def load_model_bytes(data: bytes) -> keras.Model:
    """Load a `.keras` archive with `safe_mode=True`: no arbitrary code (lambdas) is deserialised."""
    import keras

    # Registers the smoothed loss, which archives published before `_portable_copy` name.
    import mnist_pipeline.training.losses  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                # Archives carry no optimizer state (see model_to_bytes), which Keras would report.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                # Keras types the loaded object loosely; a .keras archive of this library holds a Model.
                return cast("keras.Model", keras.saving.load_model(path, safe_mode=True))
        except ValueError as exc:
            if "safe_mode" not in str(exc):
                raise
            raise RegistryError(f"refusing a model that would run arbitrary code when loaded: {exc}") from exc


def export_saved_model(model: keras.Model, directory: Path) -> Path:
    """A TF SavedModel whose `serve` (and `serving_default`) signature maps uint8 (N, 28, 28)
    images to 10 probabilities.

    The endpoint calls the model with `training=False` explicitly: `model.export()` traces a plain
    call, and Keras' random image layers (the CNN's augmentation) default to training mode there,
    so the served model would shift and rotate every digit it is asked about.
    """
    import keras

    # Keras' __new__ returns the backend's archive class, which pyright cannot pick: TensorFlow's here.
    archive: Any = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda images: model(images, training=False),
        input_signature=[keras.InputSpec(shape=(None, 28, 28), dtype="uint8")],
    )
    archive.write_out(str(directory), verbose=False)
    return directory
