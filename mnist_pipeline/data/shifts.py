"""Simulated population shifts: MNIST digits as another pen, scanner or writer would give them.

The retraining scenario (`tests/test_retraining.py`, `benchmarks/retraining_scenario.py`) sends
such digits as new labelled shards, to show that a retrain learns them and the gate sees it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["redrawn_with_another_pen"]


def redrawn_with_another_pen(images: np.ndarray, seed: int = 0, noise: float = 20.0) -> np.ndarray:
    """`images` (N, 28, 28) uint8 with every stroke thickened by a pixel on each side (a broader
    nib) and light Gaussian noise on the ink (pressure, paper)."""
    thick = images.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            np.maximum(thick, np.roll(images, (dy, dx), axis=(1, 2)), out=thick)
    grain = np.random.default_rng(seed).normal(0.0, noise, size=images.shape) * (thick > 0)
    return np.clip(thick + grain, 0, 255).astype(np.uint8)
