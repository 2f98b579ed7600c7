"""Keras callbacks. This module imports Keras at the top: import it only inside task code."""

from __future__ import annotations

import logging
import time

import keras

__all__ = ["EpochLogger"]

log = logging.getLogger("mnist_pipeline.training.trainer")


class EpochLogger(keras.callbacks.Callback):
    """One readable log line per epoch: losses, accuracies, throughput and time left."""

    def __init__(self, epochs: int, train_images: int) -> None:
        super().__init__()
        self.epochs, self.train_images = epochs, train_images
        self.started = self.epoch_started = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        now = time.perf_counter()
        seconds = now - self.epoch_started
        eta = (now - self.started) / (epoch + 1) * (self.epochs - epoch - 1)
        log.info(
            "epoch %d/%d loss=%.4f accuracy=%.4f val_loss=%.4f val_accuracy=%.4f "
            "%.1fs %.0f images/s eta=%.0fs",
            epoch + 1,
            self.epochs,
            logs.get("loss", float("nan")),
            logs.get("accuracy", float("nan")),
            logs.get("val_loss", float("nan")),
            logs.get("val_accuracy", float("nan")),
            seconds,
            self.train_images / max(seconds, 1e-9),
            eta,
        )
