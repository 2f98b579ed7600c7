"""Keras models to and from bytes, and the SavedModel export used for serving."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_pipeline.errors import RegistryError

if TYPE_CHECKING:
    import keras

__all__ = ["export_saved_model", "load_model_bytes", "model_to_bytes"]


def model_to_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def load_model_bytes(data: bytes) -> keras.Model:
    """Load a `.keras` archive with `safe_mode=True`: no arbitrary code (lambdas) is deserialised."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        try:
            return keras.saving.load_model(path, safe_mode=True)
        except ValueError as exc:
            if "safe_mode" not in str(exc):
                raise
            raise RegistryError(f"refusing a model that would run arbitrary code when loaded: {exc}") from exc


def export_saved_model(model: keras.Model, directory: Path) -> Path:
    """A TF SavedModel whose `serve` signature maps uint8 (N, 28, 28) images to 10 probabilities."""
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory
