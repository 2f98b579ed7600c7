"""New digits for the incoming tests: base MNIST's own training digits are set aside as copies of
the base training set, so the tests send them moved by two pixels, beyond the one-pixel shifts
a copy may have (`mnist_pipeline.data.duplicates`): the same writers' digits, never seen there."""

from __future__ import annotations

import numpy as np

__all__ = ["new_digits"]


def new_digits(images: np.ndarray) -> np.ndarray:
    """`images` (N, 28, 28) moved two pixels to the right: MNIST's margins are 4 pixels wide, so
    no stroke wraps around."""
    return np.roll(images, 2, axis=2)
