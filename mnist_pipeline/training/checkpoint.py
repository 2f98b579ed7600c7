"""Training checkpoints in the artifacts store, so a killed worker's retry resumes where it stopped.

Keras' `BackupAndRestore` backs the training state (weights, optimizer state, epoch) up to a local
folder after every epoch. A local folder dies with its worker, so after each backup the weights are
copied to `<run>/<model>/checkpoint/` in the artifacts store, then `state.json` naming them: the
commit mark, written last, so a kill in between leaves the previous complete checkpoint in force.
A retry downloads the checkpoint into a fresh local folder before `fit`, and `BackupAndRestore`
resumes from it. The checkpoint is deleted once the trained model is stored.

This module imports Keras at the top: import it only inside task code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from mnist_pipeline.storage import Storage

__all__ = ["ArtifactCheckpoint", "CheckpointUploader"]

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
# The file names `keras.callbacks.BackupAndRestore` reads and writes in its backup folder.
BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"


@dataclass
class ArtifactCheckpoint:
    """One training's checkpoint under `prefix`; `fingerprint` (data hash, configs) must match to resume."""

    storage: Storage
    prefix: str
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # Per-epoch metrics of every epoch checkpointed so far, so that the learning curves of a
    # resumed training show the epochs before the kill too.
    history: dict[str, list[float]] = field(default_factory=dict)

    def restore(self, backup_dir: Path) -> int:
        """Fill `backup_dir` from the stored checkpoint; returns its epoch (0: start afresh)."""
        state = self._state()
        if state is None:
            return 0
        if state.get("fingerprint") != self.fingerprint:
            # A checkpoint of another configuration or other data would resume the wrong training.
            log.warning("ignoring checkpoint %s: it was written for other data or settings", self._uri())
            self.clear()
            return 0
        backup_dir.mkdir(parents=True, exist_ok=True)
        weights = self.storage.read_bytes(f"{self.prefix}/{state['weights']}")
        (backup_dir / BACKUP_WEIGHTS).write_bytes(weights)
        (backup_dir / BACKUP_METADATA).write_text(json.dumps({"epoch": state["epoch"], "batch": 0}))
        self.history = state.get("history", {})
        log.info("resuming from checkpoint %s after epoch %d", self._uri(), state["epoch"])
        return int(state["epoch"])

    def save(self, backup_dir: Path, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Store the weights `BackupAndRestore` just wrote for `epoch` (1-based) and the epoch's
        metrics, then the commit mark."""
        weights = f"epoch-{epoch:04d}.weights.h5"
        self.storage.write_bytes(f"{self.prefix}/{weights}", (backup_dir / BACKUP_WEIGHTS).read_bytes())
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        state = {"epoch": epoch, "weights": weights, "fingerprint": self.fingerprint, "history": self.history}
        self.storage.write_json(f"{self.prefix}/{STATE_FILE}", state)
        for key in self.storage.list_keys(f"{self.prefix}/"):
            if key.endswith(".weights.h5") and not key.endswith(f"/{weights}"):
                self.storage.delete(key)  # superseded by the checkpoint just committed

    def clear(self) -> None:
        self.storage.delete(self.prefix)

    def _state(self) -> dict[str, Any] | None:
        key = f"{self.prefix}/{STATE_FILE}"
        return self.storage.read_json(key) if self.storage.exists(key) else None

    def _uri(self) -> str:
        return self.storage.uri(self.prefix)


class CheckpointUploader(keras.callbacks.Callback):
    """After each epoch's local backup, copy it to the artifacts store.

    Must come after `BackupAndRestore` in the callback list: callbacks run in list order, and the
    backup has to be on disk before it is copied.
    """

    def __init__(self, checkpoint: ArtifactCheckpoint, backup_dir: Path) -> None:
        super().__init__()
        self.checkpoint, self.backup_dir = checkpoint, backup_dir

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.checkpoint.save(self.backup_dir, epoch + 1, logs)
