"""Which newly landed images are held out as the `new_data` slice.

An image's side is decided by its own content hash, so it never changes: not when more shards
arrive, not when the same image comes back in another shard.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["HELD_OUT_FRACTION", "held_out_mask"]

HELD_OUT_FRACTION = 0.1
_HASH_BUCKETS = 1000


def held_out_mask(images: np.ndarray) -> np.ndarray:
    """A boolean mask of the images that belong to the held-out slice (about a tenth)."""
    buckets = [
        int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:4], "big") % _HASH_BUCKETS
        for image in images
    ]
    return np.array(buckets, dtype=np.int64).reshape(len(images)) < HELD_OUT_FRACTION * _HASH_BUCKETS
