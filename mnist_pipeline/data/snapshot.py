"""Dataset snapshots: validated MNIST stored once, under the hash of its content.

Every trained model records the hash, so the exact data behind it can always be read back.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_pipeline.data.mnist import MnistData, parse_npz, validate_mnist
from mnist_pipeline.errors import DataError
from mnist_pipeline.records import Record
from mnist_pipeline.storage import Storage

__all__ = ["SnapshotInfo", "read_manifest", "read_snapshot", "snapshot_uri", "write_snapshot"]


@dataclass(frozen=True)
class SnapshotInfo(Record):
    """What `ingest` records and hands to every model's training: the snapshot's name and size."""

    data_hash: str
    uri: str
    source: str
    train_images: int
    test_images: int
    new_test_images: int = 0
    manifest_hash: str = ""  # sha256 of the manifest: the lineage every model version records


def _key(data_hash: str) -> str:
    return f"datasets/{data_hash}/mnist.npz"


def snapshot_uri(storage: Storage, data_hash: str) -> str:
    """Where the snapshot named `data_hash` lives: what a record that keeps only the hash points at."""
    return storage.uri(_key(data_hash))


def write_snapshot(
    data: MnistData, storage: Storage, source: str, sources: list[dict[str, Any]] | None = None
) -> SnapshotInfo:
    """Store `data` under its content hash with a manifest of its `sources`; reuse an identical one."""
    data_hash = data.content_hash()
    manifest = {
        "data_hash": data_hash,
        "sources": sources or [{"kind": "base", "uri": source}],
        "counts": {name: len(array) for name, array in data.arrays().items() if name.startswith("y_")},
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    info = SnapshotInfo(
        data_hash,
        storage.uri(_key(data_hash)),
        source,
        len(data.y_train),
        len(data.y_test),
        len(data.y_new_test),
        hashlib.sha256(manifest_bytes).hexdigest(),
    )
    if not storage.exists(_key(data_hash)):
        buffer = io.BytesIO()
        # numpy's stub lets a ** key be `allow_pickle`; `arrays()` holds only the arrays' names.
        np.savez_compressed(buffer, **data.arrays())  # pyright: ignore[reportArgumentType]
        # The manifest goes first: the npz's presence is what marks the snapshot complete.
        storage.write_bytes(f"datasets/{data_hash}/manifest.json", manifest_bytes)
        storage.write_bytes(_key(data_hash), buffer.getvalue())
    return info


def read_manifest(storage: Storage, data_hash: str) -> dict[str, Any]:
    return storage.read_json(f"datasets/{data_hash}/manifest.json")


def read_snapshot(storage: Storage, data_hash: str) -> MnistData:
    """Read a snapshot back and check that its content still matches its name."""
    key = _key(data_hash)
    data = validate_mnist(parse_npz(storage.read_bytes(key), storage.uri(key)), storage.uri(key))
    if data.content_hash() != data_hash:
        raise DataError(f"dataset snapshot {storage.uri(key)}: content does not match its hash")
    return data
