"""Human-readable results: the newest run's models side by side, and the champion."""

from __future__ import annotations

from typing import Any

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.errors import StorageError
from mnist_pipeline.models import MODEL_NAMES
from mnist_pipeline.pipeline import run_key
from mnist_pipeline.registry import ModelRegistry
from mnist_pipeline.storage import Storage, open_storage

__all__ = ["latest_promotion", "render_summary", "run_evaluations"]


def run_evaluations(artifacts: Storage, run_id: str) -> list[dict[str, Any]]:
    """The evaluation records of every model evaluated in `run_id`."""
    keys = [f"{run_key(run_id)}/{name}/evaluation.json" for name in MODEL_NAMES]
    return [artifacts.read_json(key) for key in keys if artifacts.exists(key)]


def latest_promotion(artifacts: Storage) -> dict[str, Any]:
    decisions = [
        artifacts.read_json(key) for key in artifacts.list_keys("runs/") if key.endswith("/promotion.json")
    ]
    if not decisions:
        raise StorageError(f"no finished run under {artifacts.uri('runs/')}")
    return max(decisions, key=lambda decision: decision["decided_at"])


def render_summary(artifacts: Storage, settings: PipelineSettings) -> str:
    decision = latest_promotion(artifacts)
    lines = [
        f"run {decision['run_id']}",
        f"{'model':<8} {'test accuracy':>13} {'test loss':>9} {'epochs':>6} {'train s':>8}",
    ]
    for row in decision["candidates"]:
        lines.append(
            f"{row['model']:<8} {row['accuracy']:>13.4f} {row['loss']:>9.4f}"
            f" {row['epochs_run']:>6} {row['train_seconds']:>8.1f}"
        )
    verdict = "promoted" if decision["promoted"] else "not promoted"
    lines.append(f"challenger {decision['model']}: {verdict} ({decision['reason']})")
    champion = ModelRegistry(open_storage(settings.registry_uri)).champion()
    if champion:
        lines.append(
            f"champion {champion['model']}/{champion['version']}"
            f" accuracy {champion['metrics']['accuracy']:.4f} at {champion['uri']}"
        )
    return "\n".join(lines)
