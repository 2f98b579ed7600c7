"""The training loss. This module imports Keras at the top: import it only inside task code.

Keras' sparse cross-entropy has no label smoothing, and its categorical one wants one-hot labels;
this loss takes the datasets' integer labels as they are. It is for training only: archives are
saved naming Keras' own sparse cross-entropy in its place (`model_io.model_to_bytes`), so that plain
Keras loads them. It stays registered, so archives published before that, which name it, still load
(in safe mode too) through the library's loader, which imports this module.
"""

from __future__ import annotations

from typing import Any, cast

import keras

__all__ = ["SmoothedSparseCrossentropy", "training_loss"]


@keras.saving.register_keras_serializable(package="mnist_pipeline")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of predicted probabilities against integer labels whose one-hot targets are
    softened towards the uniform distribution by `label_smoothing` (0: plain cross-entropy)."""

    def __init__(
        self, label_smoothing: float = 0.1, name: str = "smoothed_sparse_crossentropy", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        classes = cast(tuple[Any, ...], keras.ops.shape(y_pred))[-1]  # Keras' inferred return admits None
        targets = keras.ops.one_hot(labels, classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"label_smoothing": self.label_smoothing}


def training_loss(label_smoothing: float) -> Any:
    """Keras' own sparse cross-entropy without smoothing; the smoothed one otherwise (which saved
    archives replace with Keras' own: see `model_io`)."""
    if not label_smoothing:
        return "sparse_categorical_crossentropy"
    return SmoothedSparseCrossentropy(label_smoothing)
