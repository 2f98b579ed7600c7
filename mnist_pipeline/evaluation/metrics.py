"""Test-set metrics from a model's predicted probabilities: accuracy, loss, per class, confusion."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_pipeline.data.mnist import NUM_CLASSES

if TYPE_CHECKING:
    import keras

__all__ = [
    "evaluate_model",
    "labels_from_npy",
    "labels_npy",
    "metrics_from_probabilities",
    "predict",
    "predict_probabilities",
]

_EPSILON = 1e-7  # clips probabilities like Keras' crossentropy does


def predict(model: keras.Model, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """`model`'s outputs for `images` as Keras gives them, without its progress bar."""
    # Keras leaves `verbose` unannotated, so its default "auto" reads as str; 0 is one of its values.
    outputs = model.predict(images, batch_size=batch_size, verbose=0)  # pyright: ignore[reportArgumentType]
    return np.asarray(outputs)


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    return np.asarray(predict(model, images, batch_size), dtype=np.float64)


def metrics_from_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predicted), 1)  # rows: true, columns: predicted
    true_positives = np.diag(confusion)
    predicted_counts, true_counts = confusion.sum(axis=0), confusion.sum(axis=1)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], _EPSILON, 1.0)
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(picked).mean()),
        "test_images": len(labels),
        "errors": int((predicted != labels).sum()),
        "per_class": {
            str(digit): {
                "precision": _ratio(true_positives[digit], predicted_counts[digit]),
                "recall": _ratio(true_positives[digit], true_counts[digit]),
                "support": int(true_counts[digit]),
            }
            for digit in range(NUM_CLASSES)
        },
        "confusion_matrix": confusion.tolist(),
    }


def labels_npy(labels: np.ndarray) -> bytes:
    """Predicted labels as `.npy` bytes (uint8): what the gate pairs champion and challenger on."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(labels).astype(np.uint8), allow_pickle=False)
    return buffer.getvalue()


def labels_from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _ratio(numerator: int, denominator: int) -> float:
    # A class never predicted has no defined precision; 0.0 is the conventional, safe value.
    return float(numerator / denominator) if denominator else 0.0


def evaluate_model(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return metrics_from_probabilities(predict_probabilities(model, images), labels)
