"""Near-duplicate detection: does an image repeat one of a reference set of images?

The yardstick guard uses it to keep MNIST test digits (and the held-out new-data slice) out of
training, whether they come back exactly, shifted by a pixel, or with a few pixels changed.

Two stages keep it fast: candidates are the nearest references by 7x7 block means (under each of
the nine one-pixel shifts of the query), then each candidate is checked exactly: the fewest pixels
that differ at all over the nine shifts. Two different writers' digits differ in dozens of pixels
at least (anti-aliased edges never agree), a re-sent copy in a handful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_CHANGED_PIXELS", "DuplicateIndex"]

MAX_CHANGED_PIXELS = 12  # a copy may differ in this many pixels (after the best shift) and still count
_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_CANDIDATES_PER_SHIFT = 2
_CHUNK = 512  # query images compared at once: bounds the distance matrix and the candidate stack


def _block_means(images: np.ndarray) -> np.ndarray:
    return (
        images.reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4), dtype=np.float32).reshape(len(images), 49)
    )


def _shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.roll(images, (dy, dx), axis=(-2, -1))


@dataclass(frozen=True)
class DuplicateIndex:
    """The reference images, with their block means precomputed."""

    images: np.ndarray  # (M, 28, 28) uint8
    features: np.ndarray  # (M, 49)
    norms: np.ndarray  # (M,) squared norms of the features

    @classmethod
    def of(cls, images: np.ndarray) -> DuplicateIndex:
        features = _block_means(images)
        return cls(images, features, (features**2).sum(axis=1))

    def duplicates(self, images: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `images` (N, 28, 28) repeat a reference image."""
        if len(self.images) == 0 or len(images) == 0:
            return np.zeros(len(images), dtype=bool)
        return np.concatenate(
            [
                self._changed_pixels(images[start : start + _CHUNK]) <= MAX_CHANGED_PIXELS
                for start in range(0, len(images), _CHUNK)
            ]
        )

    def _changed_pixels(self, images: np.ndarray) -> np.ndarray:
        """For each image, the fewest pixels by which it differs from its candidate references."""
        candidates = self.images[self._candidates(images)]  # (n, k, 28, 28)
        fewest = np.full(len(images), images.shape[1] * images.shape[2])
        for dy, dx in _SHIFTS:
            differing = (_shifted(candidates, dy, dx) != images[:, None]).sum(axis=(2, 3))
            fewest = np.minimum(fewest, differing.min(axis=1))
        return fewest

    def _candidates(self, images: np.ndarray) -> np.ndarray:
        k = min(_CANDIDATES_PER_SHIFT, len(self.images))
        picked = []
        for dy, dx in _SHIFTS:
            query = _block_means(_shifted(images, dy, dx))
            distances = (query**2).sum(axis=1)[:, None] - 2 * query @ self.features.T + self.norms[None]
            picked.append(np.argpartition(distances, k - 1, axis=1)[:, :k])
        return np.concatenate(picked, axis=1)
