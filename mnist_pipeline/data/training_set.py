"""The training set of a run: base MNIST plus every accepted shard of new labelled data.

The fixed 10k test set is never touched, so champions stay comparable. About a tenth of every
shard is held out as the `new_data` slice, which the gate judges champion and challenger on: an
image's side is decided by its own content hash, so it never changes, whichever shard brings it
and however many shards arrive after it. The manifest lists every source with its sha256.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.incoming import ACCEPTED, accepted_shards, read_accepted, shard_limits
from mnist_pipeline.data.mnist import MnistData, read_mnist
from mnist_pipeline.data.npz import NpzLimits
from mnist_pipeline.data.slices import held_out_mask
from mnist_pipeline.storage import Storage

__all__ = ["build_training_set"]


def build_training_set(
    settings: PipelineSettings, artifacts: Storage
) -> tuple[MnistData, list[dict[str, Any]]]:
    """(data, manifest sources): base MNIST (optionally cut to `max_train_images`) + shards."""
    full, digest = read_mnist(settings.source, settings.keras_home)
    base = full.head(settings.max_train_images)
    sources = [
        {
            "kind": "base",
            "uri": settings.source,
            "sha256": digest,
            "train_images": len(base.y_train),
            "test_images": len(base.y_test),
        }
    ]
    parts = []
    for shard in accepted_shards(artifacts):
        train_part, held_out = _split_shard(artifacts, shard, shard_limits(settings))
        parts.append((train_part, held_out))
        sources.append(
            {
                "kind": "shard",
                "uri": artifacts.uri(f"{ACCEPTED}{shard['shard']}"),
                "sha256": shard["sha256"],
                "train_images": len(train_part[1]),
                "held_out_images": len(held_out[1]),
                "flags": shard.get("flags", []),
            }
        )
    if not parts:
        return base, sources
    return replace(
        base,
        x_train=np.concatenate([base.x_train, *(p[0][0] for p in parts)]),
        y_train=np.concatenate([base.y_train, *(p[0][1] for p in parts)]),
        x_new_test=np.concatenate([p[1][0] for p in parts]),
        y_new_test=np.concatenate([p[1][1] for p in parts]),
    ), sources


def _split_shard(artifacts: Storage, shard: dict[str, Any], limits: NpzLimits) -> tuple[tuple, tuple]:
    images, labels = read_accepted(artifacts, shard, limits)
    held = held_out_mask(images)
    return (images[~held], labels[~held]), (images[held], labels[held])
