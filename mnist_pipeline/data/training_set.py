"""The training set of a run: base MNIST plus every accepted shard of new labelled data.

The fixed 10k test set is never touched, so champions stay comparable. A tenth of each shard
(chosen by a seed drawn from the shard's hash, so always the same images) is held out and reported
as a separate "new data" accuracy. The manifest lists every source with its sha256.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from mnist_pipeline.config import PipelineSettings
from mnist_pipeline.data.incoming import ACCEPTED, accepted_shards, parse_shard
from mnist_pipeline.data.mnist import MnistData, read_mnist
from mnist_pipeline.errors import DataError
from mnist_pipeline.hashing import read_verified
from mnist_pipeline.storage import Storage

__all__ = ["HELD_OUT_FRACTION", "build_training_set"]

HELD_OUT_FRACTION = 0.1


def build_training_set(
    settings: PipelineSettings, artifacts: Storage
) -> tuple[MnistData, list[dict[str, Any]]]:
    """(data, manifest sources): base MNIST (optionally cut to `max_train_images`) + shards."""
    full, digest = read_mnist(settings.source)
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
        train_part, held_out = _split_shard(artifacts, shard)
        parts.append((train_part, held_out))
        sources.append(
            {
                "kind": "shard",
                "uri": artifacts.uri(f"{ACCEPTED}{shard['shard']}"),
                "sha256": shard["sha256"],
                "train_images": len(train_part[1]),
                "held_out_images": len(held_out[1]),
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


def _split_shard(artifacts: Storage, shard: dict[str, Any]) -> tuple[tuple, tuple]:
    key = f"{ACCEPTED}{shard['shard']}"
    raw = read_verified(artifacts, key, shard["sha256"], DataError)
    images, labels = parse_shard(raw, artifacts.uri(key))
    order = np.random.default_rng(int(shard["sha256"][:8], 16)).permutation(len(labels))
    held = round(len(labels) * HELD_OUT_FRACTION) if len(labels) > 1 else 0
    train_idx, held_idx = order[held:], order[:held]
    return (images[train_idx], labels[train_idx]), (images[held_idx], labels[held_idx])
